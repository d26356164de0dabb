"""GGUF export: the file read back with `gguf`'s reader and run by a NumPy forward pass written from llama.cpp's
semantics (its "gpt2" and "llama" graphs, adjacent-pair RoPE, rope_freqs divisors, GQA by head // n_rep) must give
our logits; f16 / q8_0 files must keep the perplexity; the tokenizer metadata must equal GPT-2's own files; the
opt-in llama.cpp test (SCRATCHLM_LLAMA_CPP=1) builds llama-cpp-python and compares with llama.cpp itself."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import BPETokenizer, CharTokenizer, read_gpt2
from scratchlm.tokenizer.chat import ChatTemplate, chat_template_jinja
from scratchlm.tokenizer.train import TokenizerTrainConfig, train

gguf = pytest.importorskip("gguf")
from scratchlm.interop.gguf import bpe_merges, export_gguf  # noqa: E402

SHAPES = dict(context_length=64, n_layer=2, n_head=4, d_model=64)
FAMILIES = {
    "gpt2": dict(norm="layernorm", mlp="gelu", positions="learned", bias=True, d_ff=128, tie_embeddings=True),
    "gpt2-untied-gqa-nobias": dict(
        norm="layernorm", mlp="gelu", positions="learned", bias=False, d_ff=96, n_kv_head=2, tie_embeddings=False
    ),
    "llama": dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, d_ff=96, n_kv_head=2,
                  tie_embeddings=False, norm_eps=1e-5),
    "llama3-scaled-tied-bias": dict(
        norm="rmsnorm", mlp="swiglu", positions="rope", bias=True, d_ff=96, n_kv_head=1, tie_embeddings=True,
        rope_theta=500000.0, rope_scaling_factor=8.0, rope_original_context_length=16,
    ),
}  # fmt: skip


def shakespeare() -> str:
    data = (resources.files("scratchlm") / "resources" / "tinyshakespeare.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    """A 320-token byte-level BPE (63 merges) trained on Tiny Shakespeare: merges to recover, short sequences."""
    tok = train(TokenizerTrainConfig(vocab_size=320), [shakespeare()[:100_000]])
    assert isinstance(tok, BPETokenizer)
    return tok


def make_ckpt(path: Path, family: str, tok: BPETokenizer, seed: int = 0) -> Path:
    """A random checkpoint with weights of a realistic scale everywhere (norms too, so a swapped norm shows)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size + 3, **SHAPES, **FAMILIES[family]))  # 3 padding rows
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.5)
    return checkpoint.save(path, model, tok)


