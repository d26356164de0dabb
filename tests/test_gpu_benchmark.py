"""`benchmarks/gpu.py --smoke` end to end on the CPU: the one-shot GPU benchmark must not fail on the GPU for
a reason a CPU run could have shown (a typo in a section, the table, the JSON)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_every_section(tmp_path: Path, mirror: Path) -> None:
    out = tmp_path / "x.json"
    # This tree's package first (the subprocess benchmarks the code beside it); the data mirror passed on.
    src = str(ROOT / "src")
    env = {
        **os.environ,
        "SCRATCHLM_MIRROR": str(mirror),
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
    }
    # --skip-tests: the `pytest -m gpu` section would collect this suite again from inside it
    # --decode-compile: the compiled engine's path too (on a CPU "reduce-overhead" is plain compile)
    cmd = [sys.executable, "benchmarks/gpu.py", "--smoke", "--skip-tests", "--decode-compile", "reduce-overhead"]
    cmd += ["--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())

    sections = report["sections"]
    assert set(sections) == {"train_step", "pretrain_cli", "decode", "loss_curve", "gpu_tests"}
    for name in ("train_step", "pretrain_cli", "decode", "loss_curve"):
        assert sections[name]["status"] == "ok", sections[name]
    assert sections["gpu_tests"]["status"] == "skipped"

    def positive(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0

    train = sections["train_step"]["results"]
    for impl in ("scratchlm", "transformers"):
        assert positive(train[impl]["tokens_per_s"]), train[impl]
    decode = sections["decode"]["results"]
    for batch in report["settings"]["decode_batches"]:
        for impl in ("scratchlm", "transformers"):
            assert positive(decode[f"{impl}_b{batch}"]["tokens_per_s"]), decode
    assert decode["same_tokens_fp32_b1"]["equal"]
    for batch in report["settings"]["decode_batches"]:
        assert positive(decode[f"scratchlm_compiled_reduce-overhead_b{batch}"]["tokens_per_s"]), decode
        assert decode[f"scratchlm_compiled_reduce-overhead_same_as_eager_b{batch}"]["equal"], decode
    pretrain = sections["pretrain_cli"]["results"]  # the user's two commands, in a subprocess
    assert positive(pretrain["tokens_per_s"]) and positive(pretrain["val_loss"]) and pretrain["checkpoint"]
    curve = sections["loss_curve"]["results"]
    assert positive(curve["tokens_per_s"])
    points = curve["points"]
    assert len(points) >= 2 and points[-1][2] < points[0][2], points
    assert positive(curve["final_val_loss"])

    assert report["ok"] is True and report["device"]["torch"] and report["settings"]["smoke"] is True
    for name in sections:
        assert name in r.stdout
    assert report["table"] in r.stdout
