"""Acceptance 4: TokenLoader epochs cover every window once, a restored loader continues with exactly the same
batches, ranks are disjoint (and together equal one process with the larger batch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchlm.data import TokenLoader, read_manifest, read_split, shard_tokenizer
from scratchlm.data.prepare import PrepareConfig, prepare
from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer import CharTokenizer

T = 32


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mirror = Path(os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
    text = (mirror / "tinyshakespeare.txt").read_text()[:60_000]
    src = tmp_path_factory.mktemp("src") / "shakespeare.txt"
    src.write_text(text)
    out = tmp_path_factory.mktemp("shards") / "out"
    tok = CharTokenizer.train([text], special_tokens=["<|endoftext|>"])
    cfg = PrepareConfig(out=out, input=(src,), split_docs=True, min_chars=0, val_fraction=0.1, shard_tokens=7_000,
                        exact_dedup=False, near_dedup=False, decontaminate=(), workers=1)
    prepare(cfg, tokenizer=tok, progress=False)
    return out


def test_windows_match_the_token_stream_and_targets_are_shifted(shard_dir: Path) -> None:
    tokens = read_split(shard_dir, "train").astype(np.int64)
    loader = TokenLoader(shard_dir, "train", batch_size=4, context_length=T, seed=0)
    assert len(read_manifest(shard_dir)["shards"]["train"]) > 3  # windows cross shard boundaries
    assert loader.n_windows == (tokens.size - 1) // T
    ids, targets = next(loader)
    assert ids.shape == targets.shape == (4, T) and ids.dtype == torch.long
    for row, w in zip(range(4), loader.batch_windows(0, 0)):
        np.testing.assert_array_equal(ids[row].numpy(), tokens[w * T : w * T + T])
        np.testing.assert_array_equal(targets[row].numpy(), tokens[w * T + 1 : w * T + T + 1])
    assert loader.vocab_size == shard_tokenizer(shard_dir).vocab_size
    assert loader.tokenizer_identity == shard_tokenizer(shard_dir).identity()


def _next_windows(loader: TokenLoader, tokens: np.ndarray) -> list[int]:
    """Draw the next batch and return its window numbers, after checking the batch holds exactly those windows."""
    epoch, batch = (loader.epoch, loader.batch) if loader.batch < len(loader) else (loader.epoch + 1, 0)
    windows = loader.batch_windows(epoch, batch).tolist()
    ids, targets = next(loader)
    expected = np.stack([tokens[w * T : w * T + T + 1] for w in windows])  # (B, T + 1)
    np.testing.assert_array_equal(ids.numpy(), expected[:, :-1])
    np.testing.assert_array_equal(targets.numpy(), expected[:, 1:])
    return windows


def test_one_epoch_visits_every_window_once(shard_dir: Path) -> None:
    tokens = read_split(shard_dir, "train").astype(np.int64)
    loader = TokenLoader(shard_dir, "train", batch_size=8, context_length=T, seed=3)
    seen = [w for _ in range(len(loader)) for w in _next_windows(loader, tokens)]
    assert len(seen) == len(set(seen)) == len(loader) * 8
    assert set(range(loader.n_windows)) - set(seen) == set(loader.permutation(0)[len(seen):].tolist())
    assert loader.n_windows - len(seen) < 8  # only the last incomplete batch is left out
    assert seen != sorted(seen)  # shuffled
    second = _next_windows(loader, tokens)
    assert loader.epoch == 1 and second == loader.permutation(1)[:8].tolist() != seen[:8]


def test_state_dict_resume_gives_the_same_batches(shard_dir: Path) -> None:
    a = TokenLoader(shard_dir, "train", batch_size=8, context_length=T, seed=1)
    for _ in range(len(a) - 3):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(7)]  # crosses into the next epoch
    b = TokenLoader(shard_dir, "train", batch_size=8, context_length=T, seed=1)
    b.load_state_dict(state)
    for (ids, tg), (ids2, tg2) in zip(expected, (next(b) for _ in range(7))):
        assert torch.equal(ids, ids2) and torch.equal(tg, tg2)
    with pytest.raises(ScratchlmError, match="seed=1"):
        TokenLoader(shard_dir, "train", batch_size=8, context_length=T, seed=2).load_state_dict(state)


def test_two_ranks_are_disjoint_and_together_equal_one_process(shard_dir: Path) -> None:
    tokens = read_split(shard_dir, "train").astype(np.int64)
    ranks = [TokenLoader(shard_dir, "train", 4, T, seed=5, rank=r, world_size=2) for r in range(2)]
    single = TokenLoader(shard_dir, "train", 8, T, seed=5)
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    seen: list[set[int]] = [set(), set()]
    for _ in range(len(single)):
        parts = [_next_windows(r, tokens) for r in ranks]
        for s, p in zip(seen, parts):
            s.update(p)
        assert sorted(parts[0] + parts[1]) == sorted(_next_windows(single, tokens))
    assert not seen[0] & seen[1]
    assert len(seen[0]) + len(seen[1]) == 8 * len(single)


def test_document_aligned_windows_start_after_end_of_text(shard_dir: Path) -> None:
    tokens = read_split(shard_dir, "train")
    eot = shard_tokenizer(shard_dir).eot_id
    loader = TokenLoader(shard_dir, "train", 4, T, seed=0, document_aligned=True)
    starts = [loader.window_start(w) for w in range(loader.n_windows)]
    assert starts[0] == 0 and all(tokens[s - 1] == eot for s in starts[1:])
    assert len(starts) == 1 + int(np.sum(tokens[: tokens.size - T - 1] == eot))
    ids, _ = next(loader)
    assert ids.shape == (4, T)


def test_eval_pass_is_deterministic_and_complete(shard_dir: Path) -> None:
    loader = TokenLoader(shard_dir, "val", batch_size=5, context_length=T, seed=0)
    first = list(loader.eval_batches())
    again = list(loader.eval_batches())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert sum(ids.shape[0] for ids, _ in first) == loader.n_windows
    tokens = read_split(shard_dir, "val").astype(np.int64)
    np.testing.assert_array_equal(torch.cat([ids for ids, _ in first]).numpy().ravel(),
                                  tokens[: loader.n_windows * T])
    assert len(list(loader.eval_batches(max_batches=2))) == 2


def test_context_longer_than_the_data_is_a_clear_error(shard_dir: Path) -> None:
    n = read_split(shard_dir, "val").size
    with pytest.raises(ScratchlmError, match=f"has {n:,} tokens, fewer than context_length"):
        TokenLoader(shard_dir, "val", batch_size=1, context_length=n, seed=0)
    small = TokenLoader(shard_dir, "val", batch_size=10_000, context_length=T, seed=0)
    with pytest.raises(ScratchlmError, match="fewer than batch_size x world_size"):
        next(small)
