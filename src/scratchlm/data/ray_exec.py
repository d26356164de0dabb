"""`--executor ray`: the same per-document work and a global de-duplication on a Ray cluster, same output.

Stages (`results`):

1. **Per document** (Ray actors, one per CPU): each actor holds a `DocProcessor` (the tokenizer is built once per
   actor, which is why actors and not plain tasks) and processes chunks of raw documents read by the driver, at
   most 2 chunks per actor in flight. Each call returns two objects: the full results (tokens included), left in
   Ray's object store (which spills to disk) until stage 3, and a compact key table for stage 2 (document number,
   exact key, LSH band keys, 16-bit signature of every document that passed the filters: ~0.4 KB each).
2. **Global de-duplication** (Ray tasks over all key tables):
   - exact: `R` reducers, each owning the keys with `key % R == r`, keep the first document of each key;
   - LSH bands: `R` reducers, each owning the band keys with `key % R == r`, link every later document of a band
     key to its first one (exact duplicates excluded); these links are the candidate graph's edges;
   - connected components of that graph (one task, min-label propagation over the edges);
   - per component, in document order, the same rule as the local executor (`NearDupIndex`: a document is a near
     duplicate when a kept document sharing a band key has estimated Jaccard >= threshold, and only kept
     documents are added), in batches of components as tasks.
   The local rule looks only at documents that share a band key with the one being judged, so it never reaches
   outside a connected component: deciding each component alone gives exactly the local decisions. Hence the same
   counts, the same kept documents, the same shards.
3. **Writing** (driver): results are taken back chunk by chunk in input order, marked exact / near duplicate as
   stage 2 decided, and consumed by the same `_Run` as the local executor (splits, shards, checkpoints).

The driver reads the input (as the local executor's parent process does), so the input files need only be
readable on the driver's machine; workers need scratchlm importable (installed, or the driver's PYTHONPATH on a
local cluster). Resume: stage 1 and 2 run again over all the input (they are deterministic) and stage 3 skips
the documents already written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from scratchlm.data.decontaminate import EvalNgrams
from scratchlm.data.dedup import NearDupIndex
from scratchlm.data.inputs import RawDoc
from scratchlm.data.process import EXACT, KEEP, NEAR, DocProcessor, chunks
from scratchlm.errors import ScratchlmError

_INSTALL = 'pip install -e ".[ray]" (or pip install ray)'


def require_ray() -> Any:
    """The ray module, or the one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ScratchlmError(f"--executor ray needs the ray package, which is not installed; {_INSTALL}") from None
    return ray


def _keys_of(results: list[tuple], start: int) -> dict[str, np.ndarray]:
    """The compact key table of one chunk's results (documents that reached de-duplication)."""
    docs, exact, band_docs, bands, sigs = [], [], [], [], []
    for i, r in enumerate(results):
        if r[0] != KEEP:
            continue
        docs.append(start + i)
        exact.append(r[4])
        if r[5] is not None:
            band_docs.append(start + i)
            bands.append(r[5])
            sigs.append(r[6])
    n_bands = bands[0].size if bands else 0
    n_perm = sigs[0].size if sigs else 0
    return {
        "docs": np.array(docs, dtype=np.int64),
        "exact": np.array(exact, dtype=np.uint64),
        "band_docs": np.array(band_docs, dtype=np.int64),
        "bands": np.array(bands, dtype=np.uint64).reshape(-1, n_bands),
        "sigs": np.array(sigs, dtype=np.uint16).reshape(-1, n_perm),
    }


class _Worker:
    """A Ray actor around one `DocProcessor`."""

    def __init__(self, settings: dict[str, Any], tokenizer_dict: dict[str, Any], eval_table: EvalNgrams,
                 blocklist: list[str]) -> None:
        self.processor = DocProcessor(settings, tokenizer_dict, eval_table, blocklist)

    def process(self, chunk: list[RawDoc], start: int) -> tuple[list[tuple], dict[str, np.ndarray]]:
        results = self.processor.process(chunk)
        return results, _keys_of(results, start)


