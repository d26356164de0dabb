"""Everything about processes and devices, applied from outside the model.

- `init_distributed`: reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it.
  Backend: NCCL on CUDA, gloo otherwise (CPU runs under torchrun too, which is how the parity tests run).
- `wrap`: activation checkpointing per block, then `torch.compile`, then data parallelism (the order torchtitan
  documents): DDP for `ddp`/`zero1`, `fully_shard` per block and at the root on one `DeviceMesh` for
  `zero2`/`fsdp`/`hsdp`. The model itself never knows; for DDP the loop keeps the unwrapped module for saving, so
  checkpoints carry no `module.` or `_orig_mod.` prefixes. `fully_shard` changes the module in place (its
  parameters become DTensor shards, names unchanged), so saving goes through `full_model_state` instead.
- `set_grad_sync`: gradients are reduced on every backward by default; during gradient accumulation only the
  last micro-batch needs it. DDP: `require_backward_grad_sync` (as nanoGPT; the same as `no_sync()` without a
  context manager); FSDP2: `set_requires_gradient_sync`.
- `full_model_state` / `optimizer_state` / `load_optimizer_state`: layout-free state dicts keyed by parameter
  names (gathered to rank 0 on CPU), so a checkpoint of one layout resumes under another.
- `print0`: the one rank-0 print helper. `stop_all`: one rank's exception stops every rank (see there).
"""

from __future__ import annotations

import copy
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
from scratchlm.train.optim import MuonWithAdamW


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


SHARDED = ("zero2", "fsdp", "hsdp")
"""Layouts whose parameters are DTensor shards (`fully_shard`); `ddp` and `zero1` keep full replicas."""


def is_sharded(parallel: str, info: DistInfo) -> bool:
    """Whether this run's parameters are sharded over processes (one process never shards)."""
    return info.is_distributed and parallel in SHARDED


