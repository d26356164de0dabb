"""Against `transformers`: logits, round trips, greedy decoding, tokenizer export (tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from scratchlm import checkpoint
from scratchlm.interop import hf as hf_io
from scratchlm.model import GPT, KVCache

transformers = pytest.importorskip("transformers")

KINDS = ["gpt2", "gpt2-untied", "llama", "llama-tied", "llama3-scaled"]  # llama*: GQA 4 query / 2 KV heads


def _ids(B: int = 2, T: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 320, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_transformers(kind, hf_dir, byte_tokenizer, tmp_path) -> None:
    ours_dir = hf_io.import_hf(hf_dir(kind), tmp_path / "ours", tokenizer=byte_tokenizer)
    model, _ = checkpoint.load(ours_dir)
    ids = _ids()
    ref = _hf_logits(hf_dir(kind), ids)
    for impl in ("manual", "sdpa"):
        m = GPT(model.config.replace(attn_impl=impl)).eval()
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            got = m(ids)
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-4, impl


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_to_ours_to_hf_same_logits_in_transformers(kind, hf_dir, byte_tokenizer, tmp_path) -> None:
    ours = hf_io.import_hf(hf_dir(kind), tmp_path / "ours", tokenizer=byte_tokenizer)
    back, _ = hf_io.export_hf(ours, tmp_path / "back")
    ids = _ids(seed=1)
    torch.testing.assert_close(_hf_logits(back, ids), _hf_logits(hf_dir(kind), ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("preset", "tied"), [("gpt2-tiny", True), ("llama-tiny", False), ("llama-tiny", True)])
def test_ours_to_hf_to_ours_bitwise(preset, tied, byte_tokenizer, tmp_path) -> None:
    from scratchlm import tokenizer
    from scratchlm.model import ModelConfig

    torch.manual_seed(0)
    # GPT-2 with GPT-2's tokenizer (exported as vocab.json + merges.txt); Llama with a small byte-level one
    # (kept as scratchlm_tokenizer.json in the HF folder).
    vocab, tok = (50257, tokenizer.load("gpt2")) if preset == "gpt2-tiny" else (320, tokenizer.load(byte_tokenizer))
    config = ModelConfig.from_preset(preset, context_length=64, vocab_size=vocab, tie_embeddings=tied)
    a = checkpoint.save(tmp_path / "a", GPT(config), tok)
    hf, _ = hf_io.export_hf(a, tmp_path / "hf")
    b = hf_io.import_hf(hf, tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert checkpoint.load_model_config(b) == checkpoint.load_model_config(a)
    assert (b / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()


def test_exported_gpt2_tokenizer_loads_in_autotokenizer(tmp_path) -> None:
    from scratchlm import tokenizer
    from scratchlm.model import ModelConfig

    tok = tokenizer.load("gpt2")
    ckpt = checkpoint.save(tmp_path / "c", GPT(ModelConfig.from_preset("gpt2-tiny")), tok)
    hf, notes = hf_io.export_hf(ckpt, tmp_path / "hf")
    assert notes == []
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf)
    text = "Hello world, it's 2024!\n  Ünïcödé <|endoftext|> done"
    assert hf_tok.encode(text) == tok.encode(text, allowed_special="all")
    assert hf_tok.eos_token_id == tok.eot_id == json.loads((hf / "config.json").read_text())["eos_token_id"]


def _greedy(model: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with the KV cache: prefill the prompt, then one token per forward."""
    B, T = prompt.shape
    cache = KVCache.for_model(model, B, T + n)
    positions = torch.arange(T).expand(B, T)
    logits = model(prompt, cache, positions)[:, -1]
    out = [prompt]
    for t in range(T, T + n):
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        logits = model(nxt, cache, torch.full((B, 1), t))[:, -1]
    return torch.cat(out, dim=1)


def test_greedy_32_tokens_equal_transformers_generate(hf_dir, byte_tokenizer, tmp_path) -> None:
    folder = hf_dir("gpt2")
    model, _ = checkpoint.load(hf_io.import_hf(folder, tmp_path / "ours", tokenizer=byte_tokenizer))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    prompt = _ids(B=1, T=7, seed=3)
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
        got = _greedy(model, prompt, 32)
    assert got.shape == (1, 7 + 32)
    assert got.tolist() == ref.tolist()


