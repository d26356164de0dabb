"""The sweep: its plan, its run folders, resuming after a kill (only the missing runs train and the table and fit
equal an uninterrupted sweep's), bad input as one line with exit status 2, and the fit and `model info` commands."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.scaling.fit import Run, fit_approach3
from scratchlm.scaling.results import RESULT_FILE, RUNS_DIR, collect
from scratchlm.scaling.sweep import check_sweep_folder, data_fingerprint, plan, sweep

_spec = importlib.util.spec_from_file_location("scaling_conftest", Path(__file__).with_name("conftest.py"))
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)
tiny_sweep_config, TINY_FLAGS, chinchilla_table, write_sweep_folder = (
    _conf.tiny_sweep_config,
    _conf.TINY_FLAGS,
    _conf.chinchilla_table,
    _conf.write_sweep_folder,
)


def _table(out: Path) -> list[dict]:
    """The results table without the wall times (the only column a rerun may change)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in collect(out)]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the plan ------------------------------------------------------------------------------------------------------


def test_plan_spends_each_budget(shards: Path, tmp_path: Path) -> None:
    config = tiny_sweep_config(shards, tmp_path / "s")
    runs = plan(config, 65)
    assert [(r.budget, r.depth) for r in runs] == [(2e8, 1), (2e8, 2), (2e8, 3), (5e8, 1), (5e8, 2), (5e8, 3)]
    for r in runs:
        assert r.flops_per_token == 6 * r.n_params
        assert r.tokens == r.steps * 128
        # D = C / (6N), rounded to whole steps of 128 tokens
        assert abs(r.tokens - r.budget / (6 * r.n_params)) <= 64
    assert [r.name for r in runs][:2] == ["c2e8_d01", "c2e8_d02"]


def test_explicit_sizes_become_family_members(shards: Path, tmp_path: Path) -> None:
    config = tiny_sweep_config(shards, tmp_path / "s", sizes="1.4k,8k,20k")
    assert [r.depth for r in plan(config, 65)] == [1, 2, 3, 1, 2, 3]


# ---- training, resuming ----------------------------------------------------------------------------------------------


def test_every_run_is_an_ordinary_pretraining_run(finished_sweep: tuple[Path, object]) -> None:
    out, outcome = finished_sweep
    assert len(outcome.trained) == 6 and outcome.skipped == []
    rows = collect(out)
    assert [r["name"] for r in rows] == [r.name for r in outcome.planned]
    for row in rows:
        folder = out / RUNS_DIR / row["name"]
        assert {"config.yaml", "metrics.jsonl", "latest", RESULT_FILE} <= {p.name for p in folder.iterdir()}
        evals = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in evals if r["kind"] == "eval"][-1]
        assert (last["step"], last["val_loss"]) == (row["steps"], row["val_loss"])
    assert (out / "results.csv").read_text().count("\n") == 7