def _exact_reduce(part: int, parts: int, *tables: dict[str, np.ndarray]) -> np.ndarray:
    """Documents (of this reducer's keys) that repeat an earlier document's exact key."""
    docs = np.concatenate([t["docs"] for t in tables] + [np.zeros(0, np.int64)])
    keys = np.concatenate([t["exact"] for t in tables] + [np.zeros(0, np.uint64)])
    mine = keys % np.uint64(parts) == np.uint64(part)
    docs, keys = docs[mine], keys[mine]
    order = np.lexsort((docs, keys))  # by key, then document number
    docs, keys = docs[order], keys[order]
    later = np.r_[False, keys[1:] == keys[:-1]] if keys.size else np.zeros(0, bool)
    return docs[later]


def _band_reduce(part: int, parts: int, exact_dups: np.ndarray, *tables: dict[str, np.ndarray]) -> np.ndarray:
    """Edges (first document of a band key, later document) for this reducer's band keys. Shape (E, 2)."""
    docs = np.concatenate([np.repeat(t["band_docs"], t["bands"].shape[1]) for t in tables if t["bands"].size]
                          + [np.zeros(0, np.int64)])
    keys = np.concatenate([t["bands"].reshape(-1) for t in tables if t["bands"].size] + [np.zeros(0, np.uint64)])
    mine = (keys % np.uint64(parts) == np.uint64(part)) & ~np.isin(docs, exact_dups)
    docs, keys = docs[mine], keys[mine]
    order = np.lexsort((docs, keys))
    docs, keys = docs[order], keys[order]
    if keys.size == 0:
        return np.zeros((0, 2), np.int64)
    starts = np.r_[True, keys[1:] != keys[:-1]]
    first = docs[starts][np.cumsum(starts) - 1]  # each row's group's first document
    edges = np.stack([first, docs], axis=1)[~starts]
    return np.unique(edges, axis=0)


def _components(*edge_sets: np.ndarray) -> list[np.ndarray]:
    """Connected components (sorted document numbers, 2 or more each) of the union of the edge sets."""
    edges = np.concatenate([e for e in edge_sets if e.size] + [np.zeros((0, 2), np.int64)])
    if edges.size == 0:
        return []
    nodes, inverse = np.unique(edges, return_inverse=True)
    a, b = inverse.reshape(-1, 2).T
    label = np.arange(nodes.size)
    while True:  # min-label propagation until no label changes (path halving keeps the rounds few)
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    order = np.argsort(label, kind="stable")
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    return [nodes[c] for c in np.split(order, cuts)]


def _resolve(components: list[np.ndarray], num_perm: int, threshold: float,
             *tables: dict[str, np.ndarray]) -> np.ndarray:
    """Near duplicates within each component, by the local executor's rule (see the module docstring)."""
    docs = np.concatenate([t["band_docs"] for t in tables])
    bands = np.concatenate([t["bands"] for t in tables])
    sigs = np.concatenate([t["sigs"] for t in tables])
    row = {int(d): i for i, d in enumerate(docs)}
    dups = []
    for component in components:
        index = NearDupIndex(num_perm, threshold)
        for doc in component.tolist():
            i = row[doc]
            if index.is_duplicate(bands[i], sigs[i]):
                dups.append(doc)
            else:
                index.add(bands[i], sigs[i])
    return np.array(dups, dtype=np.int64)


def _chunks_with_start(docs: Iterator[RawDoc]) -> Iterator[tuple[int, list[RawDoc]]]:
    start = 0
    for chunk in chunks(docs):
        yield start, chunk
        start += len(chunk)


