"""bf16 autocast against fp32 for CPU training, on the two pretraining commands the README gives, as typed.

    python benchmarks/cpu_precision.py                       # about 5 minutes on 2 cores
    python benchmarks/cpu_precision.py --steps-scale 0.25    # a quick look

For each configuration it runs `scratchlm pretrain` twice in subprocesses, `--precision fp32` and `--precision
bf16` (same seed, data and steps), and compares speed (median tokens/s of the logged intervals after the first)
and the loss curve (training loss at every log, validation loss at the end). bf16 should become the CPU default
only if it wins on both: faster, and a loss curve that matches fp32's. It prints one table and writes
`cpu-precision.png` (the curves) and `cpu-precision.json`.

Configurations: the quickstart (`--preset shakespeare-char`, char-level, 0.8M parameters) and the README's
`--model-preset gpt2-tiny` on GPT-2-tokenized tinyshakespeare (3.3M parameters, micro-batch 12 x 256).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from run_cli import scratchlm  # benchmarks/run_cli.py: a script's own folder is on sys.path

REPO = Path(__file__).resolve().parents[1]


def run(name: str, args: list[str], precision: str, out: Path) -> dict:
    folder = out / f"{name}-{precision}"
    scratchlm(
        [
            "pretrain",
            *args,
            "--precision",
            precision,
            "--out",
            str(folder),
            "--progress",
            "False",
            "--sample-at-end",
            "0",
        ]
    )
    records = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    return {
        "config": name,
        "precision": precision,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train[1:]),
        "curve": [(r["step"], r["loss"]) for r in train],
        "final_train_loss": statistics.mean(r["loss"] for r in train[-3:]),  # the last three logs: less noise
        "val_loss": evals[-1]["val_loss"] if evals else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every run's steps (1: 300 and 100)"
    )
    p.add_argument("--out", type=Path, default=Path("."), help="folder for the PNG and the JSON")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpu-precision-"))
    scratchlm(
        [
            "data",
            "prepare",
            "--dataset",
            "tinyshakespeare",
            "--tokenizer",
            "gpt2",
            "--out",
            str(work / "shards"),
        ]
    )
    q, t = max(20, int(300 * a.steps_scale)), max(20, int(100 * a.steps_scale))
    configs = {
        "quickstart (shakespeare-char)": [
            "--preset",
            "shakespeare-char",
            "--max-steps",
            str(q),
            "--eval-every",
            "0",
        ],
        "README (gpt2-tiny)": [
            "--model-preset",
            "gpt2-tiny",
            "--data",
            str(work / "shards"),
            "--max-steps",
            str(t),
            "--log-every",
            "5",
            "--eval-every",
            "0",
        ],
    }
    results = []
    for name, args in configs.items():
        for precision in ("fp32", "bf16"):
            print(f"{name} {precision} ...", file=sys.stderr, flush=True)
            results.append(run(name, args, precision, work))

    head = f"{'configuration':<30} {'precision':<9} {'tokens/s':>9} {'train loss':>10} {'val loss':>8}"
    lines = [
        f"bf16 autocast vs fp32 on CPU ({os.cpu_count()} cores), scratchlm pretrain as typed",
        head,
        "-" * len(head),
    ]
    for r in results:
        lines.append(
            f"{r['config']:<30} {r['precision']:<9} {r['tokens_per_s']:>9,.0f} {r['final_train_loss']:>10.4f} "
            f"{r['val_loss']:>8.4f}"
        )
    for name in configs:
        f32, b16 = (
            next(r for r in results if r["config"] == name and r["precision"] == p) for p in ("fp32", "bf16")
        )
        gap = max(abs(x[1] - y[1]) for x, y in zip(f32["curve"], b16["curve"]))
        lines.append(
            f"{name}: bf16/fp32 tokens/s x{b16['tokens_per_s'] / f32['tokens_per_s']:.2f}, "
            f"val loss {b16['val_loss'] - f32['val_loss']:+.4f}, largest train-loss gap at a log {gap:.4f}"
        )
    table = "\n".join(lines)
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4))
    for ax, name in zip(axes, configs):
        for r in results:
            if r["config"] == name:
                steps, losses = zip(*r["curve"])
                ax.plot(steps, losses, label=f"{r['precision']} ({r['tokens_per_s']:,.0f} tok/s)")
        ax.set(title=name, xlabel="step", ylabel="training loss")
        ax.legend()
    fig.tight_layout()
    a.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out / "cpu-precision.png", dpi=100)
    (a.out / "cpu-precision.json").write_text(json.dumps({"table": table, "runs": results}, indent=1))
    print(f"wrote {a.out / 'cpu-precision.png'} and {a.out / 'cpu-precision.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
