"""What the finetuning modes (classify, sft, dpo) share: adapters on a frozen base (LoRA, prefix or prompt
tuning), and saving only what trained.

With adapters, a checkpoint holds only them (plus a classifier head) and names its base; the folder layout and
the loader are `scratchlm.checkpoint` (`finetuned.py`, `loader.py`): every command reads such a folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from scratchlm import checkpoint
from scratchlm.dataclass_io import to_dict
from scratchlm.errors import ScratchlmError
from scratchlm.model import GPT
from scratchlm.model.lora import LoRAConfig, inject_lora
from scratchlm.model.prefix import PrefixConfig, attach_prefix
from scratchlm.train.modes.base import Mode


class FinetuneMode(Mode):
    """A mode that trains a loaded checkpoint, fully or through adapters (then saved alone): LoRA, or a prefix
    of kind `prefix_kind` (prefix: keys/values in every layer; prompt: input embeddings)."""

    def __init__(
        self,
        lora: LoRAConfig | None = None,
        base_checkpoint: str | os.PathLike[str] | None = None,
        prefix: PrefixConfig | None = None,
        prefix_kind: str = "prefix",
    ) -> None:
        self.lora = lora if lora is not None and lora.enabled else None
        self.prefix, self.prefix_kind = prefix, prefix_kind
        if self.lora is not None and self.prefix is not None:
            raise ScratchlmError("LoRA and prefix tuning exclude each other; choose one --peft")
        if self.adapters and base_checkpoint is None:
            raise ScratchlmError(
                "LoRA, prefix and prompt tuning need the base --checkpoint they adapt (adapters are saved alone)"
            )
        # an adapter folder names its base by path and hash: hashed once here, not at every save
        self.base = checkpoint.base_record(checkpoint.resolve(base_checkpoint)) if self.adapters else None

    @property
    def adapters(self) -> bool:
        """True when only adapters train (and are saved)."""
        return self.lora is not None or self.prefix is not None

    # -- building ------------------------------------------------------------------------------------------------

    def apply_adapters(self, model: GPT) -> None:
        """Inject LoRA adapters or attach a prefix (and freeze the base) when one is on."""
        if self.lora is not None:
            inject_lora(model, self.lora, freeze=True)
        elif self.prefix is not None:
            attach_prefix(model, self.prefix_kind, self.prefix, freeze=True)

    def checkpoint_extra(self) -> dict[str, Any]:
        if self.lora is not None:
            return {"lora": {**to_dict(self.lora), **self.base}}
        if self.prefix is not None:
            return {"prefix": {"kind": self.prefix_kind, **to_dict(self.prefix), **self.base}}
        return {}

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_weights(
        self,
        module: nn.Module,
        path: Path,
        tokenizer: Any,
        extra: dict[str, Any],
        train_state: Any,
    ) -> None:
        checkpoint.save_finetuned(path, module, tokenizer, extra, train_state, adapters_only=self.adapters)


def trainable(params: Iterable[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)
