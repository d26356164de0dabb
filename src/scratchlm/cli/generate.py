"""`scratchlm generate` (continue a prompt) and `scratchlm chat` (talk to a model in the terminal).

Both take every `SampleConfig` field as a flag (`--temperature`, `--top-k`, `--seed`, ...), so the same seed and
settings give the same text here and in `scratchlm serve`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.select import SelectConfig


@dataclass(kw_only=True)
class GenerateConfig(SelectConfig, SampleConfig):
    """Continue a prompt with a checkpoint; prints only the continuation (plus a final newline) on stdout.

    --vote majority (with --n) or --best-of N prints only the sample chosen among the N drawn."""

    checkpoint: Path
    """Checkpoint step folder, or a run folder (its latest step)."""
    prompt: str | None = None
    """The text to continue."""
    prompt_file: Path | None = None
    """Read the prompt from this UTF-8 file instead."""
    stream: bool = False
    """Print the text as it is generated."""
    echo: bool = False
    """Print the prompt before the continuation."""
    raw: bool = False
    """Continue the prompt as plain text even when the checkpoint has a chat template. By default a checkpoint
    finetuned with a template gets the prompt as one user turn and stops where the assistant's turn ends."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    int8: bool = False
    """Weight-only int8 linear layers (per-channel scales): 4x smaller weights, faster memory-bound decoding."""
    compile: bool = False
    """Compile the decode step with torch.compile (same tokens; pays off on a GPU and for long outputs; the
    first call compiles for a while)."""

    def __post_init__(self) -> None:
        SampleConfig.__post_init__(self)
        SelectConfig.__post_init__(self)


@dataclass(kw_only=True)
class ChatConfig(SampleConfig):
    """Chat with a checkpoint in the terminal: /reset starts over, /exit (or end of input) quits.

    Replies go to stdout; prompts and notes to stderr. The checkpoint's chat template (from finetuning) frames
    the conversation; a base model gets plain "User: / Assistant:" turns. When the conversation outgrows the
    context, the oldest turns are dropped (and a note says so). Every turn is sampled with the same --seed.
    """

    checkpoint: Path
    """Checkpoint step folder, or a run folder (its latest step)."""
    system: str | None = None
    """A system message that starts the conversation (kept when old turns are dropped)."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    int8: bool = False
    """Weight-only int8 linear layers (per-channel scales): 4x smaller weights, faster memory-bound decoding."""
    compile: bool = False
    """Compile the decode step with torch.compile (same replies; the first turn compiles for a while)."""


def sample_config(cfg: SampleConfig) -> SampleConfig:
    """The `SampleConfig` part of a command's config."""
    return SampleConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SampleConfig)})


