"""`prepare` end to end on the planted corpus: exact counts, decoded shards equal the kept documents, and the
output does not depend on the number of workers (acceptance 1 and 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scratchlm import tokenizer as tokenizers
from scratchlm.data import shards
from scratchlm.data.dedup import near_duplicate_recall
from scratchlm.data.ngrams import ngram_hashes, word_hashes
from scratchlm.data.prepare import PrepareConfig, format_report, prepare


def _cfg(planted, out: Path, **kw) -> PrepareConfig:
    kw = {"workers": 1, **kw}
    return PrepareConfig(out=out, input=(planted.folder,), split_docs=True, val_fraction=0.1, **kw)


def _jaccard(a: str, b: str, n: int = 5) -> float:
    x = set(ngram_hashes(word_hashes(a), n).tolist())
    y = set(ngram_hashes(word_hashes(b), n).tolist())
    return len(x & y) / len(x | y)


def _split_docs(ids: np.ndarray, eot: int, tok) -> list[str]:
    """Decode the documents of a token stream: the text between end-of-text tokens."""
    cuts = np.flatnonzero(ids == eot)
    assert cuts.size and cuts[-1] == ids.size - 1, "every document ends with the end-of-text token"
    starts = np.r_[0, cuts[:-1] + 1]
    return [tok.decode(ids[s:e].tolist()) for s, e in zip(starts, cuts)]


def test_planted_corpus_counts_and_decoded_shards(planted, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    manifest = prepare(_cfg(planted, out, shard_tokens=5_000), progress=False)
    rep = manifest["report"]
    for key, expected in planted.counts.items():
        assert rep[key] == expected, key
    assert {k: v for k, v in rep["quality_reasons"].items() if v} == planted.reasons
    # The near-duplicate count is exact here (fixed seed); the documented recall says to expect that: every
    # planted pair is well above the threshold, and fewer than 0.02 of the 5 pairs are expected to be missed.
    recalls = [near_duplicate_recall(_jaccard(a, b), 0.8, 128, 16) for a, b in planted.near_pairs]
    assert sum(1 - r for r in recalls) < 0.02

    tok = tokenizers.load("gpt2")
    assert manifest["tokenizer"]["identity"] == tok.identity()
    assert manifest["dtype"] == "uint16" and manifest["separator"] == [tok.eot_id]
    train = _split_docs(shards.read_split(out, "train"), tok.eot_id, tok)
    val = _split_docs(shards.read_split(out, "val"), tok.eot_id, tok)
    # kept document i goes to val when floor((i+1) f) > floor(i f): the documented, deterministic rule
    is_val = [math.floor((i + 1) * 0.1) > math.floor(i * 0.1) for i in range(len(planted.kept))]
    assert train == [d for d, v in zip(planted.kept, is_val) if not v]
    assert val == [d for d, v in zip(planted.kept, is_val) if v]
    assert rep["tokens_train"] + rep["tokens_val"] == sum(s["tokens"] for sp in manifest["shards"].values() for s in sp)
    assert len(manifest["shards"]["train"]) == rep["shards_train"] > 1  # bounded shards: several of them
    assert all(s["tokens"] == 5_000 for s in manifest["shards"]["train"][:-1])
    for passage in planted.contamination:  # none of the planted contamination is kept
        assert all(passage[:60] not in d for d in train + val)
    table = format_report(manifest)
    assert "near duplicates" in table and f"{rep['documents_read']:,}" in table

    # the same run with 2 worker processes writes the same bytes
    out2 = tmp_path / "shards2"
    manifest2 = prepare(_cfg(planted, out2, shard_tokens=5_000, workers=2), progress=False)
    assert manifest2 == manifest
    assert json.loads((out2 / "manifest.json").read_text()) == manifest


def test_rerun_is_complete_and_other_tokenizer_is_refused(planted, tmp_path: Path) -> None:
    from scratchlm.errors import ScratchlmError
    from scratchlm.tokenizer import CharTokenizer

    out = tmp_path / "shards"
    cfg = _cfg(planted, out, near_dedup=False, decontaminate=())
    first = prepare(cfg, progress=False)
    assert prepare(cfg, progress=False) == first  # already complete: returned as is
    files = sorted(p.name for p in out.iterdir())
    char = CharTokenizer.train(["abc"], special_tokens=["<|endoftext|>"])
    with pytest.raises(ScratchlmError, match="was prepared with another tokenizer"):
        prepare(cfg, tokenizer=char, progress=False)
    with pytest.raises(ScratchlmError, match=r"different settings \(min_chars\)"):
        prepare(_cfg(planted, out, near_dedup=False, decontaminate=(), min_chars=5), progress=False)
    assert sorted(p.name for p in out.iterdir()) == files


def test_char_tokenizer_without_eot_separates_with_a_blank_line(tmp_path: Path) -> None:
    from scratchlm.tokenizer import CharTokenizer

    text = "First block of text here.\nSecond line.\n\nAnother block, different.\n\nA third one to end.\n"
    src = tmp_path / "t.txt"
    src.write_text(text)
    tok = CharTokenizer.train([text])
    assert tok.eot_id is None
    cfg = PrepareConfig(out=tmp_path / "out", input=(src,), split_docs=True, min_chars=0, val_fraction=0,
                        near_dedup=False, decontaminate=(), workers=1)
    manifest = prepare(cfg, tokenizer=tok, progress=False)
    assert manifest["separator"] == tok.encode("\n\n")
    assert manifest["tokenizer"]["eot_id"] is None
    assert tok.decode(shards.read_split(tmp_path / "out", "train").tolist()) == text.strip() + "\n\n"


def test_tinyshakespeare_split_docs_keeps_its_documents_and_a_usable_val_split(tmp_path: Path, capsys) -> None:
    """The README's example: most documents kept (not only most bytes), and a validation split with at least a
    batch of gpt2-tiny's 12 x 256 windows for the pretrain example that follows it."""
    from scratchlm.cli.main import main

    out = tmp_path / "shakespeare"
    assert main(["data", "prepare", "--dataset", "tinyshakespeare", "--split-docs", "--tokenizer", "gpt2",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rep = shards.read_manifest(out)["report"]
    assert rep["documents_kept"] / rep["documents_read"] >= 0.99
    assert rep["bytes_kept"] / rep["bytes_read"] >= 0.99
    assert rep["quality_reasons"]["too_short"] <= 1  # at most a file's last group
    assert shards.read_manifest(out)["settings"]["val_fraction"] == 0.1  # auto: a small corpus gets 10%
    assert (rep["tokens_val"] - 1) // 256 >= 12 * 10
    assert "validation split" in stdout and "10.00% of the kept documents, evenly spread" in stdout


def test_one_large_document_leaves_its_tail_as_the_validation_split(tmp_path: Path, mirror: Path, capsys) -> None:
    from scratchlm.cli.main import main
    from scratchlm.data.clean import normalize
    from scratchlm.tokenizer import load

    out = tmp_path / "whole"
    assert main(["data", "prepare", "--input", str(mirror / "the-verdict.txt"), "--tokenizer", "gpt2",
                 "--val-fraction", "0.1", "--decontaminate", "none", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    tok = load("gpt2")
    train, val = shards.read_split(out, "train"), shards.read_split(out, "val")
    doc = tok.encode_ordinary(normalize((mirror / "the-verdict.txt").read_text(encoding="utf-8"))) + [tok.eot_id]
    assert len(val) == math.ceil(0.1 * len(doc))  # the last tenth of the tokens
    assert train[-1] == tok.eot_id and [*train[:-1].tolist(), *val.tolist()] == doc  # head + tail = the document
    rep = shards.read_manifest(out)["report"]
    assert (rep["documents_train"], rep["documents_val"], rep["tokens_val"]) == (1, 1, len(val))
    assert f"the last {len(val):,} tokens of the last document" in stdout
