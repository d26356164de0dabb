"""Everything about processes and devices, applied from outside the model.

- `init_distributed`: reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it.
  Backend: NCCL on CUDA, gloo otherwise (CPU runs under torchrun too, which is how the parity tests run).
- `plan_layout`: the processes as pp x dp x tp on one `DeviceMesh` (`Layout`), or a one-line error.
- `wrap`: tensor parallelism (`--tp`, DTensor), activation checkpointing per block, then `torch.compile`, then
  data parallelism (the order torchtitan documents; a pipeline stage is split off before, in `pipeline.py`):
  DDP for `ddp`/`zero1`, `fully_shard` per block and at the root on the mesh's dp dimension for
  `zero2`/`fsdp`/`hsdp`. The model itself never knows; for DDP the loop keeps the unwrapped module for saving, so
  checkpoints carry no `module.` or `_orig_mod.` prefixes. `fully_shard` changes the module in place (its
  parameters become DTensor shards, names unchanged), so saving goes through `full_model_state` instead.
- `set_grad_sync`: gradients are reduced on every backward by default; during gradient accumulation only the
  last micro-batch needs it. DDP: `require_backward_grad_sync` (as nanoGPT; the same as `no_sync()` without a
  context manager); FSDP2: `set_requires_gradient_sync`.
- `full_model_state` / `optimizer_state` / `load_optimizer_state`: layout-free state dicts keyed by parameter
  names (gathered to rank 0 on CPU), so a checkpoint of one layout resumes under another.
- `clip_grad_norm`: the global gradient norm over plain tensors, DTensors of several meshes and pipeline stages.
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
from scratchlm.model.layers import Linear
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


def _block_lists(module: nn.Module) -> list[nn.Module]:
    """The transformer block lists inside `module` (`GPT.blocks`, also when wrapped by a mode's head/LoRA, or a
    pipeline stage's ModuleDict of its blocks, keyed by their index in the whole model)."""
    return [m for name, m in module.named_modules()
            if isinstance(m, (nn.ModuleList, nn.ModuleDict)) and name.split(".")[-1] == "blocks"]


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Recompute each block's activations in backward. Patches `forward` per block instance, so parameter
    names (and therefore checkpoints) are unchanged. Returns the number of blocks wrapped."""
    count = 0
    for blocks in _block_lists(module):
        for block in _blocks_in(blocks):
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


@dataclass(frozen=True)
class Layout:
    """How the world's processes divide: `pp` pipeline stages x `dp` data-parallel ranks x `tp` tensor-parallel
    ranks, tp innermost (rank = (pp_rank * dp + dp_rank) * tp + tp_rank): a tensor-parallel group exchanges the
    most data per layer, so its ranks are neighbours (one node's GPUs), pipeline stages the furthest apart.

    `mesh` is the run's one `DeviceMesh` (dims "pp", "dp", "tp"; hsdp splits "dp" into "dp_replicate" x
    "dp_shard"), None in one process. Loader, token counts and gradient accumulation use `dp_rank` / `dp`."""

    parallel: str = "ddp"
    pp: int = 1
    dp: int = 1
    tp: int = 1
    dp_shard: int | None = None
    rank: int = 0
    mesh: Any = None

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp % self.dp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.dp)

    @property
    def fsdp(self) -> bool:
        """Parameters sharded over the data-parallel ranks with `fully_shard` (zero2/fsdp/hsdp, more than one
        process)."""
        return self.parallel in SHARDED and self.mesh is not None

    @property
    def whole_on_every_rank(self) -> bool:
        """Every rank holds every parameter whole (ddp, zero1, one process): save and sample from the module."""
        return not self.fsdp and self.tp == 1 and self.pp == 1

    def dp_mesh(self) -> Any:
        return self.mesh["dp_replicate", "dp_shard"] if self.parallel == "hsdp" else self.mesh["dp"]


def data_parallel_size(world: int, tp: int = 1, pp: int = 1) -> int:
    """World size / (tp x pp), or the one-line error when the world is no such product."""
    if world % (tp * pp):
        raise ScratchlmError(
            f"the world size {world} is not --pp {pp} x data-parallel x --tp {tp}: launch a multiple of "
            f"{tp * pp} processes (torchrun --nproc-per-node x --nnodes) or change --tp / --pp"
        )
    return world // (tp * pp)


def plan_layout(info: DistInfo, parallel: str = "ddp", tp: int = 1, pp: int = 1,
                dp_shard: int | None = None) -> Layout:
    """Check that the world is pp x dp x tp (and hsdp's groups divide dp) and build the `DeviceMesh`."""
    dp = data_parallel_size(info.world_size, tp, pp)
    if parallel == "hsdp":
        shard = dp_shard or dp
        if dp % shard:
            raise ScratchlmError(
                f"--dp-shard {shard} does not divide the {dp} data-parallel ranks (world size {info.world_size} / "
                f"(--tp {tp} x --pp {pp})); choose a divisor of {dp} (processes per sharding group)"
            )
        dp_shard = shard
    if dp > 1 and (tp > 1 or pp > 1) and parallel == "zero1":
        raise ScratchlmError("--parallel zero1 works without --tp/--pp only; use --parallel fsdp")
    if dp > 1 and (tp > 1 or pp > 1) and parallel == "ddp":
        # DDP takes no DTensor parameters, and its reducer fails on a pipeline stage's several backward passes
        raise ScratchlmError(f"--{'tp' if tp > 1 else 'pp'} with data parallelism ({dp} data-parallel ranks) needs "
                             "--parallel fsdp, zero2 or hsdp; pass --parallel fsdp")
    mesh = None
    if info.is_distributed:
        from torch.distributed.device_mesh import init_device_mesh

        if parallel == "hsdp":
            assert dp_shard is not None
            mesh = init_device_mesh(info.device.type, (pp, dp // dp_shard, dp_shard, tp),
                                    mesh_dim_names=("pp", "dp_replicate", "dp_shard", "tp"))
        else:
            mesh = init_device_mesh(info.device.type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
    return Layout(parallel, pp, dp, tp, dp_shard, info.rank, mesh)


# ---- tensor parallelism -----------------------------------------------------------------------------------------

COLWISE = ("q_proj", "k_proj", "v_proj", "fc_in", "gate_proj", "up_proj")
"""Split by output features: each tp rank computes its heads / its slice of the MLP's hidden units."""
ROWWISE = ("o_proj", "fc_out", "down_proj")
"""Split by input features: partial products summed by one all-reduce per projection (Megatron-LM's layout)."""


def check_tensor_parallel(config: Any, tp: int) -> None:
    """Heads, KV heads and the MLP width must split evenly over `tp` ranks: one line naming what does not."""
    for name in ("n_head", "n_kv_head", "d_ff"):
        value = getattr(config, name)
        if value % tp:
            raise ScratchlmError(f"--tp {tp} does not divide the model's {name} {value}; choose a --tp that "
                                 f"divides n_head {config.n_head}, n_kv_head {config.n_kv_head} and d_ff {config.d_ff}")


def apply_tensor_parallel(module: nn.Module, tp_mesh: Any) -> int:
    """Megatron-style tensor parallelism inside every block with DTensor's `parallelize_module`: q/k/v and the
    MLP's input projections column-wise, o_proj and the MLP's output projection row-wise, so each block costs two
    all-reduces forward and two backward. Attention infers its local head count from q_proj's (sharded) width.

    The embedding, norms and the head stay whole on every tp rank (plain tensors, identical gradients: the
    all-reduce in the backward of each column-wise input makes the incoming gradient whole), which keeps the
    chunked loss of `model/loss.py` exactly as in one process; at large vocabularies the head is the part this
    layout leaves unsplit (see docs/scale.md). Returns the number of blocks parallelised."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    count = 0
    for blocks in _block_lists(module):
        for block in _blocks_in(blocks):
            plan: dict[str, Any] = {}
            for name, m in block.named_modules():
                leaf = name.rsplit(".", 1)[-1]
                if leaf in COLWISE + ROWWISE:
                    if type(m) not in (nn.Linear, Linear):
                        raise ScratchlmError(f"--tp splits plain linear layers; {name} is a {type(m).__name__} "
                                             "(an adapter?): train without --tp")
                    plan[name] = ColwiseParallel() if leaf in COLWISE else RowwiseParallel()
            parallelize_module(block, tp_mesh, plan)
            count += 1
    return count


def _blocks_in(blocks: nn.Module) -> list[nn.Module]:
    """The blocks of a `blocks` container: a ModuleList (the model) or a ModuleDict (a pipeline stage's share)."""
    return list(blocks.values()) if isinstance(blocks, nn.ModuleDict) else list(blocks)


def wrap(
    module: nn.Module,
    info: DistInfo,
    compile: bool,
    activation_checkpointing: bool,
    parallel: str = "ddp",
    dp_shard: int | None = None,
    precision: str = "fp32",
    layout: Layout | None = None,
    init: Any = None,
) -> nn.Module:
    """The module the training step calls: tensor parallelism, checkpointing, compile, then data parallelism
    (a pipeline stage is split off before this, by `train/pipeline.py`, and is the `module` here).

    ddp/zero1: DDP around the (compiled) module; save `module`, not the result. zero2/fsdp/hsdp: `fully_shard`
    on every block, then on the root, which holds the embedding, the final norm and the head: a tied head and
    embedding are one parameter of the root's group, so they stay one tensor (gathered once, updated once).
    Compile then happens per block, in place, so parameter names do not change. The result is `module` itself.
    With --tp the parameters are DTensors on the mesh's "tp" dimension first, and `fully_shard` on the "dp"
    dimension makes them 2-D (FSDP2 + TP, as torchtitan composes them).

    `init()`, if given, allocates and initialises a model built on meta once its parameters have their final
    placement: after `fully_shard`, or before DDP (which broadcasts real tensors).
    """
    layout = layout or plan_layout(info, parallel, dp_shard=dp_shard)
    if layout.tp > 1:
        apply_tensor_parallel(module, layout.mesh["tp"])
    if activation_checkpointing and enable_activation_checkpointing(module) == 0:
        raise ScratchlmError("--activation-checkpointing found no `blocks` list in the model; turn it off")
    per_block = layout.fsdp or layout.tp > 1 or layout.pp > 1  # names must stay those of the whole model
    wrapped: nn.Module = module
    if compile:
        if per_block:
            for blocks in _block_lists(module):
                for block in _blocks_in(blocks):
                    block.compile()
        else:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    if layout.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = layout.dp_mesh()
        # bf16 under FSDP2: parameters gathered in bf16, gradients reduced in fp32 (the loop skips autocast)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
            else MixedPrecisionPolicy()
        reshard = parallel != "zero2"  # zero2 keeps the gathered parameters from forward to backward
        for blocks in _block_lists(module):
            for block in _blocks_in(blocks):
                fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        if init is not None:
            init()
        return module
    if init is not None:
        init()
    if layout.dp > 1:
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


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, layout: Layout | None = None,
                   counted_elsewhere: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """Clip the global gradient norm of `params`, as `torch.nn.utils.clip_grad_norm_`, for any layout.

    torch's own handles plain tensors, or DTensors that all live on one mesh. Tensor parallelism mixes DTensors
    (the block projections) with plain tensors (embedding, norms, head), FSDP + TP mixes 2-D and 1-D meshes, and
    pipeline stages each hold a part of the model. So: the norm of each group (plain; DTensors of one mesh and
    placement, made whole over their mesh), their squares summed, summed over the pipeline stages, then every
    gradient scaled by the same factor as torch's. `counted_elsewhere`: parameters scaled but left out of the norm
    (a tied embedding's copy on the last pipeline stage: the first stage counts it)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    dtensor = [_is_dtensor(g) for g in grads]
    pp = layout is not None and layout.pp > 1
    one_mesh = all(dtensor) and len({(g.device_mesh, tuple(g.placements)) for g in grads}) == 1
    if not pp and (not any(dtensor) or one_mesh):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    groups: dict[Any, list[torch.Tensor]] = {}
    skip = {id(p.grad) for p in counted_elsewhere}
    for g, is_d in zip(grads, dtensor):
        if id(g) in skip:
            continue
        groups.setdefault((g.device_mesh, tuple(g.placements)) if is_d else None, []).append(g)
    squares = torch.zeros((), dtype=torch.float32, device=grads[0].device)
    for key, gs in groups.items():
        norm = torch.nn.utils.get_total_norm(gs, 2.0)
        norm = norm.full_tensor() if key is not None else norm
        squares += norm.float() ** 2
    if pp:
        dist.all_reduce(squares, group=layout.mesh["pp"].get_group())
    total = squares.sqrt()
    coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


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


def full_model_state(module: nn.Module, layout: Layout | None = None) -> dict[str, torch.Tensor]:
    """Collective (every rank calls it): the full state dict on CPU on rank 0, `{}` on the others. Pipeline
    stages each make their own part whole and rank 0 gathers the parts (names are the whole model's)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    reshard(module)
    if layout is None or layout.pp == 1:
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    part = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    part = {k: v.detach().cpu() for k, v in part.items()} if layout.dp_rank == layout.tp_rank == 0 else {}
    parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
    dist.gather_object(part, parts if dist.get_rank() == 0 else None, dst=0)
    return {k: v for p in parts for k, v in p.items()} if dist.get_rank() == 0 else {}


def load_full_model_state(module: nn.Module, state: dict[str, torch.Tensor], layout: Layout | None = None) -> None:
    """Collective: rank 0's full `state` into the (sharded) `module` on every rank (others pass `{}`). Pipeline
    stages hold different names, so there rank 0's state goes to every rank and each loads its own names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    reshard(module)
    if layout is None or layout.pp == 1:
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return
    state = broadcast_object(state)
    mine = {k: state[k] for k in module.state_dict()}
    set_model_state_dict(module, mine, options=StateDictOptions(full_state_dict=True))


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
    rank ever holds the whole state; `load_sharded_optimizer` reads it back into any layout.

    Flattened (`state.<name>.exp_avg`, `param_groups.<name>.lr`): the groups are keyed by parameter name too,
    because layouts group parameters differently (tensor parallelism splits a group by placement)."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(module)
    if dist.get_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)  # a crashed save's leftovers
    barrier()
    state = get_optimizer_state_dict(module, optimizer, options=_flat_options(True))
    dcp.save({"optimizer": state}, checkpoint_id=str(folder))


def _flat_options(flat: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=flat)


def _is_flat(folder: Any) -> bool:
    """Whether a DCP optimizer folder keys its groups by name (written since --tp), not by group index."""
    import torch.distributed.checkpoint as dcp

    keys = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return not any(k.startswith("optimizer.param_groups.0.") for k in keys)


def load_sharded_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, folder: Any) -> None:
    """Load a `save_sharded_optimizer` folder into this layout (another world size, `--parallel`, `--tp` or `--pp`
    included): the current state's shapes and placements are the template and DCP reads each rank's slices."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.optim import ZeroRedundancyOptimizer

    options = _flat_options(_is_flat(folder))
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        # ZeRO-1 holds whole parameters: read the whole state through a plain AdamW over them, then ZeRO keeps
        # its partition of it
        whole = torch.optim.AdamW([dict(g) for g in optimizer.param_groups])
        state = {"optimizer": get_optimizer_state_dict(module, whole, options=options)}
        dcp.load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(module, whole, state["optimizer"], options=options)
        load_optimizer_state(module, optimizer, whole.state_dict())  # index-keyed, in ZeRO's parameter order
        return
    if is_fsdp(module):
        reshard(module)
    # (creates the moments if none exist yet)
    state = {"optimizer": get_optimizer_state_dict(module, optimizer, options=options)}
    dcp.load(state, checkpoint_id=str(folder))
    set_optimizer_state_dict(module, optimizer, state["optimizer"], options=options)


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
def materialize_and_init(module: nn.Module, device: torch.device, seed: int, whole: nn.Module | None = None) -> None:
    """Allocate a module built on `meta` (and sharded) on `device` and initialise it exactly as
    `torch.manual_seed(seed); GPT(config)` does in one process, holding at most one full parameter at a time.

    The single-process build draws random numbers twice: each layer's constructor (`reset_parameters`, e.g.
    nn.Linear's Kaiming init) in construction order, then `GPT.init_weights` over its modules. Both are replayed
    module by module on a temporary full-size copy of that module's own parameters, of which this rank keeps
    its shard. Every rank draws the same numbers, so the shards fit together. (A tied head is drawn twice, as in
    one process: by its constructor and by `init_weights`, and the last draw wins.)

    `whole`: the model `module` is a pipeline stage of. Its other stages' modules stay on meta, yet their draws
    are replayed (and dropped), so this stage's numbers are those of the same layers in one process.
    """
    module.to_empty(device=device)
    _retie(module)  # to_empty gives a plain module's tied parameter two new tensors (fully_shard keeps one)
    module = whole if whole is not None else module
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
            if p.is_meta:  # another pipeline stage's: only its draws mattered
                continue
            if _is_dtensor(p):  # no communication: every rank holds the same full tensor
                part = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().copy_(part)
            else:
                p.copy_(full)
