"""`SampleConfig`: every sampling setting, one spelling for the library, the CLI flags and the server's fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NoReturn

from scratchlm.errors import ConfigError


@dataclass
class SampleConfig:
    """How to pick each next token and when to stop."""

    max_new_tokens: int = 256
    """Stop after this many new tokens (finish reason "length")."""
    temperature: float = 1.0
    """Divide the logits by this; 0 means greedy (always the most likely token)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 keeps all)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability adds up to at least p (1 keeps all)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely one (0 keeps all)."""
    repetition_penalty: float = 1.0
    """Make tokens already in the prompt or output less likely (CTRL's rule; 1 is off, 1.1-1.3 is typical)."""
    frequency_penalty: float = 0.0
    """Subtract this times the number of times a token was generated (OpenAI's rule, -2..2)."""
    presence_penalty: float = 0.0
    """Subtract this once from every token already generated (OpenAI's rule, -2..2)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: the output is cut just before the first one (finish reason "stop")."""
    stop_ids: list[int] = field(default_factory=list)
    """Stop tokens (besides the end-of-text token), not included in the output."""
    ignore_eos: bool = False
    """Keep going past the end-of-text token."""
    seed: int | None = None
    """Random seed: the same seed, prompt and settings give the same text. None draws a fresh one."""
    n: int = 1
    """Number of independent samples per prompt (sample i uses seed + i)."""
    logprobs: int | None = None
    """Return the log-probability of each chosen token and of this many best alternatives (None: none)."""

    def __post_init__(self) -> None:
        # Range checks here, not in each front end, so generate, chat and serve refuse the same values with
        # the same line. Floats must be finite: NaN passes every `<` test and then samples garbage.
        for name in (
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                _bad(name, f"{name} must be a finite number, got {value!r}")
        for name in ("max_new_tokens", "top_k", "n"):
            if not _is_int(getattr(self, name)):
                _bad(name, f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.max_new_tokens < 0:
            _bad("max_new_tokens", f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            _bad("temperature", f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            _bad("top_k", f"top_k must be >= 0 (0 keeps all tokens), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            _bad("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            _bad("min_p", f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            _bad(
                "repetition_penalty",
                f"repetition_penalty must be > 0 (1 is off), got {self.repetition_penalty}",
            )
        if self.n < 1:
            _bad("n", f"n must be >= 1, got {self.n}")
        if self.seed is not None and not (_is_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX):
            # torch.Generator.manual_seed takes 64 bits; sample i of n uses seed + i, which stays inside them
            _bad(
                "seed",
                f"seed must be an integer from {SEED_MIN} to {SEED_MAX} (64-bit signed), got {self.seed!r}",
            )
        if self.logprobs is not None and not (_is_int(self.logprobs) and 0 <= self.logprobs <= 20):
            _bad("logprobs", f"logprobs must be between 0 and 20, got {self.logprobs}")
        if any(not _is_int(t) or t < 0 for t in self.stop_ids):
            _bad("stop_ids", f"stop_ids must be token ids >= 0, got {self.stop_ids}")
        if any(s == "" for s in self.stop):
            _bad("stop", "stop strings must not be empty; remove the empty string from stop")


SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(field_name: str, message: str) -> NoReturn:
    """Raise the one-line `ConfigError`; `.param` names the field, so the server can answer with it."""
    err = ConfigError(message)
    err.param = field_name  # type: ignore[attr-defined]
    raise err
