"""The paths a newcomer takes: every command reads a LoRA-adapter checkpoint (as its merged model), a tied-head
merge is exact, an adapter folder finds its base by relative path and notices a changed one, and text files are
read as their bytes (CRLF, lone CR and tabs give tiktoken's ids)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.model import GPT, ModelConfig
from scratchlm.model.lora import LoRAConfig, LoRALinear, inject_lora, merge_lora

CRLF_TEXT = "First line\r\nsecond\tline\r\n\r\nlone\rcarriage\r\n\t\tindented\ttabs\t\r\nend"


def _adapted(tmp_path: Path, targets: tuple[str, ...], tie: bool = True) -> tuple[Path, GPT]:
    """A base checkpoint (GPT-2's tokenizer) and an adapter-only LoRA folder on it; returns (folder, adapted)."""
    from scratchlm import tokenizer as tokenizers

    tok = tokenizers.load("gpt2")
    config = ModelConfig(vocab_size=50257, context_length=64, n_layer=2, n_head=2, d_model=32, tie_embeddings=tie)
    torch.manual_seed(0)
    base = tmp_path / "runs" / "base"
    checkpoint.save(base, GPT(config), tok)
    model, _ = checkpoint.load(base)
    lora = LoRAConfig(rank=4, alpha=8, targets=targets)
    inject_lora(model, lora)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.2)
    folder = tmp_path / "runs" / "sft" / "step_000010"
    section = {**lora.__dict__, **checkpoint.base_record(base)}
    checkpoint.save_finetuned(folder, model, tok, {"lora": section}, adapters_only=True)
    checkpoint.mark_latest(folder)
    return folder, model.eval()


IDS = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(1))


def test_scratchlm_load_reads_a_lora_checkpoint_as_its_merged_model(tmp_path: Path) -> None:
    import scratchlm

    folder, adapted = _adapted(tmp_path, ("q", "v", "mlp"))
    model, _ = scratchlm.load(folder.parent)  # the run folder
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), adapted(IDS), rtol=0, atol=1e-5)


def test_tied_head_lora_merge_is_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, adapted = _adapted(tmp_path, ("q", "lm_head"), tie=True)
    assert main(["lora", "merge", "--checkpoint", str(folder), "--out", str(tmp_path / "merged")]) == 0
    merged, _ = checkpoint.load(tmp_path / "merged")
    assert merged.config.tie_embeddings is False  # the head got its own matrix; the embedding kept the base's
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS), adapted(IDS), rtol=0, atol=1e-5)
        untouched = merge_lora(adapted)
        torch.testing.assert_close(merged.tok_emb.weight, untouched.tok_emb.weight, rtol=0, atol=0)


