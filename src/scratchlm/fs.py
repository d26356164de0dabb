"""Atomic file and folder writes, and the one rule for an output path: never lose the user's work.

Everything that writes user-visible output (tokenizer files, checkpoints, shards, manifests) goes through here.
A crash or a bad path never leaves a half-written file that looks whole, and nothing is ever removed that the
current call did not create:

- `atomic_dir` fills a fresh, uniquely named sibling (never a fixed `OUT.tmp`, which could be someone's folder)
  and renames it into place; a folder it replaces is moved aside to a unique name and removed only once the new
  one is in place.
- `check_out_dir` / `check_out_file` decide, before a command writes anything, whether `--out` may be used: a
  missing path or an empty folder always; an existing one only when it is the same kind of output from the same
  command (the caller's `reusable` test, built from the markers below); never a file where a folder is wanted,
  never an input (nor inside one, nor containing one).

The markers are files other modules own (checkpoint, data.shards, tokenizer.files, train.loop); they are named
here, stdlib only, so that `scratchlm.tokenizer` can keep importing this module without torch
(tests/test_never_lose_work.py checks that they match their owners).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from scratchlm.errors import ScratchlmError


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Create `path` (and parents) or raise a one-line error naming the path and the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScratchlmError(
            f"cannot create {what} folder {path}: {e.strerror or e}; choose a writable location"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ScratchlmError(
            f"cannot write to {what} folder {path}: permission denied; choose a writable location"
        )
    return path


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], what: str = "output file") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path`, on error delete it."""
    path = Path(path)
    parent = ensure_writable_dir(path.parent if str(path.parent) else Path("."), what=f"{what}'s")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, what: str = "output file") -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str = "output file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


