"""`scratchlm generate` and `scratchlm chat` against in-process generation with the same settings."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scratchlm
from scratchlm.cli.main import main
from scratchlm.generate import SampleConfig, complete, stream_completion
from scratchlm.generate.chat import chat_prompt
from scratchlm.tokenizer.chat import ChatTemplate

SEEDED = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "15"]
SEEDED_CFG = SampleConfig(temperature=0.8, top_k=40, top_p=0.9, seed=3, max_new_tokens=15)


def test_generate_prints_only_the_continuation(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tok = scratchlm.load(tiny_checkpoint)
    [[ref]] = complete(model, tok, ["To be or not"], SEEDED_CFG)
    assert ref.text
    ckpt = str(tiny_checkpoint)
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "To be or not", *SEEDED]) == 0
    assert capsys.readouterr().out == ref.text + "\n"
    # a step folder works like its run folder; --stream and --echo print the same text
    step = str(tiny_checkpoint / "step_000001")
    assert (
        main(["generate", "--checkpoint", step, "--prompt", "To be or not", "--stream", "--echo", *SEEDED])
        == 0
    )
    assert capsys.readouterr().out == "To be or not" + ref.text + "\n"


def test_generate_prompt_file_and_n(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tok = scratchlm.load(tiny_checkpoint)
    (tmp_path / "p.txt").write_text("Dear diary, ✓", encoding="utf-8")
    refs = complete(model, tok, ["Dear diary, ✓"], dataclasses.replace(SEEDED_CFG, n=2))[0]
    args = [
        "generate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--prompt-file",
        str(tmp_path / "p.txt"),
        "--n",
        "2",
    ]
    assert main([*args, *SEEDED]) == 0
    assert capsys.readouterr().out == refs[0].text + "\n----- sample 2 -----\n" + refs[1].text + "\n"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of --prompt TEXT or --prompt-file FILE"),
        (
            ["--prompt", "a", "--prompt-file", "x.txt"],
            "give exactly one of --prompt TEXT or --prompt-file FILE",
        ),
        (["--prompt-file", "/nonexistent/p.txt"], "cannot read --prompt-file /nonexistent/p.txt"),
        (["--prompt", "a", "--temperature", "-1"], "temperature must be >= 0"),
        (["--prompt", "a", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--prompt", "a", "--stream", "--n", "2"], "--stream prints one sample"),
    ],
)
def test_generate_bad_input_is_one_line_exit_2(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_generate_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_chat_in_a_subprocess(tiny_checkpoint: Path) -> None:
    """Multi-turn over stdin: /reset gives the same first reply again; long turns push the oldest ones out."""
    model, tok = scratchlm.load(tiny_checkpoint)
    hello = [{"role": "user", "content": "hello"}]
    prompt = chat_prompt(ChatTemplate.from_config(None), tok, hello)
    cfg = SampleConfig(temperature=0.8, seed=3, max_new_tokens=10, stop=prompt.stop_strings)
    *_, (_, done) = stream_completion(model, tok, prompt.ids, cfg, stop_ids=prompt.stop_ids)
    first = done.text
    long = " ".join(["story"] * 40)
    lines = ["hello", "/reset", "hello", long, long, long, " ".join(["x"] * 200), "/exit", "never read"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scratchlm",
            "chat",
            "--checkpoint",
            str(tiny_checkpoint),
            "--temperature",
            "0.8",
            "--seed",
            "3",
            "--max-new-tokens",
            "10",
        ],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(first + "\n" + first + "\n")
    assert "(conversation reset)" in r.stderr
    assert "oldest message(s) to fit the 128-token context" in r.stderr
    assert "error: the message is" in r.stderr  # the 200-word message alone is too long; the chat goes on


@pytest.mark.parametrize(
    "command, args, message",
    [
        (
            "generate",
            ["--prompt", "a", "--temperature", "nan"],
            "error: temperature must be a finite number, got nan\n",
        ),
        ("generate", ["--prompt", "a", "--top-p", "inf"], "error: top_p must be a finite number, got inf\n"),
        (
            "generate",
            ["--prompt", "a", "--seed", str(10**23)],
            f"error: seed must be an integer from {-(2**63)} to {2**63 - 1} (64-bit signed), got {10**23}\n",
        ),
        ("chat", ["--temperature", "nan"], "error: temperature must be a finite number, got nan\n"),
        (
            "chat",
            ["--presence-penalty", "-inf"],
            "error: presence_penalty must be a finite number, got -inf\n",
        ),
    ],
)
def test_out_of_range_sampling_flags_are_one_line_exit_2(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], command: str, args: list[str], message: str
) -> None:
    assert main([command, "--checkpoint", str(tiny_checkpoint), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == message
