"""The token shard format and the manifest: how tokens lie on disk, and how to read them back without copying.

A shard file (`train_000000.bin`, `val_000000.bin`, ...) is a 32-byte little-endian header then the tokens:

    offset  size  field
    0       8     magic b"SLMTOKS\\0"
    8       4     format version (uint32, currently 1)
    12      4     bytes per token (uint32): 2 for uint16 tokens, 4 for uint32
    16      8     token count (uint64)
    24      8     vocabulary size (uint64)
    32      ...   token ids

uint16 when every id fits (vocab_size <= 65,536, GPT-2's 50,257 does), else uint32. Unlike nanoGPT's bare
`train.bin`, the dtype and the vocabulary are recorded, so a reader never has to guess them.

`manifest.json` beside the shards is the authority: only the shards it lists exist as far as readers are
concerned. It records the tokenizer identity, the shards with their token counts and sha256, the settings
and the report of `scratchlm data prepare`.

Knows nothing of tokenizers or torch: numpy only.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.errors import ScratchlmError

MAGIC = b"SLMTOKS\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = HEADER.size  # 32
assert HEADER_SIZE == 32
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "scratchlm-token-shards"
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def pack_header(n_tokens: int, vocab_size: int, dtype: np.dtype) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, np.dtype(dtype).itemsize, n_tokens, vocab_size)


def read_header(path: str | Path) -> dict[str, Any]:
    """The header fields of a shard file; a one-line error if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError as e:
        raise ScratchlmError(f"cannot read shard {path}: {e.strerror or e}; re-run `scratchlm data prepare`") from None
    if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
        raise ScratchlmError(f"{path} is not a scratchlm token shard (bad magic); re-run `scratchlm data prepare`")
    _, version, itemsize, n_tokens, vocab_size = HEADER.unpack(raw)
    if version != FORMAT_VERSION or itemsize not in (2, 4):
        raise ScratchlmError(
            f"{path} has shard format version {version} (bytes per token {itemsize}); this scratchlm reads "
            f"version {FORMAT_VERSION}: re-run `scratchlm data prepare` with this version"
        )
    return {
        "version": version,
        "dtype": np.dtype(np.uint16 if itemsize == 2 else np.uint32),
        "n_tokens": n_tokens,
        "vocab_size": vocab_size,
    }


def open_shard(path: str | Path) -> np.memmap | np.ndarray:
    """The tokens of a shard as a read-only memory map (nothing is read until used). Shape (n_tokens,)."""
    path = Path(path)
    header = read_header(path)
    expected = HEADER_SIZE + header["n_tokens"] * header["dtype"].itemsize
    if path.stat().st_size != expected:
        raise ScratchlmError(
            f"shard {path} is {path.stat().st_size} bytes but its header promises {expected}; the file is "
            "truncated or corrupt: re-run `scratchlm data prepare`"
        )
    if header["n_tokens"] == 0:
        return np.zeros(0, dtype=header["dtype"])
    return np.memmap(path, dtype=header["dtype"], mode="r", offset=HEADER_SIZE, shape=(header["n_tokens"],))


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder, checked for format; a one-line error naming the fix otherwise."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        hint = " (preparation was interrupted: re-run the same command to finish it)" if (
            Path(shard_dir) / ".progress"
        ).is_dir() else ""
        raise ScratchlmError(
            f"{shard_dir} has no {MANIFEST}{hint}; prepare token shards with `scratchlm data prepare --out "
            f"{shard_dir} ...`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ScratchlmError(f"cannot read {path}: {e}; re-run `scratchlm data prepare`") from None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ScratchlmError(
            f"{path} is not a scratchlm token-shard manifest of format version {FORMAT_VERSION}; "
            "re-run `scratchlm data prepare`"
        )
    return manifest


def split_paths(shard_dir: str | Path, split: str, manifest: dict[str, Any] | None = None) -> list[Path]:
    """The shard files of one split, in order."""
    if split not in SPLITS:
        raise ScratchlmError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    manifest = manifest or read_manifest(shard_dir)
    return [Path(shard_dir) / s["file"] for s in manifest["shards"][split]]


def read_split(shard_dir: str | Path, split: str) -> np.ndarray:
    """All tokens of a split concatenated into memory (for tests and small data; the loader memory-maps)."""
    parts = [np.asarray(open_shard(p)) for p in split_paths(shard_dir, split)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
