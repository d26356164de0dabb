"""Scaling laws on this machine: an IsoFLOP sweep on tinyshakespeare (char tokens), then both Chinchilla fits.

    python benchmarks/scaling.py                      # the sweep below, into runs/scaling-bench (resumable)
    python benchmarks/scaling.py --out DIR            # elsewhere; rerunning on the same DIR trains only what is missing
    python benchmarks/scaling.py --budgets 1e11,1e12  # another set of budgets (with --per-budget, ...)

Runs the real commands in subprocesses: `scratchlm scaling sweep` (3 budgets from 3e11 to 3e12 FLOPs, 5 sizes
each, from a family of narrow models: d_model = 16 x depth, heads of width 16, context 128), then
`scratchlm scaling fit --predict 1e15`. Prints the table of runs, the fitted exponents with bootstrap intervals
beside Kaplan's and Chinchilla's (the reference, from the papers), the wall time of each phase, and where the
two plots are. Target: the whole thing under 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BUDGETS = "3e11,1e12,3e12"
FAMILY = ["--family.aspect", "16", "--family.head-dim", "16", "--family.context-length", "128"]


def run(cmd: list[str], log: Path | None = None) -> tuple[str, float]:
    """Run a command; its stdout (the whole of it), and the wall time. A failure prints the tail and exits."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{' '.join(cmd[2:5])} failed with exit status {proc.returncode}")
    return proc.stdout, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/scaling-bench"), help="sweep folder (resumable)")
    p.add_argument("--budgets", default=BUDGETS, help="comma-separated training FLOPs")
    p.add_argument("--per-budget", type=int, default=5, help="model sizes per budget (--sizes auto)")
    p.add_argument("--workers", type=int, default=0, help="parallel runs (0: one per core)")
    p.add_argument("--predict", type=float, default=1e15, help="budget to extrapolate to")
    args = p.parse_args()

    from scratchlm.cli.train import prepare_embedded_corpus  # the packaged tinyshakespeare, char-level

    t0 = time.perf_counter()
    data = prepare_embedded_corpus(args.out.parent / f"{args.out.name}-data")
    sweep_cmd = [
        sys.executable,
        "-m",
        "scratchlm",
        "scaling",
        "sweep",
        "--data",
        str(data),
        "--budgets",
        args.budgets,
        "--per-budget",
        str(args.per_budget),
        "--workers",
        str(args.workers),
        "--out",
        str(args.out),
        *FAMILY,
    ]
    fit_cmd = [
        sys.executable,
        "-m",
        "scratchlm",
        "scaling",
        "fit",
        str(args.out),
        "--predict",
        f"{args.predict:g}",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sweep_out, sweep_wall = run(sweep_cmd, log=args.out.parent / f"{args.out.name}-sweep.log")
    fit_out, fit_wall = run(fit_cmd)
    total = time.perf_counter() - t0

    shown = " ".join(a for a in sweep_cmd[3:] if a != str(data)).replace("--data ", "--data DATA ")
    print(f"scaling: scratchlm {shown}")
    print(f"         scratchlm {' '.join(fit_cmd[3:])}")
    print(f"         DATA = packaged tinyshakespeare, char-level ({data})")
    print(next((line for line in sweep_out.splitlines() if line.startswith("sweep ")), ""))
    print(fit_out.rstrip())
    print(f"{'phase':<24} {'wall s':>8}")
    print(f"{'sweep':<24} {sweep_wall:>8.1f}")
    print(f"{'fit (+ plots)':<24} {fit_wall:>8.1f}")
    print(f"{'total':<24} {total:>8.1f}")
    print(
        f"target: total under 1800 s on 2 CPU cores; plots: {args.out / 'isoflop.png'}, {args.out / 'frontier.png'}"
    )


if __name__ == "__main__":
    main()
