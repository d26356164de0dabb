"""Fixtures for the tokenizer tests: our GPT-2 tokenizer and tiktoken's, both built offline from the mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MIRROR = Path(
    os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
).resolve()
ENCODER_JSON = MIRROR / "gpt2" / "encoder.json"
VOCAB_BPE = MIRROR / "gpt2" / "vocab.bpe"

# tiktoken's own GPT-2 ("r50k") pattern, copied from tiktoken_ext/openai_public.py: the reference is tiktoken's
# GPT-2 as tiktoken defines it, not our pattern.
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@pytest.fixture(scope="session")
def gpt2():
    from scratchlm.tokenizer import read_gpt2

    return read_gpt2(ENCODER_JSON, VOCAB_BPE, name="gpt2")


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(VOCAB_BPE), encoder_json_file=str(ENCODER_JSON)
    )
    return tiktoken.Encoding(
        name="gpt2-offline",
        pat_str=TIKTOKEN_GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
