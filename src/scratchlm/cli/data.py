"""`scratchlm data prepare`: text files or a named dataset -> token shards + manifest.json, with a report table.

--out follows the output rule (`scratchlm.fs.check_out_dir`, docs/contracts.md): a new or empty folder, or
token shards (finished or interrupted) that are prepared further in place; `prepare` itself then refuses shards
made with another tokenizer or other settings.
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.cli.parsing import parse
from scratchlm.data.prepare import PrepareConfig, format_report
from scratchlm.data.prepare import prepare as run_prepare
from scratchlm.fs import check_out_dir, is_shard_folder


def prepare(argv: list[str], prog: str) -> int:
    cfg = parse(PrepareConfig, argv, prog)
    # what is read: the inputs, a tokenizer given as a path, evaluation texts given as files
    inputs = [*cfg.input, *cfg.url_blocklist, *(p for p in (cfg.tokenizer, *cfg.decontaminate) if Path(p).exists())]
    check_out_dir(cfg.out, is_shard_folder, "scratchlm shards", inputs)
    manifest = run_prepare(cfg)
    print(format_report(manifest))
    print(f"wrote {cfg.out}/manifest.json")
    return 0
