"""The loop against its references: an uninterrupted run (exact resume), and injected spikes (the guard)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm import checkpoint
from scratchlm.errors import ScratchlmError
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train

_spec = importlib.util.spec_from_file_location("tiny", Path(__file__).with_name("tiny.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=out, max_steps=8, micro_batch_size=4, warmup_steps=2, lr=3e-3, min_lr=3e-4, eval_every=0,
        save_every=0, log_every=1, progress=False, spike_window=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def train_losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def test_resume_is_bitwise_equal_to_straight_run(tmp_path: Path) -> None:
    # dropout on and 2 accumulation steps: the RNG state, loader cursor and AdamW moments must all come back
    kw = dict(global_batch_tokens=2 * 4 * tiny.T, save_every=4)
    straight = train(cfg(tmp_path / "a", **kw), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    # the same run, stopped at step 4 (by a token budget, so the LR schedule still spans 8 steps), then resumed
    first = train(cfg(tmp_path / "b", max_tokens=4 * 128, **kw), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    assert first.step == 4 and first.stopped == "max_tokens"
    resumed = train(cfg(tmp_path / "b", resume="auto", **kw), tiny.TinyMode(), tiny.tiny_model(seed=99), tiny.tokenizer())
    assert straight.step == resumed.step == 8
    a = load_file(str(tmp_path / "a" / "step_000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "step_000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    assert len(train_losses(tmp_path / "b")) == 8


def test_fresh_run_refuses_a_used_run_folder(tmp_path: Path) -> None:
    train(cfg(tmp_path / "r", max_steps=2), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    before = (tmp_path / "r" / "metrics.jsonl").read_bytes()
    with pytest.raises(ScratchlmError, match="already has checkpoints .* --resume auto"):
        train(cfg(tmp_path / "r", max_steps=2), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == before


def test_resume_from_another_model_config_is_refused(tmp_path: Path) -> None:
    train(cfg(tmp_path / "r", max_steps=2), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    other = tiny.GPT(tiny.tiny_config().replace(n_layer=3))
    with pytest.raises(ScratchlmError, match=r"another model config \(n_layer=2 there vs 3 here\)"):
        train(cfg(tmp_path / "r", max_steps=4, resume="auto"), tiny.TinyMode(), other, tiny.tokenizer())
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before


def test_spike_is_skipped_and_logged_nan_never_reaches_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "g"
    mode = tiny.TinyMode(poison={14: 1e4, 17: float("nan")})
    result = train(cfg(out, max_steps=20, spike_window=10, save_every=5), mode, tiny.tiny_model(dropout=0.0),
                   tiny.tokenizer())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = [(r["step"], r["event"]) for r in records if r["kind"] == "event"]
    assert events == [(15, "spike_skip"), (18, "spike_skip")]  # steps are logged after they ran (1-based)
    assert result.step == 20
    # the skipped step changed nothing: the weights after step 18 equal those after 17 only if no update ran;
    # check instead that every saved checkpoint is finite and its recorded losses are finite or absent
    for step_dir in sorted(out.glob("step_*")):
        weights = load_file(str(step_dir / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values()), step_dir
        state = checkpoint.load_train_state(step_dir).to_nested()
        assert all(torch.isfinite(v).all() for st in state["optimizer"]["state"].values() for v in st.values())
        text = (step_dir / "train_state" / "state.json").read_text()
        assert "NaN" not in text and "Infinity" not in text


def test_skipped_step_makes_no_optimizer_update(tmp_path: Path) -> None:
    """A NaN at step 3 of 5: AdamW's own step counter says 4 updates ran, and the weights stayed finite."""
    train(cfg(tmp_path / "p", max_steps=5, spike_window=3), tiny.TinyMode({3: float("nan")}), tiny.tiny_model(),
          tiny.tokenizer())
    state = checkpoint.load_train_state(tmp_path / "p").to_nested()
    assert {float(st["step"]) for st in state["optimizer"]["state"].values()} == {4.0}
    weights = load_file(str(tmp_path / "p" / "step_000005" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_repeated_spikes_roll_back_and_lower_lr(tmp_path: Path) -> None:
    out = tmp_path / "rb"
    mode = tiny.TinyMode(poison={12: 1e4, 13: 1e4, 14: 1e4})
    train(cfg(out, max_steps=16, spike_window=10, spike_patience=3, save_every=10), mode, tiny.tiny_model(dropout=0.0),
          tiny.tokenizer())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r["kind"] == "event"]
    assert [e["event"] for e in events] == ["spike_skip", "spike_skip", "spike_rollback"]
    assert "back to step_000010" in events[-1]["detail"] and "LR scale -> 0.5" in events[-1]["detail"]
    state = json.loads((out / "step_000016" / "train_state" / "state.json").read_text())
    assert state["lr_scale"] == 0.5
    last = [r for r in records if r["kind"] == "train"][-1]
    assert last["step"] == 16
    assert math.isfinite(last["loss"])


def test_keep_last_and_periodic_eval_tasks(tmp_path: Path) -> None:
    text = tmp_path / "heldout.txt"
    text.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "k"
    train(cfg(out, max_steps=8, save_every=2, keep_last=2, eval_every=4, eval_tasks=(f"ppl:{text}@400",)),
          tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    assert sorted(p.name for p in out.glob("step_*")) == ["step_000006", "step_000008"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    # an 8-step model is near uniform over its 32 characters: perplexity close to 32
    assert all(20.0 < r["heldout_ppl"] < 45.0 and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)


def test_activation_checkpointing_changes_nothing_but_memory() -> None:
    from scratchlm.train.distributed import enable_activation_checkpointing

    plain, ckpt = tiny.tiny_model(dropout=0.0), tiny.tiny_model(dropout=0.0)
    keys = list(ckpt.state_dict())
    assert enable_activation_checkpointing(ckpt) == 2
    assert list(ckpt.state_dict()) == keys  # parameter names (and so checkpoints) unchanged
    batch = tiny.Stream(4, 0, 0, 1).batch(0)
    for m in (plain, ckpt):
        m.train()
        tiny.TinyMode().loss(m, batch)[0].backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_bf16_autocast_tracks_fp32_and_fp16_needs_a_gpu(tmp_path: Path) -> None:
    runs = {}
    for precision in ("fp32", "bf16"):
        train(cfg(tmp_path / precision, max_steps=3, precision=precision), tiny.TinyMode(),
              tiny.tiny_model(dropout=0.0), tiny.tokenizer())
        runs[precision] = [loss for _, loss in train_losses(tmp_path / precision)]
    assert runs["fp32"][0] == pytest.approx(runs["bf16"][0], abs=0.05)  # bf16 keeps ~3 significant digits
    with pytest.raises(ScratchlmError, match="fp16 needs a GPU"):
        train(cfg(tmp_path / "fp16", precision="fp16"), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    assert not (tmp_path / "fp16").exists()


def test_auto_precision_is_bf16_on_cpus_with_hardware_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 trained the README's runs faster with the same loss curve (benchmarks/cpu_precision.py) on a CPU with
    AVX512-BF16; without hardware bf16 it only converts, so auto stays fp32 there. Explicit choices are kept."""
    from scratchlm.train import loop

    cpu = torch.device("cpu")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda native=native: native)
        assert loop.resolve_precision("auto", cpu) == want
        assert loop.resolve_precision("fp32", cpu) == "fp32" and loop.resolve_precision("bf16", cpu) == "bf16"
