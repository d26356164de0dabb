"""`TokenLoader`: (ids, targets) batches of windows from memory-mapped token shards, rank-aware and resumable.

A split's shards are one stream of N tokens (windows may cross shard boundaries). A window is T + 1 consecutive
tokens; its first T are `ids`, its last T are `targets` (the next token at each position):

- plain windows start at 0, T, 2T, ... : floor((N - 1) / T) of them, together covering the stream once;
- document-aligned windows (`document_aligned=True`) start at each document's first token (0 and after every
  end-of-text token) when T + 1 tokens fit before the end; they may overlap when documents are shorter than T.

Epoch e visits the windows in the permutation `default_rng((seed, e)).permutation(n_windows)`, without
replacement. Rank r of w takes permutation entries r, r + w, r + 2w, ...; each rank keeps floor(n_windows / w)
of them (so all ranks have the same number of batches and are disjoint), cut into floor(that / B) batches of B
(the remainder is dropped for this epoch; the next epoch's permutation differs). Global batch j of one process
with batch size B*w holds exactly the union of the ranks' batches j, so a run on w ranks sees the same windows
as one process with w accumulation steps (docs/contracts.md).

The position is (epoch, batch index): `state_dict()` records it and `load_state_dict()` restores it exactly;
iteration goes on through epochs forever (the trainer decides when to stop). `eval_batches()` is the
deterministic, finite pass for validation: every window once, rank-strided, last batch possibly smaller.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.data import shards
from scratchlm.errors import ScratchlmError


class TokenLoader:
    """Batches of (ids, targets), LongTensors of shape (B, T), from `shard_dir`'s `split` (see the module doc)."""

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        batch_size: int,
        context_length: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        document_aligned: bool = False,
    ) -> None:
        if batch_size < 1 or context_length < 1:
            raise ScratchlmError(
                f"batch_size ({batch_size}) and context_length ({context_length}) must be at least 1"
            )
        if not 0 <= rank < world_size:
            raise ScratchlmError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
        self.shard_dir, self.split = Path(shard_dir), split
        self.batch_size, self.context_length, self.seed = batch_size, context_length, seed
        self.rank, self.world_size, self.document_aligned = rank, world_size, document_aligned
        self.manifest = shards.read_manifest(shard_dir)
        self._arrays = [self._open(p, s) for p, s in zip(shards.split_paths(shard_dir, split, self.manifest),
                                                          self.manifest["shards"][split])]
        sizes = [a.size for a in self._arrays]
        self._offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # (n_shards + 1,)
        self.n_tokens = int(self._offsets[-1])
        T = context_length
        if self.n_tokens < T + 1:
            raise ScratchlmError(
                f"the {split} split of {shard_dir} has {self.n_tokens:,} tokens, fewer than context_length + 1 = "
                f"{T + 1:,}; use a smaller context length or prepare more data"
                + (" (or a larger --val-fraction)" if split == "val" else "")
            )
        if document_aligned:
            self._starts = self._document_starts()
        else:
            self._starts = None
        self.n_windows = self.count_windows()
        if self.n_windows == 0:
            raise ScratchlmError(
                f"the {split} split of {shard_dir} has no document of {T + 1:,} tokens to start an aligned window; "
                "use a smaller context length or document_aligned=False"
            )
        self.per_rank = self.n_windows // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        self.epoch, self.batch = 0, 0
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None

    # ---- what the trainer checks ------------------------------------------------------------------------------
    @property
    def tokenizer_identity(self) -> str:
        return self.manifest["tokenizer"]["identity"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eot_id(self) -> int | None:
        return self.manifest["tokenizer"]["eot_id"]

    def count_windows(self, context_length: int | None = None) -> int:
        """Windows of `context_length` (default: this loader's) in the split."""
        T = context_length or self.context_length
        if self._starts is None:
            return max(0, (self.n_tokens - 1) // T)
        return int(np.searchsorted(self._starts, self.n_tokens - T - 1, side="right"))

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return self.batches_per_epoch

    # ---- reading ----------------------------------------------------------------------------------------------
    def _open(self, path: Path, entry: dict[str, Any]) -> np.ndarray:
        arr = shards.open_shard(path)
        header = shards.read_header(path)
        if arr.size != entry["tokens"] or header["vocab_size"] != self.manifest["tokenizer"]["vocab_size"]:
            raise ScratchlmError(
                f"shard {path} does not match {self.shard_dir}/manifest.json (tokens or vocabulary size differ); "
                "prepare the folder again"
            )
        return arr

    def _document_starts(self) -> np.ndarray:
        eot = self.eot_id
        if eot is None:
            raise ScratchlmError(
                "document-aligned windows need an end-of-text token, and this folder's tokenizer has none; "
                "use document_aligned=False or a tokenizer with <|endoftext|>"
            )
        starts = [np.zeros(1, dtype=np.int64)]
        for offset, arr in zip(self._offsets[:-1], self._arrays):
            for i in range(0, arr.size, 1 << 24):  # scan in 16M-token blocks: bounded memory
                starts.append(np.flatnonzero(arr[i : i + (1 << 24)] == eot).astype(np.int64) + (offset + i + 1))
        all_starts = np.concatenate(starts)
        return all_starts[all_starts < self.n_tokens]  # (n_docs,) sorted

    def window_start(self, w: int) -> int:
        return int(self._starts[w]) if self._starts is not None else w * self.context_length

    def window(self, w: int) -> np.ndarray:
        """Tokens of window w: (T + 1,) int64, gathered across shard boundaries if needed."""
        start = self.window_start(w)
        end = start + self.context_length + 1
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts = []
        while start < end:
            local = start - int(self._offsets[k])
            take = min(end - start, self._arrays[k].size - local)
            parts.append(self._arrays[k][local : local + take])
            start += take
            k += 1
        return np.concatenate(parts).astype(np.int64) if len(parts) > 1 else parts[0].astype(np.int64)

    def _batch(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.stack([self.window(int(w)) for w in windows]))  # (B, T + 1)
        return rows[:, :-1], rows[:, 1:]  # ids (B, T), targets (B, T)

    # ---- training order ---------------------------------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        """The whole epoch's window order (all ranks): (n_windows,) int64."""
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.n_windows)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch_windows(self, epoch: int, batch: int) -> np.ndarray:
        """Window numbers of this rank's batch `batch` of `epoch`: (B,)."""
        mine = self.permutation(epoch)[self.rank :: self.world_size][: self.per_rank]
        return mine[batch * self.batch_size : (batch + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches_per_epoch == 0:
            raise ScratchlmError(
                f"the {self.split} split of {self.shard_dir} has {self.n_windows:,} windows of "
                f"{self.context_length:,} tokens, fewer than batch_size x world_size = "
                f"{self.batch_size * self.world_size:,}; use a smaller batch or context length, or more data"
            )
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        out = self._batch(self.batch_windows(self.epoch, self.batch))
        self.batch += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """The position (JSON-ready). Resuming restores exactly the next batch."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "n_windows": self.n_windows,
            "context_length": self.context_length,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "document_aligned": self.document_aligned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position. Another batch size or world size resumes at the same epoch after the same number
        of windows (rounded down to a whole batch); exact batches need the same ones."""
        for key in ("seed", "n_windows", "context_length", "document_aligned"):
            if state[key] != getattr(self, key):
                raise ScratchlmError(
                    f"the loader state was saved with {key}={state[key]!r} but this loader has "
                    f"{getattr(self, key)!r}; resume with the same data and settings"
                )
        self.epoch = int(state["epoch"])
        done = int(state["batch"]) * int(state["batch_size"]) * int(state["world_size"])  # windows, all ranks
        self.batch = done // (self.batch_size * self.world_size)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def eval_batches(
        self, max_batches: int | None = None, shuffled: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's windows (w = rank, rank + world_size, ... of the split's windows), in batches of at most B:
        the last batch may be smaller, so a split with fewer windows than B is still scored whole. The same every
        call. `shuffled`: in the epoch-0 permutation instead of in order, so that a pass cut at `max_batches`
        samples the whole split (what the training loop's validation uses). `max_batches` caps the pass (None:
        all of it)."""
        order = self.permutation(0) if shuffled else np.arange(self.n_windows)
        mine = order[self.rank :: self.world_size]
        for n, i in enumerate(range(0, mine.size, self.batch_size)):
            if max_batches is not None and n >= max_batches:
                return
            yield self._batch(mine[i : i + self.batch_size])
