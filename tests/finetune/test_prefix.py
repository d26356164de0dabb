"""Prefix and prompt tuning through the one loop and the one loader: only the prefix trains (the base stays bitwise
equal), the adapter folder holds only the prefix and reloads to the very model that trained, every command
reads it (generate, chat, eval, classify; serve is slow-marked), bad lengths are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.model.prefix import PrefixConfig
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train
from scratchlm.train.modes.sft import SFTMode

KINDS = {"prefix": ("prefix", 0), "reparam": ("prefix", 16), "prompt": ("prompt", 0)}


def _instructions(mirror: Path, tmp_path: Path, n: int = 24) -> Path:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(json.loads((mirror / "instruction-data.json").read_text())[:n]))
    return path


@pytest.mark.parametrize("name", list(KINDS))
def test_only_the_prefix_trains_and_the_folder_reloads_to_the_trained_model(
    name: str, char_ckpt: Path, mirror: Path, tmp_path: Path
) -> None:
    kind, reparam = KINDS[name]
    loaded = checkpoint.read(char_ckpt)
    model, tok = loaded.model.train(), loaded.tokenizer
    base = {k: v.clone() for k, v in model.state_dict().items()}

    class Watched(SFTMode):  # keeps the prefix as it was before the first step
        def setup(self, model, tokenizer):  # noqa: ANN001, ANN202
            module = super().setup(model, tokenizer)
            self.start = {k: v.clone() for k, v in module.prefix.state_dict().items()}
            return module

    mode = Watched(_instructions(mirror, tmp_path), ChatTemplate.named("plain"), max_length=96, val_fraction=0.2,
                   base_checkpoint=str(char_ckpt), prefix=PrefixConfig(4, reparam), prefix_kind=kind)
    cfg = TrainConfig(out=tmp_path / "run", max_steps=3, micro_batch_size=4, lr=1e-2, warmup_steps=1,
                      eval_every=0, save_every=0, progress=False, precision="fp32")
    result = train(cfg, mode, model, tok)
    after = model.state_dict()
    assert {k for k in after if k not in base} == {f"prefix.{k}" for k in mode.start}  # only new tensors
    for k, v in base.items():
        assert torch.equal(after[k], v), k  # the base is bitwise what it was
    assert all(not torch.equal(after[f"prefix.{k}"], v) for k, v in mode.start.items())  # the prefix moved
    # the folder: the prefix alone (folded keys/values, or the soft prompt), no model weights
    step = result.checkpoint
    assert step is not None and not (step / checkpoint.WEIGHTS_FILE).exists()
    saved = load_file(str(step / checkpoint.ADAPTER_FILE))
    assert set(saved) == ({"prefix.embedding"} if kind == "prompt" else {"prefix.key", "prefix.value"})
    assert (step / checkpoint.PREFIX_TRAIN_FILE).exists() == bool(reparam)  # E + MLP, to resume exactly
    section = checkpoint.load_config(step)["prefix"]
    assert (section["kind"], section["length"], section["reparam"]) == (kind, 4, reparam)
    # the loader rebuilds the model that trained: same validation losses
    reloaded = checkpoint.load(step)[0]
    model.eval()
    with torch.no_grad():
        for batch in mode.val_batches(4):
            torch.testing.assert_close(mode.loss(reloaded, batch)[0], mode.loss(model, batch)[0],
                                       atol=1e-5, rtol=1e-5)


@torch.no_grad()
def _greedy_full_forward(model: torch.nn.Module, prompt: list[int], n: int, stop: int | None) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        if nxt == stop:
            break
        ids.append(nxt)
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def prefix_runs(char_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> a run folder of `scratchlm finetune sft --peft KIND` (3 steps from the char checkpoint)."""
    import os

    mirror = Path(os.environ["SCRATCHLM_MIRROR"])
    root = tmp_path_factory.mktemp("prefix-runs")
    runs = {}
    for kind in ("prefix", "prompt"):
        runs[kind] = root / kind
        assert main(["finetune", "sft", "--checkpoint", str(char_ckpt), "--data", str(_instructions(mirror, root)),
                     "--peft", kind, "--prefix-length", "6", "--template", "plain", "--max-length", "96",
                     "--micro-batch-size", "4", "--max-steps", "3", "--lr", "3e-2", "--eval-every", "0",
                     "--save-every", "0", "--progress", "false", "--out", str(runs[kind])]) == 0
    return runs


