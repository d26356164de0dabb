"""lm-evaluation-harness: on a local multiple-choice task (YAML + JSONL written here), lm_eval through the
`scratchlm` model, `scratchlm eval harness` and lm_eval's `local-completions` against `scratchlm serve` all give
`scratchlm eval mc`'s accuracy and per-item log-likelihoods; rolling log-likelihood and generation are checked
against a direct computation; without lm-eval the command is one line."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train

ITEMS = [
    {"context": "ROMEO: But soft, what light through yonder", "choices": ["window breaks", "door", "sky falls"], "label": 0},
    {"context": "To be, or not to", "choices": ["be", "go", "sing a song"], "label": 0},
    {"context": "Now is the winter of our", "choices": ["discontent", "summer", "joy"], "label": 0},
    {"context": "A horse! a horse! my kingdom for a", "choices": ["horse", "cow"], "label": 0},
    {"context": "First Citizen: Before we proceed any", "choices": ["further", "more", "less", "back"], "label": 1},
    {"context": "All the world's a", "choices": ["stage", "page"], "label": 1},
    {"context": "The lady doth protest too", "choices": ["much", "little", "often"], "label": 2},
    {"context": "What's in a", "choices": ["name", "game"], "label": 0},
]  # fmt: skip
TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT-2-family model with a 320-token BPE trained on Tiny Shakespeare."""
    data = (resources.files("scratchlm") / "resources" / "tinyshakespeare.txt.gz").read_bytes()
    tok = train(TokenizerTrainConfig(vocab_size=320), [gzip.decompress(data).decode("utf-8")[:50_000]])
    assert isinstance(tok, BPETokenizer)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=2, n_head=4, d_model=64))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1 if p.dim() > 1 else 0.5)
    return checkpoint.save(tmp_path_factory.mktemp("harness") / "ckpt", model, tok)


@pytest.fixture
def task_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tiny_mc.yaml + tiny_mc.jsonl; Hugging Face datasets kept offline and under tmp_path."""
    for var, sub in (("HF_HOME", "hf"), ("HF_DATASETS_CACHE", "hf/datasets")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "tiny_mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    (folder / "tiny_mc.yaml").write_text(
        TASK_YAML.format(data=folder / "tiny_mc.jsonl", cache=tmp_path / "hf" / "datasets")
    )
    return folder


def eval_mc(ckpt: Path, task_dir: Path, tmp_path: Path) -> dict:
    out = tmp_path / "mc.json"
    args = ["eval", "mc", "--checkpoint", str(ckpt), "--task", str(task_dir / "tiny_mc.jsonl")]
    assert main([*args, "--device", "cpu", "--json", "--out", str(out)]) == 0
    return json.loads(out.read_text())["results"][0]


def harness_lls(results: dict) -> tuple[dict, list[list[float]]]:
    """lm_eval's metrics and, per document, the log-likelihood of each choice (from the logged samples)."""
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    return results["results"]["tiny_mc"], [[r[0] for r in s["filtered_resps"]] for s in samples]


def assert_same_as_mc(metrics: dict, lls: list[list[float]], mc: dict) -> float:
    assert len(lls) == len(mc["items"]) == len(ITEMS)
    diff = max(
        abs(a - b) for theirs, ours in zip(lls, mc["items"]) for a, b in zip(theirs, ours["loglikelihoods"])
    )
    assert diff < 1e-4
    assert metrics["acc,none"] == pytest.approx(mc["acc"], abs=1e-12)
    assert metrics["acc_norm,none"] == pytest.approx(mc["acc_norm"], abs=1e-12)
    return diff


