"""What the finetuning modes (classify, sft, dpo) share: LoRA on a frozen base, and saving only what trained.

With LoRA, a checkpoint holds only the adapters (plus a classifier head) and names its base; the folder layout and
the loader are `scratchlm.checkpoint` (`finetuned.py`, `loader.py`): every command reads such a folder, merged.
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
from scratchlm.train.modes.base import Mode


class FinetuneMode(Mode):
    """A mode that trains a loaded checkpoint, fully or through LoRA adapters (then saved alone)."""

    def __init__(self, lora: LoRAConfig | None = None, base_checkpoint: str | os.PathLike[str] | None = None) -> None:
        self.lora = lora if lora is not None and lora.enabled else None
        if self.lora is not None and base_checkpoint is None:
            raise ScratchlmError("LoRA finetuning needs the base --checkpoint it adapts (adapters are saved alone)")
        # an adapter folder names its base by path and hash: hashed once here, not at every save
        self.base = None if self.lora is None else checkpoint.base_record(checkpoint.resolve(base_checkpoint))

    # -- building ------------------------------------------------------------------------------------------------

    def apply_lora(self, model: GPT) -> None:
        """Inject adapters (and freeze the base) when LoRA is on."""
        if self.lora is not None:
            inject_lora(model, self.lora, freeze=True)

    def checkpoint_extra(self) -> dict[str, Any]:
        if self.lora is None:
            return {}
        return {"lora": {**to_dict(self.lora), **self.base}}

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_weights(
        self,
        module: nn.Module,
        path: Path,
        tokenizer: Any,
        extra: dict[str, Any],
        train_state: Any,
    ) -> None:
        checkpoint.save_finetuned(path, module, tokenizer, extra, train_state, adapters_only=self.lora is not None)


def trainable(params: Iterable[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)
