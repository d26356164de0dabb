"""AdamW against Muon on the quickstart (`scratchlm pretrain --preset shakespeare-char`), each at its own best
learning rate from a small sweep, compared at equal steps and at equal wall time.

    python benchmarks/optim.py                 # 6 runs of the full preset (1,200 steps): ~15 min on 2 cores
    python benchmarks/optim.py --steps 300     # a quicker look

Each run is the real command in a subprocess (`--optimizer adamw --lr L` or `--optimizer muon --muon-lr L`,
AdamW keeping the preset's --lr for Muon's embeddings, head, norms and biases), evaluated every `--eval-every`
steps. The table lists every run's final validation loss and wall time; then, for the best of each optimizer,
the validation loss at equal steps (the last evaluation) and at equal wall time (each run's evaluations
interpolated at the shorter run's end). It writes `optim.png` (validation loss against steps and seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from run_cli import scratchlm  # benchmarks/run_cli.py: a script's own folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
SWEEP = {"adamw": [1.5e-3, 3e-3, 6e-3], "muon": [0.01, 0.02, 0.04]}


def pretrain(out: Path, optimizer: str, lr: float, steps: int, eval_every: int) -> list[dict]:
    """The quickstart command with one optimizer and learning rate; its eval records (step, elapsed_s, val_loss)."""
    lr_flag = ["--lr", str(lr)] if optimizer == "adamw" else ["--muon-lr", str(lr)]
    args = [
        "pretrain",
        "--preset",
        "shakespeare-char",
        "--out",
        str(out),
        "--optimizer",
        optimizer,
        *lr_flag,
        "--max-steps",
        str(steps),
        "--eval-every",
        str(eval_every),
        "--max-minutes",
        "60",
        "--sample-at-end",
        "0",
        "--progress",
        "False",
    ]
    scratchlm(args)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in records if r.get("kind") == "eval"]


def at_time(evals: list[dict], t: float) -> float:
    """Validation loss at wall time t, linearly between the evaluations around it."""
    points = [(0.0, evals[0]["val_loss"])] + [(e["elapsed_s"], e["val_loss"]) for e in evals]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / max(t1 - t0, 1e-9)
    return points[-1][1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps per run (the preset's 1,200)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("."), help="folder for optim.png and optim.json")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optim-"))
    runs = []
    for optimizer, lrs in SWEEP.items():
        for lr in lrs:
            print(f"{optimizer} lr {lr:g} ...", file=sys.stderr, flush=True)
            evals = pretrain(work / f"{optimizer}-{lr:g}", optimizer, lr, a.steps, a.eval_every)
            runs.append({"optimizer": optimizer, "lr": lr, "evals": evals})

    lines = [
        f"quickstart (shakespeare-char), {a.steps} steps, validation loss every {a.eval_every} steps",
        f"{'optimizer':<9} {'lr':>8} {'val loss':>9} {'seconds':>8}",
    ]
    for r in runs:
        last = r["evals"][-1]
        lines.append(f"{r['optimizer']:<9} {r['lr']:>8g} {last['val_loss']:>9.4f} {last['elapsed_s']:>8.1f}")
    best = {
        o: min((r for r in runs if r["optimizer"] == o), key=lambda r: r["evals"][-1]["val_loss"])
        for o in SWEEP
    }
    t = min(r["evals"][-1]["elapsed_s"] for r in best.values())
    lines.append(f"best of each: adamw lr {best['adamw']['lr']:g}, muon lr {best['muon']['lr']:g}")
    lines.append(f"{'':<9} {'at step ' + str(a.steps):>18} {f'at {t:.0f} s':>12}")
    for o, r in best.items():
        lines.append(f"{o:<9} {r['evals'][-1]['val_loss']:>18.4f} {at_time(r['evals'], t):>12.4f}")
    table = "\n".join(lines)
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4))
    for r in runs:
        label = f"{r['optimizer']} lr {r['lr']:g}"
        style = "-" if r["optimizer"] == "muon" else "--"
        by_step.plot([e["step"] for e in r["evals"]], [e["val_loss"] for e in r["evals"]], style, label=label)
        by_time.plot(
            [e["elapsed_s"] for e in r["evals"]], [e["val_loss"] for e in r["evals"]], style, label=label
        )
    by_step.set(xlabel="step", ylabel="validation loss", title="equal steps")
    by_time.set(xlabel="seconds", ylabel="validation loss", title="equal wall time")
    by_step.legend(fontsize=8)
    fig.tight_layout()
    a.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out / "optim.png", dpi=100)
    (a.out / "optim.json").write_text(json.dumps({"table": table, "runs": runs}, indent=1))
    print(f"wrote {a.out / 'optim.png'} and {a.out / 'optim.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
