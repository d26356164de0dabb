"""Tiny checkpoints for the verifier-evaluation tests: a random language model and a random reward model, both
with a character tokenizer of printable ASCII (so every prompt and template encodes), built once per session."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.model import GPT, ModelConfig
from scratchlm.model.classifier import RewardModel
from scratchlm.tokenizer import CharTokenizer
from scratchlm.tokenizer.chat import ChatTemplate


def _tokenizer() -> CharTokenizer:
    return CharTokenizer.train([string.printable], special_tokens=["<|endoftext|>"])


def _tiny(vocab_size: int, seed: int) -> GPT:
    """2 layers, width 32, weights drawn wider than the usual init so samples differ from one another."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=vocab_size, context_length=128, n_layer=2, n_head=2, d_model=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="session")
def lm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = _tokenizer()
    path = tmp_path_factory.mktemp("lm") / "ckpt"
    checkpoint.save(path, _tiny(tok.vocab_size, 0), tok)
    return path


@pytest.fixture(scope="session")
def rm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random reward model in the folder format `finetune reward` writes (head in classifier.safetensors)."""
    tok = _tokenizer()
    torch.manual_seed(1)
    module = RewardModel(_tiny(tok.vocab_size, 1))
    with torch.no_grad():
        module.head.weight.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("rm") / "ckpt"
    extra = {"train_mode": "reward", "chat_template": ChatTemplate.named("plain").to_dict(),
             "reward": {"max_length": 128, "pad_id": tok.eot_id, "train": "all", "last_k": 1}}
    checkpoint.save_finetuned(path, module, tok, extra)
    return path
