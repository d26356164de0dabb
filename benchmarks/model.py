"""Training-step throughput of the hand-written GPT vs transformers' GPT2LMHeadModel, fp32 on CPU.

One step = forward + cross-entropy + backward + AdamW, on random token ids. Same shape, same loss, same optimizer
for every row; the implementations are timed in interleaved rounds (best round reported) so background load
hits them alike.

    python benchmarks/model.py                           # gpt2 shape, batch 4 x context 256
    python benchmarks/model.py --preset gpt2-tiny --steps 2 --rounds 1   # a quick smoke run

Optional: `--device cuda --dtype bfloat16 --compile` for the GPU figure (MFU against --peak-tflops).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from scratchlm.model import GPT, ModelConfig
from scratchlm.model.hf import config_to_hf
from scratchlm.model.sizing import train_flops_per_token


def make_step(model: torch.nn.Module, hf: bool, ids: torch.Tensor, targets: torch.Tensor, dtype, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            logits = model(ids).logits if hf else model(ids)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (e.g. 989 for H100 bf16)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers reference")
    args = p.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = ModelConfig.from_preset(args.preset)
    g = torch.Generator().manual_seed(0)
    ids, targets = torch.randint(0, config.vocab_size, (2, args.batch, args.context), generator=g).to(device)

    rows: dict[str, object] = {}
    for impl in ("sdpa", "manual"):
        torch.manual_seed(0)
        rows[f"scratchlm GPT, attn_impl={impl}"] = (GPT(config.replace(attn_impl=impl)).to(device), False)
    if not args.no_hf:
        import transformers

        hf_config = transformers.GPT2Config(**{k: v for k, v in config_to_hf(config).items() if k != "architectures"})
        for attn in ("sdpa", "eager"):
            torch.manual_seed(0)
            hf = transformers.GPT2LMHeadModel._from_config(hf_config, attn_implementation=attn).to(device)
            rows[f"transformers GPT2LMHeadModel, attn_implementation={attn}"] = (hf, True)

    steps = {}
    for name, (model, hf) in rows.items():
        model.train()
        if args.compile:
            model = torch.compile(model)
        steps[name] = make_step(model, hf, ids, targets, dtype, device)
        steps[name]()  # warm-up (allocations, compilation)

    best = {name: float("inf") for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - t0) / args.steps)

    tokens = args.batch * args.context
    flops = train_flops_per_token(config, args.context) * tokens
    ref = next((best[n] for n in best if "transformers" in n and "sdpa" in n), None)
    print(f"\n{args.preset} shape, batch {args.batch} x context {args.context}, {args.dtype} on {device}"
          f"{' + torch.compile' if args.compile else ''}, {torch.get_num_threads()} threads, "
          f"forward+backward+AdamW, best of {args.rounds} rounds x {args.steps} steps\n")
    header = f"{'implementation':<58} {'s/step':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'vs HF sdpa':>10}"
    if args.peak_tflops:
        header += f" {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for name, sec in best.items():
        line = f"{name:<58} {sec:>8.3f} {tokens / sec:>10,.0f} {flops / sec / 1e12:>8.3f}"
        line += f" {ref / sec:>9.2f}x" if ref else f" {'':>10}"
        if args.peak_tflops:
            line += f" {flops / sec / 1e12 / args.peak_tflops:>6.1%}"
        print(line)


if __name__ == "__main__":
    main()