# ---- the reference: llama.cpp's forward pass in NumPy over the tensors read back ------------------------------
class GGUFModel:
    """Tensors (dequantized, float64) and hyper-parameters of a GGUF file, as llama.cpp would load them."""

    def __init__(self, path: Path) -> None:
        self.reader = r = gguf.GGUFReader(path)
        self.arch = self.field("general.architecture")
        self.t = {
            t.name: gguf.quants.dequantize(t.data, t.tensor_type)
            .astype(np.float64)
            .reshape([int(d) for d in reversed(t.shape)])
            for t in r.tensors
        }
        self.types = {t.name: t.tensor_type for t in r.tensors}

    def field(self, key: str):
        f = self.reader.get_field(key)
        return None if f is None else f.contents()

    def hp(self, key: str):
        return self.field(f"{self.arch}.{key}")

    def forward(self, ids: list[int]) -> np.ndarray:
        """Logits (T, V) for one sequence starting at position 0."""
        t, T = self.t, len(ids)
        H, H_kv = self.hp("attention.head_count"), self.hp("attention.head_count_kv")
        x = t["token_embd.weight"][ids]  # (T, C)
        C = x.shape[1]
        D = C // H
        if self.arch == "gpt2":
            x = x + t["position_embd.weight"][:T]
        rope = None
        if self.arch == "llama":
            n_rot, base = self.hp("rope.dimension_count"), self.hp("rope.freq_base")
            freqs = base ** (-np.arange(0, n_rot, 2) / n_rot) / t.get("rope_freqs.weight", 1.0)
            rope = np.arange(T)[:, None] * freqs[None, :]  # (T, D/2) angles
        for i in range(self.hp("block_count")):
            b = f"blk.{i}"
            h = self.norm(x, f"{b}.attn_norm")
            if self.arch == "gpt2":
                qkv = self.linear(h, f"{b}.attn_qkv")
                q, k, v = np.split(qkv, [C, C + H_kv * D], axis=1)
            else:
                q, k, v = (self.linear(h, f"{b}.attn_{n}") for n in "qkv")
            q, k, v = q.reshape(T, H, D), k.reshape(T, H_kv, D), v.reshape(T, H_kv, D)
            if rope is not None:
                q, k = self.rope_pairs(q, rope), self.rope_pairs(k, rope)
            heads = []
            for hd in range(H):
                kv = hd // (H // H_kv)  # ggml's broadcast: query head hd reads kv head hd // n_rep
                s = q[:, hd] @ k[:, kv].T / math.sqrt(D)
                s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                heads.append((p / p.sum(-1, keepdims=True)) @ v[:, kv])
            x = x + self.linear(np.concatenate(heads, axis=1), f"{b}.attn_output")
            h = self.norm(x, f"{b}.ffn_norm")
            if self.arch == "gpt2":
                u = self.linear(h, f"{b}.ffn_up")
                u = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
            else:
                g = self.linear(h, f"{b}.ffn_gate")
                u = g / (1 + np.exp(-g)) * self.linear(h, f"{b}.ffn_up")
            x = x + self.linear(u, f"{b}.ffn_down")
        x = self.norm(x, "output_norm")
        return x @ t.get("output.weight", t["token_embd.weight"]).T

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.t[f"{name}.weight"].T
        return y + self.t[f"{name}.bias"] if f"{name}.bias" in self.t else y

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.arch == "gpt2":
            eps = self.hp("attention.layer_norm_epsilon")
            x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
            return x * self.t[f"{name}.weight"] + self.t[f"{name}.bias"]
        eps = self.hp("attention.layer_norm_rms_epsilon")
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * self.t[f"{name}.weight"]

    @staticmethod
    def rope_pairs(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """llama.cpp's "normal" RoPE: rotate adjacent pairs (x[2i], x[2i+1]) by angles[:, i]."""
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out


def our_logits(ckpt: Path, ids: list[int]) -> np.ndarray:
    model, _ = checkpoint.load(ckpt)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].double().numpy()


# ---- f32: the read-back forward equals our logits ----------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_f32_read_back_forward_equals_our_logits(tmp_path: Path, bpe: BPETokenizer, family: str) -> None:
    ckpt = make_ckpt(tmp_path / "ckpt", family, bpe)
    out, notes = export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    assert notes == []
    g = GGUFModel(out)
    assert g.arch == ("gpt2" if family.startswith("gpt2") else "llama")
    assert set(g.types.values()) == {gguf.GGMLQuantizationType.F32}
    assert ("output.weight" in g.t) == ("untied" in family or family == "llama")
    ids = bpe.encode_ordinary("ROMEO:\nBut soft, what light through yonder window breaks?")[:40]
    ours, theirs = our_logits(ckpt, ids), g.forward(ids)
    assert theirs.shape == ours.shape == (len(ids), bpe.vocab_size + 3)
    diff = np.abs(ours - theirs).max()
    print(f"{family}: max |logit difference| = {diff:.2e} (logit scale {np.abs(ours).max():.1f})")
    assert diff < 1e-4


