"""`scratchlm.model.sizing` formulas against counts taken from built models."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scratchlm.model import GPT, ModelConfig, sizing

CONFIGS = {
    "gpt2-tiny": {},
    "llama-tiny": {},
    "gpt2-tiny-untied-nobias": {"tie_embeddings": False, "bias": False},
    "llama-tiny-mha-tied": {"n_kv_head": 4, "tie_embeddings": True, "bias": True},
}


def _config(name: str, **kw) -> ModelConfig:
    return ModelConfig.from_preset(name.split("-")[0] + "-tiny", vocab_size=300, context_length=64,
                                   **{**CONFIGS[name], **kw})


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_counts_exact(name) -> None:
    config = _config(name)
    model = GPT(config)
    counts = sizing.param_counts(config)
    assert counts.total == model.num_params()
    assert counts.non_embedding == model.num_params(non_embedding=True)


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-xl", "tinyllama-1.1b", "llama-3.2-1b"])
def test_parameter_counts_of_big_presets_on_meta(preset) -> None:
    config = ModelConfig.from_preset(preset)
    with torch.device("meta"):
        assert sizing.param_counts(config).total == GPT(config).num_params()


@pytest.mark.parametrize("name", CONFIGS)
def test_flops_formula_equals_counted_matmul_flops(name) -> None:
    """Forward + backward of the manual path (full T x T attention matmuls) counted by torch's FlopCounterMode."""
    config = _config(name, attn_impl="manual")
    model = GPT(config)
    B, T = 2, 32
    ids = torch.randint(0, 300, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(ids).sum().backward()
    assert counter.get_total_flops() == B * T * sizing.train_flops_per_token(config, T)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    assert counter.get_total_flops() == B * T * sizing.forward_flops_per_token(config, T)


def test_gpt2_flops_match_the_6n_rule() -> None:
    s = sizing.size(ModelConfig.from_preset("gpt2"), batch=1, context=1024)
    matmul = 85_056_000 - 12 * (4 * 768 + 3072 + 768 + 4 * 768) - 2 * 768 + 50257 * 768  # weights only + head
    assert s.train_flops_per_token == 6 * matmul + 12 * 12 * 768 * 1024
    assert s.chinchilla_tokens == 20 * 124_439_808


def test_weight_grad_adamw_bytes_equal_the_tensors() -> None:
    config = _config("llama-tiny")
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (1, 8))).sum().backward()
    opt.step()
    s = sizing.size(config, precision="fp32")
    params = list(model.parameters())
    assert s.weights_bytes == sum(p.numel() * p.element_size() for p in params)
    assert s.grads_bytes == sum(p.grad.numel() * p.grad.element_size() for p in params)
    moments = [t for st in opt.state.values() for k, t in st.items() if k in ("exp_avg", "exp_avg_sq")]
    assert s.adamw_bytes == sum(t.numel() * t.element_size() for t in moments)
    assert s.kv_cache_bytes_per_token == 2 * config.n_layer * config.n_kv_head * config.head_dim * 4


