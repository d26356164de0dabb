"""Real processes: a SIGTERM at a random step, then resume (== an uninterrupted run), and DDP under torchrun
(2 processes at micro-batch b == 1 process accumulating 2 micro-batches of b)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TINY = str(Path(__file__).with_name("tiny.py"))
_spec = importlib.util.spec_from_file_location("tiny", TINY)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def in_process(argv: list[str]) -> int:
    """tiny.py's main in this process (one thread, like the subprocesses): saves a Python + torch start-up."""
    try:
        tiny.main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: bitwise-comparable runs


def losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step_dir / "model.safetensors"))


def test_sigterm_at_a_random_step_then_resume_equals_straight_run(tmp_path: Path) -> None:
    steps = 60
    args = ["--max-steps", str(steps), "--dropout", "0.1", "--global-batch-tokens", "128"]
    assert in_process(["--out", str(tmp_path / "a"), *args]) == 0

    run = tmp_path / "b"
    # --step-delay only sleeps (>= 1.2 s in all), so the signal always lands mid-run; the numbers are unchanged
    proc = subprocess.Popen([sys.executable, TINY, "--out", str(run), *args, "--step-delay", "0.01"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # stopped by the signal, after saving
    stopped_at = int((run / "latest").read_text().strip().split("_")[1])
    assert 0 < stopped_at < steps
    resumed = subprocess.run([sys.executable, TINY, "--out", str(run), "--resume", "auto", *args], env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "a" / f"step_{steps:06d}"), weights(run / f"step_{steps:06d}")
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after a SIGTERM at step {stopped_at}"
    assert losses(tmp_path / "a") == losses(run)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_ddp_two_processes_equal_one_process_with_accumulation(tmp_path: Path, mirror: Path, free_port) -> None:  # noqa: ANN001
    """The real command and the real TokenLoader: `torchrun --nproc_per_node 2 -m scratchlm pretrain` at
    micro-batch b against one process accumulating 2 micro-batches of b (same global batch)."""
    from scratchlm.cli.main import main
    from scratchlm.data import prepare_text

    prepare_text((mirror / "tinyshakespeare.txt").read_text()[:50_000], tmp_path / "shards", tokenizer="char")
    b, T, steps = 4, 32, 5
    common = [
        "pretrain", "--preset", "shakespeare-char", "--data", str(tmp_path / "shards"), "--max-steps", str(steps),
        "--micro-batch-size", str(b), "--global-batch-tokens", str(2 * b * T), "--model.context-length", str(T),
        "--model.n-layer", "2", "--model.d-model", "32", "--model.n-head", "2", "--model.d-ff", "64",
        "--warmup-steps", "2", "--log-every", "1", "--eval-batches", "1", "--no-progress", "--sample-at-end", "0",
        "--precision", "fp32",  # equal to 1e-6 is an fp32 property; `auto` is bf16 on CPUs with hardware bf16
    ]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "scratchlm",
         *common, "--out", str(tmp_path / "two")],
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in l1] == [s for s, _ in l2] == list(range(1, steps + 1))
    for (_, x), (_, y) in zip(l1, l2):
        assert abs(x - y) <= 1e-6, (l1, l2)
    w1, w2 = weights(tmp_path / "one" / f"step_{steps:06d}"), weights(tmp_path / "two" / f"step_{steps:06d}")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=0)
    state = json.loads((tmp_path / "two" / f"step_{steps:06d}" / "train_state" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["ranks"]) == 2


def test_second_sigint_during_the_save_finishes_the_checkpoint(tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again while the checkpoint is being written: the save completes and loads."""
    from scratchlm import checkpoint

    run, marker = tmp_path / "c", tmp_path / "saving"
    # --save-delay holds the (only, final) save open for 3 s; the marker file says it has started
    proc = subprocess.Popen([sys.executable, TINY, "--out", str(run), "--max-steps", "100000", "--step-delay", "0.01",
                             "--save-delay", "3", "--save-marker", str(marker)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    while not marker.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # during the save
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "finishing the checkpoint being written" in err and "Traceback" not in err
    step = run / (run / "latest").read_text().strip()
    assert step.name == marker.read_text()
    model, _ = checkpoint.load(step)
    assert all(torch.isfinite(p).all() for p in model.parameters())