def test_rope_permutation_matters(tmp_path: Path, bpe: BPETokenizer) -> None:
    """The reference is sensitive to the q/k layout: reading the file with our own (rotate-half) RoPE instead
    of llama.cpp's adjacent pairs gives different logits, so the equality above checks the permutation."""
    ckpt = make_ckpt(tmp_path / "ckpt", "llama", bpe)
    g = GGUFModel(export_gguf(ckpt, tmp_path / "m.gguf")[0])
    ids = bpe.encode_ordinary("First Citizen:\nBefore we proceed any further")[:24]

    def rotate_half(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        x1, x2 = np.split(x, 2, axis=-1)
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    g.rope_pairs = rotate_half  # type: ignore[method-assign]
    assert np.abs(our_logits(ckpt, ids) - g.forward(ids)).max() > 1e-2


# ---- tokenizer metadata ---------------------------------------------------------------------------------------
def test_gpt2_tokenizer_metadata_equals_gpt2_files(tmp_path: Path, mirror: Path) -> None:
    """Known answer: the tokens are encoder.json's in id order and the recovered merges are vocab.bpe's lines."""
    tok = read_gpt2(mirror / "gpt2" / "encoder.json", mirror / "gpt2" / "vocab.bpe", name="gpt2")
    merges = [ln for ln in (mirror / "gpt2" / "vocab.bpe").read_text("utf-8").splitlines()[1:] if ln]
    assert bpe_merges(tok.vocab) == merges
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50304, context_length=32, n_layer=1, n_head=2, d_model=32)  # padded to 64
    ckpt = checkpoint.save(tmp_path / "ckpt", GPT(config), tok)
    g = GGUFModel(export_gguf(ckpt, tmp_path / "m.gguf")[0])
    encoder = json.loads((mirror / "gpt2" / "encoder.json").read_text("utf-8"))
    tokens = g.field("tokenizer.ggml.tokens")
    assert tokens[:50257] == sorted(encoder, key=encoder.get)
    assert tokens[50257:] == [f"[PAD{i}]" for i in range(50257, 50304)]
    assert g.field("tokenizer.ggml.token_type")[50255:50258] == [1, 3, 5]  # normal, control, unused
    assert g.field("tokenizer.ggml.merges") == merges
    assert g.field("tokenizer.ggml.model") == "gpt2" and g.field("tokenizer.ggml.pre") == "gpt-2"
    assert g.field("tokenizer.ggml.bos_token_id") == g.field("tokenizer.ggml.eos_token_id") == 50256
    assert g.field("tokenizer.ggml.add_bos_token") is False


def merges_bpe(text: str, merges: list[str], tokens: list[str], pattern: str) -> list[int]:
    """The slow oracle: Hugging Face/llama.cpp-style BPE driven by the merges list (lowest merge index first)."""
    import regex

    from scratchlm.tokenizer.bpe import to_unicode

    rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    index = {t: i for i, t in enumerate(tokens)}
    ids = []
    for chunk in regex.findall(pattern, text):
        parts = list(to_unicode(chunk.encode("utf-8")))
        while len(parts) > 1:
            pairs = [(rank.get((a, b), math.inf), j) for j, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, j = min(pairs)
            if best == math.inf:
                break
            parts[j : j + 2] = [parts[j] + parts[j + 1]]
        ids += [index[p] for p in parts]
    return ids


def test_trained_tokenizer_merges_encode_like_ours(bpe: BPETokenizer) -> None:
    merges = bpe_merges(bpe.vocab)
    assert len(merges) == len(bpe.vocab) - 256
    from scratchlm.tokenizer.bpe import to_unicode

    text = shakespeare()[200_000:220_000]
    tokens = [to_unicode(t) for t in bpe.vocab]
    assert merges_bpe(text, merges, tokens, bpe.pattern) == bpe.encode_ordinary(text)


@pytest.mark.parametrize("name", ["chatml", "alpaca", "plain"])
def test_chat_template_jinja_renders_like_ours(name: str) -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = ChatTemplate.named(name)
    jinja = jinja2.Environment().from_string(chat_template_jinja(template))
    for messages in (
        [{"role": "user", "content": 'Say "hi"\nplease'}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
    ):  # fmt: skip
        for gen in (False, True):
            assert jinja.render(messages=messages, add_generation_prompt=gen) == template.render(
                messages, gen
            )


# ---- f16 / q8_0: the perplexity is kept ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, bpe: BPETokenizer) -> dict[str, Path]:
    """Per family, a tiny model trained for 150 steps on Tiny Shakespeare (a peaked distribution, so rounding
    the weights would show in the perplexity)."""
    text = shakespeare()
    data = torch.tensor(bpe.encode_ordinary(text[:200_000]))
    out = {}
    for family in ("gpt2", "llama"):
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=bpe.vocab_size + 3, **SHAPES, **FAMILIES[family]))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(150):
            starts = torch.randint(0, len(data) - 65, (12,), generator=gen)
            batch = torch.stack([data[s : s + 65] for s in starts])
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[family] = checkpoint.save(tmp_path_factory.mktemp(family) / "ckpt", model.eval(), bpe)
    return out


