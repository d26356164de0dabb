"""Issue #13, "never lose work": every command that writes --out, aimed at something it must not touch.

Each writing command is run through the real CLI at (a) another run, (b) a folder of unrelated files, (c) its
own input and (d) a file: it exits 2 with one line naming what is there, and every byte that was there is still
there. A successful write keeps siblings named OUT.tmp / OUT.old, and replaces only its own earlier output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint, fs
from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import CharTokenizer

TINY_MODEL = [
    "--model.vocab-size",
    "128",
    "--model.n-layer",
    "1",
    "--model.n-head",
    "2",
    "--model.d-model",
    "32",
    "--model.d-ff",
    "64",
    "--model.context-length",
    "32",
]
QUIET = [
    "--micro-batch-size",
    "2",
    "--warmup-steps",
    "0",
    "--no-progress",
    "--eval-batches",
    "1",
    "--max-steps",
    "1",
]
PRETRAIN = ["--model-preset", "gpt2-tiny", *TINY_MODEL, *QUIET, "--sample-at-end", "0"]


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` -> the sha256 of its bytes (folders: "dir"), to compare before and after."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real inputs and outputs, made by the real commands: texts, a char tokenizer, shards, a plain checkpoint,
    a pretrain run, a LoRA sft run, a tiny Hugging Face GPT-2 folder, a folder of a user's files and a file."""
    w = tmp_path_factory.mktemp("world")
    mirror = Path(__import__("os").environ["SCRATCHLM_MIRROR"])
    text = (mirror / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]
    (w / "texts").mkdir()
    (w / "texts" / "text.txt").write_text(text)
    records = [
        {"instruction": f"Say line {i}.", "input": "", "output": line}
        for i, line in enumerate(text.splitlines()[:40])
        if line
    ]
    (w / "instr.json").write_text(json.dumps(records))
    tok = CharTokenizer.train([text + (w / "instr.json").read_text()], special_tokens=["<|endoftext|>"])
    tok.save(w / "tok.json")
    torch.manual_seed(0)
    checkpoint.save(
        w / "base",
        GPT(ModelConfig(vocab_size=128, context_length=32, n_layer=1, n_head=2, d_model=32, d_ff=64)),
        tok,
    )
    assert (
        main(
            [
                "data",
                "prepare",
                "--input",
                str(w / "texts"),
                "--tokenizer",
                str(w / "tok.json"),
                "--out",
                str(w / "shards"),
                "--split-docs",
                "--min-chars",
                "0",
                "--decontaminate",
                "none",
                "--workers",
                "1",
                "--val-fraction",
                "0.1",
            ]
        )
        == 0
    )
    assert main(["pretrain", "--data", str(w / "shards"), "--out", str(w / "pre"), *PRETRAIN]) == 0
    assert (
        main(
            [
                "finetune",
                "sft",
                "--checkpoint",
                str(w / "base"),
                "--data",
                str(w / "instr.json"),
                "--out",
                str(w / "sft"),
                "--lora-rank",
                "2",
                "--template",
                "plain",
                *QUIET,
            ]
        )
        == 0
    )
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    )
    hf.save_pretrained(w / "hf")
    user = w / "user"  # what the issue found overwritten: a user's own config.yaml and metrics.jsonl
    user.mkdir()
    (user / "config.yaml").write_text("lr: 0.1\n")
    (user / "metrics.jsonl").write_text('{"my": "numbers"}\n')
    (user / "notes.txt").write_text("three weeks of notes\n")
    (w / "afile.txt").write_text("a file, not a folder\n")
    return w


