"""The paths a newcomer takes (issue #13): validation checked before step 1, the final checkpoint before the final
evaluation, a spike guard that stops lowering the LR, config.yaml accepted back as --config, strict YAML types
and plausible numbers, and no asserts on user-reachable paths. Through the real CLI where a user types it."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.data import prepare_text
from scratchlm.errors import ScratchlmError
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train
from scratchlm.train.modes.pretrain import PretrainMode

_spec = importlib.util.spec_from_file_location("tiny", Path(__file__).with_name("tiny.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

TINY = [
    "--model.n-layer",
    "1",
    "--model.n-head",
    "2",
    "--model.d-model",
    "32",
    "--model.d-ff",
    "64",
    "--model.context-length",
    "32",
    "--micro-batch-size",
    "4",
    "--warmup-steps",
    "2",
    "--no-progress",
    "--sample-at-end",
    "0",
    "--eval-batches",
    "2",
]


@pytest.fixture
def text(mirror: Path) -> str:
    return (mirror / "tinyshakespeare.txt").read_text()[:30_000]


def pretrain(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["pretrain", "--preset", "shakespeare-char", *TINY, *args])
    out, err = capsys.readouterr()
    return code, out, err


def records(run: Path, kind: str) -> list[dict]:
    return [
        r
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if (r := json.loads(line))["kind"] == kind
    ]


def weights(step: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step / "model.safetensors"))


# ---- 1. validation checked before the work ------------------------------------------------------------------


def test_val_split_smaller_than_a_batch_is_scored_in_one_short_batch(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    manifest = prepare_text(text, shards, tokenizer="char", val_fraction=0.004)  # 3 windows of 32 < batch 4
    windows = (manifest["report"]["tokens_val"] - 1) // 32
    assert 1 <= windows < 4
    out = tmp_path / "run"
    code, _, err = pretrain(
        ["--data", str(shards), "--out", str(out), "--max-steps", "4", "--eval-every", "2"], capsys
    )
    assert code == 0, err
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [2, 4] and all(math.isfinite(r["val_loss"]) for r in evals)
    mode = PretrainMode(shards, 32)
    assert [b["ids"].shape for b in mode.val_batches(4)] == [torch.Size([windows, 32])]


def test_eval_batches_0_scores_the_whole_split_once(tmp_path: Path, text: str) -> None:
    manifest = prepare_text(text, tmp_path / "shards", tokenizer="char", val_fraction=0.1)
    windows = (manifest["report"]["tokens_val"] - 1) // 32
    batches = list(itertools.islice(PretrainMode(tmp_path / "shards", 32).val_batches(4), 10_000))
    assert len(batches) == math.ceil(windows / 4)  # finite: a pass, not an endless stream
    assert sum(b["ids"].shape[0] for b in batches) == windows
    rows = torch.cat([b["ids"] for b in batches])
    assert len({tuple(r.tolist()) for r in rows}) == windows  # every window once


def test_eval_every_0_needs_no_validation_split(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    prepare_text(text, shards, tokenizer="char", val_fraction=0)
    out = tmp_path / "run"
    code, stdout, err = pretrain(
        ["--data", str(shards), "--out", str(out), "--max-steps", "3", "--eval-every", "0"], capsys
    )
    assert code == 0, err
    assert (out / "latest").read_text().strip() == "step_000003"
    assert "note: no validation loss in this run" in stdout
    code, _, err = pretrain(
        ["--data", str(shards), "--out", str(tmp_path / "r2"), "--max-steps", "3", "--eval-every", "2"],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --eval-every 2 needs a validation split to evaluate on (the val split of ")
    assert not (tmp_path / "r2").exists()


class _FailingFinalEval(tiny.TinyMode):
    def loss(self, module, batch):  # noqa: ANN001, ANN201
        if not module.training:
            raise RuntimeError("out of memory during evaluation")
        return super().loss(module, batch)


def test_final_checkpoint_is_written_before_the_final_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(
        out=out,
        max_steps=5,
        micro_batch_size=4,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        log_every=1,
        progress=False,
        spike_window=0,
        device="cpu",
    )
    with pytest.raises(RuntimeError, match="out of memory during evaluation"):
        train(cfg, _FailingFinalEval(), tiny.tiny_model(), tiny.tokenizer())
    assert (out / "latest").read_text().strip() == "step_000005"
    model, _ = checkpoint.load(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- 3. the spike guard's LR floor --------------------------------------------------------------------------


def test_spike_guard_stops_lowering_the_lr_at_its_floor_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rb"
    mode = tiny.TinyMode(poison={s: 1e4 for s in range(12, 18)})  # six spikes in a row, from step 12
    cfg = TrainConfig(
        out=out,
        max_steps=40,
        micro_batch_size=4,
        warmup_steps=2,
        lr=3e-3,
        min_lr=3e-4,
        eval_every=0,
        save_every=10,
        log_every=1,
        progress=False,
        spike_window=10,
        spike_patience=1,
        spike_lr_floor=0.1,
        device="cpu",
    )
    result = train(cfg, mode, tiny.tiny_model(dropout=0.0), tiny.tokenizer())
    events = [e["event"] for e in records(out, "event")]
    # 1 -> 0.5 -> 0.25 -> 0.125 -> 0.1 (the floor): four rollbacks, one floor notice, then skips (one here)
    assert events == ["spike_rollback"] * 4 + ["spike_lr_floor", "spike_skip"]  # then the run trains on
    state = json.loads((out / "step_000040" / "train_state" / "state.json").read_text())
    assert state["lr_scale"] == pytest.approx(0.1, rel=1e-12)
    err = capsys.readouterr().err
    assert (
        err.count(
            "warning: the spike guard rolled back 4 time(s) and lowered the LR to 0.1 of its schedule "
            "(its floor, --spike-lr-floor)"
        )
        == 1
    )
    assert len(result.warnings) == 1


def test_a_window_of_rejected_steps_in_a_row_stops_the_run_with_an_error(tmp_path: Path) -> None:
    """A run whose every step is now a spike (diverged, or its loss level moved for good) stops, rather than
    computing the rest of its steps only to throw them away; its last checkpoint stays the latest."""
    out = tmp_path / "stuck"
    mode = tiny.TinyMode(poison={s: float("nan") for s in range(12, 100)})  # every step from 12 on
    cfg = TrainConfig(out=out, max_steps=40, micro_batch_size=4, warmup_steps=2, eval_every=0, save_every=10,
                      log_every=1, progress=False, spike_window=10, spike_patience=1, spike_lr_floor=0.1,
                      device="cpu")
    with pytest.raises(ScratchlmError, match=r"^stopped at step 16: the last 10 steps were all rejected \(non-finite "
                       r"loss nan / grad norm nan\), so the run has diverged .*; last checkpoint: step_000010\. "):
        train(cfg, mode, tiny.tiny_model(dropout=0.0), tiny.tokenizer())
    assert mode.calls == 22  # 12 good steps, then 10 rejected ones, and no more
    events = [e["event"] for e in records(out, "event")]
    assert events == ["spike_rollback"] * 4 + ["spike_lr_floor"] + ["spike_skip"] * 4 + ["spike_stop"]
    assert (out / "latest").read_text().strip() == "step_000010"


# ---- 5. config.yaml is a valid --config for the command that wrote it ----------------------------------------


def test_pretrain_config_yaml_round_trips(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    prepare_text(text, shards, tokenizer="char")
    a, b = tmp_path / "a", tmp_path / "b"
    code, _, err = pretrain(
        [
            "--data",
            str(shards),
            "--out",
            str(a),
            "--max-steps",
            "4",
            "--eval-every",
            "2",
            "--model.norm-eps",
            "1e-6",
        ],
        capsys,
    )
    assert code == 0, err
    assert yaml.safe_load((a / "config.yaml").read_text())["model"]["norm_eps"] == 1e-6
    assert main(["pretrain", "--config", str(a / "config.yaml"), "--out", str(b)]) == 0, (
        capsys.readouterr().err
    )
    assert (yaml.safe_load((a / "config.yaml").read_text()) | {"out": ""}) == (
        yaml.safe_load((b / "config.yaml").read_text()) | {"out": ""}
    )
    wa, wb = weights(a / "step_000004"), weights(b / "step_000004")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert records(a, "eval")[-1]["val_loss"] == records(b, "eval")[-1]["val_loss"]


# ---- 6. strict types, plausible numbers, one line ------------------------------------------------------------

BAD_YAML = {
    "max_steps: three": "max_steps must be an integer, got 'three'; fix the value",
    "max_steps: [1, 2]": "max_steps must be an integer, got a list; fix the value",
    "max_steps: true": "max_steps must be an integer, got True; fix the value",
    "max_steps: 3.7": "max_steps must be an integer, got 3.7; fix the value",
    "model: 5": "model must be a mapping of ModelOverrides fields, got 5; fix the value",
    "model: {n_layer: 2.5}": "model.n_layer must be an integer, got 2.5; fix the value",
    "lr: .nan": "lr must be a finite number, got nan; fix the value",
    "progress: 'no'": "progress must be true or false, got 'no'; fix the value",
}


@pytest.mark.parametrize("line", list(BAD_YAML))
def test_yaml_values_of_the_wrong_type_are_refused(
    line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(line + "\n")
    code, _, err = pretrain(["--config", str(config), "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert err == f"error: {config}: {BAD_YAML[line]}\n"
    assert not (tmp_path / "r").exists()


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path: Path) -> None:
    from scratchlm.cli.parsing import load_yaml_config

    config = tmp_path / "run.yaml"
    config.write_text("lr: 3e-4\nmin_lr: 1E-5\n")
    cfg = load_yaml_config(TrainConfig, config)
    assert (cfg.lr, cfg.min_lr) == (3e-4, 1e-5)


def test_config_folder_and_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("max_steps: 3\n")
    code, _, err = pretrain(["--config", str(tmp_path / "run"), "--out", str(tmp_path / "r")], capsys)
    assert (code, err) == (
        2,
        f"error: --config {tmp_path / 'run'} is a folder (its run config is "
        f"{tmp_path / 'run' / 'config.yaml'}); pass a YAML file\n",
    )
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\xff\xfe")
    code, _, err = pretrain(["--config", str(binary), "--out", str(tmp_path / "r")], capsys)
    assert (code, err) == (
        2,
        f"error: config file {binary} is not a text file (byte 1 is b'\\x00'); pass a YAML "
        "file such as a run's config.yaml\n",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--lr", "1e6"],
            "error: --lr 1e+06 is not a plausible AdamW learning rate (use a value in (0, 1]; typical: "
            "1e-3 for tiny models, 6e-4 for GPT-2 small, 1e-4 to 1e-5 for finetuning)",
        ),
        (["--lr", "nan"], "error: --lr must be a finite number, got nan"),
        (["--beta2", "1.5"], "error: --beta2 must lie in [0, 1) (typical: 0.9 and 0.95), got 1.5"),
        (["--max-minutes", "-1"], "error: --max-minutes must be positive, got -1.0"),
        (["--spike-lr-factor", "0"], "error: --spike-lr-factor must lie in (0, 1], got 0.0"),
    ],
)
def test_implausible_numbers_are_refused(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = pretrain([*flags, "--out", str(tmp_path / "r")], capsys)
    assert (code, err) == (2, message + "\n")
    assert not (tmp_path / "r").exists()


# ---- 8. no asserts on user paths; a hint from the run's own data -----------------------------------------------


def test_everything_frozen_and_mismatched_weights_are_one_line_errors(tmp_path: Path) -> None:
    from scratchlm.train.modes.base import Mode
    from scratchlm.train.optim import build_optimizer

    model = tiny.tiny_model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(
        ScratchlmError, match=r"^the model has no trainable parameters \(every weight is frozen\)"
    ):
        build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    checkpoint.save(tmp_path / "ckpt", tiny.tiny_model(), tiny.tokenizer())
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ScratchlmError, match=r"weights do not fit the model \(missing \['weight', 'bias'\]"):
        Mode.load_weights(tiny.TinyMode(), other, tmp_path / "ckpt")


def test_closing_hint_prompts_with_the_runs_own_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(300))
    shards = tmp_path / "shards"
    prepare_text(text, shards, tokenizer="char", val_fraction=0.1)
    out = tmp_path / "run"
    code, stdout, err = pretrain(
        ["--data", str(shards), "--out", str(out), "--max-steps", "2", "--eval-every", "0"], capsys
    )
    assert code == 0, err
    val_start = text[len(text) - int(len(text) * 0.1) :].split("\n", 1)[1]  # from the next line start
    expected = " ".join(val_start[:24].split(" ")[:-1])
    assert expected == "line 271: the quick"
    assert (
        stdout.splitlines()[-1] == f"continue it: scratchlm generate --checkpoint {out} --prompt '{expected}'"
    )
    assert "ROMEO" not in stdout


@pytest.mark.parametrize("value", [False, True])
def test_the_onednn_config_switch_turns_the_path_off_and_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           value: bool) -> None:
    from scratchlm.model import onednn

    for name in ("_switch", "_works", "_fast"):  # the switch is process-wide: restored after the test
        monkeypatch.setattr(onednn, name, getattr(onednn, name))
    onednn.set_enabled(not value)
    cfg = TrainConfig(out=tmp_path / "run", max_steps=1, micro_batch_size=2, warmup_steps=0, eval_every=0,
                      save_every=0, progress=False, spike_window=0, device="cpu", onednn=value)
    train(cfg, tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    assert onednn.is_enabled() is (value and onednn.AVAILABLE)


@pytest.mark.parametrize("value", [False, True])
def test_training_on_cpu_retains_freed_memory_unless_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  value: bool) -> None:
    from scratchlm import hostmem
    from scratchlm.cli.parsing import parse

    calls: list[bool] = []
    monkeypatch.setattr(hostmem, "retain_freed_memory", lambda: calls.append(True) or True)  # process-wide: not here
    argv = ["--retain-host-memory", str(value).lower()]
    cfg = TrainConfig(out=tmp_path / "run", max_steps=1, micro_batch_size=2, warmup_steps=0, eval_every=0,
                      save_every=0, progress=False, spike_window=0, device="cpu", retain_host_memory=value)
    train(cfg, tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    assert calls == ([True] if value else [])
    assert parse(TrainConfig, argv, "pretrain").retain_host_memory is value  # the flag the CLI exposes
