"""scratchlm checkpoint -> one GGUF file, the format llama.cpp, Ollama and LM Studio read (with the `gguf` package).

Two llama.cpp architectures hold our two families:

    ours                                  GGUF "gpt2"                  GGUF "llama"
    tok_emb                               token_embd                   token_embd
    pos_emb                               position_embd                (RoPE: none)
    blocks.{i}.norm1                      blk.{i}.attn_norm            blk.{i}.attn_norm
    blocks.{i}.attn.q/k/v_proj            blk.{i}.attn_qkv (fused)     blk.{i}.attn_q/k/v (q, k permuted)
    blocks.{i}.attn.o_proj                blk.{i}.attn_output          blk.{i}.attn_output
    blocks.{i}.norm2                      blk.{i}.ffn_norm             blk.{i}.ffn_norm
    blocks.{i}.mlp.fc_in / fc_out         blk.{i}.ffn_up / ffn_down
    blocks.{i}.mlp.gate/up/down_proj                                   blk.{i}.ffn_gate / ffn_up / ffn_down
    norm                                  output_norm                  output_norm
    lm_head (tied: absent)                output                       output
    (Llama-3 RoPE scaling)                                             rope_freqs (per-frequency divisors)

Decisions and traps:
- A GGUF tensor's shape is listed innermost first (ggml's ne), the reverse of numpy's; an `nn.Linear` weight
  (out, in) is written as it is and llama.cpp reads it as {in, out}, which is what it multiplies with.
- llama.cpp's "llama" RoPE rotates adjacent pairs (x[2i], x[2i+1]); our RoPE (and Hugging Face's) rotates the
  two halves (x[i], x[i + D/2]). So q and k rows are permuted within each head, as llama.cpp's own
  convert_hf_to_gguf.py does (`_permute_rope`); q.k is unchanged, so the logits are too.
- GGUF's "gpt2" architecture always has biases: a bias-free GPT-2-family config gets exact zeros.
- The tokenizer is written as llama.cpp's "gpt2" (byte-level BPE) model: tokens spelled with GPT-2's byte map,
  merges recovered from the ranks (a token's id is its merge rank, see tokenizer/bpe.py), and the pre-tokenizer
  named by our split pattern ("gpt-2", or "llama-bpe" for the GPT-4 pattern, which is Llama 3's). A char-level
  tokenizer or a custom split pattern has no llama.cpp equivalent: a one-line error.
- Embedding rows beyond the tokenizer (a padded vocab) get placeholder tokens of type UNUSED, as llama.cpp's
  converter writes them.
- The chat template is rendered as Jinja from our plain-data template, so llama.cpp's `--jinja` and
  LM Studio format chats exactly as `scratchlm chat` does.
- dtypes: f32 everywhere; f16 / q8_0 for 2-D weights while norms, biases, rope_freqs and the position table
  stay f32, and a row length q8_0 cannot split into blocks of 32 falls back to f16 (llama.cpp's rules).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm import checkpoint
from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_path
from scratchlm.model.config import ModelConfig
from scratchlm.model.layers import rope_inv_freq
from scratchlm.tokenizer import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer, Tokenizer
from scratchlm.tokenizer.bpe import to_unicode
from scratchlm.tokenizer.chat import ChatTemplate, chat_template_jinja

DTYPES = ("f32", "f16", "q8_0")
GGUF_MAGIC = b"GGUF"
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "llama-bpe"}  # our split pattern -> llama.cpp's name
# llama.cpp token types (gguf.TokenType), spelled here so that the tokenizer part needs no `gguf` import
NORMAL, CONTROL, UNUSED = 1, 3, 5


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ScratchlmError(
            "GGUF export needs the `gguf` package, which is not installed; pip install 'scratchlm[gguf]'"
        ) from None
    return gguf


def is_gguf_file(path: Path) -> bool:
    """True when `path` is a file starting with GGUF's magic (so `convert to-gguf` may replace it)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


# ---- architecture ---------------------------------------------------------------------------------------------
def gguf_architecture(config: ModelConfig) -> str:
    """llama.cpp's architecture name for `config` ("gpt2" or "llama"), or a one-line error."""
    if set(config.layer_patterns) != {"dense"}:  # the llama/gpt2 readers would attend densely: wrong tokens
        raise ScratchlmError(
            f"GGUF export supports dense attention only, not attn_pattern {','.join(config.attn_pattern)}; "
            "export to Hugging Face instead (all-local models export as Mistral)"
        )
    variant = (config.norm, config.mlp, config.positions)
    if variant == ("layernorm", "gelu", "learned"):
        return "gpt2"
    if variant == ("rmsnorm", "swiglu", "rope"):
        return "llama"
    raise ScratchlmError(
        f"GGUF has no architecture for norm={config.norm}, mlp={config.mlp}, positions={config.positions} "
        "(llama.cpp's gpt2: layernorm+gelu+learned; llama: rmsnorm+swiglu+rope); export a model of one family"
    )