# command -> (argv for an --out, the folder aimed at as "another run", its own input)
COMMANDS: dict[str, tuple[Callable[[Path, Path], list], str, str]] = {
    "convert to-hf": (lambda w, out: ["convert", "to-hf", w / "base", out], "pre", "base"),
    "convert from-hf": (
        lambda w, out: ["convert", "from-hf", w / "hf", out, "--tokenizer", w / "tok.json"],
        "pre",
        "hf",
    ),
    "lora merge": (lambda w, out: ["lora", "merge", "--checkpoint", w / "sft", "--out", out], "pre", "sft"),
    "pretrain": (
        lambda w, out: ["pretrain", "--data", w / "shards", "--out", out, *PRETRAIN],
        "sft",
        "shards",
    ),
    "finetune classify": (
        lambda w, out: [
            "finetune",
            "classify",
            "--checkpoint",
            w / "base",
            "--data",
            w / "texts" / "text.txt",
            "--out",
            out,
            *QUIET,
        ],
        "sft",
        "base",
    ),
    "finetune sft": (
        lambda w, out: [
            "finetune",
            "sft",
            "--checkpoint",
            w / "base",
            "--data",
            w / "instr.json",
            "--out",
            out,
            *QUIET,
        ],
        "pre",
        "base",
    ),
    "finetune dpo": (
        lambda w, out: [
            "finetune",
            "dpo",
            "--checkpoint",
            w / "base",
            "--data",
            w / "instr.json",
            "--out",
            out,
            *QUIET,
        ],
        "sft",
        "base",
    ),
    "finetune reward": (
        lambda w, out: [
            "finetune",
            "reward",
            "--checkpoint",
            w / "base",
            "--data",
            w / "instr.json",
            "--out",
            out,
            *QUIET,
        ],
        "sft",
        "base",
    ),
    "data prepare": (
        lambda w, out: [
            "data",
            "prepare",
            "--input",
            w / "texts",
            "--tokenizer",
            w / "tok.json",
            "--out",
            out,
            "--decontaminate",
            "none",
        ],
        "pre",
        "texts",
    ),
    "tokenizer train": (
        lambda w, out: [
            "tokenizer",
            "train",
            "--input",
            w / "texts" / "text.txt",
            "--vocab-size",
            "300",
            "--out",
            out,
        ],
        "pre",
        "texts/text.txt",
    ),
}