def perplexity(g: GGUFModel, ids: list[int], T: int = 64) -> float:
    nll, n = 0.0, 0
    for s in range(0, len(ids) - 1, T):
        window = ids[s : s + T + 1]
        logits = g.forward(window[:-1])
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(window) - 1), window[1:]].sum()
        n += len(window) - 1
    return math.exp(nll / n)


@pytest.mark.slow  # trains two tiny models (~15 s) and runs the NumPy forward over 1024 tokens 6 times
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_f16_and_q8_0_keep_perplexity(
    tmp_path: Path, trained: dict[str, Path], bpe: BPETokenizer, family: str
):
    ids = bpe.encode_ordinary(shakespeare()[-6000:])[:1024]
    ppl = {}
    for dtype in ("f32", "f16", "q8_0"):
        g = GGUFModel(export_gguf(trained[family], tmp_path / f"{dtype}.gguf", dtype)[0])
        want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
        assert g.types["blk.0.ffn_down.weight"].name == want and g.types["token_embd.weight"].name == want
        assert g.types["output_norm.weight"].name == "F32"
        if family == "gpt2":
            assert g.types["position_embd.weight"].name == "F32"
        ppl[dtype] = perplexity(g, ids)
    model, _ = checkpoint.load(trained[family])
    print(f"{family}: perplexity f32 {ppl['f32']:.3f}, f16/f32 {ppl['f16'] / ppl['f32']:.5f}, "
          f"q8_0/f32 {ppl['q8_0'] / ppl['f32']:.5f}")  # fmt: skip
    assert ppl["f32"] < 0.5 * (bpe.vocab_size + 3)  # trained: far from uniform
    assert abs(ppl["f16"] / ppl["f32"] - 1) < 0.01
    assert abs(ppl["q8_0"] / ppl["f32"] - 1) < 0.02


