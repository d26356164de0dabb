"""`--optimizer muon`: Muon on the blocks' matrices (orthogonalised updates at --muon-lr), AdamW on the rest (at
--lr), one schedule for both, bitwise resume, and one-line refusals when a run's optimizer changes on resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.errors import ScratchlmError
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train
from scratchlm.train.optim import MuonWithAdamW, build_optimizer, is_muon_matrix, set_lr

_spec = importlib.util.spec_from_file_location("tiny", Path(__file__).with_name("tiny.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def cfg(out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(
        out=out,
        max_steps=8,
        micro_batch_size=4,
        warmup_steps=2,
        lr=3e-3,
        min_lr=3e-4,
        eval_every=0,
        save_every=0,
        log_every=1,
        progress=False,
        spike_window=0,
        optimizer="muon",
        muon_lr=0.02,
        precision="fp32",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_muon_takes_the_block_matrices_and_orthogonalises_their_update() -> None:
    model = tiny.tiny_model(dropout=0.0)
    opt = build_optimizer(model, 1e-3, 0.0, (0.9, 0.95), 1e-8, "cpu", optimizer="muon", muon_lr=0.02)
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in opt.muon.param_groups[0]["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    assert not muon & adamw and muon | adamw == {n for n, _ in model.named_parameters()}
    assert any("tok_emb" in n or "wte" in n or "embed" in n for n in adamw)

    set_lr(opt, 1e-3)  # the schedule's value: Muon's group gets muon_lr / lr times it
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.02)
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.adamw.param_groups)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 32, (4, tiny.T))
    model(x, targets=x, reduction="mean").backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in muon:
            # Newton-Schulz pushes the singular values of the (momentum) update towards 1: an evenly spread
            # step, not a gradient's few dominant directions (a direction the gradient lacks stays near 0)
            rows, cols = p.shape
            update = (before[n] - p.detach()) / (0.02 * max(1, rows / cols) ** 0.5)
            s = torch.linalg.svdvals(update)
            g = torch.linalg.svdvals(p.grad)
            assert float(s.max()) < 1.3 and float((s > 0.5).float().mean()) > 0.75, (n, s)
            assert float((g > 0.5 * g.max()).float().mean()) < 0.5, (n, g)  # the raw gradient is not flat


def test_is_muon_matrix_leaves_lora_embeddings_and_vectors_to_adamw() -> None:
    w = torch.zeros(4, 4)
    assert is_muon_matrix("blocks.0.attn.q_proj.weight", w)
    assert not is_muon_matrix("blocks.0.attn.q_proj.lora_A", w)
    assert not is_muon_matrix("tok_emb.weight", w) and not is_muon_matrix("lm_head.weight", w)
    assert not is_muon_matrix("blocks.0.norm1.weight", torch.zeros(4))


def test_muon_resume_is_bitwise_equal_to_straight_run(tmp_path: Path) -> None:
    kw = dict(global_batch_tokens=2 * 4 * tiny.T, save_every=4)
    straight = train(cfg(tmp_path / "a", **kw), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    first = train(
        cfg(tmp_path / "b", max_tokens=4 * 128, **kw), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer()
    )
    assert first.step == 4
    resumed = train(
        cfg(tmp_path / "b", resume="auto", **kw), tiny.TinyMode(), tiny.tiny_model(seed=99), tiny.tokenizer()
    )
    assert straight.step == resumed.step == 8
    a = load_file(str(tmp_path / "a" / "step_000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "step_000008" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_changing_the_optimizer_on_resume_is_one_line(tmp_path: Path) -> None:
    train(
        cfg(tmp_path / "adamw", max_steps=2, optimizer="adamw"),
        tiny.TinyMode(),
        tiny.tiny_model(),
        tiny.tokenizer(),
    )
    with pytest.raises(ScratchlmError, match="trained with --optimizer adamw: resume it with that optimizer"):
        train(
            cfg(tmp_path / "adamw", max_steps=3, resume="auto"),
            tiny.TinyMode(),
            tiny.tiny_model(),
            tiny.tokenizer(),
        )
    train(cfg(tmp_path / "muon", max_steps=2), tiny.TinyMode(), tiny.tiny_model(), tiny.tokenizer())
    with pytest.raises(
        ScratchlmError, match="trained with --optimizer muon: resume it with that optimizer"
    ):
        train(
            cfg(tmp_path / "muon", max_steps=3, resume="auto", optimizer="adamw"),
            tiny.TinyMode(),
            tiny.tiny_model(),
            tiny.tokenizer(),
        )


def test_muon_on_a_sharded_layout_is_one_line() -> None:
    from scratchlm.errors import ConfigError

    with pytest.raises(ConfigError, match="--optimizer muon works with --parallel ddp only"):
        TrainConfig(out=Path("x"), optimizer="muon", parallel="fsdp")
