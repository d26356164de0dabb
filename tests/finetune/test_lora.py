"""LoRA: zero-init identity, only adapters train, merge == base + adapters, adapter-only size, bad targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchlm.errors import ScratchlmError
from scratchlm.model.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    inject_lora,
    load_adapter_state_dict,
    merge_lora,
)


class ToyBlock(nn.Module):
    """The contract's linear names, enough for LoRA's module surgery."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c, c) for _ in range(4))
        self.fc_in, self.fc_out = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.o_proj(self.q_proj(x) * torch.sigmoid(self.k_proj(x)) + self.v_proj(x))
        return x + a + self.fc_out(torch.relu(self.fc_in(x)))


class Toy(nn.Module):
    def __init__(self, c: int = 16, n: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ToyBlock(c) for _ in range(n))
        self.lm_head = nn.Linear(c, 11, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.lm_head(x)


def test_injected_model_starts_equal_and_only_adapters_change() -> None:
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(3, 5, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    names = inject_lora(model, LoRAConfig(rank=4, targets=("q", "v", "mlp")))
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("q_proj", "v_proj", "fc_in", "fc_out")]
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)  # B = 0: exactly the base model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():  # the base keys are unchanged in name AND value
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    assert all(not torch.equal(t, torch.zeros_like(t)) for k, t in adapter_state_dict(model).items() if "lora_B" in k)


def test_merged_weights_give_the_same_logits() -> None:
    torch.manual_seed(1)
    model = Toy()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets=("q", "k", "v", "o", "mlp", "lm_head")))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.2)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        adapted = model(x)
        merge_lora(model)
        merged = model(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(Toy().state_dict())  # a plain model again
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)


def test_adapter_state_dict_round_trip() -> None:
    torch.manual_seed(2)
    a, b = Toy(), Toy()
    b.load_state_dict(a.state_dict())
    cfg = LoRAConfig(rank=2, targets=("q", "o"))
    inject_lora(a, cfg)
    inject_lora(b, cfg)
    with torch.no_grad():
        for m in a.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_()
    load_adapter_state_dict(b, adapter_state_dict(a))
    x = torch.randn(1, 3, 16)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    with pytest.raises(ScratchlmError, match="--lora-rank"):
        c = Toy()
        inject_lora(c, LoRAConfig(rank=3, targets=("q", "o")))
        load_adapter_state_dict(c, adapter_state_dict(a))


def test_target_matching_no_layer_is_a_user_error() -> None:
    with pytest.raises(ScratchlmError, match=r"LoRA target 'w_qkv' matches no linear layer.*fc_in"):
        inject_lora(Toy(), LoRAConfig(targets=("q", "w_qkv")))


def test_targets_from_a_comma_list() -> None:
    assert LoRAConfig(targets=("q,k,v,o,mlp",)).targets == ("q", "k", "v", "o", "mlp")
    assert LoRAConfig(targets="q, v").targets == ("q", "v")  # type: ignore[arg-type]
