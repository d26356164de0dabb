"""Everything about processes and devices, applied from outside the model.

- `init_distributed`: reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it.
  Backend: NCCL on CUDA, gloo otherwise (CPU runs under torchrun too, which is how the DDP test runs).
- `wrap`: activation checkpointing per block, then `torch.compile`, then DDP (the order torchtitan documents).
  The model itself never knows; the loop keeps the unwrapped module for saving, so checkpoints carry no
  `module.` or `_orig_mod.` prefixes.
- `set_grad_sync`: DDP all-reduces gradients on every backward by default; during gradient accumulation only the
  last micro-batch needs it. Toggling `require_backward_grad_sync` (as nanoGPT does) is the same as `no_sync()`
  without forcing the micro-batch loop into a context manager.
- `print0`: the one rank-0 print helper.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchlm.device import resolve_device
from scratchlm.errors import ScratchlmError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_flag: str) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only (every process would otherwise print the same line)."""
    if int(os.environ.get("RANK", "0")) == 0:
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def _block_lists(module: nn.Module) -> list[nn.ModuleList]:
    """The transformer block lists inside `module` (`GPT.blocks`, also when wrapped by a mode's head/LoRA)."""
    return [m for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and name.split(".")[-1] == "blocks"]


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Recompute each block's activations in backward. Patches `forward` per block instance, so parameter
    names (and therefore checkpoints) are unchanged. Returns the number of blocks wrapped."""
    count = 0
    for blocks in _block_lists(module):
        for block in blocks:
            inner = block.forward

            def forward(*args: Any, _inner: Any = inner, _block: nn.Module = block, **kwargs: Any) -> Any:
                if _block.training and torch.is_grad_enabled():
                    return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
                return _inner(*args, **kwargs)

            block.forward = forward  # type: ignore[method-assign]
            count += 1
    return count


def wrap(module: nn.Module, info: DistInfo, compile: bool, activation_checkpointing: bool) -> nn.Module:
    """The module the training step calls: checkpointing, then compile, then DDP. Save `module`, not this."""
    if activation_checkpointing and enable_activation_checkpointing(module) == 0:
        raise ScratchlmError("--activation-checkpointing found no `blocks` list in the model; turn it off")
    wrapped: nn.Module = module
    if compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    if info.is_distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)
    return wrapped


def set_grad_sync(wrapped: nn.Module, sync: bool) -> None:
    """Skip DDP's gradient all-reduce on accumulation micro-batches (all but the last)."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        wrapped.require_backward_grad_sync = sync


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over ranks (identity in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a small picklable object on every rank (e.g. a stop decision)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(obj: Any) -> list[Any]:
    """Every rank's value of a small picklable object (RNG states, loader cursors), in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
