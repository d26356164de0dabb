"""Hugging Face folders <-> scratchlm checkpoint folders, with `safetensors` alone (no `transformers` needed).

`import_hf` reads a `GPT2LMHeadModel` / `LlamaForCausalLM` / `MistralForCausalLM` folder and writes a checkpoint
through `scratchlm.checkpoint`; `export_hf` reads a checkpoint through the same door (so LoRA-adapter checkpoints
export merged) and writes a folder that `AutoModelForCausalLM` / `AutoTokenizer` load. The state-dict maps themselves
live in `scratchlm.model.hf`; this module only moves files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from scratchlm import checkpoint
from scratchlm import tokenizer as tokenizers
from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_dir
from scratchlm.model import hf as hf_maps
from scratchlm.tokenizer import Tokenizer

HF_TOKENIZER_COPY = "scratchlm_tokenizer.json"  # our tokenizer, kept in exported HF folders for the way back


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScratchlmError(f"{what} {path} does not exist; pass a Hugging Face model folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ScratchlmError(f"cannot read {what} {path} ({e}); the folder is damaged") from None


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: `model.safetensors`, or the shards named by `model.safetensors.index.json`."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index, "shard index").get("weight_map", {})
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise ScratchlmError(
            f"Hugging Face folder {hf_dir} has no model.safetensors (or sharded model.safetensors.index.json); "
            "scratchlm reads safetensors only: re-save the model with save_pretrained(safe_serialization=True)"
        )
    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for k in f.keys():  # noqa: SIM118
                    out[k] = f.get_tensor(k)
        except (OSError, SafetensorError) as e:
            raise ScratchlmError(f"cannot read {file} ({e}); download the Hugging Face folder again") from None
    return out


def _hf_tokenizer(hf_dir: Path, tokenizer: str | None) -> Tokenizer:
    if tokenizer is not None:
        return tokenizers.load(tokenizer)
    if (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        tok = tokenizers.read_gpt2(hf_dir / "vocab.json", hf_dir / "merges.txt")
        return _gpt2_or(tok)
    if (hf_dir / HF_TOKENIZER_COPY).is_file():
        return tokenizers.load(hf_dir / HF_TOKENIZER_COPY)
    raise ScratchlmError(
        f"Hugging Face folder {hf_dir} has no GPT-2-format tokenizer (vocab.json + merges.txt); "
        "pass --tokenizer gpt2 or the path of a scratchlm tokenizer JSON file"
    )


def import_hf(
    hf_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tokenizer: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """HF GPT2LMHeadModel / LlamaForCausalLM / MistralForCausalLM folder -> scratchlm checkpoint folder (needs no
    `transformers`)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ScratchlmError(f"Hugging Face folder {hf_dir} does not exist; pass a folder with config.json")
    hf_config = _read_json(hf_dir / "config.json", "Hugging Face config")
    arch = hf_maps.architecture(hf_config)
    config = hf_maps.config_from_hf(hf_config)
    tok = _hf_tokenizer(hf_dir, tokenizer)
    weights = hf_maps.state_dict_from_hf(config, read_hf_weights(hf_dir))
    found = {k: tuple(v.shape) for k, v in weights.items()}
    checkpoint.check_weights(f"Hugging Face folder {hf_dir}", checkpoint.expected_shapes(config), found)
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    extra = {"hf_source": {"path": str(hf_dir.resolve()), "architecture": arch}}
    return checkpoint.write(Path(out), config, weights, tok, extra)


def is_gpt2_tokenizer(tok: Tokenizer) -> bool:
    """True when `tok` is exactly GPT-2's (same vocabulary, merges, pattern and special tokens; any name)."""
    unnamed = lambda t: {**t.to_dict(), "name": None}  # noqa: E731
    try:
        return unnamed(tok) == unnamed(tokenizers.load("gpt2"))
    except ScratchlmError:  # GPT-2's files cannot be fetched (offline, no mirror): then it is not provably GPT-2's
        return False


def _gpt2_or(tok: Tokenizer) -> Tokenizer:
    """GPT-2's tokenizer itself (named "gpt2") when `tok` equals it, so identities match; else `tok`."""
    return tokenizers.load("gpt2") if is_gpt2_tokenizer(tok) else tok


def export_hf(ckpt: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """scratchlm checkpoint (any language-model folder) -> HF folder for `AutoModelForCausalLM`. Returns notes."""
    loaded = checkpoint.read(ckpt, expect="lm")  # LoRA adapters come back merged
    checkpoint.refuse_prefix(loaded, "a Hugging Face GPT-2/Llama folder")
    model, tok = loaded.model, loaded.tokenizer
    config = model.config
    hf_maps.hf_architecture_for(config)  # fail before writing anything
    ours = checkpoint.weights_for_save(model)
    hf_config = hf_maps.config_to_hf(config)
    if tok.eot_id is not None:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = tok.eot_id
    weights = hf_maps.state_dict_to_hf(config, ours)
    notes: list[str] = []
    out = Path(out)
    with atomic_dir(out, what="Hugging Face folder") as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save(tmp / HF_TOKENIZER_COPY)
        if is_gpt2_tokenizer(tok):
            _write_gpt2_tokenizer_files(tmp, config.context_length)
        else:
            notes.append(
                "the tokenizer is not GPT-2's, so no Hugging Face tokenizer files were written; "
                f"it is kept as {HF_TOKENIZER_COPY} (scratchlm reads it back)"
            )
    return out, notes


def _write_gpt2_tokenizer_files(folder: Path, context_length: int) -> None:
    """GPT-2's vocab.json + merges.txt (the very files of the tokenizer) and a GPT2Tokenizer config."""
    from scratchlm import assets

    shutil.copyfile(assets.fetch("gpt2-encoder"), folder / "vocab.json")
    shutil.copyfile(assets.fetch("gpt2-vocab"), folder / "merges.txt")
    eot = "<|endoftext|>"
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context_length,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "add_prefix_space": False,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
