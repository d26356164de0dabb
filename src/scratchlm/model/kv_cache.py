"""`KVCache`: pre-allocated keys and values of every layer, addressed by absolute position.

One rule serves every decoding pattern: the keys/values of a token at position p in row b are written to slot p
of row b, and a query at position p attends to the slots 0..p of its row. So

- prefill writes positions 0..L-1, then incremental decoding writes one position per step;
- right-padded prompts of different lengths in one batch: each row continues at its own next position, and the
  padding slots beyond it are overwritten as the row grows (they are never attended before that);
- continuous batching: a finished row is reused by prefilling a new request at positions 0..L-1; stale slots
  beyond L are masked out by the same rule.

The cache knows nothing of tokens or sampling; `GPT.forward(ids, cache, positions)` reads and writes it.

Rolling layers (`KVCache.for_model(..., rolling=True)`: the local, sliding-window layers of a model with
`attn_window` W). A local layer never looks further back than W - 1 positions, so it keeps a ring of
R = min(W, max_len) slots instead of max_len: position p lives in slot p % R, and decoding memory is bounded by
the window, not the context. Slot s of a row whose next position is p holds position p - 1 - ((p - 1 - s) % R)
(negative: never written, masked). A chunk of T > 1 tokens attends over the ring as it was plus its own keys
(R + T keys) and then keeps its last R positions, so each chunk must continue its rows without gaps: right-padded
prompts are prefilled into a plain cache and copied in with `copy_rows_from(..., lengths)`, as the engine does.
Dense, strided and fixed layers keep max_len slots addressed by position, as above.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


class KVCache:
    """Keys and values, one (B, H_kv, max_len, D) tensor per layer each, filled slot by slot.

    One tensor per layer, not one (n_layer, ...) tensor: a compiled decode step writes each layer's slots in
    place; writing through a view of one big tensor made torch.compile copy the whole cache at every layer
    (148 ms a step instead of 2.4 at 16 rows x 2,048 slots on a CPU)."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        windows: Sequence[int | None] | None = None,
    ) -> None:
        # windows[i]: layer i is a ring of min(W, max_len) slots (rolling, see above); None: max_len slots
        self.ring: list[int | None] = [None if w is None else min(w, max_len) for w in windows or [None] * n_layer]
        assert len(self.ring) == n_layer
        lengths = [max_len if r is None else r for r in self.ring]
        self.k = [torch.zeros(batch_size, n_kv_head, n, head_dim, device=device, dtype=dtype) for n in lengths]
        self.v = [torch.zeros(batch_size, n_kv_head, n, head_dim, device=device, dtype=dtype) for n in lengths]
        self.batch_size = batch_size
        self.max_len = max_len

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        rolling: bool = False,
    ) -> KVCache:
        """A cache shaped for `model` (a `GPT`), on its device, in its dtype unless `dtype` is given.

        `rolling`: the model's local layers get a ring of attn_window slots (see the module docstring)."""
        config = model.config
        p = next(model.parameters())
        windows = [config.attn_window if rolling and kind == "local" else None for kind in config.layer_patterns]
        return cls(
            config.n_layer,
            batch_size,
            config.n_kv_head,
            max_len or config.context_length,
            config.head_dim,
            device=p.device,
            dtype=dtype or p.dtype,
            windows=windows,
        )

    @property
    def rolling(self) -> bool:
        """Whether any layer is a ring (then chunks must continue their rows without gaps)."""
        return any(r is not None for r in self.ring)

    @property
    def nbytes(self) -> int:
        """Bytes held by all keys and values."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at `positions` (B, T); return slots 0..length-1, (B, H_kv, length, D) each.

        A ring layer ignores `length` and returns the keys of `key_positions` (R, or R + T for a chunk)."""
        B = k.shape[0]
        assert B == self.batch_size, f"batch of {B} rows but the cache holds {self.batch_size}"
        rows = torch.arange(B, device=k.device)[:, None]  # (B, 1), broadcast against positions (B, T)
        R = self.ring[layer]
        if R is not None:
            return self._update_ring(layer, k, v, positions, rows, R)
        # Advanced indices on dims 0 and 2 around a slice: the indexed view is (B, T, H_kv, D).
        self.k[layer][rows, :, positions] = k.transpose(1, 2)
        self.v[layer][rows, :, positions] = v.transpose(1, 2)
        return self.k[layer][:, :, :length], self.v[layer][:, :, :length]

    def _update_ring(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, R: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        ring_k, ring_v = self.k[layer], self.v[layer]
        if T > 1:  # the earlier queries of the chunk need ring slots that its later keys overwrite
            keys, values = torch.cat([ring_k, k], dim=2), torch.cat([ring_v, v], dim=2)  # (B, H_kv, R + T, D)
        # only the chunk's last R positions stay (index_put with repeated slots would keep an arbitrary one)
        keep = positions[:, -R:]
        ring_k[rows, :, keep % R] = k[:, :, -R:].transpose(1, 2)
        ring_v[rows, :, keep % R] = v[:, :, -R:].transpose(1, 2)
        return (keys, values) if T > 1 else (ring_k, ring_v)

    def key_positions(self, layer: int, positions: torch.Tensor, length: int) -> torch.Tensor:
        """(B, S): the position of each key `update(layer, ..., positions, length)` returns (negative: unwritten).

        Plain layers: slot s is position s. Ring layers: see the module docstring."""
        R = self.ring[layer]
        if R is None:
            return torch.arange(length, device=positions.device).expand(positions.shape[0], length)
        T = positions.shape[1]
        # a decoding step writes before it reads: its own position is in the ring already
        last = positions[:, -1:] if T == 1 else positions[:, :1] - 1  # (B, 1): the newest position in the ring
        slots = torch.arange(R, device=positions.device)
        ring = last - (last - slots) % R  # (B, R)
        return ring if T == 1 else torch.cat([ring, positions], dim=1)  # (B, R + T)

    def rows(self, lo: int, hi: int) -> KVCache:
        """Rows lo..hi-1 as a cache of their own that shares this one's memory (writes land here)."""
        if (lo, hi) == (0, self.batch_size):
            return self
        view = copy.copy(self)
        view.k, view.v = [t[lo:hi] for t in self.k], [t[lo:hi] for t in self.v]
        view.batch_size = hi - lo
        return view

    def copy_rows_from(self, other: KVCache, index: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Copy all of `other` (a plain cache: n rows, L slots) into rows `index` (n,), slots 0..L-1, of this cache.

        Ring layers take the last R positions before each row's `lengths` (n,) (its prompt: what follows is
        padding), into the slots where decoding expects them."""
        L = other.max_len
        for layer, R in enumerate(self.ring):
            for mine, theirs in ((self.k[layer], other.k[layer]), (self.v[layer], other.v[layer])):
                if R is None:
                    mine[index, :, :L] = theirs
                    continue
                assert lengths is not None, "a rolling cache needs each row's length to copy into its rings"
                last = lengths[:, None] - 1  # (n, 1)
                source = (last - (last - torch.arange(R, device=last.device)) % R).clamp(min=0)  # (n, R) positions
                rows = torch.arange(len(index), device=last.device)[:, None]
                mine[index] = theirs[rows, :, source].transpose(1, 2)  # (n, R, H_kv, D) -> (n, H_kv, R, D)

    def reset(self) -> None:
        """Zero every slot (not needed for correctness: unwritten slots are always masked)."""
        for t in self.k + self.v:
            t.zero_()