def test_sharded_hf_folder(make_hf_model, byte_tokenizer, tmp_path) -> None:
    hf = make_hf_model("llama")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model, _ = checkpoint.load(hf_io.import_hf(tmp_path / "hf", tmp_path / "ours", tokenizer=byte_tokenizer))
    ids = _ids(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-4)


def test_mistral_sliding_window_logits_equal_transformers(hf_dir, byte_tokenizer, tmp_path) -> None:
    """Mistral's sliding_window 8 over 40 tokens is our attn_pattern [local], attn_window 8 (and it matters)."""
    ours_dir = hf_io.import_hf(hf_dir("mistral"), tmp_path / "ours", tokenizer=byte_tokenizer)
    model, _ = checkpoint.load(ours_dir)
    assert (model.config.attn_pattern, model.config.attn_window) == (("local",), 8)
    ids = _ids()
    ref = _hf_logits(hf_dir("mistral"), ids)  # eager attention: transformers applies the window in its mask
    for impl in ("manual", "sdpa"):
        m = GPT(model.config.replace(attn_impl=impl)).eval()
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            got = m(ids)
        assert (got - ref).abs().max().item() <= 1e-4, impl
    # the window is applied on both sides: the same weights without it give other logits past position 8
    unwindowed = transformers.MistralForCausalLM.from_pretrained(
        hf_dir("mistral"), sliding_window=None, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        dense = unwindowed(ids).logits
    assert (dense[:, :8] - ref[:, :8]).abs().max() < 1e-5
    assert (dense[:, 8:] - ref[:, 8:]).abs().max() > 1e-3


def test_mistral_without_window_imports_dense_and_round_trips(hf_dir, byte_tokenizer, tmp_path) -> None:
    ours = hf_io.import_hf(hf_dir("mistral-no-window"), tmp_path / "ours", tokenizer=byte_tokenizer)
    assert checkpoint.load_model_config(ours).attn_pattern == ("dense",)
    ids = _ids(seed=2)
    torch.testing.assert_close(_hf_logits(hf_dir("mistral-no-window"), ids),
                               _our_logits(ours, ids), rtol=0, atol=1e-4)  # fmt: skip


def _our_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model, _ = checkpoint.load(folder)
    with torch.no_grad():
        return model(ids)


def test_mistral_to_ours_to_mistral_same_logits_in_transformers(hf_dir, byte_tokenizer, tmp_path) -> None:
    ours = hf_io.import_hf(hf_dir("mistral"), tmp_path / "ours", tokenizer=byte_tokenizer)
    back, _ = hf_io.export_hf(ours, tmp_path / "back")
    config = json.loads((back / "config.json").read_text())
    assert (config["architectures"], config["model_type"], config["sliding_window"]) == (
        ["MistralForCausalLM"], "mistral", 8)  # fmt: skip
    ids = _ids(seed=1)
    torch.testing.assert_close(_hf_logits(back, ids), _hf_logits(hf_dir("mistral"), ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (dict(attn_pattern=("local", "dense"), attn_window=8),
         "no Hugging Face architecture matches attn_pattern local,dense; only all-dense models and all-local ones "
         "(Mistral's sliding window) export; keep it as a scratchlm checkpoint"),
        (dict(attn_pattern=("strided",), attn_stride=4),
         "no Hugging Face architecture matches attn_pattern strided; only all-dense models and all-local ones "
         "(Mistral's sliding window) export; keep it as a scratchlm checkpoint"),
        (dict(attn_pattern=("local",), attn_window=8, norm="layernorm", mlp="gelu", positions="learned", bias=True),
         "sliding-window attention exports as Mistral, which needs norm=rmsnorm, mlp=swiglu, positions=rope and "
         "bias=false; keep this model as a scratchlm checkpoint"),
    ],
)  # fmt: skip
def test_patterns_without_an_exact_hf_equivalent_are_refused_in_one_line(pattern, message, byte_tokenizer,
                                                                          tmp_path, capsys) -> None:  # fmt: skip
    from scratchlm import tokenizer
    from scratchlm.cli.main import main
    from scratchlm.model import ModelConfig

    config = ModelConfig.from_preset("llama-tiny", context_length=64, vocab_size=320, **pattern)
    ckpt = checkpoint.save(tmp_path / "c", GPT(config), tokenizer.load(byte_tokenizer))
    assert main(["convert", "to-hf", str(ckpt), str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "hf").exists()
