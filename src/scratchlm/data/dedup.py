"""Exact and near-duplicate detection with compact, numpy-backed indexes whose memory is documented per document.

Exact duplicates: the 64-bit blake2b hash of the *cleaned* text (so documents that differ only in whitespace,
Unicode form or control characters are exact duplicates) goes into a `HashIndex`; the first copy is kept.

Near duplicates: MinHash over word n-gram shingles (`shingle_size` words, default 5; words as in `ngrams.py`)
with LSH banding, then a check of the estimated Jaccard similarity:

- `MinHasher.signature`: for each of `num_perm` hash functions h_j(x) = (a_j x + b_j) mod 2^64 (a_j odd, so a
  bijection; a_j, b_j drawn from a fixed seed) the minimum over the document's shingle hashes, top 32 bits kept.
  For two documents, P(signature values agree) = Jaccard(shingle sets), the MinHash property. All shingles x all
  functions are one vectorised numpy expression (in blocks of 2,048 shingles to bound memory).
- `band_keys`: the signature is cut into `bands` bands of `rows = num_perm // bands` values; each band hashes to
  one 64-bit key (salted by the band number). Two documents become *candidates* when any band key is equal:
  P(candidate) = 1 - (1 - s^rows)^bands for Jaccard s.
- `NearDupIndex.check_and_add`: a candidate is a near duplicate when the share of equal signature values (the
  Jaccard estimate, standard error sqrt(s(1-s)/num_perm) = 0.035 at s = 0.8 with 128 values) is at least the
  threshold. Only kept documents are added, and a band key keeps the first document that had it.

Why 16 bands of 8 rows with 128 values (the defaults): the candidate curve is 0.24 at s = 0.6, 0.61 at s = 0.7,
0.947 at s = 0.8, 0.9999 at s = 0.9, and the estimate check then removes the false candidates below the threshold.
Recall of a pair at true Jaccard s is P(candidate) x P(estimate >= threshold): 0.08 at 0.75, 0.94 at 0.85, 0.9998 at 0.9,
and about half at exactly the threshold, as for any estimate. `candidate_probability()` and
`near_duplicate_recall()` compute these numbers for other settings.

Why numpy and not `datasketch`: the hashing is ten lines of vectorised numpy, it runs in the worker processes on
the same word hashes the other filters use, and the index below stores 8-byte keys in flat arrays, where
datasketch's in-memory LSH keeps Python dicts of byte strings (several hundred bytes per key) and cannot be
saved incrementally for resume.

Memory per kept document (what grows with the corpus; everything else in `prepare` is bounded):
- exact index: one 8-byte key at load factor <= 1/2 -> at most 32 bytes (16 right after a resize);
- near index: `bands` keys of 8 bytes + a 4-byte document number, at load <= 1/2 -> up to 24 x 16 = 384 bytes,
  plus the signature kept as its low 16 bits (b-bit MinHash: two different values agree by chance with
  probability 2^-16, which shifts the estimate by < 0.0001) -> 256 bytes.
So about 0.7 KB per kept document with near-dedup and 32 bytes without: 1 M documents ~ 0.7 GB, 10 M ~ 7 GB.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from scratchlm.data.clean import distinct
from scratchlm.data.ngrams import mix64, ngram_hashes

_EMPTY = np.uint64(0)


def exact_key(text: str) -> int:
    """64-bit hash of a cleaned document (never 0: 0 marks an empty slot in `HashIndex`)."""
    key = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return key or 1


class HashIndex:
    """An open-addressing hash table (linear probing) of uint64 keys -> uint32 values in two numpy arrays.

    Keys must be well-mixed hashes (their low bits pick the slot) and never 0 (the empty marker). The table
    doubles when more than half full. Inserting keeps the value of a key already present (first one wins),
    also among duplicates inside one `insert` call, so replaying the same inserts rebuilds the same table.
    """

    def __init__(self, capacity: int = 1024) -> None:
        capacity = 1 << max(4, (capacity - 1).bit_length())
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.values = np.zeros(capacity, dtype=np.uint32)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key its slot: where it is (found=True) or the first empty slot of its probe sequence."""
        mask = self.keys.size - 1
        slots = (keys & np.uint64(mask)).astype(np.intp)
        found = np.zeros(keys.size, dtype=bool)
        todo = np.arange(keys.size)
        while todo.size:
            here = self.keys[slots[todo]]
            hit = here == keys[todo]
            done = hit | (here == _EMPTY)
            found[todo[hit]] = True
            todo = todo[~done]
            slots[todo] = (slots[todo] + 1) & mask
        return slots, found

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, or -1 where absent. keys: (n,) uint64 -> (n,) int64."""
        slots, found = self._probe(keys)
        return np.where(found, self.values[slots].astype(np.int64), -1)

    def insert(self, keys: np.ndarray, values: np.ndarray | int = 0) -> None:
        """Insert keys (n,) with values (n,) or one value; keys already present keep their value."""
        keys = np.asarray(keys, dtype=np.uint64)
        values = np.broadcast_to(np.asarray(values, dtype=np.uint32), keys.shape)
        if 2 * (self.size + keys.size) > self.keys.size:
            self._grow(self.size + keys.size)
        order = np.arange(keys.size)  # keys still to place, in insertion order
        while order.size:
            slots, found = self._probe(keys[order])
            order, slots = order[~found], slots[~found]  # present (maybe inserted last round): first one won
            if order.size == 0:
                break
            # several keys may want the same empty slot: the earliest gets it, the rest probe again next round
            by_slot = np.argsort(slots, kind="stable")  # equal slots keep insertion order
            ordered = slots[by_slot]
            first = by_slot[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
            self.keys[slots[first]] = keys[order[first]]
            self.values[slots[first]] = values[order[first]]
            self.size += first.size
            rest = np.ones(order.size, dtype=bool)
            rest[first] = False
            order = order[rest]

    def _grow(self, needed: int) -> None:
        old_keys, old_values = self.keys, self.values
        capacity = old_keys.size
        while 2 * needed > capacity:
            capacity *= 2
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.values = np.zeros(capacity, dtype=np.uint32)
        self.size = 0
        used = old_keys != _EMPTY
        self.insert(old_keys[used], old_values[used])


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard s share at least one band): 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - s**rows) ** bands


def near_duplicate_recall(s: float, threshold: float, num_perm: int, bands: int) -> float:
    """P(a pair at true Jaccard s is flagged): candidate probability x P(estimate >= threshold) (normal approx.)."""
    rows = num_perm // bands
    sd = math.sqrt(max(s * (1 - s), 1e-12) / num_perm)
    p_estimate = 0.5 * math.erfc((threshold - s) / (sd * math.sqrt(2)))
    return candidate_probability(s, bands, rows) * p_estimate


class MinHasher:
    """MinHash signatures and LSH band keys of documents, from their word hashes (see the module docstring)."""

    def __init__(self, num_perm: int = 128, bands: int = 16, shingle_size: int = 5, seed: int = 0) -> None:
        assert 1 <= bands <= num_perm, (bands, num_perm)
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.shingle_size = shingle_size
        rng = np.random.default_rng([seed, 0x5EED])
        self.a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
        self.row_mult = rng.integers(0, 2**64, size=self.rows, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.band_salt = rng.integers(0, 2**64, size=bands, dtype=np.uint64, endpoint=False)

    def signature(self, words: np.ndarray) -> np.ndarray | None:
        """(num_perm,) uint32 MinHash signature of the shingle set, or None for a document without words."""
        return self.signature_of_shingles(ngram_hashes(words, self.shingle_size, short=True))

    def signature_of_shingles(self, shingles: np.ndarray) -> np.ndarray | None:
        """The same from precomputed shingle hashes (S,), repeats allowed."""
        shingles = distinct(shingles)
        if shingles.size == 0:
            return None
        mins = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, shingles.size, 2048):
            x = shingles[i : i + 2048, None]  # (S, 1)
            np.minimum(mins, (x * self.a + self.b).min(axis=0), out=mins)  # (S, num_perm) -> (num_perm,)
        return (mins >> np.uint64(32)).astype(np.uint32)

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        """(bands,) uint64 keys, one per band of `rows` signature values."""
        rows = signature[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        keys = mix64((rows * self.row_mult).sum(axis=1, dtype=np.uint64) ^ self.band_salt)
        return np.where(keys == _EMPTY, np.uint64(1), keys)


class NearDupIndex:
    """LSH band keys -> document number, and the 16-bit signatures to check candidates against."""

    def __init__(self, num_perm: int, threshold: float) -> None:
        self.threshold = threshold
        self.table = HashIndex()
        self.signatures = np.zeros((1024, num_perm), dtype=np.uint16)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + self.signatures.nbytes

    def is_duplicate(self, keys: np.ndarray, signature16: np.ndarray) -> bool:
        """True if a document already added shares a band and has estimated Jaccard >= threshold."""
        found = self.table.lookup(keys)
        for doc in np.unique(found[found >= 0]):
            if np.mean(self.signatures[doc] == signature16) >= self.threshold:
                return True
        return False

    def add(self, keys: np.ndarray, signature16: np.ndarray) -> None:
        """Add several documents at once (keys (n, bands), signatures (n, num_perm)) or one ((bands,), (num_perm,))."""
        keys, signature16 = np.atleast_2d(keys), np.atleast_2d(signature16)
        n = keys.shape[0]
        while self.count + n > self.signatures.shape[0]:
            grown = np.zeros((2 * self.signatures.shape[0], self.signatures.shape[1]), dtype=np.uint16)
            grown[: self.count] = self.signatures[: self.count]
            self.signatures = grown
        self.signatures[self.count : self.count + n] = signature16
        docs = np.repeat(np.arange(self.count, self.count + n, dtype=np.uint32), keys.shape[1])
        self.table.insert(keys.reshape(-1), docs)
        self.count += n