PROMPT = "Name a colour"


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_generate_and_eval_read_a_prefix_checkpoint(kind: str, prefix_runs: dict[str, Path], char_ckpt: Path,
                                                    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = prefix_runs[kind]
    capsys.readouterr()
    model, tok = checkpoint.load(run)
    base, _ = checkpoint.load(char_ckpt)
    want = tok.decode(_greedy_full_forward(model, tok.encode(PROMPT), 12, tok.eot_id))
    with torch.no_grad():  # the prefix acts
        ids = torch.tensor([tok.encode(PROMPT)])
        assert (model(ids) - base(ids)).abs().max() > 1e-3
    # generate (KV cache, the engine) == the full forward of the loaded model
    assert main(["generate", "--checkpoint", str(run), "--prompt", PROMPT, "--max-new-tokens", "12",
                 "--temperature", "0", "--raw"]) == 0
    assert capsys.readouterr().out == want + "\n"
    # chat: the checkpoint's template, the engine, the loaded prefix
    import io

    from scratchlm.generate import SampleConfig, stream_completion
    from scratchlm.generate.chat import chat_prompt

    framed = chat_prompt(ChatTemplate.from_config(checkpoint.load_config(run)["chat_template"]), tok,
                         [{"role": "user", "content": PROMPT}])
    config = SampleConfig(temperature=0.0, max_new_tokens=8, stop=framed.stop_strings)
    *_, (_, done) = stream_completion(model, tok, framed.ids, config, stop_ids=framed.stop_ids)
    monkeypatch.setattr("sys.stdin", io.StringIO(PROMPT + "\n/exit\n"))
    assert main(["chat", "--checkpoint", str(run), "--temperature", "0", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith(done.text + "\n")
    # eval perplexity == the evaluation function on the loaded model (and not the base's)
    from scratchlm.eval.perplexity import perplexity_of_text

    text = (mirror / "the-verdict.txt").read_text()[:600]
    (tmp_path / "t.txt").write_text(text)
    assert main(["eval", "perplexity", "--checkpoint", str(run), "--input", str(tmp_path / "t.txt"), "--json"]) == 0
    nll = json.loads(capsys.readouterr().out)["nll"]
    context = model.config.context_length
    assert nll == pytest.approx(perplexity_of_text(model, tok, text, context, context // 2).nll, rel=1e-5)
    assert abs(nll - perplexity_of_text(base, tok, text, context, context // 2).nll) > 0.1  # total nats
    # no export format holds a prefix: one line, nothing written
    assert main(["convert", "to-hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is {kind}-tuned: a Hugging Face GPT-2/Llama folder has no place" in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_serve_reads_a_prefix_checkpoint(prefix_runs: dict[str, Path], serve_process) -> None:
    import httpx

    run = prefix_runs["prefix"]
    model, tok = checkpoint.load(run)
    want = tok.decode(_greedy_full_forward(model, tok.encode(PROMPT), 12, tok.eot_id))
    with serve_process(["--checkpoint", str(run), "--slots", "2", "--log-level", "warning", "--device", "cpu"]) as url:
        body = {"model": run.name, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
        replies = [httpx.post(url + "/v1/completions", json=body, timeout=60) for _ in range(2)]
        assert [(r.status_code, r.json()["choices"][0]["text"]) for r in replies] == [(200, want)] * 2


def test_classify_with_a_prefix_and_bad_lengths(char_ckpt: Path, mirror: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "sms.tsv"
    data.write_text("".join((mirror / "SMSSpamCollection.tsv").read_text().splitlines(True)[:120]))
    common = ["--checkpoint", str(char_ckpt), "--data", str(data), "--columns", "label,text", "--max-length", "64",
              "--micro-batch-size", "8", "--max-steps", "2", "--eval-every", "0", "--save-every", "0",
              "--progress", "false"]
    for bad, message in ((["--prefix-length", "0"], "error: --prefix-length must be at least 1, got 0"),
                         (["--prefix-length", "257"],
                          "error: --prefix-length 257 is longer than the model's context (256 tokens); use at most 256"),
                         (["--lora.rank", "4"], "error: --peft prefix and --lora.rank 4 exclude each other"),
                         (["--tp", "2"], "error: --peft prefix with --tp 2 is not supported")):
        assert main(["finetune", "classify", *common, "--peft", "prefix", *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(message), err
    assert not (tmp_path / "x").exists()
    run = tmp_path / "spam"
    assert main(["finetune", "classify", *common, "--peft", "prompt", "--prefix-length", "4", "--out", str(run)]) == 0
    capsys.readouterr()
    step = checkpoint.resolve(run)
    assert sorted(p.name for p in step.glob("*.safetensors")) == ["adapters.safetensors", "classifier.safetensors"]
    texts = ["WINNER!! Claim your prize", "see you at lunch"]
    assert main(["classify", "--checkpoint", str(run), *texts]) == 0
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    from scratchlm.eval.classify import classify_texts

    loaded = checkpoint.read(run, expect="classifier")
    want = classify_texts(loaded.model, loaded.tokenizer, texts, loaded.config["classifier"], "cpu")
    assert [(label, float(p)) for label, p in printed] == [(label, pytest.approx(p, abs=1e-4)) for label, p in want]
    # a prefix is no weight update: `lora merge` says so in one line
    assert main(["lora", "merge", "--checkpoint", str(run), "--out", str(tmp_path / "merged")]) == 2
    assert "cannot be merged" in capsys.readouterr().err


@pytest.mark.slow
def test_prefix_tuned_spam_classifier_beats_the_majority_class(mirror: Path, tmp_path: Path) -> None:
    """SMS spam with the base frozen: a prefix (and the head) beat always answering "ham" by >= 0.05 on the test
    split. Prefix tuning steers what the base computes, so the base first learns the messages as a language
    model (the training split's texts, no labels; ids remapped to the tokens that occur, for a small head)."""
    import random

    from scratchlm import tokenizer as tokenizers
    from scratchlm.data.finetune import ClassificationData, load_classification
    from scratchlm.eval.classify import classification_report, predict_batches
    from scratchlm.model import GPT, ModelConfig
    from scratchlm.tokenizer import CharTokenizer
    from scratchlm.train.modes.classify import ClassifyMode

    tok = tokenizers.load("gpt2")
    data = load_classification(mirror / "SMSSpamCollection.tsv", tok, columns=("label", "text"), max_length=48,
                               val_fraction=0.1, test_fraction=0.2, seed=1337)
    vocab = {t: i for i, t in enumerate(sorted({t for ids, _ in data.train + data.val + data.test for t in ids}))}
    pad = len(vocab)
    remap = lambda split: [([vocab[t] for t in ids], y) for ids, y in split]  # noqa: E731
    data = ClassificationData(data.labels, remap(data.train), remap(data.val), remap(data.test))
    compact = CharTokenizer([chr(0x4E00 + i) for i in range(pad)], {"<|endoftext|>": pad})  # names the ids only
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=pad + 1, context_length=64, n_layer=2, n_head=4, d_model=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    for _ in range(300):  # the base: a language model of the training texts
        batch = rng.sample([ids for ids, _ in data.train], 16)
        ids = torch.full((16, 48), pad)
        targets = torch.full((16, 48), -100)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
            targets[i, : len(row) - 1] = torch.tensor(row[1:])
        loss = model(ids, targets=targets, reduction="mean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    base = checkpoint.save(tmp_path / "base", model, compact)
    mode = ClassifyMode(data, pad, 48, prefix=PrefixConfig(16), prefix_kind="prefix", base_checkpoint=str(base))
    cfg = TrainConfig(out=tmp_path / "run", max_steps=300, micro_batch_size=16, lr=3e-2, min_lr=3e-3,
                      warmup_steps=10, eval_every=0, save_every=0, progress=False, precision="fp32")
    result = train(cfg, mode, checkpoint.read(base).model.train(), compact)
    y_true, y_pred, _ = predict_batches(checkpoint.read(result.checkpoint).model, mode.test_batches(64))
    accuracy = classification_report(y_true, y_pred, data.labels)["accuracy"]
    majority = max(y_true.count(c) for c in set(y_true)) / len(y_true)
    assert majority == pytest.approx(0.8564, abs=1e-4) and accuracy >= majority + 0.05, accuracy


def test_peft_flag_and_todays_lora_flags() -> None:
    from scratchlm.cli.finetune import SFTConfig
    from scratchlm.cli.parsing import parse
    from scratchlm.errors import ConfigError

    need = ["--checkpoint", "c", "--data", "d"]
    assert parse(SFTConfig, [*need, "--peft", "lora"], "p").lora.rank == 8  # the default rank
    old = parse(SFTConfig, [*need, "--lora-rank", "4"], "p")  # no --peft: still LoRA
    assert (old.peft, old.lora.rank, old.adapters()["lora"].rank) == ("lora", 4, 4)
    prompt = parse(SFTConfig, [*need, "--peft", "prompt", "--prefix-length", "7"], "p")
    assert prompt.adapters() == {"lora": None, "prefix": PrefixConfig(7), "prefix_kind": "prompt"}
    assert parse(SFTConfig, need, "p").adapters() == {"lora": None}
    with pytest.raises(ConfigError, match="^--peft 'ia3' is unknown; use one of none, lora, prefix, prompt"):
        parse(SFTConfig, [*need, "--peft", "ia3"], "p")