def _saved_activation_bytes(model: GPT, B: int, T: int, checkpointed: bool = False) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in forward + the chunked cross-entropy."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and t.is_floating_point():
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    ids, targets = torch.randint(0, model.config.vocab_size, (2, B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, targets=targets, reduction="mean")  # the training modes' path: the chunked loss
    return sum(seen.values())


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_activation_bytes_equal_saved_tensors(name, impl) -> None:
    config = _config(name, attn_impl=impl)
    B, T = 2, 32
    expected = sizing.size(config, batch=B, context=T).activations_bytes
    assert _saved_activation_bytes(GPT(config), B, T) == expected


def test_flops_of_local_and_sparse_patterns() -> None:
    """Attention counts the keys a pattern shows a query (a block-sparse kernel's work); the masked dense kernels
    here do the dense work, which FlopCounterMode confirms."""
    T, W, S = 64, 16, 8
    dense = _config("llama-tiny", attn_impl="manual")  # 2 layers
    H, D = dense.n_head, dense.head_dim
    local = dense.replace(attn_pattern=("local", "dense"), attn_window=W)
    per_key = 2 * 2 * H * D  # QK^T and PV, per query and key
    assert sizing.forward_flops_per_token(local, T) == sizing.forward_flops_per_token(dense, T) - per_key * (T - W)
    full_window = dense.replace(attn_pattern=("local",), attn_window=T)
    assert sizing.forward_flops_per_token(full_window, T) == sizing.forward_flops_per_token(dense, T)
    # strided at n = S^2: S local keys + n / S = S strided ones, O(sqrt(n)) per query (Child et al.)
    strided = dense.replace(attn_pattern=("strided",), attn_stride=S)
    assert sizing.forward_flops_per_token(strided, T) - 2 * sizing.param_counts(dense).matmul == 2 * per_key * 2 * S
    fixed = dense.replace(attn_pattern=("fixed",), attn_stride=S, attn_summary=2)
    assert sizing.forward_flops_per_token(fixed, T) - 2 * sizing.param_counts(dense).matmul == 2 * per_key * (S + 2 * S)
    ids = torch.randint(0, 300, (2, T))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        GPT(local)(ids)
    assert counter.get_total_flops() == 2 * T * sizing.forward_flops_per_token(dense, T)


def test_kv_cache_bytes_equal_the_rolling_cache() -> None:
    from scratchlm.model import KVCache

    config = _config("llama-tiny", attn_pattern=("local", "local", "local", "dense"), attn_window=16, n_layer=4)
    model = GPT(config)
    for tokens in (8, 16, 64):
        cache = KVCache.for_model(model, 1, tokens, rolling=True)
        assert sizing.kv_cache_bytes(config, tokens, 4) == cache.nbytes
    s = sizing.size(config)
    assert s.kv_cache_bytes_per_sequence == s.kv_cache_bytes_per_token * (3 * 16 + 64) // 4


def test_model_info_shows_the_pattern(capsys) -> None:
    from scratchlm.cli.main import main

    args = ["model", "info", "--preset", "llama-tiny", "--set", "attn_pattern=local,local,local,dense",
            "attn_window=64", "n_layer=4", "context_length=256"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = dict(line.split("  ", 1) for line in out.splitlines() if "  " in line)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["attention"] == "local x3 + dense per 4 layers (window 64)"
    assert "per 256-token sequence; local layers keep 64 tokens)" in out
    assert main([*args[:-1], "context_length=32"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: model attn_window=64 is larger than context_length=32; set attn_window to at most the context "
        "(a window covering the context is dense attention)"
    )


# ---- the per-rank planner of a parallel layout --------------------------------------------------------------


def _tp_local_elements(model: GPT, tp: int) -> int:
    """What a tp rank holds, counted on the built model by the tensor-parallel rules of train/distributed.py:
    column-wise weights and biases and row-wise weights split, everything else whole."""
    from scratchlm.train.distributed import COLWISE, ROWWISE

    n = 0
    for name, p in model.named_parameters():
        module, kind = name.rsplit(".", 2)[-2:]
        split = module in COLWISE or (module in ROWWISE and kind == "weight")
        n += p.numel() // tp if split else p.numel()
    return n


@pytest.mark.parametrize("name", CONFIGS)
def test_layout_planner_matches_the_model(name) -> None:
    config = _config(name)
    model = GPT(config)
    one = sizing.size(config, batch=2)
    [plain] = sizing.plan_layout_memory(config, batch=2)
    assert (plain.weights_bytes, plain.grads_bytes, plain.adamw_bytes, plain.activations_bytes) == (
        one.weights_bytes, one.grads_bytes, one.adamw_bytes, one.activations_bytes)
    [fsdp] = sizing.plan_layout_memory(config, batch=2, world_size=2, parallel="fsdp")
    assert abs(fsdp.weights_bytes - one.weights_bytes / 2) <= 4 * 64  # rounded up per tensor
    [zero1] = sizing.plan_layout_memory(config, batch=2, world_size=2, parallel="zero1")
    assert zero1.weights_bytes == one.weights_bytes and zero1.adamw_bytes * 2 == pytest.approx(one.adamw_bytes, abs=8)
    [tp] = sizing.plan_layout_memory(config, batch=2, world_size=2, tp=2)
    assert tp.weights_bytes == 4 * _tp_local_elements(model, 2)
    assert tp.activations_bytes < one.activations_bytes
    if not config.tie_embeddings:
        stages = sizing.plan_layout_memory(config, batch=2, world_size=2, pp=2)
        assert sum(s.weights_bytes for s in stages) == one.weights_bytes
        assert [s.blocks for s in stages] == sizing.stage_bounds(config.n_layer, 2)


def test_model_info_prints_each_stage(capsys) -> None:
    from scratchlm.cli.main import main

    assert main(["model", "info", "--preset", "gpt2", "--world-size", "8", "--parallel", "fsdp", "--tp", "2",
                 "--pp", "2", "--batch", "4", "--context", "1024"]) == 0
    out = capsys.readouterr().out
    assert "per rank, 8 processes = pp 2 x dp 2 x tp 2, --parallel fsdp" in out
    assert "stage 0 (blocks 0-5)" in out and "stage 1 (blocks 6-11)" in out
    assert main(["model", "info", "--preset", "gpt2", "--world-size", "3", "--tp", "2"]) == 2
