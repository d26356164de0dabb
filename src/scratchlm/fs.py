"""Atomic file and folder writes: a crash or a bad path never leaves a half-written file that looks whole.

Everything that writes user-visible output (tokenizer files, checkpoints, shards, manifests) goes through here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
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
        raise ScratchlmError(f"cannot write to {what} folder {path}: permission denied; choose a writable location")
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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], what: str = "output folder") -> Iterator[Path]:
    """Yield `path.tmp/` to fill; on success fsync it and rename it to `path` (replacing an old one)."""
    path = Path(path)
    ensure_writable_dir(path.parent, what=f"{what}'s parent")
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
