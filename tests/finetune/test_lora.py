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


# ---- on the real model ----------------------------------------------------------------------------------------


def test_gpt2_shape_adapter_checkpoint_is_over_20x_smaller() -> None:
    from scratchlm.model import GPT, ModelConfig

    with torch.device("meta"):  # shapes only: no memory, no init
        model = GPT(ModelConfig.from_preset("gpt2"))
    # what checkpoint.save stores: every tensor once (the head is tied to the token embedding)
    full = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k != "lm_head.weight")
    inject_lora(model, LoRAConfig(rank=8, targets=("q", "k", "v", "o")))
    adapters = sum(t.numel() * t.element_size() for t in adapter_state_dict(model).values())
    # 12 layers x 4 projections x (8 x 768 + 768 x 8) = 589,824 parameters vs 124,439,808
    assert adapters == 589_824 * 4 and full == 124_439_808 * 4
    assert full / adapters >= 20  # about 211x
    inject_lora(model, LoRAConfig(rank=8, targets=("mlp",)))
    with_mlp = sum(t.numel() * t.element_size() for t in adapter_state_dict(model).values())
    assert full / with_mlp >= 20  # about 93x with the MLP adapted too


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_lora_merge_command_gives_a_plain_checkpoint_with_the_same_logits(preset: str, tmp_path) -> None:
    from scratchlm import checkpoint
    from scratchlm.cli.main import main
    from scratchlm.model import GPT, ModelConfig
    from scratchlm.tokenizer import CharTokenizer

    tok = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz "])
    llama = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, n_kv_head=2, tie_embeddings=False)
    config = ModelConfig(vocab_size=32, context_length=32, n_layer=2, n_head=4, d_model=32,
                         **(llama if preset == "llama" else {}))
    torch.manual_seed(3)
    checkpoint.save(tmp_path / "base", GPT(config), tok)
    model, _ = checkpoint.load(tmp_path / "base")
    lora = LoRAConfig(rank=4, alpha=8, targets=("q", "k", "v", "o", "mlp"))
    inject_lora(model, lora)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)
    lora_section = {**lora.__dict__, **checkpoint.base_record(tmp_path / "base")}
    checkpoint.save_finetuned(tmp_path / "adapted", model, tok, {"lora": lora_section}, adapters_only=True)
    assert not (tmp_path / "adapted" / "model.safetensors").exists()
    reloaded = checkpoint.read(tmp_path / "adapted", merge=False).model
    ids = torch.randint(0, 27, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = model(ids)
        torch.testing.assert_close(reloaded(ids), adapted, rtol=0, atol=0)
    assert main(["lora", "merge", "--checkpoint", str(tmp_path / "adapted"), "--out", str(tmp_path / "merged")]) == 0
    merged, _ = checkpoint.load(tmp_path / "merged")  # a plain checkpoint: the ordinary loader reads it
    assert "lora" not in checkpoint.load_config(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted, rtol=0, atol=1e-5)
    assert main(["convert", "to-hf", str(tmp_path / "merged"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
