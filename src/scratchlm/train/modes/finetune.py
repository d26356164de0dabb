"""What the finetuning modes (classify, sft, dpo) share: LoRA, vocabulary resizing, and their checkpoint layout.

A finetuned checkpoint is an ordinary checkpoint folder (`scratchlm.checkpoint`) with extra parts:

    full finetune          model.safetensors (+ classifier.safetensors: the head, for classifiers)
    LoRA (adapter-only)    adapters.safetensors (the lora_A/lora_B tensors) + classifier.safetensors;
                           NO model.safetensors: config.json's `lora.base` names the base checkpoint

An adapter-only folder is small (the gpt2 shape at rank 8 on q,k,v,o: 0.6M of 124M parameters) and resumes
exactly: the frozen base is rebuilt from `lora.base`, the adapters and the optimizer state from the folder.
`scratchlm lora merge` folds the adapters into a plain checkpoint that every other command reads.
`load_finetuned(path)` reads all of these back (classify, merge, evaluation).

The folder is assembled beside its final name and renamed into place, so a crash never leaves a step folder
that looks whole (the loop points `latest` at it only afterwards).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scratchlm import checkpoint
from scratchlm.dataclass_io import from_dict, to_dict
from scratchlm.errors import ScratchlmError
from scratchlm.fs import fsync_dir
from scratchlm.model import GPT
from scratchlm.model.layers import Linear
from scratchlm.model.lora import LoRAConfig, adapter_state_dict, inject_lora, load_adapter_state_dict
from scratchlm.train.modes.base import Mode

ADAPTER_FILE = "adapters.safetensors"
HEAD_FILE = "classifier.safetensors"


def resize_vocab(model: GPT, vocab_size: int) -> bool:
    """Grow the token embedding (and an untied head) to `vocab_size` rows, for new special tokens.

    New rows = the mean of the old rows plus a little noise of the rows' own scale (as HF's resize does), from a
    FIXED generator: deterministic, so an adapter-only checkpoint rebuilds them exactly from the base, and
    distinct, so that even with frozen embeddings (LoRA) the model can learn to tell the new tokens apart and to
    emit the right one. Returns whether anything changed.
    """
    old = model.tok_emb.weight
    V, C = old.shape
    if vocab_size <= V:
        return False

    def grown(weight: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(V)
        noise = torch.randn(vocab_size - V, C, generator=g) * weight.float().std(0).cpu() * 0.5  # (V_new, C)
        new_rows = weight.float().mean(0).cpu() + noise
        return torch.cat([weight, new_rows.to(weight.device, weight.dtype)])  # (vocab_size, C)

    with torch.no_grad():
        emb = nn.Embedding(vocab_size, C, device="meta")
        emb.weight = nn.Parameter(grown(old), requires_grad=old.requires_grad)
        model.tok_emb = emb
        if not model.config.tie_embeddings:
            head_old = model.lm_head.weight
            head = Linear(C, vocab_size, bias=False, device="meta")
            head.weight = nn.Parameter(grown(head_old), requires_grad=head_old.requires_grad)
            model.lm_head = head
        else:
            model.lm_head = Linear(C, vocab_size, bias=False, device="meta")  # replaced by the tie below
            model.tie_weights()
    model.config.vocab_size = vocab_size
    return True


def base_model_of(module: nn.Module) -> GPT:
    """The GPT inside a finetuning module (a classifier wraps it as `.model`)."""
    module = checkpoint.unwrap(module)
    return module if isinstance(module, GPT) else module.model  # type: ignore[return-value]


class FinetuneMode(Mode):
    """A mode that trains a loaded checkpoint, fully or through LoRA adapters (then saved alone)."""

    def __init__(self, lora: LoRAConfig | None = None, base_checkpoint: str | os.PathLike[str] | None = None) -> None:
        self.lora = lora if lora is not None and lora.enabled else None
        self.base_checkpoint = None if base_checkpoint is None else str(Path(checkpoint.resolve(base_checkpoint)).resolve())
        if self.lora is not None and self.base_checkpoint is None:
            raise ScratchlmError("LoRA finetuning needs the base --checkpoint it adapts (adapters are saved alone)")

    # -- building ------------------------------------------------------------------------------------------------

    def apply_lora(self, model: GPT) -> None:
        """Inject adapters (and freeze the base) when LoRA is on."""
        if self.lora is not None:
            inject_lora(model, self.lora, freeze=True)

    def checkpoint_extra(self) -> dict[str, Any]:
        if self.lora is None:
            return {}
        return {"lora": {**to_dict(self.lora), "base": self.base_checkpoint}}

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_weights(
        self,
        module: nn.Module,
        path: Path,
        tokenizer: Any,
        extra: dict[str, Any],
        train_state: Any,
    ) -> None:
        save_finetuned(path, module, tokenizer, extra, train_state, adapters_only=self.lora is not None)

    def load_weights(self, module: nn.Module, path: Path) -> None:
        load_finetuned_weights(module, Path(path))


def save_finetuned(
    path: str | os.PathLike[str],
    module: nn.Module,
    tokenizer: Any,
    extra: dict[str, Any],
    train_state: Any = None,
    adapters_only: bool = False,
) -> Path:
    """Write a finetuned checkpoint folder (layout in the module docstring), assembled beside `path`, renamed."""
    path = Path(path)
    model = base_model_of(module)
    staging = path.with_name(path.name + ".partial")
    # adapter-only: checkpoint.save writes config, tokenizer and train state; the (empty) weights file goes away
    checkpoint.save(staging, model, tokenizer, extra=extra, train_state=train_state,
                    state_dict={} if adapters_only else None)
    files: dict[str, dict[str, torch.Tensor]] = {}
    head = getattr(checkpoint.unwrap(module), "head", None)
    if head is not None:
        files[HEAD_FILE] = head.state_dict()
    if adapters_only:
        (staging / checkpoint.WEIGHTS_FILE).unlink()
        files[ADAPTER_FILE] = adapter_state_dict(model)
    try:
        for name, tensors in files.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / name))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    return path


def load_finetuned_weights(module: nn.Module, path: Path) -> None:
    """Fill a module built like the one that was saved (setup done) from a finetuned checkpoint folder."""
    model = base_model_of(module)
    if (path / ADAPTER_FILE).is_file():
        load_adapter_state_dict(model, load_file(str(path / ADAPTER_FILE)))
    else:
        state = load_file(str(path / checkpoint.WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
        if missing or unexpected:
            raise ScratchlmError(
                f"checkpoint {path}: weights do not fit the model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); resume with the settings the run was started with"
            )
    head = getattr(checkpoint.unwrap(module), "head", None)
    if head is not None:
        if not (path / HEAD_FILE).is_file():
            raise ScratchlmError(f"checkpoint {path} has no {HEAD_FILE}: it is not a classifier checkpoint")
        head.load_state_dict(load_file(str(path / HEAD_FILE)))


def load_finetuned(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict]:
    """(module, tokenizer, config.json) of any checkpoint: plain, full finetune, adapter-only, classifier.

    The module is a `GPT`, or a `ClassifierModel` when config.json has a `classifier` section; adapter-only
    checkpoints come back with their adapters injected (not merged: `merge_lora` does that).
    """
    from scratchlm import tokenizer as tokenizers

    step = checkpoint.resolve(path)
    config = checkpoint.load_config(step)
    lora = config.get("lora")
    if (step / ADAPTER_FILE).is_file():
        assert lora is not None, f"{step} has {ADAPTER_FILE} but no lora section"
        base = Path(lora["base"])
        if not (base / checkpoint.CONFIG_FILE).is_file():
            raise ScratchlmError(
                f"the LoRA checkpoint {step} adapts the base checkpoint {base}, which no longer exists; "
                "put it back there (or edit lora.base in config.json)"
            )
        model = load_plain_model(base, device)
        tokenizer = tokenizers.load(step / checkpoint.TOKENIZER_FILE)
        resize_vocab(model, config["model"]["vocab_size"])
        inject_lora(model, from_dict(LoRAConfig, {k: v for k, v in lora.items() if k != "base"}, "lora"))
    else:
        model, tokenizer = checkpoint.load(step, device=device)
    module: nn.Module = model
    if "classifier" in config:
        from scratchlm.train.modes.classify import ClassifierModel

        module = ClassifierModel(model, len(config["classifier"]["labels"])).to(device)
        module.head.load_state_dict(load_file(str(step / HEAD_FILE), device=str(device)))
    if (step / ADAPTER_FILE).is_file():
        load_adapter_state_dict(model, load_file(str(step / ADAPTER_FILE), device=str(device)))
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), tokenizer, config


def trainable(params: Iterable[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)


def load_plain_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> GPT:
    """A plain GPT from any language-model checkpoint: adapters are merged in (a chain of LoRA runs works)."""
    from scratchlm.model.lora import merge_lora

    step = checkpoint.resolve(path)
    if not (step / ADAPTER_FILE).is_file():
        return checkpoint.load(step, device=device)[0]
    module, _, config = load_finetuned(step, device)
    if "classifier" in config:
        raise ScratchlmError(f"{step} is a classifier checkpoint; start from a language-model checkpoint")
    model = merge_lora(module)
    for p in model.parameters():
        p.requires_grad_(True)
    return model  # type: ignore[return-value]
