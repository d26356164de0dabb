"""Tiny random Hugging Face reference models (built by `transformers`, never downloaded), shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

VOCAB = 320  # small, for speed; the byte-level tokenizer below (257 tokens) fits it


def make_hf(kind: str):  # -> transformers.PreTrainedModel
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind.startswith("gpt2"):
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4,
            tie_word_embeddings=kind == "gpt2", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind.startswith("mistral"):  # sliding window 8 (or none), far below the 40-token test sequences
        cfg = transformers.MistralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
            sliding_window=None if kind == "mistral-no-window" else 8, tie_word_embeddings=False,
        )
        model = transformers.MistralForCausalLM(cfg)
    else:
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        if kind == "llama3-scaled":
            rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_parameters=rope,
            tie_word_embeddings=kind == "llama-tied",
        )
        model = transformers.LlamaForCausalLM(cfg)
    # Random weights of a realistic scale everywhere (norm weights too, so a swapped norm would show).
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02 if p.dim() > 1 else 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory: pytest.TempPathFactory):
    """kind -> a saved HF folder (cached per session)."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            path = tmp_path_factory.mktemp(f"hf-{kind}")
            make_hf(kind).save_pretrained(path)
            made[kind] = path
        return made[kind]

    return get


@pytest.fixture(scope="session")
def make_hf_model():
    """kind -> a fresh random HF model (eval mode)."""
    return make_hf


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a 257-token byte-level BPE tokenizer (no merges) that fits the small reference models."""
    from scratchlm.tokenizer import GPT2_PATTERN, BPETokenizer

    path = tmp_path_factory.mktemp("tok") / "bytes.json"
    BPETokenizer([bytes([i]) for i in range(256)], {"<|endoftext|>": 256}, GPT2_PATTERN, name="bytes").save(path)
    return str(path)
