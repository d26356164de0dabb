"""Data: raw text -> clean, de-duplicated token shards (`prepare`), and shards -> training batches (`TokenLoader`).

    from scratchlm.data import PrepareConfig, TokenLoader
    from scratchlm.data.prepare import prepare  # (`scratchlm.data.prepare` is the module)
    manifest = prepare(PrepareConfig(out=Path("data/shakespeare"), dataset=("tinyshakespeare",), ...))
    loader = TokenLoader("data/shakespeare", "train", batch_size=8, context_length=256, seed=0)
    ids, targets = next(loader)          # LongTensors (B, T)

Modules: `inputs` (files -> raw documents), `web` (WARC records, HTML -> text), `clean` (normalisation, quality
filters), `filters` (URL, language, C4 lines, PII), `ngrams` (word hashes), `dedup` (exact + MinHash/LSH),
`decontaminate` (eval-set n-grams), `process` (the per-document work), `shards` (file format, manifest), `prepare`
(the pipeline), `ray_exec` (the pipeline on Ray), `loader` (batches), `finetune` (finetuning datasets). Names are imported lazily so that the
preparation workers never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PrepareConfig": "scratchlm.data.prepare",
    "format_report": "scratchlm.data.prepare",
    "prepare_text": "scratchlm.data.prepare",
    "shard_tokenizer": "scratchlm.data.prepare",
    "TokenLoader": "scratchlm.data.loader",
    "read_manifest": "scratchlm.data.shards",
    "open_shard": "scratchlm.data.shards",
    "read_split": "scratchlm.data.shards",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchlm.data' has no attribute {name!r}")
