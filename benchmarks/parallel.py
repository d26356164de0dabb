"""What each `--parallel` layout leaves on one process: measured local bytes of weights, gradients and AdamW state
after one training step, and peak resident memory, at world size 2 (gloo, CPU) beside one process.

    python benchmarks/parallel.py              # GPT of ~28M parameters (4 x 768), ~1 min on 2 cores
    python benchmarks/parallel.py --layers 2   # smaller, quicker

Each layout runs in its own `torchrun --nproc_per_node 2` (one process: plain `python`), built as the training
loop builds it (`train/distributed.py`: meta-device build, sharding, then per-rank init for zero2/fsdp; the
optimizer after wrapping; ZeroRedundancyOptimizer for zero1), and takes one step: forward, backward, clip,
AdamW. Bytes are of the tensors a rank holds itself (its DTensor shards, its ZeRO partition, or everything),
read from the live objects; "ratio" is weights + gradients + optimizer over one process's. Peak RSS also counts
the Python + torch runtime (a few hundred MB) and DDP's gradient buckets. The memory planner of issue 14 (its
predicted figures beside these) is not built yet.
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

LAYOUTS = ("ddp", "zero1", "zero2", "fsdp")


def worker(layout: str, layers: int, out: Path) -> None:
    import torch

    from scratchlm.model import GPT, ModelConfig
    from scratchlm.train import distributed as D
    from scratchlm.train.optim import build_optimizer

    torch.set_num_threads(1)
    config = ModelConfig(
        vocab_size=256, context_length=64, n_layer=layers, n_head=12, d_model=768, d_ff=3072, dropout=0.0
    )
    info = D.init_distributed("cpu")
    parallel = "ddp" if layout == "single" else layout
    sharded = D.is_sharded(parallel, info)
    with torch.device("meta"):
        model = GPT(config)
    if not sharded:
        D.materialize_and_init(model, info.device, seed=0)
    wrapped = D.wrap(model, info, compile=False, activation_checkpointing=False, parallel=parallel)
    if sharded:
        D.materialize_and_init(model, info.device, seed=0)
    optimizer = build_optimizer(
        model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu", shard_state=layout == "zero1" and info.is_distributed
    )
    g = torch.Generator().manual_seed(info.rank)
    ids = torch.randint(0, config.vocab_size, (4, config.context_length), generator=g)
    loss = wrapped(ids, targets=ids.roll(-1, 1), reduction="mean")
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
    optimizer.step()

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    inner = getattr(
        optimizer, "optim", optimizer
    )  # ZeroRedundancyOptimizer keeps its partition's AdamW inside
    opt_bytes = sum(
        local(v).numel() * v.element_size()
        for s in inner.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    report = {
        "layout": layout,
        "rank": info.rank,
        "world": info.world_size,
        "params": sum(p.numel() for p in model.parameters()),
        "weights": sum(local(p).numel() * p.element_size() for p in model.parameters()),
        "grads": sum(
            local(p.grad).numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
        ),
        "optimizer": opt_bytes,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    (out / f"{layout}-rank{info.rank}.json").write_text(json.dumps(report))
    D.barrier()
    D.shutdown_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.layers, a.out)
        return
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
            for lay in LAYOUTS
        ]
        for layout, cmd in runs:
            done = subprocess.run(
                [*cmd, "--worker", layout, "--layers", str(a.layers), "--out", str(out)],
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
    print(
        f"GPT {base['params'] / 1e6:.1f}M parameters (fp32), one training step, per process; MB = 2^20 bytes"
    )
    print(
        f"{'layout':8} {'world':>5} {'rank':>4} {'weights MB':>10} {'grads MB':>9} {'AdamW MB':>9} {'ratio':>6} "
        f"{'AdamW ratio':>11} {'peak RSS MB':>11}"
    )
    for layout in ("single", *LAYOUTS):
        for r in sorted((r for r in reports if r["layout"] == layout), key=lambda r: r["rank"]):
            total = r["weights"] + r["grads"] + r["optimizer"]
            print(
                f"{layout:8} {r['world']:>5} {r['rank']:>4} {r['weights'] * mb:>10.1f} {r['grads'] * mb:>9.1f} "
                f"{r['optimizer'] * mb:>9.1f} {total / base_total:>6.2f} {r['optimizer'] / base['optimizer']:>11.2f} "
                f"{r['peak_rss'] * mb:>11.0f}"
            )


if __name__ == "__main__":
    main()
