"""Fixtures for the finetuning tests: tiny base checkpoints (GPT-2's tokenizer, a char tokenizer, and one
pretrained in the session), built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import BPETokenizer, read_gpt2

MIRROR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"



def _gpt2_tokenizer() -> BPETokenizer:
    import os

    mirror = Path(os.environ.get("SCRATCHLM_MIRROR") or MIRROR)
    return read_gpt2(mirror / "gpt2" / "encoder.json", mirror / "gpt2" / "vocab.bpe", name="gpt2")


TINY = dict(vocab_size=50257, context_length=256, n_layer=2, n_head=4, d_model=64, d_ff=256)


@pytest.fixture
def tiny_model() -> GPT:
    """A fresh random tiny GPT-2-shaped model (seed 0)."""
    torch.manual_seed(0)
    return GPT(ModelConfig(**TINY))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised GPT-2-shaped tiny model (2 layers, width 64) with GPT-2's tokenizer."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "ckpt"
    checkpoint.save(path, GPT(ModelConfig(**TINY)), _gpt2_tokenizer())  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def pretrained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2-shaped model (context 64) after 40 pretraining steps on Tiny Shakespeare, made by the real
    `scratchlm data prepare` and `scratchlm pretrain` commands: the starting point a user's finetuning has."""
    from scratchlm.cli.main import main

    root = tmp_path_factory.mktemp("pretrained")
    shards, run = root / "shards", root / "run"
    assert main(["data", "prepare", "--dataset", "tinyshakespeare", "--split-docs", "--tokenizer", "gpt2",
                 "--out", str(shards)]) == 0
    assert main(["pretrain", "--model-preset", "gpt2-tiny", "--model.context-length", "64", "--data", str(shards),
                 "--out", str(run), "--max-steps", "40", "--micro-batch-size", "8", "--lr", "3e-3",
                 "--warmup-steps", "5", "--eval-every", "0", "--eval-batches", "2", "--save-every", "0",
                 "--progress", "false", "--sample-at-end", "0"]) == 0
    return run


@pytest.fixture(scope="session")
def char_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model with a character tokenizer of the mirror's finetuning texts (~150 symbols): the
    loss over a small vocabulary is cheap, which keeps the multi-run tests fast."""
    import os

    from scratchlm.tokenizer import CharTokenizer

    mirror = Path(os.environ.get("SCRATCHLM_MIRROR") or MIRROR)
    texts = [(mirror / "SMSSpamCollection.tsv").read_text(encoding="utf-8")] + [
        json.dumps(json.loads((mirror / name).read_text(encoding="utf-8")), ensure_ascii=False)
        for name in ("instruction-data.json", "instruction-data-with-preference.json")]
    tok = CharTokenizer.train(texts, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("char") / "ckpt"
    config = ModelConfig(**{**TINY, "vocab_size": tok.vocab_size, "d_model": 48, "d_ff": 192})  # type: ignore[arg-type]
    checkpoint.save(path, GPT(config), tok)
    return path


@pytest.fixture
def metrics() -> object:
    """metrics(run_dir, kind="train") -> the run's metrics.jsonl records of that kind."""

    def read(run: Path, kind: str = "train") -> list[dict]:
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        return [r for line in lines if (r := json.loads(line))["kind"] == kind]

    return read