def load_for_generation(path: Path, device: str, int8: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, config.json) of a language-model checkpoint; LoRA adapters are merged in; `int8`:
    weight-only int8 linear layers (`scratchlm.model.quant`)."""
    from scratchlm import checkpoint
    from scratchlm.device import resolve_device

    loaded = checkpoint.read(path, resolve_device(device), expect="lm")
    model, tok, config = loaded.model, loaded.tokenizer, loaded.config
    model.requires_grad_(False)
    if int8:
        from scratchlm.model.quant import quantize_int8

        quantize_int8(model)
    return model.eval(), tok, config


def _read_prompt(cfg: GenerateConfig) -> str:
    if (cfg.prompt is None) == (cfg.prompt_file is None):
        raise ScratchlmError("give exactly one of --prompt TEXT or --prompt-file FILE")
    if cfg.prompt_file is not None:
        try:
            return cfg.prompt_file.read_bytes().decode("utf-8")  # no newline translation
        except OSError as e:
            raise ScratchlmError(f"cannot read --prompt-file {cfg.prompt_file}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ScratchlmError(f"--prompt-file {cfg.prompt_file} is not UTF-8 text; convert it") from None
    return cfg.prompt  # type: ignore[return-value]


def generate(argv: list[str], prog: str) -> int:
    from scratchlm.generate.text import complete, stream

    cfg = parse(GenerateConfig, argv, prog)
    prompt = _read_prompt(cfg)
    sample = sample_config(cfg)
    if cfg.stream and (sample.n > 1 or cfg.active):
        raise ScratchlmError("--stream prints one sample as it is drawn; drop --stream, or --n/--vote/--best-of")
    model, tok, config = load_for_generation(cfg.checkpoint, cfg.device, cfg.int8)
    if cfg.active:
        return _generate_selected(cfg, prompt, sample, model, tok, config)
    ids: str | list[int] = prompt
    stop_ids = None  # None: the tokenizer's end-of-text
    if "chat_template" in config and not cfg.raw:
        from scratchlm.generate.chat import chat_prompt
        from scratchlm.tokenizer.chat import ChatTemplate

        template = ChatTemplate.from_config(config["chat_template"])
        framed = chat_prompt(template, tok, [{"role": "user", "content": prompt}])
        ids, stop_ids = framed.ids, framed.stop_ids
        sample = dataclasses.replace(sample, stop=[*framed.stop_strings, *sample.stop])
    out = sys.stdout
    if cfg.echo:
        out.write(prompt)
    if cfg.stream:
        for piece in stream(model, tok, ids, sample, stop_ids, compile=cfg.compile):
            out.write(piece)
            out.flush()
        out.write("\n")
        return 0
    [samples] = complete(model, tok, [ids], sample, stop_ids, compile=cfg.compile)
    for i, c in enumerate(samples):
        if i:
            out.write(f"\n----- sample {i + 1} -----\n" + (prompt if cfg.echo else ""))
        out.write(c.text)
    out.write("\n")
    return 0


def _generate_selected(cfg: GenerateConfig, prompt: str, sample: SampleConfig, model: Any, tok: Any,
                       config: dict[str, Any]) -> int:
    """--vote / --best-of: draw the samples in one batch, print the one chosen."""
    from scratchlm.device import resolve_device
    from scratchlm.generate.select import Selector, sample_rows
    from scratchlm.tokenizer.chat import ChatTemplate

    template = None if "chat_template" not in config or cfg.raw else ChatTemplate.from_config(config["chat_template"])
    selector = Selector(cfg, tok, resolve_device(cfg.device))
    [row] = sample_rows(model, tok, template, [{"prompt": prompt}], sample, selector)
    sys.stdout.write((prompt if cfg.echo else "") + row["completion"] + "\n")
    return 0


def chat(argv: list[str], prog: str) -> int:
    from scratchlm.generate.chat import chat_prompt, fit_history
    from scratchlm.generate.text import stream_completion
    from scratchlm.tokenizer.chat import ChatTemplate

    cfg = parse(ChatConfig, argv, prog)
    sample = dataclasses.replace(sample_config(cfg), n=1)
    model, tok, config = load_for_generation(cfg.checkpoint, cfg.device, cfg.int8)
    template = ChatTemplate.from_config(config.get("chat_template"))
    context = model.config.context_length
    reserve = min(sample.max_new_tokens, context // 2)  # room kept for the reply when trimming history
    start = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(start)
    err = sys.stderr
    print(f"chatting with {cfg.checkpoint} ({template.name} template); /reset starts over, /exit quits", file=err)
    while True:
        print("you> ", end="", file=err, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            print(file=err)
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(start)
            print("(conversation reset)", file=err)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        messages, dropped = fit_history(template, tok, messages, context - reserve)
        if dropped:
            print(f"(dropped the {dropped} oldest message(s) to fit the {context}-token context)", file=err)
        prompt = chat_prompt(template, tok, messages)
        if len(prompt.ids) >= context:
            print(f"error: the message is {len(prompt.ids)} tokens, the context is {context}; write less", file=err)
            messages.pop()
            continue
        turn = dataclasses.replace(sample, stop=prompt.stop_strings + sample.stop)
        reply = ""
        pieces = stream_completion(model, tok, prompt.ids, turn, stop_ids=prompt.stop_ids, compile=cfg.compile)
        for piece, done in pieces:
            if piece:
                sys.stdout.write(piece)
                sys.stdout.flush()
            if done is not None:
                reply = done.text
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})
