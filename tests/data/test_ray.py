"""`--executor ray` on a local Ray (2 CPUs, one cluster for the module) writes the same shards and manifest as the
local executor, near-duplicate counts included (issue 17, acceptance 3). Slow: starting Ray takes tens of seconds
on a busy 2-core machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scratchlm.data.prepare import PrepareConfig, prepare

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _same_output(cfg: PrepareConfig, tmp_path: Path) -> dict:
    """Run local (1 worker) and Ray (2 actors); assert the manifests (but the executor) and shard bytes are equal."""
    from dataclasses import replace

    local = prepare(replace(cfg, out=tmp_path / "local", workers=1), progress=False)
    on_ray = prepare(replace(cfg, out=tmp_path / "ray", workers=2, executor="ray"), progress=False)
    assert (local.pop("executor"), on_ray.pop("executor")) == ("local", "ray")
    assert on_ray == local
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray").iterdir())
    for name in files:  # shards, sidecars, tokenizer.json (manifest.json differs in "executor" only, above)
        if name == "manifest.json":
            continue
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    return local


def test_ray_equals_local_on_the_planted_corpus(local_ray, planted, tmp_path: Path) -> None:
    cfg = PrepareConfig(out=tmp_path, input=(planted.folder,), split_docs=True, val_fraction=0.1, shard_tokens=5_000)
    manifest = _same_output(cfg, tmp_path)
    for key, expected in planted.counts.items():
        assert manifest["report"][key] == expected, key  # near duplicates 5, exact 4, contaminated 3, ...
    assert len(manifest["shards"]["train"]) > 1


def test_ray_equals_local_on_warc_pages(local_ray, web_corpus, tmp_path: Path) -> None:
    cfg = PrepareConfig(out=tmp_path, input=(web_corpus.folder,), url_blocklist=(web_corpus.blocklist,),
                        languages=("en",), line_terminal_punct=True, min_line_words=5, drop_notice_lines=True,
                        drop_lorem_ipsum=True, mask_pii=True, decontaminate=(), val_fraction=0, metadata=True)
    manifest = _same_output(cfg, tmp_path)
    for key, expected in web_corpus.counts.items():
        assert manifest["report"][key] == expected, key
