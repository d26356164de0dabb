"""Maps between Hugging Face GPT-2 / Llama / Mistral configs and state dicts and ours. Pure functions on dicts of
tensors.

Reading and writing the folders (safetensors, shards, tokenizer files) is `scratchlm.checkpoint`'s job; this
module only knows names, shapes and the two layout differences:

- GPT-2 uses `Conv1D` layers whose weights are stored (in, out), the transpose of `nn.Linear`'s (out, in), and
  fuses q, k and v into one `c_attn` projection: we transpose and split it.
- HF Llama checkpoints already use the "rotate_half" RoPE layout that `scratchlm.model.layers.apply_rope`
  implements (their q/k rows were permuted from Meta's interleaved layout during conversion), so Llama weights
  map one to one.
- Mistral is Llama's layout and names with sliding-window attention in every layer: `sliding_window` W maps to
  `attn_pattern: [local]`, `attn_window: W` (the same rule: a query sees itself and the W - 1 positions before
  it). Other patterns (strided, fixed, mixed per-layer lists) have no exact HF equivalent and are refused.

    GPT-2 (HF)                          ours                       Llama (HF)
    wte                                 tok_emb                    model.embed_tokens
    wpe                                 pos_emb                    (RoPE: none)
    h.{i}.ln_1                          blocks.{i}.norm1           model.layers.{i}.input_layernorm
    h.{i}.attn.c_attn  (C, 3C) split    blocks.{i}.attn.q/k/v_proj model.layers.{i}.self_attn.q/k/v_proj
    h.{i}.attn.c_proj  (transposed)     blocks.{i}.attn.o_proj     model.layers.{i}.self_attn.o_proj
    h.{i}.ln_2                          blocks.{i}.norm2           model.layers.{i}.post_attention_layernorm
    h.{i}.mlp.c_fc / c_proj (transp.)   blocks.{i}.mlp.fc_in/out   model.layers.{i}.mlp.gate/up/down_proj
    ln_f                                norm                       model.norm
    lm_head (tied: absent)              lm_head                    lm_head (tied: absent)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from scratchlm.errors import ScratchlmError
from scratchlm.model.config import ModelConfig

SUPPORTED = ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def architecture(hf_config: Mapping[str, Any]) -> str:
    """The HF architecture of a `config.json` (one of SUPPORTED), or a one-line error."""
    archs = hf_config.get("architectures") or []
    model_type = hf_config.get("model_type")
    for arch in archs:
        if arch in SUPPORTED:
            return arch
    by_type = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
    if not archs and model_type in by_type:
        return by_type[model_type]
    name = ", ".join(archs) or f"model_type {model_type!r}"
    raise ScratchlmError(
        f"Hugging Face architecture {name} is not supported; scratchlm converts {', '.join(SUPPORTED)} folders"
    )


# ---- configs -------------------------------------------------------------------------------------------------------
def config_from_hf(hf: Mapping[str, Any], attn_impl: str = "sdpa") -> ModelConfig:
    """A `ModelConfig` equivalent to an HF GPT-2 or Llama `config.json`."""
    arch = architecture(hf)
    if arch == "GPT2LMHeadModel":
        act = hf.get("activation_function", "gelu_new")
        if act not in _GELU_TANH:
            _unsupported(f"GPT-2 activation_function {act!r} (scratchlm's GPT-2 MLP uses the tanh GELU)")
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if hf.get(key):
                _unsupported(f"GPT-2 option {key}=true")
        if hf.get("scale_attn_weights", True) is False:
            _unsupported("GPT-2 option scale_attn_weights=false")
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf.get("n_positions", 1024),
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_model=hf["n_embd"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp="gelu",
            positions="learned",
            bias=True,
            dropout=0.0,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            attn_impl=attn_impl,
        )
    # Llama, and Mistral: Llama's layers and names without biases, plus sliding-window attention in every layer
    if arch == "MistralForCausalLM":
        if hf.get("layer_types") and set(hf["layer_types"]) != {"sliding_attention"}:
            _unsupported("Mistral with per-layer layer_types (alternating attention)")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            _unsupported("Mistral with biases")
    if hf.get("hidden_act", "silu") != "silu":
        _unsupported(f"Llama hidden_act {hf.get('hidden_act')!r} (scratchlm's SwiGLU uses silu)")
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        _unsupported("Llama with attention_bias != mlp_bias")
    n_head = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_head
    if head_dim * n_head != hf["hidden_size"]:
        _unsupported(f"Llama head_dim {head_dim} * {n_head} heads != hidden_size {hf['hidden_size']}")
    # transformers >= 5 keeps theta and scaling in `rope_parameters`; older versions in rope_theta/rope_scaling.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling: dict[str, Any] = {}
    if rope_type == "llama3":
        scaling = dict(
            rope_scaling_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_context_length=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        _unsupported(f"Llama RoPE scaling type {rope_type!r} (scratchlm supports none and llama3)")
    context = hf.get("max_position_embeddings", 2048)
    window = hf.get("sliding_window") if arch == "MistralForCausalLM" else None
    if window is not None and window < context:  # a window covering the context is dense attention
        scaling.update(attn_pattern=("local",), attn_window=int(window))
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        context_length=context,
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        positions="rope",
        rope_theta=float(theta),
        bias=attention_bias,
        dropout=0.0,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        attn_impl=attn_impl,
        **scaling,
    )


def hf_architecture_for(config: ModelConfig) -> str:
    """Which HF class can hold this config, or a one-line error."""
    kinds = set(config.layer_patterns)
    if kinds != {"dense"} and kinds != {"local"}:
        raise ScratchlmError(
            f"no Hugging Face architecture matches attn_pattern {','.join(config.attn_pattern)}; only all-dense "
            "models and all-local ones (Mistral's sliding window) export; keep it as a scratchlm checkpoint"
        )
    if kinds == {"local"}:
        if (config.norm, config.mlp, config.positions, config.bias) != ("rmsnorm", "swiglu", "rope", False):
            raise ScratchlmError(
                "sliding-window attention exports as Mistral, which needs norm=rmsnorm, mlp=swiglu, positions=rope "
                "and bias=false; keep this model as a scratchlm checkpoint"
            )
        return "MistralForCausalLM"
    if (config.norm, config.mlp, config.positions) == ("layernorm", "gelu", "learned") and config.n_rep == 1:
        return "GPT2LMHeadModel"
    if (config.norm, config.mlp, config.positions) == ("rmsnorm", "swiglu", "rope"):
        return "LlamaForCausalLM"
    raise ScratchlmError(
        f"no Hugging Face architecture matches norm={config.norm}, mlp={config.mlp}, positions={config.positions}"
        f" (GPT-2: layernorm+gelu+learned without GQA; Llama: rmsnorm+swiglu+rope); export a config of one family"
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """An HF `config.json` for `config` (GPT2LMHeadModel or LlamaForCausalLM)."""
    arch = hf_architecture_for(config)
    if arch == "GPT2LMHeadModel":
        return {
            "architectures": [arch],
            "model_type": "gpt2",
            "vocab_size": config.vocab_size,
            "n_positions": config.context_length,
            "n_ctx": config.context_length,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.d_ff,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "initializer_range": 0.02,
            "tie_word_embeddings": config.tie_embeddings,
            "torch_dtype": "float32",
        }
    rope_scaling = None
    if config.rope_scaling_factor is not None:
        rope_scaling = {
            "rope_type": "llama3",
            "factor": config.rope_scaling_factor,
            "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_context_length,
        }
    extra: dict[str, Any] = {}
    if arch == "MistralForCausalLM":  # same fields as Llama's, plus the window (and no bias options)
        extra = {"model_type": "mistral", "sliding_window": config.attn_window}
    return {
        "architectures": [arch],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",
        **extra,
    }


def _unsupported(what: str) -> None:
    raise ScratchlmError(f"Hugging Face {what} is not supported by scratchlm; convert a standard GPT-2/Llama model")


# ---- state dicts ---------------------------------------------------------------------------------------------------
_GPT2_PLAIN = {"ln_1": "norm1", "ln_2": "norm2"}
_LLAMA_LAYER = {
    "input_layernorm": "norm1",
    "post_attention_layernorm": "norm2",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "norm.weight"}


def state_dict_from_hf(config: ModelConfig, hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors -> our state dict for `config` (unknown HF names are an error; the tied head is left out)."""
    if hf_architecture_for(config) == "GPT2LMHeadModel":
        return _gpt2_from_hf(config, hf_sd)
    out: dict[str, torch.Tensor] = {}
    for name, t in hf_sd.items():
        if name in _LLAMA_TOP:
            out[_LLAMA_TOP[name]] = t
        elif name == "lm_head.weight":
            if not config.tie_embeddings:
                out[name] = t
        elif name.startswith("model.layers."):
            i, rest = name[len("model.layers.") :].split(".", 1)
            module, param = rest.rsplit(".", 1)
            if name.endswith("inv_freq"):
                continue  # old checkpoints store the RoPE frequencies: we recompute them
            if module not in _LLAMA_LAYER:
                raise ScratchlmError(f"unexpected tensor {name} in the Llama weights; is this a standard Llama?")
            out[f"blocks.{i}.{_LLAMA_LAYER[module]}.{param}"] = t
        else:
            raise ScratchlmError(f"unexpected tensor {name} in the Llama weights; is this a standard Llama?")
    return out


