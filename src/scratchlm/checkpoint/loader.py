"""The one door that opens a checkpoint: `read(path)` for any folder scratchlm writes.

    plain (pretrained, imported)     model.safetensors                      -> GPT
    full finetune                    model.safetensors                      -> GPT
    LoRA adapter-only                adapters.safetensors + lora.base       -> GPT, adapters merged (merge=False: kept)
    prefix / prompt tuning           adapters.safetensors + prefix.base     -> GPT with `model.prefix` (a soft
                                                                               prompt folded to keys/values;
                                                                               merge=False: kept as embeddings)
    classifier (full or LoRA)        ... + classifier.safetensors           -> ClassifierModel
    reward model (full or LoRA)      ... + classifier.safetensors (1 score) -> RewardModel

`scratchlm.load`, every CLI command, the server and HF export call it; nothing else opens a checkpoint's weights.
A chain of LoRA runs works: the base is itself read through `read`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.checkpoint.finetuned import (
    ADAPTER_FILE,
    adapter_section,
    base_of,
    read_adapters,
    read_head,
    read_prefix,
)
from scratchlm.checkpoint.folder import WEIGHTS_FILE, load_config, load_tokenizer, load_weights_into, resolve
from scratchlm.dataclass_io import from_dict
from scratchlm.errors import ScratchlmError
from scratchlm.model import GPT, ModelConfig
from scratchlm.model.classifier import ClassifierModel, RewardModel
from scratchlm.model.lora import LoRAConfig, inject_lora, load_adapter_state_dict, merge_lora
from scratchlm.model.prefix import fold_prefix, load_prefix
from scratchlm.model.vocab import resize_vocab
from scratchlm.tokenizer import Tokenizer

KINDS = ("lm", "classifier", "reward")


def kind_of(config: dict[str, Any]) -> str:
    """"classifier" or "reward" when config.json has that section, else "lm"."""
    return next((k for k in KINDS[1:] if k in config), "lm")


@dataclass
class Loaded:
    """What `read` returns. `model` is a `GPT`, a `ClassifierModel` or a `RewardModel` (by `kind`)."""

    model: nn.Module
    tokenizer: Tokenizer
    config: dict[str, Any]
    """The folder's config.json."""
    step: Path
    """The step folder that was read."""

    @property
    def kind(self) -> str:
        return kind_of(self.config)


def read(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    merge: bool = True,
    expect: str | None = None,
) -> Loaded:
    """Open any checkpoint folder (step or run folder); the module comes back in eval mode.

    `merge`: fold LoRA adapters into the weights (False keeps them as `LoRALinear` layers). `expect`: "lm",
    "classifier" or "reward" refuses the other kinds with a one-line error that names the command to use.
    """
    step = resolve(path)
    config = load_config(step)
    kind = kind_of(config)
    if expect is not None and kind != expect:
        if kind != "lm":
            use = {"classifier": "scratchlm classify", "reward": "scratchlm score"}[kind]
            raise ScratchlmError(f"{step} is a {kind} checkpoint; use `{use}` with it, or a {_WHAT[expect]} checkpoint")
        raise ScratchlmError(f"{step} is not a {_WHAT[expect]} checkpoint; make one with {_MAKE[expect]}")
    model_config = from_dict(ModelConfig, config["model"], where=f"{step / 'config.json'} model")
    tokenizer = load_tokenizer(step, model_config)
    if (step / ADAPTER_FILE).is_file():
        model = _adapted(step, config, device, dtype, merge)
    elif (step / WEIGHTS_FILE).is_file():
        model = load_weights_into(model_config, step / WEIGHTS_FILE, device, dtype)
    else:
        raise ScratchlmError(
            f"checkpoint {step} has neither {WEIGHTS_FILE} nor {ADAPTER_FILE}; it is damaged, save it again"
        )
    module: nn.Module = model
    if kind == "classifier":
        labels = config["classifier"].get("labels")
        if not isinstance(labels, list) or not labels:
            raise ScratchlmError(f"checkpoint {step}: config.json classifier.labels is missing; it is damaged")
        module = ClassifierModel(model, len(labels))
    elif kind == "reward":
        module = RewardModel(model)
    if kind != "lm":
        module.head.load_state_dict(read_head(step, device))
    return Loaded(module.eval(), tokenizer, config, step)


_WHAT = {"lm": "language-model", "classifier": "classifier", "reward": "reward-model"}
_MAKE = {"lm": "`scratchlm pretrain`", "classifier": "`scratchlm finetune classify`",
         "reward": "`scratchlm finetune reward`"}


def _adapted(step: Path, config: dict[str, Any], device: Any, dtype: torch.dtype | None, merge: bool) -> GPT:
    found = adapter_section(config)
    if found is None:
        raise ScratchlmError(f"{step} has {ADAPTER_FILE} but config.json has no lora section; it is damaged")
    section, lora = found
    base = read(base_of(step, lora, section), device, dtype, expect="lm").model
    assert isinstance(base, GPT)
    resize_vocab(base, config["model"]["vocab_size"])
    if section == "prefix":
        kind, length = lora.get("kind"), lora.get("length")
        if not isinstance(length, int) or kind not in ("prefix", "prompt"):
            raise ScratchlmError(f"{step}: config.json prefix.kind/length are missing; the checkpoint is damaged")
        load_prefix(base, kind, length, read_prefix(step, device))
        return fold_prefix(base) if merge else base  # type: ignore[return-value]
    settings = {k: v for k, v in lora.items() if k not in ("base", "base_sha256")}
    inject_lora(base, from_dict(LoRAConfig, settings, "lora"), freeze=False)
    adapters = read_adapters(step, device)
    if dtype is not None:
        adapters = {k: v.to(dtype) for k, v in adapters.items()}
    load_adapter_state_dict(base, adapters)
    return merge_lora(base) if merge else base  # type: ignore[return-value]


def refuse_prefix(loaded: Loaded, what: str) -> None:
    """One-line error when `loaded` carries a prefix/prompt (which `what`, e.g. an export format, cannot hold)."""
    if "prefix" in loaded.config:
        raise ScratchlmError(
            f"{loaded.step} is {loaded.config['prefix'].get('kind', 'prefix')}-tuned: {what} has no place for its "
            "prefix; use the checkpoint with scratchlm's own commands, or finetune with --peft lora and merge"
        )


def load(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[GPT, Tokenizer]:
    """`(model, tokenizer)` of a language-model checkpoint (plain, finetuned or LoRA, merged); eval mode."""
    loaded = read(path, device, dtype, expect="lm")
    return loaded.model, loaded.tokenizer  # type: ignore[return-value]
