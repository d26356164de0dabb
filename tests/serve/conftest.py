"""A tiny random checkpoint (GPT-2 tokenizer, 2 layers, width 32, context 128) and a live server on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

MIRROR = Path(os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
MODEL_NAME = "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (`latest` -> step_000001) holding a random tiny GPT and GPT-2's tokenizer."""
    from scratchlm import checkpoint, tokenizer
    from scratchlm.model import GPT, ModelConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCHLM_MIRROR", str(MIRROR.resolve()))
        mp.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        tok = tokenizer.load("gpt2")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=128, n_layer=2, n_head=2, d_model=32))
    with torch.no_grad():  # wider than GPT-2's init, so that greedy text varies from token to token
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    run = tmp_path_factory.mktemp("ckpt") / MODEL_NAME
    checkpoint.save_step(run, 1, model, tok)
    return run


@pytest.fixture(scope="session")
def loaded(tiny_checkpoint: Path) -> tuple:
    import scratchlm

    return scratchlm.load(tiny_checkpoint)


@pytest.fixture(scope="session")
def server_url(loaded: tuple) -> Iterator[str]:
    """The checkpoint served by `create_app` under uvicorn in a thread, on a free loopback port."""
    from scratchlm.serve.app import BackgroundServer, create_app

    model, tok = loaded
    with BackgroundServer(create_app(model, tok, model_name=MODEL_NAME, slots=8)) as url:
        yield url


@pytest.fixture
def client(server_url: str):  # noqa: ANN201
    from openai import OpenAI

    return OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=60)

