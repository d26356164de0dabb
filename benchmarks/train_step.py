"""One full training step (forward, loss, backward, clip, AdamW step): the chunked loss against the full-logit
path and `transformers`' GPT-2, with the machine's GEMM peak measured in the same run.

    python benchmarks/train_step.py                  # both tables below, fp32 and bf16 (about 5 min on 2 cores)
    python benchmarks/train_step.py --small          # small shapes: a quick check that it runs
    python benchmarks/train_step.py --device cuda --batch 16 --seq 1024 --precision bf16 --compile --skip-tiny

Table 1, the README's pretraining configuration (gpt2-tiny, micro-batch 12 x 256): each loss path in its own
process, so peak RSS, user and system CPU time are that path's alone. "full" is the path main used before the
chunked loss (`F.cross_entropy(model(ids).flatten(0, 1), ...)`, the B x T x V logits materialised); "main before"
runs it with glibc's malloc as main left it, the other rows with freed memory retained as the trainer sets it
on CPU (`scratchlm.hostmem`; `--no-retain-host-memory` leaves malloc alone everywhere).

Table 2, the gpt2 124M shape (batch 4 x 256 by default): s/step, tokens/s and achieved GFLOP/s (6N + 12LCT
training FLOPs per token, PaLM's count) beside the fp32 GEMM peak of this machine at GPT-2's layer shapes, and
for ours the same in bf16 autocast. Steps alternate between the models so machine noise hits all alike. On CUDA
it also prints MFU against the device's listed peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm import hostmem
from scratchlm.device import cpu_has_native_bf16
from scratchlm.model import GPT, ModelConfig, onednn
from scratchlm.train.optim import build_optimizer
from scratchlm.train.progress import flops_per_token, peak_flops


def make_hf(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(hf_cfg)


def make_step(model: torch.nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, precision: str,
              compile_: bool):  # noqa: ANN201
    """A closure running one optimizer step of `model` with loss path `kind` (chunked | full | hf)."""
    device = x.device
    opt = build_optimizer(model, 6e-4, 0.1, (0.9, 0.95), 1e-8, device.type)
    fwd = torch.compile(model) if compile_ else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def step() -> float:
        with autocast:
            if kind == "chunked":
                loss = fwd(x, targets=y, reduction="mean")
            else:
                logits = fwd(x).logits if kind == "hf" else fwd(x)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def child(args: argparse.Namespace) -> None:
    """One loss path in this process: JSON with tokens/s, peak RSS and CPU times of the timed steps."""
    cfg = ModelConfig.from_preset(args.preset)
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    model = GPT(cfg).train()
    step = make_step(model, args.child, ids[:, :-1], ids[:, 1:], args.child_precision, False)
    step()  # warm-up
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"tokens_s": args.batch * args.seq * args.steps / seconds, "peak_rss_mb": r1.ru_maxrss / 1024,
                      "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                      "last_loss": losses[-1]}))


def readme_table(args: argparse.Namespace) -> None:
    # (row, loss path, glibc's malloc left as it is, precision): the first row is main before this work, the
    # full logits with the default malloc; "chunked" is what the trainer runs; "chunked, bf16" is the README
    # command as typed on a CPU with bf16 instructions (`--precision auto`)
    plain = args.no_retain_host_memory  # every row with the default malloc
    paths = [("main before: full", "full", True, "fp32"), ("full, retained", "full", plain, "fp32"),
             ("chunked", "chunked", plain, "fp32")]
    if cpu_has_native_bf16():
        paths.append(("chunked, bf16", "chunked", plain, "bf16"))
    rows = {}
    for name, kind, default_malloc, precision in paths:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--preset", "gpt2-tiny",
               "--batch", "12", "--seq", "256", "--steps", str(args.tiny_steps), "--child-precision", precision]
        cmd += ["--no-retain-host-memory"] if default_malloc else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    print(f"\n1. gpt2-tiny (README config), micro-batch 12 x 256, {args.device}, fp32 unless marked, "
          f"{args.tiny_steps} steps, threads {torch.get_num_threads()}")
    print(f"{'loss path':<18} {'tokens/s':>9} {'peak RSS':>10} {'user s':>8} {'sys s':>7} {'sys/user':>9} "
          f"{'loss':>8}")
    for name, r in rows.items():
        print(f"{name:<18} {r['tokens_s']:>9.0f} {r['peak_rss_mb']:>7.0f} MB {r['user_s']:>8.1f} {r['sys_s']:>7.1f} "
              f"{100 * r['sys_s'] / max(r['user_s'], 1e-9):>8.0f}% {r['last_loss']:>8.4f}")
    f = rows["main before: full"]
    for name in ("chunked", "chunked, bf16"):
        if name in rows:
            c = rows[name]
            print(f"{name} / main before: tokens/s x{c['tokens_s'] / f['tokens_s']:.2f}, "
                  f"peak RSS x{c['peak_rss_mb'] / f['peak_rss_mb']:.2f}")
    print("(retained: glibc's malloc keeps freed memory for reuse, as the trainer sets it on CPU; "
          "see src/scratchlm/hostmem.py)")


def gemm_peak(device: torch.device, dtype: torch.dtype, small: bool) -> dict[str, float]:
    """GFLOP/s of the best of oneDNN and BLAS on the gpt2 layer GEMMs (1024 tokens x 768 -> 3072, and back)."""
    M, K, N = (256, 128, 512) if small else (1024, 768, 3072)
    out = {}
    for name in ("oneDNN", "BLAS"):
        if name == "oneDNN" and (device.type != "cpu" or dtype != torch.float32 or not onednn.is_enabled()):
            continue
        best = 0.0
        for k, n in ((K, N), (N, K)):
            a = torch.randn(M, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype)
            f = (lambda a=a, w=w: onednn.linear(a, w)) if name == "oneDNN" else (lambda a=a, w=w: a @ w.t())
            f()
            reps = 5
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * M * k * n * reps / (time.perf_counter() - t0) / 1e9)
        out[name] = best
    return out


def gpt2_table(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    shape = dict(n_layer=2, n_head=4, d_model=128, d_ff=512) if args.small else {}
    cfg = ModelConfig.from_preset("gpt2", context_length=max(args.seq, 1024 if not args.small else args.seq), **shape)
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    precisions = [args.precision] if args.precision != "both" else ["fp32", "bf16"]
    runs = {}
    for precision in precisions:
        variants = [("scratchlm, chunked loss", "chunked"), ("scratchlm, full logits", "full")]
        if not args.only_ours:
            variants.append(("transformers GPT2LMHeadModel", "hf"))
        for name, kind in variants:
            torch.manual_seed(0)
            model = (make_hf(cfg) if kind == "hf" else GPT(cfg)).to(device).train()
            step = make_step(model, kind, x, y, precision, args.compile)
            step()  # warm-up (allocations; compilation when --compile)
            runs[(name, precision)] = (step, sum(p.numel() for p in model.parameters()))
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for _ in range(args.steps):  # alternate, so drifts in machine load hit all alike
        for key, (step, _) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    peaks = {p: gemm_peak(device, torch.float32 if p == "fp32" else torch.bfloat16, args.small) for p in precisions}
    print(f"\n2. training step, {'small' if args.small else 'gpt2 124M'} shape, batch {args.batch} x {args.seq}, "
          f"{device}, threads {torch.get_num_threads()}, compile {args.compile}")
    for p, peak in peaks.items():
        print(f"   GEMM peak {p} at the layer shapes: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    listed = {p: peak_flops(device, p) for p in precisions}
    header = f"{'model':<30} {'prec':>5} {'params':>8} {'s/step':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>8}"
    print(header + (f" {'MFU':>6}" if any(listed.values()) else ""))
    for (name, precision), (_, n_params) in runs.items():
        med = statistics.median(times[(name, precision)])
        achieved = flops_per_token(n_params, cfg.n_layer, cfg.d_model, args.seq) * tokens / med
        peak = max(peaks[precision].values())
        row = (f"{name:<30} {precision:>5} {n_params / 1e6:>7.1f}M {med:>8.3f} {tokens / med:>9.1f} "
               f"{achieved / 1e9:>8.0f} {100 * achieved / 1e9 / peak:>7.0f}%")
        if listed[precision]:
            row += f" {100 * achieved / listed[precision]:>5.1f}%"
        print(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="2 layers, width 128: a quick functional check")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="timed steps per model in table 2 (after a warm-up)")
    p.add_argument("--tiny-steps", type=int, default=10, help="timed steps per loss path in table 1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="both", choices=["fp32", "bf16", "both"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only-ours", action="store_true", help="skip transformers (e.g. for the GPU MFU figure)")
    p.add_argument("--skip-tiny", action="store_true", help="only table 2")
    p.add_argument("--child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--preset", default="gpt2-tiny", help=argparse.SUPPRESS)
    p.add_argument("--child-precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--no-retain-host-memory", action="store_true",
                   help="leave glibc's malloc as it is (the trainer's --retain-host-memory false)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.no_retain_host_memory:
        hostmem.retain_freed_memory()  # as the trainer does on CPU
    if args.child:
        child(args)
        return
    if not args.skip_tiny:
        readme_table(args)
    gpt2_table(args)


if __name__ == "__main__":
    main()
