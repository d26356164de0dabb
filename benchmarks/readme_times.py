"""Wall time of each command of the README's "Using it" section, run in order as written in a fresh folder.

    python benchmarks/readme_times.py            # the commands' own numbers (the slow README test, ~20 min)
    python benchmarks/readme_times.py --short    # the default suite's short version

Runs `tests/test_readme.py` (which reads the commands from README.md and checks what each one leaves behind)
with SCRATCHLM_README_TIMES set, then prints one row per command. The README states the time of every command
that takes more than 3 minutes on a 2-core machine; this is where those figures come from. The reference in the
same run is the whole sequence's wall time against the sum of its commands (the rest is pytest and set-up).
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the short version (step counts lowered)")
    args = p.parse_args()
    test = "test_readme_sequence_short" if args.short else "test_readme_sequence_as_written"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        env = {**os.environ, "SCRATCHLM_README_TIMES": str(out)}
        env.setdefault("SCRATCHLM_MIRROR", str(ROOT.parent / "shared" / "data"))
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", f"tests/test_readme.py::{test}"],
                           cwd=ROOT, env=env)
        total = time.perf_counter() - start
        times = json.loads(out.read_text())["times"] if out.is_file() else []
    width = max((len(c) for c, _ in times), default=10)
    width = min(width, 110)
    print(f"\n{'command':<{width}}  {'wall':>9}")
    print(f"{'-' * width}  {'-' * 9}")
    for command, seconds in times:
        shown = command if len(command) <= width else command[: width - 3] + "..."
        print(f"{shown:<{width}}  {_fmt(seconds):>9}{'  > 3 min' if seconds > 180 else ''}")
    print(f"{'sum of the commands':<{width}}  {_fmt(sum(s for _, s in times)):>9}")
    print(f"{'the whole test (pytest, set-up)':<{width}}  {_fmt(total):>9}")
    sys.exit(r.returncode)


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


if __name__ == "__main__":
    main()
