"""Request bodies of the OpenAI-compatible endpoints (pydantic), and the error shape.

Only the fields scratchlm acts on are declared; unknown fields that OpenAI clients send (`user`,
`logit_bias`, ...) are ignored rather than rejected, like OpenAI-compatible servers usually do. `top_k`, `min_p`,
`repetition_penalty` and `ignore_eos` are extensions (vLLM spells them the same way).

Responses are built as plain dicts in `app.py`, in OpenAI's shapes (`text_completion`, `chat.completion`,
`chat.completion.chunk`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scratchlm.generate.config import SampleConfig


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # extensions
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False
    """Keep generating past the end-of-text token (benchmarks that need exact token counts)."""
    stream_options: dict[str, Any] | None = None

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def sample_config(self, max_new_tokens: int, logprobs: int | None = None) -> SampleConfig:
        return SampleConfig(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            stop=self.stop_list(),
            seed=self.seed,
            n=self.n,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    """OpenAI's default is 16; None means up to the end of the context."""
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=16)
    """Draw this many samples per prompt and return the n with the highest mean token logprob (OpenAI's legacy
    field; not with stream)."""


class ScoreRequest(BaseModel):
    """POST /v1/score (scratchlm's own): reward-model scores of texts, each optionally the answer to `prompt`."""

    model_config = ConfigDict(extra="ignore")

    texts: list[str] = Field(min_length=1, max_length=64)
    prompt: str | None = None


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape; lm-evaluation-harness's remote tokenizer uses it)."""

    prompt: str
    add_special_tokens: bool = False
    """Accepted for compatibility: scratchlm tokenizers add no BOS/EOS tokens."""


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    tokens: list[int]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = "text"
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""

    def as_dict(self) -> dict[str, str]:
        # "developer" is OpenAI's newer name for the system role
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    """None means up to the end of the context (OpenAI's behaviour)."""
    max_completion_tokens: int | None = None
    """OpenAI's newer name for max_tokens; wins when both are given."""
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def max_new(self) -> tuple[int | None, str]:
        """(the value, the name of the field it came from), so that an error names what the client sent."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