def test_a_killed_sweep_reruns_only_the_missing_runs(
    finished_sweep: tuple[Path, object], shards: Path, tmp_path: Path
) -> None:
    """What a kill leaves behind: a run killed after its final checkpoint but before its result (the result is
    missing), and a run killed mid-training before any checkpoint (config.yaml and metrics.jsonl only)."""
    reference, _ = finished_sweep
    out = tmp_path / "killed"
    shutil.copytree(reference, out)
    (out / RUNS_DIR / "c5e8_d02" / RESULT_FILE).unlink()
    half = out / RUNS_DIR / "c2e8_d01"
    for p in half.iterdir():
        if p.name not in ("config.yaml", "metrics.jsonl"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / RUNS_DIR).glob(f"*/{RESULT_FILE}")}
    assert len(kept) == 4

    outcome = sweep(tiny_sweep_config(shards, out))
    assert sorted(outcome.trained) == ["c2e8_d01", "c5e8_d02"]
    assert len(outcome.skipped) == 4
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished runs were not touched
    assert _table(out) == _table(reference)  # bit for bit: same seeds, same thread count
    fits = [fit_approach3([Run.from_row(r) for r in collect(f)], bootstrap=0) for f in (out, reference)]
    assert fits[0] == fits[1]
    # a third call has nothing left to do
    again = sweep(tiny_sweep_config(shards, out))
    assert again.trained == [] and len(again.skipped) == 6


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_to_the_same_table(
    finished_sweep: tuple[Path, object], shards: Path, tmp_path: Path
) -> None:
    """A real kill: `scaling sweep` in a process, SIGKILL once two runs have finished, then the same command."""
    reference, _ = finished_sweep
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "scratchlm",
        "scaling",
        "sweep",
        "--data",
        str(shards),
        "--out",
        str(out),
        *TINY_FLAGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob(f"{RUNS_DIR}/*/{RESULT_FILE}"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the sweep ended before it could be killed"
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob(f"{RUNS_DIR}/*/{RESULT_FILE}")))
    assert 2 <= finished < 6
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"6 runs ({finished} finished, {6 - finished} to train)" in rerun.stdout
    assert f"{6 - finished} run(s) trained, {finished} already finished" in rerun.stdout
    assert _table(out) == _table(reference)


@pytest.mark.slow
def test_a_sweep_under_torchrun(finished_sweep: tuple[Path, object], shards: Path, tmp_path: Path) -> None:
    """Two processes share each run (DDP on gloo): every run finishes, rank 0 writes the table."""
    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free rendezvous port: other torchrun tests may be running
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "scratchlm",
        "scaling",
        "sweep",
        "--data",
        str(shards),
        "--out",
        str(out),
        *TINY_FLAGS,
    ]
    r = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = collect(out)
    reference = collect(finished_sweep[0])
    assert [x["name"] for x in rows] == [x["name"] for x in reference]
    # twice the tokens per step would change D; here each process sees half a batch of the same plan
    assert [x["tokens"] for x in rows] == [x["tokens"] for x in reference]


# ---- bad input -----------------------------------------------------------------------------------------------------


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_a_budget_too_small_for_one_batch(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*TINY_FLAGS]
    flags[1] = "1e3,1e8"
    code, _, err = _cli(
        ["scaling", "sweep", "--data", str(shards), "--out", str(tmp_path / "s"), *flags], capsys
    )
    assert (
        "budget 1e3 FLOPs is too small for the smallest model of the family (depth 1, 1,344 parameters) to see "
        "one batch of 128 tokens" in _one_line_error(code, err)
    )
    assert not (tmp_path / "s").exists()


def test_sizes_that_do_not_fit_the_budget(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "scaling",
        "sweep",
        "--data",
        str(shards),
        "--out",
        str(tmp_path / "s"),
        *TINY_FLAGS,
        "--sizes",
        "1.4k,8k,170k",
    ]
    code, _, err = _cli(argv, capsys)
    assert (
        "size 169k (depth 6) does not fit budget 2e8: its 256 tokens make 2 steps of 128, fewer than --min-steps 5"
        in _one_line_error(code, err)
    )
    code, _, err = _cli([*argv[:-1], "1.4k,1.5k,8k"], capsys)
    assert "name only 2 distinct family members" in _one_line_error(code, err)
    code, _, err = _cli([*argv[:-1], "1.4k,8k"], capsys)
    assert "--sizes names 2 size(s); a parabola per budget needs at least 3" in _one_line_error(code, err)
    code, _, err = _cli([*argv[:-1], "big"], capsys)
    assert "--sizes 'big' is not a positive number" in _one_line_error(code, err)
    assert not (tmp_path / "s").exists()


