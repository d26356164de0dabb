"""`scratchlm convert from-hf` / `to-hf`: Hugging Face GPT-2/Llama/Mistral folders <-> checkpoints;
`convert to-gguf`: a checkpoint -> one GGUF file for llama.cpp, Ollama and LM Studio.

OUT follows the output rule (`scratchlm.fs.check_out_dir`, docs/contracts.md): a new or empty folder, or
one this same command wrote before (from-hf: a checkpoint whose config.json has `hf_source`; to-hf: an HF
folder holding `scratchlm_tokenizer.json`), which is then replaced; never an input, a file or anything else.
to-gguf writes a file: a new path, or a GGUF file, which is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError
from scratchlm.fs import check_out_dir, is_checkpoint_from, is_hf_export

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class FromHFCommand:
    """Convert a Hugging Face GPT2LMHeadModel or LlamaForCausalLM folder (config.json + safetensors, sharded or
    not) into a scratchlm checkpoint folder. Needs only safetensors, not transformers."""

    hf_dir: tyro.conf.Positional[Path]
    """The Hugging Face model folder (e.g. a `huggingface-cli download gpt2` snapshot)."""
    out: tyro.conf.Positional[Path]
    """The checkpoint folder to write."""
    tokenizer: str | None = None
    """gpt2 or a scratchlm tokenizer JSON file; default: the folder's GPT-2-format vocab.json + merges.txt."""
    dtype: str = "auto"
    """Store the weights as: auto (as in the folder), float32, bfloat16 or float16."""


@dataclass
class ToHFCommand:
    """Convert a scratchlm checkpoint into a Hugging Face folder that AutoModelForCausalLM (and, for GPT-2's
    tokenizer, AutoTokenizer) load."""

    checkpoint: tyro.conf.Positional[Path]
    """A checkpoint folder (step or run folder)."""
    out: tyro.conf.Positional[Path]
    """The Hugging Face folder to write."""


@dataclass
class ToGGUFCommand:
    """Convert a scratchlm checkpoint (GPT-2 or Llama family, byte-level BPE tokenizer) into a GGUF file that
    llama.cpp, Ollama and LM Studio load (see docs/interop.md)."""

    checkpoint: tyro.conf.Positional[Path]
    """A checkpoint folder (step or run folder)."""
    out: tyro.conf.Positional[Path]
    """The GGUF file to write (e.g. model.gguf)."""
    dtype: str = "f32"
    """Weight type: f32, f16 or q8_0 (8-bit blocks); norms and biases stay f32."""


def from_hf(argv: list[str], prog: str) -> int:
    cfg = parse(FromHFCommand, argv, prog)
    if cfg.dtype not in DTYPES:
        raise ScratchlmError(f"--dtype {cfg.dtype!r} is not one of {', '.join(DTYPES)}")
    import torch

    from scratchlm import checkpoint
    from scratchlm.interop import hf

    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    tokenizer_file = cfg.tokenizer if cfg.tokenizer and Path(cfg.tokenizer).exists() else None
    check_out_dir(
        cfg.out,
        is_checkpoint_from("hf_source"),
        "checkpoint written by `convert from-hf`",
        [cfg.hf_dir, tokenizer_file],
        flag="output folder",
    )
    out = hf.import_hf(cfg.hf_dir, cfg.out, tokenizer=cfg.tokenizer, dtype=dtype)
    config = checkpoint.load_model_config(out)
    arch = checkpoint.load_config(out)["hf_source"]["architecture"]
    print(f"wrote checkpoint {out} ({arch}: {config.n_layer} layers, d_model {config.d_model})")
    return 0


def to_hf(argv: list[str], prog: str) -> int:
    cfg = parse(ToHFCommand, argv, prog)
    from scratchlm import checkpoint
    from scratchlm.interop import hf

    step = checkpoint.resolve(cfg.checkpoint)
    check_out_dir(
        cfg.out,
        is_hf_export,
        "Hugging Face folder written by `convert to-hf`",
        [cfg.checkpoint, step],
        flag="output folder",
    )
    out, notes = hf.export_hf(step, cfg.out)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote Hugging Face folder {out}")
    return 0


def to_gguf(argv: list[str], prog: str) -> int:
    cfg = parse(ToGGUFCommand, argv, prog)
    from scratchlm import checkpoint
    from scratchlm.fs import check_out_file
    from scratchlm.interop import gguf

    if cfg.dtype not in gguf.DTYPES:
        raise ScratchlmError(f"--dtype {cfg.dtype!r} is not one of {', '.join(gguf.DTYPES)}")
    step = checkpoint.resolve(cfg.checkpoint)
    if cfg.out.is_dir():
        raise ScratchlmError(f"output {cfg.out} is a folder; give a file name such as {cfg.out / 'model.gguf'}")
    check_out_file(cfg.out, gguf.is_gguf_file, "a GGUF file", [cfg.checkpoint, step], flag="output")
    out, notes = gguf.export_gguf(step, cfg.out, cfg.dtype)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out} ({cfg.dtype}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0