def test_lm_eval_adapter_equals_eval_mc(ckpt: Path, task_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from scratchlm.eval.harness import evaluate

    mc = eval_mc(ckpt, task_dir, tmp_path)
    metrics, lls = harness_lls(evaluate(ckpt, ["tiny_mc"], task_dir, device="cpu", log_samples=True))
    diff = assert_same_as_mc(metrics, lls, mc)
    print(f"adapter vs eval mc: acc {metrics['acc,none']}, max |loglikelihood difference| {diff:.1e}")
    assert 0 < mc["acc"] < 1  # a random model: some right, some wrong, so equal accuracies say something


@pytest.mark.slow  # ~20 s: lm_eval's whole pipeline again, now from the command line
def test_eval_harness_command(ckpt: Path, task_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("lm_eval")
    mc = eval_mc(ckpt, task_dir, tmp_path)
    capsys.readouterr()
    out = tmp_path / "harness.json"
    args = [
        "eval",
        "harness",
        "--checkpoint",
        str(ckpt),
        "--tasks",
        "tiny_mc",
        "--include-path",
        str(task_dir),
    ]
    assert main([*args, "--device", "cpu", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["tiny_mc"]["acc"] == pytest.approx(mc["acc"]) and printed["tiny_mc"][
        "acc_norm"
    ] == pytest.approx(mc["acc_norm"])
    assert_same_as_mc(*harness_lls(json.loads(out.read_text())), mc)


def test_lm_eval_rolling_and_generation(ckpt: Path) -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from scratchlm.eval.harness import ScratchlmLM

    lm = ScratchlmLM(str(ckpt), device="cpu", batch_size=2)
    model, tok = checkpoint.load(ckpt)
    eot = tok.eot_id
    # rolling: log P(text) = sum of log P(t_i | <|endoftext|>, t_<i), each window of 64 predicted tokens read
    # by the 64 tokens that end just before its last one (the harness's disjoint windows); 3 windows here
    text = "But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. " * 3
    ids = tok.encode_ordinary(text)
    assert len(ids) > 128
    seq, expected = [eot, *ids], 0.0
    with torch.no_grad():
        for a in range(0, len(ids), 64):
            b = min(a + 64, len(ids))  # predict seq[a + 1 : b + 1]
            logp = model(torch.tensor([seq[max(0, b - 64) : b]]))[0, -(b - a) :].log_softmax(-1)
            expected += float(logp.gather(1, torch.tensor(seq[a + 1 : b + 1])[:, None]).sum())
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    assert lm.loglikelihood_rolling([req])[0] == pytest.approx(expected, abs=1e-4)
    # loglikelihood's is_greedy: the argmax continuation is greedy, another one is not
    ctx = tok.encode_ordinary("To be, or not to")
    with torch.no_grad():
        best = int(model(torch.tensor([ctx]))[0, -1].argmax())
    other = (best + 1) % 256
    reqs = [Instance("loglikelihood", {}, ("To be, or not to", tok.decode([t])), 0) for t in (best, other)]
    (_, greedy_best), (_, greedy_other) = lm.loglikelihood(reqs)
    assert greedy_best and not greedy_other
    # generate_until: greedy, cut before the stop string, the same as a plain argmax loop
    prompts = ["ROMEO:", "To be, or not"]
    gen = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 12}), i)
        for i, p in enumerate(prompts)
    ]
    outs = lm.generate_until(gen)
    for p, got in zip(prompts, outs):
        seq = tok.encode_ordinary(p)
        with torch.no_grad():
            for _ in range(12):
                nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
                if nxt == eot:
                    break
                seq.append(nxt)
        want = tok.decode(seq[len(tok.encode_ordinary(p)) :]).split("\n\n")[0]
        assert got == want


@pytest.mark.slow  # ~30 s: a server process and lm_eval's HTTP client
def test_local_completions_against_serve(ckpt: Path, task_dir: Path, tmp_path: Path, serve_process) -> None:
    """lm_eval's `local-completions` model (echo + logprobs, token-id prompts, the server's tokenizer through
    /tokenize) scores the task with the same log-likelihoods."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.tasks import TaskManager

    mc = eval_mc(ckpt, task_dir, tmp_path)
    with serve_process(["--checkpoint", str(ckpt), "--model-name", "tiny"]) as url:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"base_url={url}/v1/completions,model=tiny,max_length=64,num_concurrent=1,max_retries=1",
            tasks=["tiny_mc"],
            task_manager=TaskManager(include_path=str(task_dir)),
            log_samples=True,
        )
    diff = assert_same_as_mc(*harness_lls(results), mc)
    print(f"local-completions vs eval mc: max |loglikelihood difference| {diff:.1e}")


def test_echo_logprobs_and_max_tokens_0(ckpt: Path) -> None:
    """The server's echo: the prompt's tokens with log P(token | before) (None for the first), also with
    max_tokens 0; a stop token that ends the reply is listed in the logprobs, not in the text."""
    from fastapi.testclient import TestClient

    from scratchlm.serve.app import create_app

    model, tok = checkpoint.load(ckpt)
    ids = tok.encode_ordinary("To be, or not to be")
    with torch.no_grad():
        logp = model(torch.tensor([ids]))[0].log_softmax(-1)
    want = [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    with TestClient(create_app(model, tok, model_name="tiny", slots=2)) as client:
        body = {"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}
        r = client.post("/v1/completions", json=body).json()["choices"][0]
        assert r["text"] == tok.decode(ids)
        lp = r["logprobs"]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-5)
        assert lp["tokens"] == [tok.decode([t]) for t in ids]
        assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
        r = client.post("/v1/completions", json={**body, "max_tokens": 1}).json()["choices"][0]
        assert len(r["logprobs"]["token_logprobs"]) == len(ids) + 1  # the generated (or stop) token is listed
        info = client.get("/tokenizer_info").json()
        assert info["eos_token"] == "<|endoftext|>" and "message['content']" in info["chat_template"]
        assert client.post("/tokenize", json={"prompt": "To be, or not to be"}).json()["tokens"] == ids
        assert client.post("/detokenize", json={"tokens": ids}).json()["prompt"] == "To be, or not to be"


def test_eval_harness_without_lm_eval_is_one_line(ckpt: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"
        "from scratchlm.cli.main import main\n"
        f"sys.exit(main(['eval', 'harness', '--checkpoint', {str(ckpt)!r}, '--tasks', 'hellaswag']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: eval harness needs lm-evaluation-harness, which is not installed; pip install 'scratchlm[harness]'"
    ]


def test_eval_harness_bad_flags(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", "harness", "--checkpoint", str(ckpt)]
    assert main(base) == 2
    assert capsys.readouterr().err.strip() == (
        "error: name the lm_eval tasks: --tasks hellaswag,arc_easy (local ones with --include-path)"
    )
    assert main([*base, "--tasks", "tiny_mc", "--include-path", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("is not a folder; pass the folder of task YAML files") and len(err.splitlines()) == 1