# ---- command line and bad input -----------------------------------------------------------------------------------
def test_cli_to_gguf(tmp_path: Path, bpe: BPETokenizer, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_ckpt(tmp_path / "ckpt", "llama", bpe)
    out = tmp_path / "model.gguf"
    assert main(["convert", "to-gguf", str(ckpt), str(out), "--dtype", "q8_0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert GGUFModel(out).types["blk.0.attn_q.weight"].name == "Q8_0"
    assert main(["convert", "to-gguf", str(ckpt), str(out)]) == 0  # a GGUF file may be replaced
    assert GGUFModel(out).types["blk.0.attn_q.weight"].name == "F32"


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_bad_input(tmp_path: Path, bpe: BPETokenizer, capsys: pytest.CaptureFixture[str]) -> None:
    # a char-level tokenizer has no llama.cpp equivalent
    char = CharTokenizer.train(["hello world"], ["<|endoftext|>"])
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=char.vocab_size, **SHAPES)
    ckpt = checkpoint.save(tmp_path / "char", GPT(config), char)
    out = tmp_path / "char.gguf"
    assert main(["convert", "to-gguf", str(ckpt), str(out)]) == 2
    assert "GGUF export needs a byte-level BPE tokenizer" in _err(capsys)
    assert not out.exists() and not list(tmp_path.glob(".char.gguf*"))
    # a family llama.cpp lacks: RMSNorm + GELU + learned positions
    mixed = ModelConfig(vocab_size=bpe.vocab_size, **SHAPES, norm="rmsnorm", mlp="gelu", positions="learned")
    ckpt = checkpoint.save(tmp_path / "mixed", GPT(mixed), bpe)
    assert main(["convert", "to-gguf", str(ckpt), str(tmp_path / "mixed.gguf")]) == 2
    assert "GGUF has no architecture for norm=rmsnorm, mlp=gelu, positions=learned" in _err(capsys)
    # a custom split pattern
    custom = BPETokenizer(bpe.vocab, bpe.special_tokens, r"\S+|\s+")
    ckpt = checkpoint.save(tmp_path / "custom", GPT(ModelConfig(vocab_size=bpe.vocab_size, **SHAPES)), custom)
    assert main(["convert", "to-gguf", str(ckpt), str(tmp_path / "custom.gguf")]) == 2
    assert "split pattern llama.cpp knows" in _err(capsys)
    # an unknown dtype, and an output that is not a GGUF file
    good = make_ckpt(tmp_path / "good", "gpt2", bpe)
    assert main(["convert", "to-gguf", str(good), str(tmp_path / "x.gguf"), "--dtype", "q4_0"]) == 2
    assert "--dtype 'q4_0' is not one of f32, f16, q8_0" in _err(capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["convert", "to-gguf", str(good), str(notes)]) == 2
    assert "already exists and is not a GGUF file" in _err(capsys)
    assert notes.read_text() == "keep me"


def test_gguf_missing_is_one_line(tmp_path: Path, bpe: BPETokenizer) -> None:
    ckpt = make_ckpt(tmp_path / "ckpt", "gpt2", bpe)
    code = (
        "import sys; sys.modules['gguf'] = None\n"
        "from scratchlm.cli.main import main\n"
        f"sys.exit(main(['convert', 'to-gguf', {str(ckpt)!r}, {str(tmp_path / 'm.gguf')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: GGUF export needs the `gguf` package, which is not installed; pip install 'scratchlm[gguf]'"
    ]


# ---- opt-in: llama.cpp itself ---------------------------------------------------------------------------------------
def _llama_cpp():
    """llama-cpp-python, built from source into $SCRATCHLM_LLAMA_CPP_TARGET (or under the test's tmp folder)."""
    try:
        import llama_cpp

        return llama_cpp
    except ImportError:
        pass
    target = Path(
        os.environ.get("SCRATCHLM_LLAMA_CPP_TARGET") or Path(os.environ["PYTEST_TMP"]) / "llama-cpp"
    )
    if not (target / "llama_cpp").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "--no-binary", "llama-cpp-python", "--target", str(target),
               "llama-cpp-python"]  # fmt: skip
        subprocess.run(cmd, check=True, env={**os.environ, "CMAKE_ARGS": "-DGGML_BLAS=OFF -DLLAMA_CURL=OFF"})
    sys.path.insert(0, str(target))
    import llama_cpp

    return llama_cpp


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SCRATCHLM_LLAMA_CPP") != "1", reason="opt-in: SCRATCHLM_LLAMA_CPP=1 builds llama.cpp"
)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_llama_cpp_matches_our_logits_and_greedy_text(
    tmp_path: Path, trained: dict[str, Path], bpe: BPETokenizer, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_TMP", str(tmp_path))
    llama_cpp = _llama_cpp()
    path = export_gguf(trained[family], tmp_path / "m.gguf", "f32")[0]
    prompt = "ROMEO:\nWhat light"
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0
    )  # type_k/type_v 0: an f32 KV cache, so only llama.cpp's kernels differ from us
    ids = bpe.encode_ordinary(prompt)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    ours = our_logits(trained[family], ids)
    print(f"{family}: llama.cpp vs ours, max |logit difference| {np.abs(theirs - ours).max():.2e}")
    assert np.abs(theirs - ours).max() < 1e-2
    llm.reset()
    their_text = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        their_text.append(tok)
        if len(their_text) == 32:
            break
    model, _ = checkpoint.load(trained[family])
    seq = list(ids)
    with torch.no_grad():
        for _ in range(32):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    print(f"{family}: greedy {bpe.decode(seq[len(ids) :])!r}")
    assert their_text == seq[len(ids) :]
