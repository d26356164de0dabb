"""benchmarks/train_step.py runs end to end (small shapes) and its memory facts hold: the chunked loss gives the
full-logit loss at under a third of the full-logit path's peak memory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


@pytest.mark.slow
def test_train_step_benchmark_small_run() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--small", "--steps", "1", "--tiny-steps", "2",
                          "--precision", "fp32", "--only-ours"], capture_output=True, text=True, check=True).stdout
    rows = {m[1].strip(): m for m in re.finditer(
        r"^(main before: full|full, retained|chunked|chunked, bf16)\s+(\d+)\s+(\d+) MB\s+([\d.]+)\s+([\d.]+)\s+"
        r"(\d+)%\s+([\d.]+)$", out, re.M)}
    assert {"main before: full", "full, retained", "chunked"} <= set(rows), out
    before, chunked = rows["main before: full"], rows["chunked"]
    assert chunked[7] == before[7]  # the same loss, to the 4 decimals printed
    assert int(chunked[3]) * 3 <= int(before[3])  # peak RSS at most a third of the full-logit path's
    assert re.search(r"GEMM peak fp32 at the layer shapes: .*GFLOP/s", out), out
    step_rows = re.findall(r"^scratchlm, (chunked loss|full logits)\s+fp32\s+[\d.]+M\s+([\d.]+)\s", out, re.M)
    assert [name for name, _ in step_rows] == ["chunked loss", "full logits"], out
