"""Fakes for the evaluation tests: a character tokenizer and a model with known logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class CharTokenizer:
    """One id per character of a fixed alphabet; enough of the tokenizer contract for evaluation."""

    def __init__(self, alphabet: str, eot: bool = False) -> None:
        self.alphabet = alphabet
        self.stoi = {c: i for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + int(eot)
        self.eot_id = len(alphabet) if eot else None
        self.special_tokens = {"<|endoftext|>": self.eot_id} if eot else {}

    def encode_ordinary(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def encode(self, text: str, **_: object) -> list[int]:
        return self.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids if i < len(self.alphabet))


class BigramModel(nn.Module):
    """logits[b, t] = log P(. | ids[b, t]) from a fixed table: the loss of each target is known by hand."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(probs).log(), requires_grad=False)  # (V, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]  # (B, T, V)



@pytest.fixture
def abc_tokenizer() -> CharTokenizer:
    return CharTokenizer("ab ")


@pytest.fixture
def bigram() -> BigramModel:
    # rows: previous token a, b, ' '; columns: next token a, b, ' '
    return BigramModel([[0.25, 0.5, 0.25], [0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])


@pytest.fixture
def make_tokenizer():
    """Factory: CharTokenizer(alphabet, eot=False)."""
    return CharTokenizer


@pytest.fixture
def make_bigram():
    """Factory: BigramModel(probs)."""
    return BigramModel
