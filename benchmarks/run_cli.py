"""`scratchlm(args)`: run `python -m scratchlm ARGS` with this tree's src/ first, as the benchmarks that time the
commands a user types do; a failure ends the benchmark with the command's last stderr lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scratchlm(args: list[str]) -> str:
    """The command's stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    r = subprocess.run([sys.executable, "-m", "scratchlm", *args], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"scratchlm {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r.stdout