def test_a_sweep_folder_from_other_data(
    finished_sweep: tuple[Path, object], other_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = finished_sweep
    before = _table(out)
    code, _, err = _cli(
        ["scaling", "sweep", "--data", str(other_shards), "--out", str(out), *TINY_FLAGS], capsys
    )
    assert f"sweep folder {out} was made from other data" in _one_line_error(code, err)
    assert "pass the same --data or a new --out" in err
    assert _table(out) == before


def test_a_sweep_folder_with_other_settings(
    finished_sweep: tuple[Path, object], shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = finished_sweep
    code, _, err = _cli(
        ["scaling", "sweep", "--data", str(shards), "--out", str(out), *TINY_FLAGS, "--run.lr", "0.001"],
        capsys,
    )
    assert "was trained with --run.lr 0.003, not 0.001" in _one_line_error(code, err)


def test_an_out_folder_of_other_files(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _cli(
        ["scaling", "sweep", "--data", str(shards), "--out", str(tmp_path), *TINY_FLAGS], capsys
    )
    assert "holds no scaling sweep" in _one_line_error(code, err)


# ---- fit and model info ----------------------------------------------------------------------------------------------


def test_fit_command_writes_the_law_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_sweep_folder(tmp_path / "sweep", chinchilla_table(sigma=0.004))
    code, out, err = _cli(
        ["scaling", "fit", str(folder), "--predict", "5.76e23", "--bootstrap", "10"], capsys
    )
    assert code == 0, err
    assert "N_opt ~ C^a: a = 0.4" in out and "Kaplan et al. 2020        0.73   0.27" in out
    assert "predicted for C = 5.76e+23 FLOPs" in out
    for name in ("fit.json", "isoflop.png", "frontier.png"):
        assert (folder / name).stat().st_size > 1000 or name == "fit.json"
    law = json.loads((folder / "fit.json").read_text())
    assert abs(law["approach2"]["a"] - 0.28 / 0.62) < 0.02

    code, out, err = _cli(["model", "info", "--budget", "5.76e23", "--law", str(folder)], capsys)
    assert code == 0, err
    n3 = next(line for line in out.splitlines() if "approach 3" in line)
    assert f"{law['approach3']['a']:.2f}" in n3
    assert "rule of thumb (Chinchilla, 20 tokens/parameter, C = 6ND): N 69,282,032" in out


def test_fit_refuses_a_thin_sweep_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = chinchilla_table(budgets=(1e18, 1e19), per_budget=3)
    folder = write_sweep_folder(tmp_path / "sweep", runs[:-1])
    code, _, err = _cli(["scaling", "fit", str(folder)], capsys)
    assert "budget 1e+19 has 2 model size(s)" in _one_line_error(code, err)
    code, _, err = _cli(["scaling", "fit", str(tmp_path)], capsys)
    assert "is not a scaling sweep folder" in _one_line_error(code, err)


def test_model_info_budget_without_a_law(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _cli(["model", "info", "--budget", "1.2e15"], capsys)
    assert code == 0 and "N 3,162,278, D 63,245,553" in out
    code, _, err = _cli(["model", "info", "--budget", "1e15", "--law", str(tmp_path)], capsys)
    assert "has no fit.json; fit its sweep first" in _one_line_error(code, err)


def test_a_setting_added_since_the_sweep_holds_its_default(
    finished_sweep: tuple[Path, object], shards: Path, tmp_path: Path
) -> None:
    """A sweep.json from before a setting existed: its runs had the default, so only the default extends it."""
    out = tmp_path / "older"
    shutil.copytree(finished_sweep[0], out)
    record = json.loads((out / "sweep.json").read_text())
    del record["run"]["precision"]
    (out / "sweep.json").write_text(json.dumps(record))
    fingerprint = data_fingerprint(shards)
    check_sweep_folder(tiny_sweep_config(shards, out), fingerprint)  # the default: accepted
    changed = tiny_sweep_config(shards, out)
    changed.run.precision = "bf16"
    with pytest.raises(ScratchlmError, match="was trained with --run.precision 'auto', not 'bf16'"):
        check_sweep_folder(changed, fingerprint)