def test_generate_and_eval_perplexity_read_a_lora_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _ = _adapted(tmp_path, ("q", "k", "v", "o"))
    assert main(["lora", "merge", "--checkpoint", str(folder), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    text = tmp_path / "text.txt"
    text.write_bytes(b"The quick brown fox jumps over the lazy dog. " * 8)
    outs = {}
    for name, ckpt in (("lora", folder.parent), ("merged", tmp_path / "merged")):
        assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "Hello", "--temperature", "0",
                     "--max-new-tokens", "8", "--device", "cpu"]) == 0
        gen = capsys.readouterr().out
        assert main(["eval", "perplexity", "--checkpoint", str(ckpt), "--input", str(text), "--context", "32",
                     "--stride", "16", "--json", "--device", "cpu"]) == 0
        outs[name] = (gen, json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert outs["lora"][0] == outs["merged"][0] and outs["lora"][0].strip()
    assert outs["lora"][1]["token_perplexity"] == pytest.approx(outs["merged"][1]["token_perplexity"], rel=1e-5)


def test_convert_to_hf_reads_a_lora_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    folder, adapted = _adapted(tmp_path, ("q", "v", "lm_head"), tie=True)
    assert main(["convert", "to-hf", str(folder), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS).logits, adapted(IDS), rtol=0, atol=1e-4)


def test_adapter_folder_finds_its_base_relatively_and_notices_a_changed_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, adapted = _adapted(tmp_path, ("q",))
    config = json.loads((folder / "config.json").read_text())
    assert config["lora"]["base"] == "../../base" and len(config["lora"]["base_sha256"]) == 64
    shutil.move(tmp_path / "runs", tmp_path / "moved")  # the whole tree moves: the base is still found
    model, _ = checkpoint.load(tmp_path / "moved" / "sft")
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), adapted(IDS), rtol=0, atol=1e-5)
    base = tmp_path / "moved" / "base"
    other = GPT(checkpoint.load_model_config(base))
    checkpoint.save(base, other, checkpoint.read(base).tokenizer)  # the base was trained further: other weights
    assert main(["generate", "--checkpoint", str(tmp_path / "moved" / "sft"), "--prompt", "a"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another version of its base" in err
    shutil.rmtree(base)
    assert main(["generate", "--checkpoint", str(tmp_path / "moved" / "sft"), "--prompt", "a"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no longer exists" in err


@pytest.mark.parametrize("data", [CRLF_TEXT.encode(), b"a\rb\rc\r\r\n\r", b"\t\tx\r\n\ty\t\r\n"])
def test_text_files_are_read_as_their_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from scratchlm import assets

    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(assets.fetch("gpt2-vocab")),
                                            encoder_json_file=str(assets.fetch("gpt2-encoder")))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""  # tiktoken's r50k
    reference = tiktoken.Encoding(name="gpt2-offline", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    want = reference.encode_ordinary(data.decode())
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    assert main(["tokenizer", "encode", "--input", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == want
    folder, _ = _adapted(tmp_path, ("q",))
    assert main(["generate", "--checkpoint", str(folder), "--prompt-file", str(path), "--echo", "--raw",
                 "--max-new-tokens", "1", "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.encode().startswith(data)  # the prompt went in (and came back) byte for byte
    assert main(["eval", "perplexity", "--checkpoint", str(folder), "--input", str(path), "--context", "16",
                 "--stride", "8", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] == len(want) - 1  # every token but the first is scored



def test_tokenizer_train_and_info_read_files_as_their_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokenizer trained on CRLF / lone-CR / tab files learns their carriage returns (newline translation would
    hide them), encodes those bytes as tiktoken does with the same merges, and `info` counts every byte."""
    from scratchlm import tokenizer as tokenizers

    files = []
    for i, data in enumerate([CRLF_TEXT.encode() * 6, b"a\rb\rc\r\r\n\r" * 10, b"\t\tx\r\n\ty\t\r\n" * 10]):
        files.append(tmp_path / f"in{i}.txt")
        files[-1].write_bytes(data)
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", *map(str, files), "--vocab-size", "290", "--out", str(out)]) == 0
    tok = tokenizers.load(str(out))
    assert any(b"\r" in t for t in tok.vocab[256:])  # a merge with a carriage return in it
    reference = tok.to_tiktoken()
    capsys.readouterr()
    for path in files:
        data = path.read_bytes()
        assert main(["tokenizer", "encode", "--tokenizer", str(out), "--input", str(path)]) == 0
        want = reference.encode_ordinary(data.decode())
        assert json.loads(capsys.readouterr().out) == want
        assert main(["tokenizer", "info", str(out), "--input", str(path)]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith(f"{path}: {len(data)} bytes, {len(want)} tokens,")


def test_classify_reads_a_lora_classifier_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchlm import tokenizer as tokenizers
    from scratchlm.eval.classify import classify_texts
    from scratchlm.model.classifier import ClassifierModel

    tok = tokenizers.load("gpt2")
    config = ModelConfig(vocab_size=50257, context_length=64, n_layer=2, n_head=2, d_model=32)
    torch.manual_seed(0)
    base = tmp_path / "base"
    checkpoint.save(base, GPT(config), tok)
    module = ClassifierModel(checkpoint.load(base)[0], 2)
    lora = LoRAConfig(rank=4, alpha=8, targets=("q", "v"))
    inject_lora(module.model, lora)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.2)
        module.head.weight.normal_(0, 1.0)
    spec = {"labels": ["ham", "spam"], "max_length": 32, "pad_id": 50256, "train": "last", "last_k": 1}
    folder = tmp_path / "spam"
    extra = {"lora": {**lora.__dict__, **checkpoint.base_record(base)}, "classifier": spec}
    checkpoint.save_finetuned(folder, module.eval(), tok, extra, adapters_only=True)
    texts = ["WINNER!! Claim your free prize now", "see you at lunch"]
    want = classify_texts(module, tok, texts, spec)
    assert main(["classify", "--checkpoint", str(folder), *texts]) == 0
    got = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [float(g[1]) for g in got] == pytest.approx([w[1] for w in want], abs=1e-4)


def _merged(tmp_path: Path, targets: tuple[str, ...]) -> tuple[Path, Path]:
    """(adapter run folder, `lora merge` of it): every command is run on both and must agree."""
    folder, _ = _adapted(tmp_path, targets)
    assert main(["lora", "merge", "--checkpoint", str(folder), "--out", str(tmp_path / "merged")]) == 0
    return folder.parent, tmp_path / "merged"


def test_eval_mc_and_judge_read_a_lora_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchlm.serve.app import BackgroundServer, create_app

    lora, merged = _merged(tmp_path, ("q", "v", "mlp"))
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"context": f"Question {i}:", "choices": [" yes", " no", " maybe"],
                                        "label": i % 3}) + "\n" for i in range(5)))
    records = tmp_path / "instructions.json"
    records.write_text(json.dumps([{"instruction": "Name a colour.", "output": "Red."}, {"instruction": "Say hi."}]))
    from scratchlm import tokenizer as tokenizers

    judge_model = GPT(ModelConfig(vocab_size=50257, context_length=512, n_layer=1, n_head=2, d_model=16))
    judge_tok = tokenizers.load("gpt2")  # a real server plays the judge (its scores are noise; the answers are not)
    mc, responses = {}, {}
    with BackgroundServer(create_app(judge_model, judge_tok, model_name="judge", slots=2)) as url:
        for name, ckpt in (("lora", lora), ("merged", merged)):
            out = tmp_path / f"mc-{name}.json"
            assert main(["eval", "mc", "--checkpoint", str(ckpt), "--task", str(task), "--shots", "1",
                         "--out", str(out), "--json", "--device", "cpu"]) == 0
            mc[name] = json.loads(out.read_text())["results"][0]["items"]
            report = tmp_path / f"judge-{name}.json"
            assert main(["eval", "judge", "--checkpoint", str(ckpt), "--data", str(records), "--judge-url", url,
                         "--judge-model", "judge", "--out", str(report), "--max-new-tokens", "6", "--json",
                         "--device", "cpu"]) == 0
            responses[name] = [it["response"] for it in json.loads(report.read_text())["items"]]
    capsys.readouterr()
    assert [it["pred"] for it in mc["lora"]] == [it["pred"] for it in mc["merged"]]
    for a, b in zip(mc["lora"], mc["merged"], strict=True):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
    assert responses["lora"] == responses["merged"] and any(r.strip() for r in responses["lora"])


def test_chat_reads_a_lora_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    lora, merged = _merged(tmp_path, ("q", "k", "v", "o", "lm_head"))
    capsys.readouterr()
    replies = {}
    for name, ckpt in (("lora", lora), ("merged", merged)):
        monkeypatch.setattr("sys.stdin", io.StringIO("hello there\nand again\n/exit\n"))
        assert main(["chat", "--checkpoint", str(ckpt), "--temperature", "0", "--max-new-tokens", "8",
                     "--device", "cpu"]) == 0
        replies[name] = capsys.readouterr().out
    assert replies["lora"] == replies["merged"] and len(replies["lora"].splitlines()) == 2


def test_serve_reads_a_lora_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str], serve_process) -> None:
    from openai import OpenAI

    lora, merged = _merged(tmp_path, ("q", "v", "mlp"))
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(merged), "--prompt", "Once upon a time", "--temperature", "0",
                 "--max-new-tokens", "8", "--device", "cpu"]) == 0
    want = capsys.readouterr().out.removesuffix("\n")
    args = ["--checkpoint", str(lora), "--slots", "1", "--log-level", "warning", "--device", "cpu"]
    with serve_process(args) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        got = client.completions.create(model="sft", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert got.choices[0].text == want and want.strip()
