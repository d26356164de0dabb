"""Acceptance 3: `prepare` killed with SIGKILL after its first shard, then re-run, ends with the same manifest (and
the same shard bytes) as an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from scratchlm.cli.main import main

# Runs `scratchlm data prepare` in a real subprocess and SIGKILLs it from inside, at a chosen point: a few documents
# after the first shard's checkpoint, so that the partial shards and the dedup index hold uncommitted work.
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from scratchlm.data import prepare as P

    checkpoints, after = [0], [0]
    commit, consume = P._Run.checkpoint, P._Run.consume

    def checkpoint(self):
        commit(self)
        checkpoints[0] += 1  # the first one is the initial state; the second follows the first complete shard

    def counting_consume(self, result):
        consume(self, result)
        if checkpoints[0] >= 2:
            after[0] += 1
            if after[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    P._Run.checkpoint, P._Run.consume = checkpoint, counting_consume
    from scratchlm.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _args(planted, out: Path, workers: int) -> list[str]:
    return ["data", "prepare", "--input", str(planted.folder), "--out", str(out), "--split-docs",
            "--shard-tokens", "6000", "--val-fraction", "0.1", "--workers", str(workers), "--metadata"]


def test_sigkill_after_first_shard_then_rerun_equals_uninterrupted(planted, tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_args(planted, ref, workers=1)) == 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([sys.executable, "-c", _KILLER, *_args(planted, out, workers=2)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert killed.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)  # its pool workers (they also exit by themselves within 1 s)
    assert not (out / "manifest.json").exists()
    state = json.loads((out / ".progress" / "state.json").read_text())
    assert len(state["writers"]["train"]["shards"]) == 1  # killed after the first shard, mid-second
    assert sorted(p.name for p in out.glob("*.partial"))  # with uncommitted tokens in a partial shard

    assert main(_args(planted, out, workers=1)) == 0  # resume (with another worker count: same output)
    expected = json.loads((ref / "manifest.json").read_text())
    assert json.loads((out / "manifest.json").read_text()) == expected
    assert len(expected["shards"]["train"]) > 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    for entry in expected["shards"]["train"] + expected["shards"]["val"]:
        assert (out / entry["file"]).read_bytes() == (ref / entry["file"]).read_bytes()
        assert (out / entry["metadata"]).read_bytes() == (ref / entry["metadata"]).read_bytes()  # sidecars too
