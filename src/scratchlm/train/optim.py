"""AdamW with weight decay on matrices only (or Muon for the blocks' matrices), and the learning-rate schedules
(pure functions of the step).

Why decay only matrices: weight decay pulls weights towards zero to regularise the linear maps (and embeddings);
doing that to biases, LayerNorm/RMSNorm gains or other vectors only shifts or shrinks activations, which hurts and
regularises nothing. The rule is by shape (`p.dim() >= 2`), so it holds for every model family and for LoRA's A/B.

The schedule is `lr_at(step)`: warm-up, then cosine, linear, warmup-stable-decay (WSD) or constant to the minimum.
It keeps no state beyond the step, which is why resume only needs the step (and the rollback scale, see
`train/guard.py`) to reproduce it exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from scratchlm.errors import ScratchlmError


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over the trainable parameters: matrices decay, vectors and scalars do not.

    Tied weights appear once (`named_parameters` de-duplicates them), so they are updated once per step.
    Under tensor parallelism a group is split further by where its tensors live (plain tensors; DTensors of one
    mesh and placement), because the fused and foreach kernels take one kind per call.
    """
    groups: dict[tuple[bool, Any], list[nn.Parameter]] = {}
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        mesh = getattr(p, "device_mesh", None)
        where = (mesh, tuple(p.placements)) if mesh is not None else None
        groups.setdefault((p.dim() >= 2, where), []).append(p)
    wheres = list(dict.fromkeys(where for _, where in groups))
    out = []
    for decays, name in ((True, "decay"), (False, "no_decay")):
        for where in wheres:
            if (decays, where) in groups:
                out.append({"params": groups[decays, where], "weight_decay": weight_decay if decays else 0.0,
                            "name": name})
    return out


def build_optimizer(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device_type: str,
    shard_state: bool = False,
    *,
    optimizer: str = "adamw",
    muon_lr: float = 0.02,
    muon_momentum: float = 0.95,
) -> torch.optim.Optimizer | MuonWithAdamW:
    """AdamW over `param_groups`, fused into one kernel per step where this torch build supports it; or, with
    `optimizer="muon"`, `MuonWithAdamW`.

    Fused and foreach AdamW compute the same update; fused is faster on CUDA and (recent torch) on CPU.
    `shard_state` (ZeRO-1, under torchrun): `ZeroRedundancyOptimizer` gives each process the AdamW moments of
    its share of the parameters; it steps that share and broadcasts the updated parameters.
    """
    groups = param_groups(module, weight_decay)
    if not groups:
        raise ScratchlmError(
            "the model has no trainable parameters (every weight is frozen); choose what trains (e.g. --train last "
            "or --lora.rank 8)"
        )
    if optimizer == "muon":
        return MuonWithAdamW(module, lr, weight_decay, betas, eps, device_type, muon_lr, muon_momentum)
    if shard_state:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        fused = device_type in ("cuda", "cpu", "mps")
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=lr, betas=betas, eps=eps,
                                       fused=fused)
    return _adamw(groups, lr, betas, eps, device_type)


def _adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float,
           device_type: str) -> torch.optim.AdamW:
    fused = device_type in ("cuda", "cpu", "mps")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    except (RuntimeError, TypeError):  # an older build or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def is_muon_matrix(name: str, p: torch.Tensor) -> bool:
    """Muon's parameters: the 2-D weights inside the Transformer blocks (attention and MLP projections).

    Muon orthogonalises each update, which suits hidden linear maps; embeddings and the output head are lookups
    and a classifier rather than maps between hidden spaces (Jordan et al. 2024 keep them on AdamW, as do the
    speedruns), vectors have nothing to orthogonalise, and LoRA's factors are left to AdamW too."""
    return p.dim() == 2 and ".blocks." in f".{name}" and "lora" not in name


class MuonWithAdamW:
    """Muon for the blocks' matrices and AdamW for the rest, stepped as one optimizer.

    It offers what the loop and `torch.amp.GradScaler` use of an optimizer: `param_groups` (Muon's first, each
    group a live dict, so `set_lr` reaches them), `step` and `zero_grad`. Its state is saved and loaded per part,
    name-keyed, by `train/distributed.py` (`{"muon": ..., "adamw": ...}`). Muon's groups carry `lr_ratio` =
    muon_lr / lr: the one schedule drives both learning rates.
    """

    def __init__(self, module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
                 device_type: str, muon_lr: float, muon_momentum: float) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise ScratchlmError(f"--optimizer muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                                 f"{torch.__version__}: upgrade torch or use --optimizer adamw")
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        matrices = [p for n, p in trainable if is_muon_matrix(n, p)]
        if not matrices:
            raise ScratchlmError("--optimizer muon found no trainable 2-D weights inside the blocks (only "
                                 "embeddings, heads, norms or LoRA factors train); use --optimizer adamw")
        taken = {id(p) for p in matrices}
        rest = nn.ParameterList([p for _, p in trainable if id(p) not in taken])
        self.muon = torch.optim.Muon(
            [{"params": matrices, "name": "muon", "lr_ratio": muon_lr / lr}],
            lr=muon_lr, weight_decay=weight_decay, momentum=muon_momentum, nesterov=True,
        )
        self.adamw = _adamw(param_groups(rest, weight_decay), lr, betas, eps, device_type) if len(rest) else None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def lr_at(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int | None,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warm-up: `lr * (step + 1) / warmup_steps`, so the last warm-up step (warmup_steps - 1) runs at `lr` and
    step 0 is not wasted at zero. Then, over the steps from `warmup_steps` to `total_steps`:
      cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p from 0 to 1
      linear:   lr - (lr - min_lr) * p
      wsd:      lr until the last `decay_fraction` of the run, then linear to min_lr
      constant: lr
    Past `total_steps` (or when it is unknown, e.g. a time-budget run) the schedule holds its final value
    (`lr` when unknown).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant" or total_steps is None:
        return lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
        if step < decay_start:
            return lr
        p = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return lr - (lr - min_lr) * p
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return lr - (lr - min_lr) * p
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * p)) * (lr - min_lr)
    raise AssertionError(f"unknown schedule {schedule}")  # TrainConfig validates the name


def set_lr(optimizer: torch.optim.Optimizer | MuonWithAdamW, lr: float) -> None:
    """The schedule's learning rate on every group (times the group's `lr_ratio`: Muon's own peak)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)