def _permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q/k projection (weight (H*D, C) or bias (H*D,)) from rotate-half to adjacent-pair order.

    Within each head, row j of the first half and row j of the second half become rows 2j and 2j+1.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> GGUF tensor names and values (fp32; the tied head left out, llama.cpp reuses
    token_embd for it)."""
    arch = gguf_architecture(config)
    sd = {k: v.detach().float().cpu() for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {"token_embd.weight": sd["tok_emb.weight"]}
    if not config.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    C = config.d_model
    zeros = lambda n: torch.zeros(n)  # noqa: E731

    def bias(name: str, n: int) -> torch.Tensor:
        return sd.get(name, zeros(n))

    if arch == "gpt2":
        out["position_embd.weight"] = sd["pos_emb.weight"]
        out["output_norm.weight"], out["output_norm.bias"] = sd["norm.weight"], bias("norm.bias", C)
        for i in range(config.n_layer):
            p, b = f"blocks.{i}", f"blk.{i}"
            projs = ("q_proj", "k_proj", "v_proj")
            widths = (C, config.kv_dim, config.kv_dim)
            out[f"{b}.attn_norm.weight"] = sd[f"{p}.norm1.weight"]
            out[f"{b}.attn_norm.bias"] = bias(f"{p}.norm1.bias", C)
            out[f"{b}.attn_qkv.weight"] = torch.cat([sd[f"{p}.attn.{n}.weight"] for n in projs])  # (C+2KV, C)
            out[f"{b}.attn_qkv.bias"] = torch.cat(
                [bias(f"{p}.attn.{n}.bias", w) for n, w in zip(projs, widths)]
            )
            out[f"{b}.attn_output.weight"] = sd[f"{p}.attn.o_proj.weight"]
            out[f"{b}.attn_output.bias"] = bias(f"{p}.attn.o_proj.bias", C)
            out[f"{b}.ffn_norm.weight"] = sd[f"{p}.norm2.weight"]
            out[f"{b}.ffn_norm.bias"] = bias(f"{p}.norm2.bias", C)
            out[f"{b}.ffn_up.weight"] = sd[f"{p}.mlp.fc_in.weight"]
            out[f"{b}.ffn_up.bias"] = bias(f"{p}.mlp.fc_in.bias", config.d_ff or 0)
            out[f"{b}.ffn_down.weight"] = sd[f"{p}.mlp.fc_out.weight"]
            out[f"{b}.ffn_down.bias"] = bias(f"{p}.mlp.fc_out.bias", C)
        return out
    out["output_norm.weight"] = sd["norm.weight"]
    if config.rope_scaling_factor is not None:
        # llama.cpp divides each rotation frequency by rope_freqs[i]: plain / scaled gives our scaled frequencies
        out["rope_freqs.weight"] = rope_inv_freq(config.replace(rope_scaling_factor=None)) / rope_inv_freq(
            config
        )
    names = {
        "norm1": "attn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v",
        "attn.o_proj": "attn_output", "norm2": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for name, t in sd.items():
        if not name.startswith("blocks."):
            continue
        _, i, rest = name.split(".", 2)
        module, param = rest.rsplit(".", 1)
        if module == "attn.q_proj":
            t = _permute_rope(t, config.n_head)
        elif module == "attn.k_proj":
            t = _permute_rope(t, config.n_kv_head or config.n_head)
        out[f"blk.{i}.{names[module]}.{param}"] = t
    return out


# ---- tokenizer ------------------------------------------------------------------------------------------------
def bpe_merges(vocab: list[bytes]) -> list[str]:
    """The merges list ("Ġ t" ...) of a byte-level BPE vocabulary whose ids are merge ranks.

    Token i was made by the merge whose two parts BPE reaches when it applies only merges of rank < i to the
    token's bytes (tiktoken's rule recovers exactly two parts). Listed in rank order, as GPT-2's vocab.bpe.
    """
    ranks = {tok: i for i, tok in enumerate(vocab)}
    merges = []
    for rank, token in enumerate(vocab):
        if len(token) == 1:
            continue
        parts = [token[j : j + 1] for j in range(len(token))]
        while len(parts) > 2:
            best, at = rank, -1
            for j in range(len(parts) - 1):
                r = ranks.get(parts[j] + parts[j + 1], rank)
                if r < best:
                    best, at = r, j
            if at < 0:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise ScratchlmError(
                f"BPE token {rank} ({token!r}) is not the merge of two earlier tokens; the tokenizer is not a "
                "byte-level BPE that llama.cpp can read: re-create it with `scratchlm tokenizer train`"
            )
        merges.append(f"{to_unicode(parts[0])} {to_unicode(parts[1])}")
    return merges


def tokenizer_metadata(tok: Tokenizer, n_vocab: int) -> dict[str, Any]:
    """What llama.cpp needs to tokenize like `tok`: tokens, types, merges, pre-tokenizer, special ids."""
    if not isinstance(tok, BPETokenizer):
        raise ScratchlmError(
            f"GGUF export needs a byte-level BPE tokenizer, and this checkpoint's is {tok.kind}-level, which "
            "llama.cpp cannot express; train the model with a BPE tokenizer (`scratchlm tokenizer train`)"
        )
    pre = PRE_TOKENIZERS.get(tok.pattern)
    if pre is None:
        raise ScratchlmError(
            "GGUF export needs a split pattern llama.cpp knows (gpt2 or gpt4), and this tokenizer's is custom; "
            "train the tokenizer with --pattern gpt2 or gpt4"
        )
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    for i, t in enumerate(tok.vocab):
        tokens[i], types[i] = to_unicode(t), NORMAL
    for s, i in tok.special_tokens.items():
        tokens[i], types[i] = s, CONTROL
    return {"pre": pre, "tokens": tokens, "types": types, "merges": bpe_merges(tok.vocab)}


# ---- the file ---------------------------------------------------------------------------------------------------
def _qtype(gguf: Any, name: str, t: torch.Tensor, dtype: str) -> Any:
    Q = gguf.GGMLQuantizationType
    if dtype == "f32" or t.dim() < 2 or name == "position_embd.weight":
        return Q.F32
    if dtype == "q8_0" and t.shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16


def export_gguf(
    ckpt: str | os.PathLike[str], out: str | os.PathLike[str], dtype: str = "f32"
) -> tuple[Path, list[str]]:
    """scratchlm checkpoint (any language-model folder; LoRA merged) -> a GGUF file. Returns (path, notes)."""
    if dtype not in DTYPES:
        raise ScratchlmError(f"GGUF dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    gguf = _gguf()
    loaded = checkpoint.read(ckpt, expect="lm")
    checkpoint.refuse_prefix(loaded, "a GGUF file")
    model, tok = loaded.model, loaded.tokenizer
    config: ModelConfig = model.config  # type: ignore[assignment]
    arch = gguf_architecture(config)
    vocab = tokenizer_metadata(tok, config.vocab_size)
    template = ChatTemplate.from_config(loaded.config.get("chat_template"))
    stop_ids = template.stop_ids(tok) if all(t in tok.special_tokens for t in template.stop) else []
    tensors = gguf_tensors(config, checkpoint.weights_for_save(model))
    notes: list[str] = []

    out = Path(out)
    with atomic_path(out, what="GGUF file") as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(loaded.step.parent.name if loaded.step.name.startswith("step_") else loaded.step.name)
        w.add_context_length(config.context_length)
        w.add_embedding_length(config.d_model)
        w.add_block_count(config.n_layer)
        w.add_feed_forward_length(config.d_ff)
        w.add_head_count(config.n_head)
        w.add_head_count_kv(config.n_kv_head)
        w.add_vocab_size(config.vocab_size)
        if arch == "gpt2":
            w.add_layer_norm_eps(config.norm_eps)
        else:
            w.add_layer_norm_rms_eps(config.norm_eps)
            w.add_rope_freq_base(config.rope_theta)
            w.add_rope_dimension_count(config.head_dim)
        file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[dtype]
        w.add_file_type(getattr(gguf.LlamaFileType, file_type))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab["pre"])
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        if tok.eot_id is not None:  # GPT-2's convention: <|endoftext|> is bos, eos and unk
            w.add_bos_token_id(tok.eot_id)
            w.add_eos_token_id(tok.eot_id)
        w.add_add_bos_token(False)  # our models never saw a BOS token in front of a prompt
        w.add_add_eos_token(False)
        if stop_ids and stop_ids[0] != tok.eot_id:
            w.add_eot_token_id(stop_ids[0])  # e.g. <|im_end|>: llama.cpp ends a chat turn on it
        w.add_chat_template(chat_template_jinja(template))
        fallback = False
        for name, t in tensors.items():
            qtype = _qtype(gguf, name, t, dtype)
            fallback |= dtype == "q8_0" and t.dim() == 2 and qtype == gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(t.numpy().astype(np.float32), qtype)
            w.add_tensor(name, data, raw_dtype=qtype)  # quantized: uint8 bytes, shape derived
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    if fallback:
        notes.append(
            "some weight rows are not a multiple of 32 long, so those weights are f16 instead of q8_0"
        )
    return out, notes