def _fresh_sibling(path: Path, suffix: str) -> Path:
    """Create and return an empty folder `.NAME.<random>SUFFIX` beside `path` (mkdir respects the umask)."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ScratchlmError(
        f"cannot create a temporary folder beside {path}; clean up its .{path.name}.* siblings"
    )


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], what: str = "output folder") -> Iterator[Path]:
    """Yield a fresh sibling folder to fill; on success fsync it and rename it to `path`.

    An existing `path` is replaced (moved aside, removed after the rename): callers run `check_out_dir` first,
    so only an empty folder or one the rule allows gets here. A file at `path` is refused, never renamed away.
    """
    path = Path(path)
    parent = ensure_writable_dir(path.parent if str(path.parent) else Path("."), what=f"{what}'s parent")
    if path.exists() and not path.is_dir():
        raise ScratchlmError(f"{what} {path} is a file; pass a folder path that does not exist yet")
    tmp = _fresh_sibling(path, ".tmp")
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        _rename_into_place(tmp, path)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_into_place(tmp: Path, path: Path) -> None:
    if not path.is_dir() or not any(path.iterdir()):
        os.replace(tmp, path)  # POSIX rename replaces an empty folder
        return
    old = _fresh_sibling(path, ".old")
    os.replace(path, old)  # a folder renamed over the empty `old`
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # put the old folder back: the caller's error stands, nothing is lost
        raise
    shutil.rmtree(old)


# ---- what is at an output path -----------------------------------------------------------------------------------
CHECKPOINT_CONFIG = "config.json"  # scratchlm.checkpoint.CONFIG_FILE (HF folders have a config.json too)
CHECKPOINT_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json", "train_state"})
LATEST_FILE = "latest"  # scratchlm.checkpoint.LATEST_FILE
STEP_PREFIX = "step_"  # scratchlm.train.loop.STEP_PREFIX
RUN_CONFIG = "config.yaml"  # written by the training loop: the run's resolved settings
# what a run folder holds beside its step folders: see train.loop, train.progress, cli.train, cli.finetune
RUN_FILES = frozenset(
    {RUN_CONFIG, LATEST_FILE, "metrics.jsonl", "loss.png", "report.json", "data", "tensorboard"}
)
SHARD_MANIFEST = "manifest.json"  # scratchlm.data.shards.MANIFEST
SHARD_FORMAT = "scratchlm-token-shards"  # scratchlm.data.shards.MANIFEST_FORMAT
SHARD_PROGRESS = ".progress"  # scratchlm.data.prepare.PROGRESS_DIR (an unfinished `data prepare`)
TOKENIZER_FORMAT = "scratchlm-tokenizer"  # scratchlm.tokenizer.files.FORMAT
HF_TOKENIZER_COPY = (
    "scratchlm_tokenizer.json"  # scratchlm.checkpoint.HF_TOKENIZER_COPY: marks `convert to-hf`
)
HF_EXPORT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        HF_TOKENIZER_COPY,
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
)


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _entries(folder: Path) -> set[str]:
    """Names in `folder`, leaving out the `.NAME.*.tmp` files and folders an interrupted atomic write leaves."""
    return {p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def checkpoint_config(folder: Path) -> dict | None:
    """config.json of a scratchlm checkpoint folder (format_version and a model section), else None."""
    data = _json(folder / CHECKPOINT_CONFIG)
    return data if data and "format_version" in data and isinstance(data.get("model"), dict) else None


def _step_folders(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[5:].isdigit()
    )


def run_mode(folder: Path) -> str | None:
    """The training mode (pretrain, sft, ...) recorded in a run folder's newest checkpoint; "" for a run folder
    whose checkpoints name none; None when `folder` has no checkpoints."""
    steps = _step_folders(folder)
    latest = folder / LATEST_FILE
    if latest.is_file():
        with contextlib.suppress(OSError):
            steps.append(folder / latest.read_text().strip())
    for step in reversed(steps):
        config = checkpoint_config(step)
        if config is not None:
            mode = config.get("train_mode")
            return mode if isinstance(mode, str) else ""
    return "" if latest.is_file() else None


def is_run_of(folder: Path, mode: str, loads: Callable[[Path], bool]) -> bool:
    """A run folder of training mode `mode`, to resume or extend in place (nothing in it is removed).

    With checkpoints: their config.json's `train_mode`. Before the first checkpoint: only what a run writes, and a
    config.yaml that `loads` accepts (the command's test of its settings file).
    """
    found = run_mode(folder)
    if found is not None:
        return found == mode
    names = _entries(folder)
    return RUN_CONFIG in names and names <= RUN_FILES and loads(folder / RUN_CONFIG)


def is_checkpoint_from(section: str, extra_files: Iterable[str] = ()) -> Callable[[Path], bool]:
    """Test: a checkpoint folder whose config.json has `section` (e.g. hf_source: written by `convert from-hf`;
    merged_from: by `lora merge`) and no file that checkpoint does not write (replacing it loses nothing else)."""
    allowed = CHECKPOINT_FILES | set(extra_files)

    def test(folder: Path) -> bool:
        config = checkpoint_config(folder)
        return config is not None and section in config and _entries(folder) <= allowed

    return test


def is_hf_export(folder: Path) -> bool:
    """A Hugging Face folder written by `convert to-hf` (it keeps our tokenizer beside HF's files), nothing else."""
    names = _entries(folder)
    hf_config = _json(folder / "config.json")
    return (
        hf_config is not None
        and "model_type" in hf_config
        and HF_TOKENIZER_COPY in names
        and names <= HF_EXPORT_FILES
    )


def is_shard_folder(folder: Path) -> bool:
    """Token shards from `data prepare`, finished (manifest) or not (progress state): prepared further in place;
    `data prepare` itself refuses one made with another tokenizer or other settings."""
    manifest = _json(folder / SHARD_MANIFEST)
    if manifest is not None and manifest.get("format") == SHARD_FORMAT:
        return True
    return (folder / SHARD_PROGRESS / "state.json").is_file() or _entries(folder) == {SHARD_PROGRESS}


def is_tokenizer_file(path: Path) -> bool:
    data = _json(path)
    return data is not None and data.get("format") == TOKENIZER_FORMAT


def describe(path: Path) -> str:
    """What is at `path`, in a few words for an error line."""
    if path.is_file():
        return "a scratchlm tokenizer file" if is_tokenizer_file(path) else "a file"
    try:
        names = sorted(_entries(path))
        mode = run_mode(path)
    except OSError as e:
        return f"a folder that cannot be read ({e.strerror})"
    if mode is not None:
        return f"a scratchlm {mode} run" if mode else "a scratchlm run"
    config = checkpoint_config(path)
    if config is not None:
        origin = " converted from Hugging Face" if "hf_source" in config else ""
        origin = " merged by `lora merge`" if "merged_from" in config else origin
        return f"a scratchlm checkpoint{origin}"
    hf_config = _json(path / "config.json")
    if hf_config is not None and ("model_type" in hf_config or "architectures" in hf_config):
        return "a Hugging Face model folder" + (
            " written by `convert to-hf`" if HF_TOKENIZER_COPY in names else ""
        )
    if is_shard_folder(path):
        return "scratchlm token shards"
    if RUN_CONFIG in names and set(names) <= RUN_FILES:
        return "the files of a run with no checkpoint yet (config.yaml ...)"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {'entry' if len(names) == 1 else 'entries'} scratchlm did not write ({shown})"


# ---- the rule ------------------------------------------------------------------------------------------------------
def _check_inputs(out: Path, inputs: Iterable[str | os.PathLike[str] | None], flag: str) -> None:
    target = out.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            where = "is the input"
        elif source in target.parents:
            where = "lies inside the input"
        elif target in source.parents:
            where = "contains the input"
        else:
            continue
        raise ScratchlmError(f"{flag} {out} {where} {given}; write the output somewhere else")


def check_out_dir(
    out: str | os.PathLike[str],
    reusable: Callable[[Path], bool],
    wants: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    flag: str = "--out",
) -> Path:
    """Refuse an output folder that would lose work, before anything is written (one line: what is there, the fix).

    Allowed: a path that does not exist, an empty folder, or a folder `reusable` accepts (`wants` names that kind
    in the message: "scratchlm shards", "a pretrain run", ...). Refused: a file, an input, a folder inside an input
    or containing one, and anything else that is already there.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ScratchlmError(
            f"{flag} {out} is a link to nothing; remove the link or pass another folder path"
        )
    if out.exists() and not out.is_dir():
        raise ScratchlmError(
            f"{flag} {out} is a file; pass a folder path that does not exist yet (or an empty folder)"
        )
    _check_inputs(out, inputs, flag)
    if not out.is_dir():
        return out
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise ScratchlmError(
            f"cannot read {flag} folder {out} ({e.strerror}); choose another {flag}"
        ) from None
    if empty or reusable(out):
        return out
    raise ScratchlmError(
        f"{flag} {out} is not empty and holds no {wants}: it holds {describe(out)}; choose a new or empty folder "
        "for it, or remove that one yourself"
    )


def check_out_file(
    out: str | os.PathLike[str],
    reusable: Callable[[Path], bool],
    wants: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    flag: str = "--out",
) -> Path:
    """The same rule for an output file: a folder or an input is refused; an existing file only if `reusable`
    (the write itself is atomic: `atomic_path`)."""
    out = Path(out)
    if out.is_dir():
        raise ScratchlmError(f"{flag} {out} is a folder; give a file name such as {out / 'tokenizer.json'}")
    _check_inputs(out, inputs, flag)
    if out.exists() and not reusable(out):
        raise ScratchlmError(
            f"{flag} {out} already exists and is not {wants}; give another file name, or remove it yourself"
        )
    return out
