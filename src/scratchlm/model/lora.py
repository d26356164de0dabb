"""LoRA: low-rank adapters added to chosen `nn.Linear` layers, base weights frozen.

    y = x W^T + b  +  (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r), B starts at zero

    x ──┬── W (frozen) ───────────────┐
        └── dropout ── A ── B ── *s ──┴─(+)── y

Decisions:
- Injection by module name (`inject_lora`): each targeted `nn.Linear` is swapped for a `LoRALinear` that holds
  the SAME weight/bias Parameters under the same names, plus `lora_A`/`lora_B`. So the state-dict keys of the
  base model do not change (`blocks.0.attn.q_proj.weight`), and the adapters are just the extra `*.lora_A`,
  `*.lora_B` keys: `adapter_state_dict` picks them out, and a checkpoint can hold only them.
- B starts at zero, so an injected model computes exactly what the base model did (a test checks it).
- `merge_lora` folds W += s * B A and puts plain linear layers back: the result is an ordinary model that
  every other part (generation, HF export) uses unchanged.
- Target short names map to the model's linear names (docs/contracts.md): q,k,v,o -> q_proj...o_proj; mlp ->
  fc_in/fc_out (GELU) or gate_proj/up_proj/down_proj (SwiGLU). A full module name (e.g. `lm_head`) also works.

This module knows nothing of checkpoints or training; those call `adapter_state_dict` / `load_adapter_state_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.model.layers import Linear, linear

SHORT_TARGETS: dict[str, tuple[str, ...]] = {
    "q": ("q_proj",),
    "k": ("k_proj",),
    "v": ("v_proj",),
    "o": ("o_proj",),
    "mlp": ("fc_in", "fc_out", "gate_proj", "up_proj", "down_proj"),
}


@dataclass
class LoRAConfig:
    """Low-rank adapters: which linear layers get them, their rank, scale and dropout."""

    rank: int = 8
    """Rank r of the update B A (0 disables LoRA: the whole selected model trains)."""
    alpha: float = 16.0
    """Scale: the update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    targets: tuple[str, ...] = ("q", "k", "v", "o")
    """Layers to adapt: q, k, v, o, mlp, or full module names such as lm_head."""

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):  # "q,k,v" from a YAML file or a flag
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        else:
            self.targets = tuple(p.strip() for t in self.targets for p in t.split(",") if p.strip())
        if self.rank < 0:
            raise ConfigError(f"--lora-rank must be >= 0, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"--lora-alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--lora-dropout must lie in [0, 1), got {self.dropout}")
        if self.rank > 0 and not self.targets:
            raise ConfigError("--lora-targets is empty; name at least one of q,k,v,o,mlp")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (its own weight and bias Parameters, same names) plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), shared with the base layer: same Parameter, same key
        self.bias = base.bias
        self.rank, self.scaling = rank, alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))  # (out, r)
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise weights
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., in) -> (..., out)
        update = linear(linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> Linear:
        """A plain linear layer with W + s * B A (computed in float32, stored in the weight's dtype)."""
        out = Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = self.lora_B.float() @ self.lora_A.float()  # (out, in)
            out.weight.copy_((self.weight.float() + self.scaling * delta).to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.weight.requires_grad_(self.weight.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def resolve_targets(targets: tuple[str, ...]) -> set[str]:
    """Short names (q, k, v, o, mlp) -> module names; anything else is taken as a module name."""
    names: set[str] = set()
    for t in targets:
        names.update(SHORT_TARGETS.get(t, (t,)))
    return names


def inject_lora(model: nn.Module, config: LoRAConfig, freeze: bool = True) -> list[str]:
    """Swap the targeted linear layers for `LoRALinear`s in place; returns their qualified names.

    With `freeze`, every parameter except the adapters stops requiring gradients (unfreeze a head afterwards).
    A target that matches no linear layer is a user error.
    """
    wanted = resolve_targets(config.targets)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear))}
    for t in config.targets:
        if not any(name.rsplit(".", 1)[-1] in resolve_targets((t,)) for name in linears):
            leaf_names = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ScratchlmError(
                f"LoRA target {t!r} matches no linear layer of this model; use q,k,v,o,mlp or one of: "
                f"{', '.join(leaf_names)}"
            )
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, leaf, LoRALinear(module, config.rank, config.alpha, config.dropout))
            replaced.append(name)
    return replaced


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain linear layers (in place; returns model).

    Exact for every target, a tied head included: an adapter on a head that shares the embedding's matrix
    changes the head only, so the merged head gets its own matrix and the model is untied (`tie_embeddings`
    False); folding the update into the shared matrix would change the embedding too.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            tied = any(p is module.weight and not n.startswith(f"{name}.")
                       for n, p in model.named_parameters(remove_duplicate=False))
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, leaf, module.merged())
            config = getattr(model, "config", None)
            if tied and getattr(config, "tie_embeddings", False):
                config.tie_embeddings = False  # type: ignore[union-attr]
    return model


def is_adapter_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`*.lora_A`, `*.lora_B`), detached: what an adapter checkpoint stores."""
    return {k: v.detach() for k, v in model.state_dict().items() if is_adapter_key(k)}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapters into a model injected with the same config; key or shape mismatches are user errors."""
    own = adapter_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ScratchlmError(
            f"LoRA adapters do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "use the base checkpoint and --lora-targets they were trained with"
        )
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ScratchlmError(
                f"LoRA adapter {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; "
                "use the --lora-rank it was trained with"
            )
    model.load_state_dict(state, strict=False)