def _gpt2_from_hf(config: ModelConfig, hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    C = config.d_model
    for name, t in hf_sd.items():
        # The original "gpt2" upload has no "transformer." prefix; save_pretrained writes one.
        key = name.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old checkpoints store the causal mask as a buffer
        if key == "lm_head.weight":
            if not config.tie_embeddings:
                out["lm_head.weight"] = t
            continue
        if key in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            top = {"wte": "tok_emb", "wpe": "pos_emb", "ln_f": "norm"}[key.split(".")[0]]
            out[f"{top}.{key.split('.')[1]}"] = t
            continue
        if not key.startswith("h."):
            raise ScratchlmError(f"unexpected tensor {name} in the GPT-2 weights; is this a standard GPT-2?")
        _, i, rest = key.split(".", 2)
        module, param = rest.rsplit(".", 1)
        p = f"blocks.{i}"
        if module in _GPT2_PLAIN:
            out[f"{p}.{_GPT2_PLAIN[module]}.{param}"] = t
        elif module == "attn.c_attn":
            # Conv1D (C, 3C): columns [q | k | v]. As nn.Linear (3C, C) rows; bias (3C,) likewise.
            t = t.t() if param == "weight" else t
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{p}.attn.{proj}.{param}"] = t[j * C : (j + 1) * C].contiguous()
        elif module in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            ours = {"attn.c_proj": "attn.o_proj", "mlp.c_fc": "mlp.fc_in", "mlp.c_proj": "mlp.fc_out"}[module]
            out[f"{p}.{ours}.{param}"] = t.t().contiguous() if param == "weight" else t
        else:
            raise ScratchlmError(f"unexpected tensor {name} in the GPT-2 weights; is this a standard GPT-2?")
    return out


def state_dict_to_hf(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> HF tensors (contiguous; the tied head left out, as `save_pretrained` does)."""
    arch = hf_architecture_for(config)
    out: dict[str, torch.Tensor] = {}
    if arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        inv_top = {v: k for k, v in _LLAMA_TOP.items()}
        inv_layer = {v: k for k, v in _LLAMA_LAYER.items()}
        for name, t in sd.items():
            if name in inv_top:
                out[inv_top[name]] = t
            elif name == "lm_head.weight":
                if not config.tie_embeddings:
                    out[name] = t
            else:
                _, i, rest = name.split(".", 2)
                module, param = rest.rsplit(".", 1)
                out[f"model.layers.{i}.{inv_layer[module]}.{param}"] = t
        return {k: v.contiguous() for k, v in out.items()}
    # GPT-2: always has biases; a bias-free config gets exact zeros (and LayerNorm biases of zero).
    zeros = lambda n: torch.zeros(n, dtype=sd["tok_emb.weight"].dtype)  # noqa: E731
    C = config.d_model
    out["transformer.wte.weight"] = sd["tok_emb.weight"]
    out["transformer.wpe.weight"] = sd["pos_emb.weight"]
    out["transformer.ln_f.weight"] = sd["norm.weight"]
    out["transformer.ln_f.bias"] = sd.get("norm.bias", zeros(C))
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(config.n_layer):
        p, h = f"blocks.{i}", f"transformer.h.{i}"
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f"{h}.{theirs}.weight"] = sd[f"{p}.{ours}.weight"]
            out[f"{h}.{theirs}.bias"] = sd.get(f"{p}.{ours}.bias", zeros(C))
        qkv = [sd[f"{p}.attn.{proj}.weight"] for proj in ("q_proj", "k_proj", "v_proj")]
        out[f"{h}.attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()  # (C, 3C)
        out[f"{h}.attn.c_attn.bias"] = torch.cat(
            [sd.get(f"{p}.attn.{proj}.bias", zeros(C)) for proj in ("q_proj", "k_proj", "v_proj")]
        )
        for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("mlp.fc_in", "mlp.c_fc"), ("mlp.fc_out", "mlp.c_proj")):
            w = sd[f"{p}.{ours}.weight"]
            out[f"{h}.{theirs}.weight"] = w.t()
            out[f"{h}.{theirs}.bias"] = sd.get(f"{p}.{ours}.bias", zeros(w.shape[0]))
    return {k: v.contiguous() for k, v in out.items()}
