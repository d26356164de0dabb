"""Text in, text out: prompts are encoded, the engine generates ids, `TextStream` turns them back into text.

`generate(model, tokenizer, prompt, ...) -> str` is the one-call entry (the training loop's periodic samples);
`complete` does batches, n samples, stop strings and logprobs; `stream` yields text pieces as they are decoded.
`scratchlm generate`, `scratchlm chat` and the server all go through `complete`/`stream` or the same engine,
so the same seed gives the same text in all three.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from scratchlm.errors import ScratchlmError
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.engine import Engine, GenSequence, TokenLogprob, make_sequences, static_max_len
from scratchlm.generate.stream import TextStream


@dataclass
class Completion:
    """One finished sample."""

    text: str
    ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt text -> ids. Special tokens written in the prompt (`<|endoftext|>`) count as such; an empty prompt
    becomes the end-of-text token, which is how GPT-2 style models start a fresh document."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        if tokenizer.eot_id is None:
            raise ScratchlmError(
                "the prompt is empty and the tokenizer has no <|endoftext|> token; give a prompt"
            )
        ids = [tokenizer.eot_id]
    return ids


def default_stop_ids(tokenizer: Any, config: SampleConfig) -> list[int]:
    """The end-of-text token stops a base model's continuation unless `ignore_eos`."""
    return [] if config.ignore_eos or tokenizer.eot_id is None else [tokenizer.eot_id]


def complete(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | list[int]],
    config: SampleConfig,
    stop_ids: Sequence[int] | None = None,
    slots: int | None = None,
    compile: bool | str = False,
    seeds: Sequence[int] | None = None,
) -> list[list[Completion]]:
    """`config.n` completions for each prompt (text or ids), batched through one engine.

    `compile`: compile the decode step (see `Engine` and `static_max_len`). `seeds`: one seed per prompt instead
    of `config.seed` for all (see `make_sequences`)."""
    prompt_ids = [p if isinstance(p, list) else encode_prompt(tokenizer, p) for p in prompts]
    stops = default_stop_ids(tokenizer, config) if stop_ids is None else list(stop_ids)
    groups = make_sequences(prompt_ids, config, stops, seeds)
    flat = [s for g in groups for s in g]
    streams = {s.id: TextStream(tokenizer, config.stop) for s in flat}
    max_len = static_max_len(model, prompt_ids, config, compile)
    engine = Engine(
        model, slots=slots or len(flat), max_len=max_len, compile=compile, vocab_limit=tokenizer.vocab_size
    )
    with _eval_mode(model):
        for changed in engine.run(flat):
            for seq in changed:
                feed_text(engine, seq, streams[seq.id])
    return [[_completion(s, streams[s.id]) for s in g] for g in groups]


def stream(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | list[int],
    config: SampleConfig,
    stop_ids: Sequence[int] | None = None,
    compile: bool | str = False,
) -> Iterator[str]:
    """Yield text pieces of one sample as they are decoded (never a split character, never a stop string).

    `stream_completion` also gives the finished `Completion` (finish reason, token counts) at the end.
    """
    for piece, _ in stream_completion(model, tokenizer, prompt, config, stop_ids, compile):
        if piece:
            yield piece


def stream_completion(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | list[int],
    config: SampleConfig,
    stop_ids: Sequence[int] | None = None,
    compile: bool | str = False,
) -> Iterator[tuple[str, Completion | None]]:
    """Yield (piece, None) while decoding, then ("", the finished Completion) once (`compile`: as `complete`)."""
    ids = prompt if isinstance(prompt, list) else encode_prompt(tokenizer, prompt)
    stops = default_stop_ids(tokenizer, config) if stop_ids is None else list(stop_ids)
    [[seq]] = make_sequences([ids], replace(config, n=1), stops)
    text = TextStream(tokenizer, config.stop)
    max_len = static_max_len(model, [ids], config, compile)
    engine = Engine(model, slots=1, max_len=max_len, compile=compile, vocab_limit=tokenizer.vocab_size)
    with _eval_mode(model):
        for _ in engine.run([seq]):
            yield feed_text(engine, seq, text), None
    yield "", _completion(seq, text)


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> str:
    """The continuation of `prompt` (without the prompt): the one-call entry, e.g. for samples during training."""
    cfg = SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    return complete(model, tokenizer, [prompt], cfg)[0][0].text


def feed_text(engine: Engine, seq: GenSequence, text: TextStream) -> str:
    """Push the sequence's new tokens into its TextStream; end it at a stop string; return the new text.

    Call it after every `engine.step()` for each changed sequence (before the next step, so a stop string
    ends the sequence at once).
    """
    piece = ""
    new = seq.new_tokens()
    for i, tok in enumerate(new):
        piece += text.push(tok)
        if text.stopped:
            # Tokens decoded after the one that completed the stop string are not part of the answer.
            extra = len(new) - i - 1
            if extra:
                del seq.output[-extra:]
                del seq.logprobs[len(seq.output) :]
            engine.finish(seq, "stop")
            seq.finish_reason = "stop"
            break
    if seq.finished:
        piece += text.finish()
    return piece


def _completion(seq: GenSequence, text: TextStream) -> Completion:
    return Completion(
        text=text.text,
        ids=list(seq.output),
        finish_reason=seq.finish_reason or "length",
        prompt_tokens=len(seq.prompt),
        logprobs=list(seq.logprobs),
    )


class _eval_mode:
    """Put the model in eval mode (no dropout) for generation and restore its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
