"""`scratchlm fetch NAME...` and `scratchlm fetch --list`."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from scratchlm import assets
from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError


@dataclass
class FetchConfig:
    """Download (or locate in $SCRATCHLM_MIRROR) named public assets and print their local paths."""

    names: tyro.conf.Positional[tuple[str, ...]] = ()
    """Asset names, e.g. gpt2-encoder tinyshakespeare."""
    list: bool = False
    """List the known assets instead."""


def main(argv: list[str], prog: str) -> int:
    cfg = parse(FetchConfig, argv, prog)
    if cfg.list:
        width = max(len(n) for n in assets.REGISTRY)
        for a in assets.REGISTRY.values():
            print(f"{a.name.ljust(width)}  {a.path:<40}  {a.description}")
        return 0
    if not cfg.names:
        raise ScratchlmError("name at least one asset, e.g. `scratchlm fetch tinyshakespeare`, or use --list")
    for name in cfg.names:
        print(assets.fetch(name))
    return 0
