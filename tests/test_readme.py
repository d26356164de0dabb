"""The README's "Using it" section is a contract: its commands, read from README.md and run in order as written in
a fresh folder.

What cannot run here is changed as little as possible: the lines that need downloaded weights or datasets
(`convert from-hf ~/hf/gpt2`, `eval mc --task hellaswag`, `eval glue`) are left out, the commands that start from
`checkpoints/gpt2` start from the pretrained `runs/tiny` (with the model's own context for `eval perplexity`),
`chat` reads two lines from stdin, `serve` answers one request from the real `openai` client and is stopped, and
`eval judge` asks a real scratchlm server on a free port. The default suite runs the short version (step counts,
the tokenizer's vocabulary, the perplexity text and the judge's limit lowered); the slow test runs the commands' own numbers. With
SCRATCHLM_README_TIMES=FILE.json the wall time of each command is written there (`benchmarks/readme_times.py`).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scratchlm.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_DOWNLOADS = ("~/hf/", "--task hellaswag", "eval glue")  # GLUE's archives are not in the mirror
FETCH = re.compile(r"\$\(scratchlm fetch ([\w.-]+)\)")


def readme_commands() -> list[str]:
    """The command lines of the README's "Using it" bash block, comments and blank lines dropped."""
    section = README.read_text(encoding="utf-8").split("## Using it", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if shlex.split(line, comments=True)]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"scratchlm {shlex.join(argv)} -> {rc}: {err.strip()[-800:]}"
    return out


def _option(argv: list[str], name: str, value: str | None) -> list[str]:
    """argv with `name`'s value set (appended when absent), or with the option removed when value is None."""
    if name in argv:
        i = argv.index(name)
        return argv[:i] + argv[i + 2:] if value is None else argv[: i + 1] + [value] + argv[i + 2:]
    return argv if value is None else argv + [name, value]


def _adapt(argv: list[str], short: bool, fetched: dict[str, str]) -> list[str]:
    argv = [FETCH.sub(lambda m: fetched[m.group(1)], a) for a in argv]
    if "checkpoints/gpt2" in argv:  # the pretrained tiny model stands in for downloaded GPT-2 weights
        argv = ["runs/tiny" if a == "checkpoints/gpt2" else a for a in argv]
        argv = _option(_option(argv, "--context", None), "--stride", None)
    if short:
        if "--max-steps" in argv or argv[:1] == ["finetune"]:
            argv = _option(argv, "--max-steps", "3")
        if "--vocab-size" in argv:
            argv = _option(argv, "--vocab-size", "300")
        if argv[:2] == ["eval", "judge"]:
            argv = _option(argv, "--limit", "2")
        if argv[:2] == ["eval", "perplexity"]:
            argv = _option(argv, "--limit", "200")  # wikitext-2's first 200 lines, not all 4,358
    return argv


def _serve(argv: list[str], serve_process) -> str:  # noqa: ANN001
    """`scratchlm serve ...` as a process on a free port; one chat completion through the `openai` client."""
    from openai import OpenAI

    with serve_process(_option(argv[1:], "--port", None)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Name a colour."}],
                                               max_tokens=8, temperature=0)
        return reply.choices[0].message.content or ""


def _judge_server():  # noqa: ANN202
    """A real scratchlm server as the judge: a random model whose context holds the rubric and a response."""
    import torch

    from scratchlm import tokenizer
    from scratchlm.model import GPT, ModelConfig
    from scratchlm.serve.app import BackgroundServer, create_app

    tok = tokenizer.load("gpt2")
    torch.manual_seed(0)
    judge = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=2048, n_layer=1, n_head=2, d_model=16))
    return BackgroundServer(create_app(judge.eval(), tok, model_name="judge", slots=2))


