"""Fixtures for generation tests: a tiny random GPT (both families), a fake model with known outputs, GPT-2's
tokenizer (from the data mirror)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchlm.model import GPT, ModelConfig


def _tiny_gpt(
    family: str = "gpt2", vocab_size: int = 97, context_length: int = 64, seed: int = 0, **fields: object
) -> GPT:
    """2 layers, width 32, weights drawn wider than GPT-2's init so greedy outputs vary from token to token.
    `fields`: other ModelConfig fields (e.g. an attention pattern)."""
    extra = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "n_kv_head": 1}
    cfg = ModelConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        n_layer=2,
        n_head=2,
        d_model=32,
        **(extra if family == "llama" else {}),
        **fields,
    )
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    return model.eval()


class NextIdModel(nn.Module):
    """Fake model: after token t it always predicts (t + 1) % V, whatever the cache says. Known outputs."""

    def __init__(self, vocab_size: int = 50, context_length: int = 32) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, context_length=context_length, n_layer=1, n_head=1, d_model=4)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.lm_head = nn.Identity()

    def hidden_states(self, ids: torch.Tensor, cache: object = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        V = self.config.vocab_size
        return torch.nn.functional.one_hot((ids + 1) % V, V).float() * 10.0  # (B, T, V): already "logits"

    def forward(self, ids: torch.Tensor, cache: object = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(ids, cache, positions))


@pytest.fixture
def tiny_gpt():  # noqa: ANN201
    """`tiny_gpt(family="gpt2"|"llama", vocab_size=97, context_length=64, seed=0, **fields)` -> a random tiny GPT."""
    return _tiny_gpt


@pytest.fixture
def next_id_model() -> NextIdModel:
    return NextIdModel()


@pytest.fixture
def gpt2_tokenizer(mirror):  # noqa: ANN001, ANN201
    from scratchlm import tokenizer

    return tokenizer.load("gpt2")  # the autouse fixture points SCRATCHLM_MIRROR at the data mirror


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A run folder (`latest` -> step_000001): a random tiny GPT (context 128) with GPT-2's tokenizer."""
    import os
    from pathlib import Path

    from scratchlm import checkpoint, tokenizer

    mirror = Path(os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCHLM_MIRROR", str(mirror.resolve()))
        mp.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        tok = tokenizer.load("gpt2")
    model = _tiny_gpt("gpt2", vocab_size=tok.vocab_size, context_length=128)
    run = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save_step(run, 1, model, tok)
    return run

