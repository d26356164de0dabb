"""Tokens/s of one full training step (forward, loss, backward, clip, AdamW step): ours vs transformers' GPT-2.

    python benchmarks/train_step.py                 # gpt2 124M shape, fp32 CPU, batch 4 x 256
    python benchmarks/train_step.py --small         # a 2-layer model, to check that it runs
    python benchmarks/train_step.py --device cuda --batch 16 --seq 1024 --precision bf16 --compile

Both models get the same shape, the same data, the same AdamW (fused where available, weight decay on matrices
only) and the same clip; steps alternate between the two so machine noise hits both alike. On CUDA it also
prints MFU (6N + 12LCT FLOPs per token against the device's peak).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from scratchlm.model import GPT, ModelConfig
from scratchlm.train.optim import build_optimizer
from scratchlm.train.progress import flops_per_token, peak_flops


def make_ours(cfg: ModelConfig) -> torch.nn.Module:
    return GPT(cfg)


def make_hf(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(hf_cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="2 layers, width 128: a quick functional check")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="timed steps per model (after one warm-up step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only-ours", action="store_true", help="skip transformers (e.g. for the GPU MFU figure)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = dict(n_layer=2, n_head=4, d_model=128, d_ff=512) if args.small else {}
    cfg = ModelConfig.from_preset("gpt2", context_length=max(args.seq, 1024 if not args.small else args.seq), **shape)

    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    )

    runs = {}
    builders = {"scratchlm GPT": make_ours} if args.only_ours else {"scratchlm GPT": make_ours, "transformers GPT2LMHeadModel": make_hf}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build(cfg).to(device).train()
        opt = build_optimizer(model, 6e-4, 0.1, (0.9, 0.95), 1e-8, device.type)
        fwd = torch.compile(model) if args.compile else model
        is_hf = name.startswith("transformers")

        def step(fwd=fwd, model=model, opt=opt, is_hf=is_hf) -> None:
            with autocast:
                logits = fwd(x).logits if is_hf else fwd(x)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        runs[name] = (step, sum(p.numel() for p in model.parameters()))
        step()  # warm-up (allocations; compilation when --compile)
        if device.type == "cuda":
            step()

    times: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(args.steps):  # alternate, so drifts in machine load hit both
        for name, (step, _) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)

    tokens = args.batch * args.seq
    peak = peak_flops(device, args.precision)
    print(f"training step, {'small' if args.small else 'gpt2 124M'} shape, batch {args.batch} x {args.seq}, "
          f"{args.precision}, {device}, threads {torch.get_num_threads()}, compile {args.compile}")
    header = f"{'model':<30} {'params':>8} {'s/step (median)':>16} {'tokens/s':>10}"
    if peak:
        header += f" {'MFU':>6}"
    print(header)
    for name, (_, n_params) in runs.items():
        med = statistics.median(times[name])
        row = f"{name:<30} {n_params / 1e6:>7.1f}M {med:>16.3f} {tokens / med:>10.1f}"
        if peak:
            fpt = flops_per_token(n_params, cfg.n_layer, cfg.d_model, args.seq)
            row += f" {100 * fpt * tokens / med / peak:>5.1f}%"
        print(row)


if __name__ == "__main__":
    main()