def results(
    docs: Iterator[RawDoc],
    skip: int,
    cfg: Any,
    settings: dict[str, Any],
    tokenizer_dict: dict[str, Any],
    eval_table: EvalNgrams,
    blocklist: list[str],
) -> Iterator[tuple]:
    """Per-document results in input order from document `skip` on, duplicates marked (see the module docstring)."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": False}
        if cfg.ray_address:
            kwargs["address"] = cfg.ray_address
        else:
            kwargs["num_cpus"] = cfg.workers or None
        try:
            ray.init(**kwargs)
        except Exception as e:  # a wrong address, a cluster that does not answer: one line
            raise ScratchlmError(
                f"cannot start or join Ray (--ray-address {cfg.ray_address or '(local)'}): {str(e).splitlines()[0]}; "
                "check the address, or leave it empty for a local Ray"
            ) from None
        started = True
    try:
        yield from _stages(ray, docs, skip, cfg, settings, tokenizer_dict, eval_table, blocklist)
    except ray.exceptions.RayError as e:  # e.g. workers of a remote cluster that cannot import scratchlm
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ScratchlmError(
            f"a Ray task failed ({type(e).__name__}: {first[:300]}); check that every node of the cluster has "
            "scratchlm and its [web] extra installed, or run with --executor local"
        ) from None
    finally:
        if started:
            ray.shutdown()


def _stages(ray: Any, docs: Iterator[RawDoc], skip: int, cfg: Any, settings: dict[str, Any],
            tokenizer_dict: dict[str, Any], eval_table: EvalNgrams, blocklist: list[str]) -> Iterator[tuple]:
    """The three stages of the module docstring, on an initialised Ray."""
    n = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor_cls = ray.remote(num_cpus=1)(_Worker)
    shared = [ray.put(x) for x in (settings, tokenizer_dict, eval_table, blocklist)]
    actors = [actor_cls.remote(*shared) for _ in range(n)]

    # stage 1: per document, bounded read-ahead
    chunk_results, tables, starts, lengths, pending = [], [], [], [], []
    for k, (start, chunk) in enumerate(_chunks_with_start(docs)):
        res, keys = actors[k % n].process.options(num_returns=2).remote(chunk, start)
        chunk_results.append(res)
        tables.append(keys)
        starts.append(start)
        lengths.append(len(chunk))
        pending.append(keys)
        while len(pending) >= 2 * n:
            _, pending = ray.wait(pending, num_returns=1)
    if tables:
        ray.wait(chunk_results + tables, num_returns=len(tables) * 2, fetch_local=False)
    for a in actors:
        ray.kill(a)  # their CPUs go to stage 2 (the objects they returned stay in the object store)

    # stage 2: global de-duplication
    parts = n
    exact_dups = np.zeros(0, np.int64)
    if cfg.exact_dedup and tables:
        reduce = ray.remote(_exact_reduce)
        exact_dups = np.sort(np.concatenate(ray.get([reduce.remote(p, parts, *tables) for p in range(parts)])))
    near_dups = np.zeros(0, np.int64)
    if cfg.near_dedup and tables:
        exact_ref = ray.put(exact_dups)
        band_reduce = ray.remote(_band_reduce)
        edges = [band_reduce.remote(p, parts, exact_ref, *tables) for p in range(parts)]
        components = ray.get(ray.remote(_components).remote(*edges))
        near_dups = _resolve_all(ray, components, tables, np.array(starts), cfg, parts)

    # stage 3: results back in order, duplicates marked
    exact_set, near_set = set(exact_dups.tolist()), set(near_dups.tolist())
    for j, (start, length) in enumerate(zip(starts, lengths)):
        ref, chunk_results[j] = chunk_results[j], None  # dropping the reference frees the object store
        if start + length <= skip:
            continue
        chunk = ray.get(ref)
        for i, r in enumerate(chunk):
            doc = start + i
            if doc < skip:
                continue
            if r[0] == KEEP and doc in exact_set:
                r = (EXACT, *r[1:])
            elif r[0] == KEEP and doc in near_set:
                r = (NEAR, *r[1:])
            yield r


def _resolve_all(ray: Any, components: list[np.ndarray], tables: list[Any], starts: np.ndarray, cfg: Any,
                 parts: int) -> np.ndarray:
    """Stage 2's last step: components in `parts` batches of about equal size, each a task with the key tables of
    the chunks its documents lie in."""
    if not components:
        return np.zeros(0, np.int64)
    resolve = ray.remote(_resolve)
    batches: list[list[np.ndarray]] = [[] for _ in range(parts)]
    for i, c in enumerate(sorted(components, key=len, reverse=True)):
        batches[i % parts].append(c)
    futures = []
    for batch in batches:
        if not batch:
            continue
        members = np.concatenate(batch)
        chunks = np.unique(np.searchsorted(starts, members, side="right") - 1)
        futures.append(resolve.remote(batch, cfg.minhash_perms, cfg.near_threshold, *[tables[c] for c in chunks]))
    return np.sort(np.concatenate(ray.get(futures)))