def _check(argv: list[str], out: str) -> None:
    """Each command did something sensible: the output or files it promises."""
    head = argv[:2]
    if head == ["fetch", "--list"]:
        assert "tinyshakespeare" in out
    elif head == ["tokenizer", "encode"]:
        assert json.loads(out) == [15496, 995]
    elif head == ["tokenizer", "train"]:
        assert Path("tok.json").is_file()
    elif head == ["model", "info"]:
        if "--world-size" in argv:
            assert "per rank, 8 processes = pp 1 x dp 4 x tp 2" in out and "stage 0" in out
        else:
            assert "124,439,808" in out if "--preset" in argv else "rule of thumb (Chinchilla, 20 tokens/parameter" in out
    elif "pretrain" in argv[:5] or head[0] == "finetune":  # (torchrun's argv starts with its own options)
        run = Path(argv[argv.index("--out") + 1])
        assert (run / "latest").is_file() and (run / (run / "latest").read_text().strip() / "config.json").is_file()
    elif head == ["convert", "to-hf"]:
        assert Path(argv[3], "model.safetensors").is_file()
    elif head[0] == "classify":
        assert out.split("\t")[0] in ("ham", "spam")
    elif head[0] in ("generate", "chat"):
        assert out.strip()
    elif head == ["eval", "perplexity"]:
        header, _, values = out.strip().splitlines()[-3:]  # the table
        assert header.split()[0] == "token_perplexity" and 1 < float(values.split()[0]) < 1e6
    elif head == ["eval", "judge"]:
        assert json.loads(out)["judged"] >= 1
    elif head[0] == "score":  # one reward per answer
        assert len([float(v) for v in out.split()]) == len(argv) - argv.index("--prompt") - 2
    elif head == ["rl", "arithmetic"]:
        assert Path(argv[argv.index("--out") + 1], "test.jsonl").is_file()
    elif head == ["eval", "verify"]:
        rows = dict(line.split(None, 1) for line in out.strip().splitlines())
        assert rows["records"] == argv[argv.index("--limit") + 1] and 0 <= float(rows["pass@n"]) <= 1


def _sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
              short: bool, serve_process) -> list[tuple[str, float]]:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    fetched: dict[str, str] = {}
    times = []
    for line in readme_commands():
        if any(s in line for s in NEEDS_DOWNLOADS):
            continue
        words = shlex.split(line, comments=True)
        for name in FETCH.findall(line):
            fetched[name] = _run(capsys, ["fetch", name]).strip()
        argv = _adapt(words[1:], short, fetched)
        start = time.perf_counter()
        if words[0] == "torchrun":
            torchrun = shutil.which("torchrun") or "torchrun"
            r = subprocess.run([torchrun, *argv], capture_output=True, text=True, env={**os.environ})
            assert r.returncode == 0, r.stderr[-2000:]
            out = r.stdout
        elif argv[0] == "serve":
            out = _serve(argv, serve_process)
        elif argv[0] == "chat":
            monkeypatch.setattr("sys.stdin", io.StringIO("Hello, who are you?\n/exit\n"))
            out = _run(capsys, argv)
        elif argv[:2] == ["eval", "judge"]:
            with _judge_server() as url:
                argv = _option(argv, "--judge-url", url)
                out = _run(capsys, argv + ["--json"])
        else:
            out = _run(capsys, argv)
        times.append((line.split("#", 1)[0].strip(), time.perf_counter() - start))
        if os.environ.get("SCRATCHLM_README_TIMES"):  # written as it goes: a failed run still shows its times
            Path(os.environ["SCRATCHLM_README_TIMES"]).write_text(json.dumps({"short": short, "times": times}, indent=1))
        _check(argv, out)
    ran = {t[0].split()[1] if t[0].startswith("scratchlm") else t[0].split()[0] for t in times}
    assert {"tokenizer", "data", "pretrain", "torchrun", "finetune", "chat", "serve", "eval"} <= ran
    return times


def test_readme_sequence_short(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, serve_process) -> None:
    _sequence(tmp_path, capsys, monkeypatch, True, serve_process)


@pytest.mark.slow
def test_readme_sequence_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, serve_process) -> None:
    _sequence(tmp_path, capsys, monkeypatch, False, serve_process)