def build_mesh(info: DistInfo, parallel: str, dp_shard: int | None) -> Any:
    """The run's one `DeviceMesh`: 1-D `(dp,)`, or 2-D `(dp_replicate, dp_shard)` for hsdp."""
    from torch.distributed.device_mesh import init_device_mesh

    world = info.world_size
    if parallel == "hsdp":
        shard = dp_shard or world
        if world % shard:
            raise ScratchlmError(
                f"--dp-shard {shard} does not divide the world size {world}; choose a divisor of {world} "
                "(processes per sharding group)"
            )
        return init_device_mesh(info.device.type, (world // shard, shard), mesh_dim_names=("dp_replicate", "dp_shard"))
    return init_device_mesh(info.device.type, (world,), mesh_dim_names=("dp",))


def wrap(
    module: nn.Module,
    info: DistInfo,
    compile: bool,
    activation_checkpointing: bool,
    parallel: str = "ddp",
    dp_shard: int | None = None,
    precision: str = "fp32",
) -> nn.Module:
    """The module the training step calls: checkpointing, then compile, then data parallelism.

    ddp/zero1: DDP around the (compiled) module; save `module`, not the result. zero2/fsdp/hsdp: `fully_shard`
    on every block, then on the root, which holds the embedding, the final norm and the head: a tied head and
    embedding are one parameter of the root's group, so they stay one tensor (gathered once, updated once).
    Compile then happens per block, in place, so parameter names do not change. The result is `module` itself.
    """
    if activation_checkpointing and enable_activation_checkpointing(module) == 0:
        raise ScratchlmError("--activation-checkpointing found no `blocks` list in the model; turn it off")
    sharded = is_sharded(parallel, info)
    wrapped: nn.Module = module
    if compile:
        if sharded:
            for blocks in _block_lists(module):
                for block in blocks:
                    block.compile()
        else:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    if sharded:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = build_mesh(info, parallel, dp_shard)
        # bf16 under FSDP2: parameters gathered in bf16, gradients reduced in fp32 (the loop skips autocast)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
            else MixedPrecisionPolicy()
        reshard = parallel != "zero2"  # zero2 keeps the gathered parameters from forward to backward
        for blocks in _block_lists(module):
            for block in blocks:
                fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        return module
    if info.is_distributed:
        if parallel == "hsdp":  # checked before anything is built; kept here for direct callers
            build_mesh(info, parallel, dp_shard)
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)
    return wrapped


def set_grad_sync(wrapped: nn.Module, sync: bool) -> None:
    """Skip the gradient reduction on accumulation micro-batches (all but the last)."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        wrapped.require_backward_grad_sync = sync
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # an FSDP2 module (the root; recurses into blocks)
        wrapped.set_requires_gradient_sync(sync)


def grad_norm_value(norm: torch.Tensor) -> float:
    """`clip_grad_norm_`'s result as a float; with DTensor gradients it is a DTensor (the same on every rank)."""
    full = getattr(norm, "full_tensor", None)
    return float((full() if full is not None else norm).item())


# ---- state dicts that do not depend on the layout ---------------------------------------------------------------


def meta_skeleton(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters and buffers are on the meta device (no memory), ties kept.

    Taken before sharding, it is filled on rank 0 from a gathered state dict whenever a plain module is needed
    (saving through the mode, sampling, eval tasks), so every mode's own save code works unchanged.
    """
    memo: dict[int, Any] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in memo:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def materialize(skeleton: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain module: a fresh copy of `skeleton` holding `state` (a full state dict), ties restored."""
    module = copy.deepcopy(skeleton)
    module.load_state_dict(state, assign=True)
    _retie(module)  # assign=True gave the tied head and embedding separate tensors
    assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()]), "a tensor was left on meta"
    return module


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Collective (every rank calls it): the full state dict on CPU on rank 0, `{}` on the others."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    reshard(module)
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Collective: rank 0's full `state` into the (sharded) `module` on every rank (others pass `{}`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    reshard(module)
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _ordered_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters in its index order (groups in order), by name in `module` (ties: first name)."""
    names: dict[int, str] = {}
    for name, p in module.named_parameters():
        names.setdefault(id(p), name)
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _by_names(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An index-keyed optimizer state dict (`optimizer.state_dict()`) keyed by parameter names instead."""
    return {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def _by_indices(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[n]: v for n, v in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the full optimizer state keyed by parameter names, on CPU, on rank 0 (`{}` elsewhere).

    Names instead of indices make it independent of the layout: ZeRO-1 consolidates its partitions on rank 0,
    FSDP2's DTensor moments are gathered by `get_optimizer_state_dict`, a replica's state is already whole.
    """
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, MuonWithAdamW):  # replicas only (the config refuses sharded layouts): each part
        return {"muon": optimizer_state(module, optimizer.muon),
                "adamw": optimizer_state(module, optimizer.adamw) if optimizer.adamw is not None else None}
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
        if dist.get_rank() != 0:
            return {}
        return _by_names(optimizer.state_dict(), _ordered_names(module, optimizer))
    if not is_fsdp(module):
        # a replica: the whole state is local (and plain state_dict() is exact for an empty state too)
        return _by_names(optimizer.state_dict(), _ordered_names(module, optimizer))
    reshard(module)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state (names as keys, or the indices of checkpoints written before names) on every
    rank: each rank keeps what its layout owns (its DTensor shards, its ZeRO partition, or everything)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, MuonWithAdamW):
        load_optimizer_state(module, optimizer.muon, state["muon"])
        if optimizer.adamw is not None:
            load_optimizer_state(module, optimizer.adamw, state["adamw"])
        return
    names = _ordered_names(module, optimizer)
    if state["state"] and not isinstance(next(iter(state["state"])), str):  # index-keyed: the same param order
        state = _by_names(state, names)
    if isinstance(optimizer, ZeroRedundancyOptimizer) or not is_fsdp(module):
        optimizer.load_state_dict(_by_indices(state, names))
        return
    reshard(module)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_sharded_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, folder: Any) -> None:
    """Collective: every rank writes its own part of the optimizer state into `folder` with
    `torch.distributed.checkpoint` (keyed by parameter names, DTensor shards with their global shapes), so no
    rank ever holds the whole state; `load_sharded_optimizer` reads it back into any layout."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(module)
    if dist.get_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)  # a crashed save's leftovers
    barrier()
    dcp.save({"optimizer": get_optimizer_state_dict(module, optimizer)}, checkpoint_id=str(folder))


def load_sharded_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, folder: Any) -> None:
    """Load a `save_sharded_optimizer` folder into this layout (another world size or `--parallel` included): the
    current state's shapes and placements are the template and DCP reads each rank's slices into it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, ZeroRedundancyOptimizer):
        # ZeRO-1 holds whole parameters: read the whole state through a plain AdamW over them, then ZeRO keeps
        # its partition of it
        whole = torch.optim.AdamW([dict(g) for g in optimizer.param_groups])
        state = {"optimizer": get_optimizer_state_dict(module, whole)}
        dcp.load(state, checkpoint_id=str(folder))
        load_optimizer_state(module, optimizer, state["optimizer"])
        return
    if is_fsdp(module):
        reshard(module)
    state = {"optimizer": get_optimizer_state_dict(module, optimizer)}  # (creates the moments if none exist yet)
    dcp.load(state, checkpoint_id=str(folder))
    set_optimizer_state_dict(module, optimizer, state["optimizer"])


def is_fsdp(module: nn.Module) -> bool:
    """Whether `fully_shard` was applied to `module` (its root)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def reshard(module: nn.Module) -> None:
    """Back to the sharded parameters. A forward without backward (evaluation) under zero2
    (`reshard_after_forward=False`) leaves the gathered ones registered, which `named_parameters()` would then
    show instead of the DTensor shards that the optimizer holds."""
    for m in module.modules():
        if is_fsdp(m):
            m.reshard()


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_numel(module: nn.Module) -> int:
    """Parameter elements this process holds (its shards under fully_shard, everything for a replica)."""
    return sum((p.to_local() if _is_dtensor(p) else p).numel() for p in module.parameters())


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


