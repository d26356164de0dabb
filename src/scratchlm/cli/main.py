"""The `scratchlm` command: a table of sub-commands, each a thin function in a `scratchlm.cli.*` module.

A command function takes `(argv, prog)`, parses its config dataclass with `scratchlm.cli.parsing.parse` and
calls the library. Modules are imported only when their command runs, so `scratchlm tokenizer ...` never
loads torch. A `ScratchlmError` becomes one line on stderr and exit status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from scratchlm.errors import ScratchlmError

# name -> (module:function, one-line help). Groups ("tokenizer", "eval", ...) are the first word.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("scratchlm.cli.fetch:main", "download (or find in the mirror) a named public asset; --list shows them"),
    "tokenizer train": ("scratchlm.cli.tokenizer:train", "train a byte-level BPE tokenizer on your text"),
    "tokenizer encode": ("scratchlm.cli.tokenizer:encode", "print the token ids of a text as a JSON list"),
    "tokenizer decode": ("scratchlm.cli.tokenizer:decode", "print the text of a JSON list of token ids"),
    "tokenizer info": ("scratchlm.cli.tokenizer:info", "vocab size, special tokens, bytes per token on a file"),
    "model info": ("scratchlm.cli.model:info", "parameters, FLOPs and memory of a model config"),
    "convert from-hf": ("scratchlm.cli.convert:from_hf", "Hugging Face GPT-2/Llama/Mistral folder -> scratchlm checkpoint"),
    "convert to-hf": ("scratchlm.cli.convert:to_hf", "scratchlm checkpoint -> Hugging Face folder"),
    "convert to-gguf": ("scratchlm.cli.convert:to_gguf", "scratchlm checkpoint -> GGUF file (llama.cpp, Ollama)"),
    "data prepare": ("scratchlm.cli.data:prepare", "clean, de-duplicate and tokenize text into shards"),
    "pretrain": ("scratchlm.cli.train:pretrain", "train a model from scratch on token shards"),
    "scaling sweep": ("scratchlm.cli.scaling:sweep", "IsoFLOP sweep: train model sizes per compute budget"),
    "scaling fit": ("scratchlm.cli.scaling:fit", "fit scaling laws (Chinchilla approaches 2 and 3) to a sweep"),
    "finetune classify": ("scratchlm.cli.finetune:classify", "finetune a text classifier"),
    "finetune sft": ("scratchlm.cli.finetune:sft", "instruction-tune a model"),
    "finetune dpo": ("scratchlm.cli.finetune:dpo", "preference-tune a model with DPO"),
    "finetune reward": ("scratchlm.cli.finetune:reward", "train a reward model on preference pairs"),
    "finetune grpo": ("scratchlm.cli.finetune:grpo", "reinforce a model with GRPO on verifiable rewards"),
    "rl arithmetic": ("scratchlm.cli.rl:arithmetic", "write the arithmetic task (pretrain, SFT, GRPO, test data)"),
    "classify": ("scratchlm.cli.finetune:predict", "classify a text with a finetuned classifier"),
    "score": ("scratchlm.cli.finetune:score", "score a text with a reward model"),
    "lora merge": ("scratchlm.cli.finetune:lora_merge", "fold LoRA adapters into a plain checkpoint"),
    "generate": ("scratchlm.cli.generate:generate", "continue a prompt"),
    "chat": ("scratchlm.cli.generate:chat", "chat with a model in the terminal"),
    "serve": ("scratchlm.cli.serve:serve", "OpenAI-compatible HTTP server with a web chat page"),
    "eval perplexity": ("scratchlm.cli.eval:perplexity", "sliding-window perplexity, word perplexity, bits/byte"),
    "eval mc": ("scratchlm.cli.eval:mc", "few-shot multiple-choice accuracy"),
    "eval glue": ("scratchlm.cli.eval:glue", "GLUE tasks, zero-/few-shot, official metrics"),
    "eval superglue": ("scratchlm.cli.eval:superglue", "SuperGLUE tasks, zero-/few-shot, official metrics"),
    "eval judge": ("scratchlm.cli.eval:judge", "score instruction following with a judge model"),
    "eval verify": ("scratchlm.cli.eval:verify", "accuracy of sampled answers checked by a verifier (math, ...)"),
    "eval harness": ("scratchlm.cli.eval:harness", "EleutherAI's lm-evaluation-harness on a checkpoint"),
}


def _usage(prefix: str = "") -> str:
    rows = [(name, help_) for name, (_, help_) in COMMANDS.items() if name.startswith(prefix)]
    width = max(len(n) for n, _ in rows)
    lines = [f"usage: scratchlm {prefix.strip() or '<command>'} ... [--help] [--debug]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, help_ in rows]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str | None, list[str]]:
    """Longest command name that prefixes argv, and the remaining arguments."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, argv[n:]
    return None, argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    name, rest = _resolve(argv)
    if name is None:
        groups = {c.split()[0] for c in COMMANDS if " " in c}
        if argv and argv[0] in groups:
            print(_usage(argv[0] + " "), file=sys.stderr if argv[1:2] not in ([], ["-h"], ["--help"]) else sys.stdout)
            return 0 if argv[1:2] in ([], ["-h"], ["--help"]) else 2
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage())
            return 0
        print(f"error: unknown command {' '.join(argv[:2])!r}; run `scratchlm --help` for the list", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(rest, prog=f"scratchlm {name}") or 0)
    except ScratchlmError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
