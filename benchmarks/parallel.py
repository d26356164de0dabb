"""What each layout (`--parallel`, `--tp 2`, `--pp 2`) leaves on one process: measured local bytes of weights,
gradients and AdamW state after one training step, and peak resident memory, at world size 2 (gloo, CPU) beside
one process, each beside the memory planner's figure (`scratchlm model info --world-size ...`,
`model/sizing.py: plan_layout_memory`).

    python benchmarks/parallel.py              # GPT of ~28M parameters (4 x 768), ~1 min on 2 cores
    python benchmarks/parallel.py --layers 2   # smaller, quicker
    python benchmarks/parallel.py --layers 2 --d-model 128 --layouts zero1,fsdp,tp2,pp2   # seconds (the test)

Each layout runs in its own `torchrun --nproc_per_node 2` (one process: plain `python`), built as the training
loop builds it (`train/distributed.py`: meta-device build, sharding, then per-rank init for zero2/fsdp; the
optimizer after wrapping; ZeroRedundancyOptimizer for zero1), and takes one step: forward, backward, clip,
AdamW. Bytes are of the tensors a rank holds itself (its DTensor shards, its ZeRO partition, or everything),
read from the live objects; "ratio" is weights + gradients + optimizer over one process's; "plan" is the
planner's weights + gradients + optimizer for that rank and "err" the measured total's difference from it. Peak
RSS also counts the Python + torch runtime (a few hundred MB) and DDP's gradient buckets; the planner's
activations (the last column) are not measured here. The head is untied, as Llama-3.1-8B's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = ("ddp", "zero1", "zero2", "fsdp", "tp2", "pp2")
BATCH = 4


def _split(layout: str) -> tuple[str, int, int]:
    """A layout's --parallel, --tp and --pp."""
    if layout.startswith("tp"):
        return "ddp", int(layout[2:]), 1
    if layout.startswith("pp"):
        return "ddp", 1, int(layout[2:])
    return ("ddp" if layout == "single" else layout), 1, 1


def _config(layers: int, d_model: int):  # -> ModelConfig
    from scratchlm.model import ModelConfig

    return ModelConfig(vocab_size=256, context_length=64, n_layer=layers, n_head=d_model // 64, d_model=d_model,
                       d_ff=4 * d_model, dropout=0.0, tie_embeddings=False)


def worker(layout: str, layers: int, d_model: int, out: Path) -> None:
    import torch

    from scratchlm.model import GPT
    from scratchlm.model.sizing import plan_layout_memory
    from scratchlm.train import distributed as D
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.pipeline import Pipeline, split_model

    torch.set_num_threads(1)
    config = _config(layers, d_model)
    info = D.init_distributed("cpu")
    parallel, tp, pp = _split(layout)
    lay = D.plan_layout(info, parallel, tp, pp)
    sharded = not lay.whole_on_every_rank
    with torch.device("meta"):
        whole = GPT(config)
    model = whole
    if not sharded:
        D.materialize_and_init(model, info.device, seed=0)
    if pp > 1:  # as the training loop builds it: split, tensor parallel, data parallel, then allocate
        model = split_model(whole, lay)
    wrapped = D.wrap(model, info, compile=False, activation_checkpointing=False, parallel=parallel, layout=lay)
    if sharded:
        D.materialize_and_init(model, info.device, seed=0, whole=whole)
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu", shard_state=parallel == "zero1" and lay.dp > 1)
    g = torch.Generator().manual_seed(lay.dp_rank)
    ids = torch.randint(0, config.vocab_size, (BATCH, config.context_length), generator=g)
    if pp > 1:
        Pipeline(model, wrapped, lay, "1f1b", pp, info.device).step({"ids": ids, "targets": ids.roll(-1, 1)}, 1)
    else:
        wrapped(ids, targets=ids.roll(-1, 1), reduction="mean").backward()
    params = [p for p in model.parameters() if p.grad is not None]
    D.clip_grad_norm(params, 1.0, lay)
    optimizer.step()

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its partition's AdamW inside
    opt_bytes = sum(
        local(v).numel() * v.element_size()
        for s in inner.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    plan = plan_layout_memory(config, BATCH, world_size=info.world_size, parallel=parallel, tp=tp, pp=pp)[lay.pp_rank]
    report = {
        "layout": layout,
        "rank": info.rank,
        "world": info.world_size,
        "params": sum(p.numel() for p in whole.parameters()),
        "weights": sum(local(p).numel() * p.element_size() for p in model.parameters()),
        "grads": sum(local(p.grad).numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None),
        "optimizer": opt_bytes,
        "plan": plan.weights_bytes + plan.grads_bytes + plan.adamw_bytes,
        "plan_parts": [plan.weights_bytes, plan.grads_bytes, plan.adamw_bytes],
        "plan_activations": plan.activations_bytes,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    (out / f"{layout}-rank{info.rank}.json").write_text(json.dumps(report))
    D.barrier()
    D.shutdown_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=768, help="width (heads of 64)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of " + ",".join(LAYOUTS))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.layers, a.d_model, a.out)
        return
    layouts = [x for x in a.layouts.split(",") if x]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        sys.exit(f"--layouts {','.join(unknown)}: unknown; choose from {','.join(LAYOUTS)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        runs = [("single", [sys.executable, me])]
        runs += [
            (
                lay,
                ["torchrun", "--nproc_per_node", "2", "--master_port", str(random.randint(20000, 60000)), me],
            )
            for lay in layouts
        ]
        for layout, cmd in runs:
            done = subprocess.run(
                [*cmd, "--worker", layout, "--layers", str(a.layers), "--d-model", str(a.d_model), "--out", str(out)],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode:
                sys.exit(f"{layout} failed:\n{done.stderr[-3000:]}")
        reports = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    base = next(r for r in reports if r["layout"] == "single")
    base_total = base["weights"] + base["grads"] + base["optimizer"]
    mb = 1 / 2**20
    print(f"GPT {base['params'] / 1e6:.1f}M parameters (fp32, untied head), one training step of {BATCH} x 64 "
          "tokens, per process; MB = 2^20 bytes")
    print(f"{'layout':8} {'world':>5} {'rank':>4} {'weights MB':>10} {'grads MB':>9} {'AdamW MB':>9} {'ratio':>6} "
          f"{'plan MB':>8} {'err':>6} {'peak RSS MB':>11} {'plan act. MB':>12}")
    worst = 0.0
    for layout in ("single", *layouts):
        for r in sorted((r for r in reports if r["layout"] == layout), key=lambda r: r["rank"]):
            total = r["weights"] + r["grads"] + r["optimizer"]
            measured = [r["weights"], r["grads"], r["optimizer"]]
            worst = max(worst, *(abs(m - p) / p for m, p in zip(measured, r["plan_parts"]) if p))
            print(f"{layout:8} {r['world']:>5} {r['rank']:>4} {r['weights'] * mb:>10.1f} {r['grads'] * mb:>9.1f} "
                  f"{r['optimizer'] * mb:>9.1f} {total / base_total:>6.2f} {r['plan'] * mb:>8.1f} "
                  f"{100 * (total - r['plan']) / r['plan']:>5.1f}% {r['peak_rss'] * mb:>11.0f} "
                  f"{r['plan_activations'] * mb:>12.1f}")
    print(f"largest difference planner vs measured, any of weights / gradients / AdamW on any rank: {100 * worst:.2f}%")


if __name__ == "__main__":
    main()