def stop_all(error: BaseException) -> None:
    """Under torchrun, make one rank's exception stop every rank now, its message printed once.

    Without this, the other ranks wait inside a collective (the next all-reduce, an FSDP all-gather) until the
    process group's timeout, many minutes later. So the failing rank prints its error and leaves at once with
    `os._exit` (a normal exit would tear down the process group, which waits for the others); torchrun sees a
    worker fail and stops the rest (SIGTERM, then SIGKILL). A rank whose collective fails because a peer has
    gone exits with one short line of its own instead of repeating an error. One process: returns, the caller
    re-raises as usual. Ctrl-C and normal exits are left alone.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    if isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and error.code in (0, None)):
        return
    rank = dist.get_rank()
    text = str(error).strip()
    if isinstance(error, dist.DistError) or "Connection closed by peer" in text or "Connection reset" in text:
        first = text.splitlines()[0][:200] if text else type(error).__name__
        print(f"rank {rank}: stopping, a collective failed (another process stopped?): {first}", file=sys.stderr,
              flush=True)
        os._exit(1)
    if isinstance(error, ScratchlmError):
        print(f"error: {error}", file=sys.stderr, flush=True)  # the CLI's one-line form
        os._exit(2)
    import traceback

    print(f"rank {rank} failed; stopping every rank:", file=sys.stderr, flush=True)
    traceback.print_exception(error, file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


# ---- meta-device models -----------------------------------------------------------------------------------------


def has_meta_params(module: nn.Module) -> bool:
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


@torch.no_grad()
def materialize_and_init(module: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate a module built on `meta` (and sharded) on `device` and initialise it exactly as
    `torch.manual_seed(seed); GPT(config)` does in one process, holding at most one full parameter at a time.

    The single-process build draws random numbers twice: each layer's constructor (`reset_parameters`, e.g.
    nn.Linear's Kaiming init) in construction order, then `GPT.init_weights` over its modules. Both are replayed
    module by module on a temporary full-size copy of that module's own parameters, of which this rank keeps
    its shard. Every rank draws the same numbers, so the shards fit together. (A tied head is drawn twice, as in
    one process: by its constructor and by `init_weights`, and the last draw wins.)
    """
    module.to_empty(device=device)
    _retie(module)  # to_empty gives a plain module's tied parameter two new tensors (fully_shard keeps one)
    torch.manual_seed(seed)
    for m in module.modules():  # registration order = construction order
        if callable(getattr(m, "reset_parameters", None)) and next(m.parameters(recurse=False), None) is not None:
            _on_full_params(m, m.reset_parameters, device)
    for model in [m for m in module.modules() if callable(getattr(m, "init_module", None))]:
        for name, m in model.named_modules():
            _on_full_params(m, lambda model=model, name=name, m=m: model.init_module(name, m), device)


def _retie(module: nn.Module) -> None:
    for m in module.modules():
        if callable(getattr(m, "tie_weights", None)):
            m.tie_weights()


def _on_full_params(m: nn.Module, fn: Any, device: torch.device) -> None:
    """Run `fn` with `m`'s own parameters swapped for full-size temporaries, then keep this rank's part."""
    from torch.distributed.tensor import distribute_tensor

    saved = dict(m.named_parameters(recurse=False))
    for name, p in saved.items():
        m._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad)
    try:
        fn()
    finally:
        for name, p in saved.items():
            full = m._parameters[name].detach()
            m._parameters[name] = p
            if _is_dtensor(p):  # no communication: every rank holds the same full tensor
                part = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().copy_(part)
            else:
                p.copy_(full)