# target -> (what --out is aimed at, a phrase the one line must contain)
TARGETS = {
    "another run": (None, "it holds a scratchlm"),
    "unrelated files": (
        "user",
        "it holds 3 entries scratchlm did not write (config.yaml, metrics.jsonl, notes.txt)",
    ),
    "own input": (None, "; write the output somewhere else"),
    "a file": ("afile.txt", "is a file; pass a folder"),
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_refused_with_one_line_and_nothing_touched(
    world: Path, capsys: pytest.CaptureFixture[str], command: str, target: str
) -> None:
    argv, other_run, own_input = COMMANDS[command]
    aimed, phrase = TARGETS[target]
    aimed = {"another run": other_run, "own input": own_input}.get(target, aimed)
    if command == "tokenizer train":  # its --out is a file: folders are refused as folders, files by kind
        phrase = {
            "another run": "is a folder; give a file name",
            "unrelated files": "is a folder; give a file name",
            "own input": "is the input",
            "a file": "already exists and is not a scratchlm tokenizer file",
        }[target]
    before = tree(world)
    code, err = run(capsys, argv(world, world / aimed))
    assert code == 2
    flag = "output folder" if command.startswith("convert") else "--out"
    assert err.startswith(f"error: {flag} {world / aimed} ") and err.count("\n") == 1, err
    assert phrase in err
    assert tree(world) == before


def test_output_inside_an_input_is_refused(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """lora merge --out into the run it reads (a new folder inside it) and to-hf into the checkpoint folder."""
    before = tree(world)
    code, err = run(
        capsys, ["lora", "merge", "--checkpoint", world / "sft", "--out", world / "sft" / "merged"]
    )
    assert code == 2 and f"lies inside the input {world / 'sft'}" in err and err.count("\n") == 1
    code, err = run(capsys, ["convert", "to-hf", world / "pre", world / "pre" / "step_000001" / "hf"])
    assert code == 2 and "lies inside the input" in err and err.count("\n") == 1
    assert tree(world) == before


def _siblings(out: Path) -> dict[str, str]:
    for name in (out.name + ".tmp", out.name + ".old"):
        (out.parent / name).mkdir()
        (out.parent / name / "mine.txt").write_text(f"the user's {name}\n")
    return tree(out.parent)


@pytest.mark.parametrize("command", ["convert to-hf", "convert from-hf", "lora merge"])
def test_write_and_rewrite_keep_siblings(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    argv = COMMANDS[command][0]
    before = _siblings(out)
    assert run(capsys, argv(world, out))[0] == 0
    first = tree(out)
    assert run(capsys, argv(world, out))[0] == 0  # its own earlier output: replaced
    after = tree(tmp_path)
    siblings = {k: v for k, v in after.items() if not k.startswith("out/") and k != "out"}
    assert siblings == {k: v for k, v in before.items() if k != "out"}  # OUT.tmp, OUT.old as they were
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old", "out.tmp"]  # no temp left behind
    assert tree(out).keys() == first.keys() and len(first) >= 3


def test_pretrain_resumes_its_own_run_before_its_first_checkpoint(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pretrain run killed before its first checkpoint (config.yaml, metrics.jsonl) is the same kind: reused."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(world / "pre" / name, out / name)
    code, err = run(capsys, ["pretrain", "--data", world / "shards", "--out", out, *PRETRAIN])
    assert code == 0, err
    assert (out / "latest").read_text().strip() == "step_000001"


def test_tokenizer_train_replaces_a_tokenizer_file(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tok.json"
    shutil.copy(world / "tok.json", out)
    code, err = run(
        capsys,
        ["tokenizer", "train", "--input", world / "texts" / "text.txt", "--vocab-size", "300", "--out", out],
    )
    assert code == 0, err
    assert (
        json.loads(out.read_text())["format"] == "scratchlm-tokenizer"
        and out.read_bytes() != (world / "tok.json").read_bytes()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]


# ---- fs.atomic_dir itself --------------------------------------------------------------------------------------------
def test_atomic_dir_replaces_without_touching_siblings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    before = _siblings(out)
    with fs.atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name not in ("out.tmp", "out.old")
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("out/") and k != "out"} == {
        k: v for k, v in before.items() if not k.startswith("out/") and k != "out"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old", "out.tmp"]


def test_atomic_dir_error_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), fs.atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"


def test_atomic_dir_refuses_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("precious")
    with pytest.raises(ScratchlmError, match="is a file"), fs.atomic_dir(out):
        pass
    assert out.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_markers_match_their_owners() -> None:
    """fs names other modules' files without importing them (the tokenizer package must not load torch)."""
    from scratchlm.data import prepare, shards
    from scratchlm.interop import hf
    from scratchlm.tokenizer import files
    from scratchlm.train import loop

    assert fs.CHECKPOINT_CONFIG == checkpoint.CONFIG_FILE and fs.LATEST_FILE == checkpoint.LATEST_FILE
    assert fs.HF_TOKENIZER_COPY == hf.HF_TOKENIZER_COPY and fs.STEP_PREFIX == loop.STEP_PREFIX
    assert {
        checkpoint.WEIGHTS_FILE,
        checkpoint.TOKENIZER_FILE,
        checkpoint.TRAIN_STATE_DIR,
    } <= fs.CHECKPOINT_FILES
    assert (fs.SHARD_MANIFEST, fs.SHARD_FORMAT) == (shards.MANIFEST, shards.MANIFEST_FORMAT)
    assert fs.SHARD_PROGRESS == prepare.PROGRESS_DIR and fs.TOKENIZER_FORMAT == files.FORMAT


def test_dangling_link_at_out_is_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    code, err = run(capsys, ["convert", "to-hf", world / "base", out])
    assert code == 2 and "is a link to nothing" in err and err.count("\n") == 1
    assert out.is_symlink() and [p.name for p in tmp_path.iterdir()] == ["out"]
