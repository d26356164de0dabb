"""`scratchlm rl arithmetic`: write the CPU-sized verifiable task the arith recipes train on (docs/rl.md)."""

from __future__ import annotations

from scratchlm.cli.parsing import parse
from scratchlm.fs import check_out_dir
from scratchlm.rl.arithmetic import ArithmeticConfig, write_task


def arithmetic(argv: list[str], prog: str) -> int:
    cfg = parse(ArithmeticConfig, argv, prog)
    check_out_dir(cfg.out, lambda folder: False, "new or empty folder")
    counts = write_task(cfg)
    shown = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"wrote {shown} problems to {cfg.out} (pretrain/ shards, sft.jsonl, prompts.jsonl, test.jsonl)")
    return 0
