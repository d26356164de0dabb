"""`scratchlm data prepare`: text files or a named dataset -> token shards + manifest.json, with a report table."""

from __future__ import annotations

from scratchlm.cli.parsing import parse
from scratchlm.data.prepare import PrepareConfig, format_report
from scratchlm.data.prepare import prepare as run_prepare


def prepare(argv: list[str], prog: str) -> int:
    cfg = parse(PrepareConfig, argv, prog)
    manifest = run_prepare(cfg)
    print(format_report(manifest))
    print(f"wrote {cfg.out}/manifest.json")
    return 0
