"""The quickstart's quality: `scratchlm pretrain --preset shakespeare-char` on this machine's CPU.

    python benchmarks/quickstart.py                    # the preset as shipped
    python benchmarks/quickstart.py --max-steps 300    # a shorter check that it runs
    python benchmarks/quickstart.py --threads 2        # pin torch to 2 threads (the acceptance machine has 2 cores)

Runs the real command in a subprocess (data preparation, training, evaluation, the final sample) and reads
`metrics.jsonl`: prints the validation loss (nats per character, validation = the last 10% of the text, as in
nanoGPT) at the last evaluation within 2 minutes of training, at the end, and the wall time. Target: <= 1.70 within
5 minutes on 2 CPU cores. Reference (nanoGPT's CPU recipe: 4 layers, 4 heads, width 128, context 64, batch 12,
2,000 steps) on this kind of machine: 1.886 in about 1.8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="OMP/torch threads for the run (0: default)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args, extra = p.parse_known_args()  # anything else is passed to `scratchlm pretrain`
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        cmd = [sys.executable, "-m", "scratchlm", "pretrain", "--preset", "shakespeare-char", "--out", str(out),
               "--no-progress", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise SystemExit(f"pretrain failed with exit status {proc.returncode}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    at_2min = [r for r in evals if r["elapsed_s"] <= 120.0]
    last = evals[-1]
    steps = max(r["step"] for r in records if r["kind"] in ("train", "eval"))
    print("quickstart: scratchlm pretrain --preset shakespeare-char " + " ".join(extra))
    print(f"{'measure':<38} {'value':>10}")
    if at_2min:
        r = at_2min[-1]
        label = f"val loss at <= 2 min (step {r['step']}, {r['elapsed_s']:.0f} s)"
        print(f"{label:<38} {r['val_loss']:>10.4f}")
    label = f"val loss at the end (step {last['step']})"
    print(f"{label:<38} {last['val_loss']:>10.4f}")
    print(f"{'training time (s)':<38} {last['elapsed_s']:>10.1f}")
    print(f"{'wall time, whole command (s)':<38} {wall:>10.1f}")
    print(f"{'steps':<38} {steps:>10d}")
    print(f"{'target':<38} {'<= 1.70 in <= 300 s':>10}")
    sample = proc.stdout.split("--- sample from", 1)
    if len(sample) == 2:
        print("\nsample:" + sample[1].split("\n", 1)[1][:300])


if __name__ == "__main__":
    main()
