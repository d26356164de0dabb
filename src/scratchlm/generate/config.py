"""`SampleConfig`: every sampling setting, one spelling for the library, the CLI flags and the server's fields."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 keeps all tokens), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 is off), got {self.repetition_penalty}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ConfigError(f"logprobs must be between 0 and 20, got {self.logprobs}")
        if any(s == "" for s in self.stop):
            raise ConfigError("stop strings must not be empty; remove the empty string from stop")
