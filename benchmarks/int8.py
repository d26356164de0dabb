"""Weight-only int8 (`--int8`) against float: perplexity on WikiText-2 and decode speed, in one run.

    python benchmarks/int8.py                 # ~6 min on 2 cores
    python benchmarks/int8.py --steps 60      # a quicker look (a less trained model)

1. Perplexity: the commands a user types. `data prepare` WikiText-2's validation split (GPT-2 tokens),
   `pretrain --model-preset gpt2-tiny` on it for `--steps` steps, then `eval perplexity --dataset wikitext-2`
   (the test split, first `--lines` lines) with and without `--int8`. Target: int8 within 1% of float.
2. Decode tokens/s at batch 1 and 8: the gpt2 124M shape (random weights, GPT-2's vocabulary), greedy, the
   KV-cache engine, float32 weights against int8 (`quantize_int8`), prefill excluded (time for N new tokens
   minus time for 1), best of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from run_cli import scratchlm  # benchmarks/run_cli.py: a script's own folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scratchlm.generate import SampleConfig, generate_ids  # noqa: E402
from scratchlm.model import GPT, ModelConfig  # noqa: E402
from scratchlm.model.quant import quantize_int8  # noqa: E402


def perplexities(steps: int, lines: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    scratchlm(
        [
            "data",
            "prepare",
            "--dataset",
            "wikitext-2-valid",
            "--tokenizer",
            "gpt2",
            "--split-docs",
            "--out",
            str(work / "shards"),
        ]
    )
    scratchlm(
        [
            "pretrain",
            "--model-preset",
            "gpt2-tiny",
            "--data",
            str(work / "shards"),
            "--out",
            str(work / "run"),
            "--max-steps",
            str(steps),
            "--eval-every",
            "0",
            "--sample-at-end",
            "0",
            "--progress",
            "False",
        ]
    )
    out = {}
    for name, extra in (("float", []), ("int8", ["--int8"])):
        got = scratchlm(
            [
                "eval",
                "perplexity",
                "--checkpoint",
                str(work / "run"),
                "--dataset",
                "wikitext-2",
                "--limit",
                str(lines),
                "--json",
                "--no-progress",
                *extra,
            ]
        )
        out[name] = json.loads(got)["token_perplexity"]
    return out


def decode_speed(batches: list[int], new_tokens: int, repeats: int) -> dict[tuple[str, int], float]:
    cfg = ModelConfig.from_preset("gpt2", vocab_size=50304)
    torch.manual_seed(0)
    models = {"float": GPT(cfg).eval()}
    models["int8"] = GPT(cfg).eval()
    models["int8"].load_state_dict(models["float"].state_dict())
    quantize_int8(models["int8"])
    speeds = {}
    with torch.inference_mode():
        for B in batches:
            prompts = torch.randint(
                0, cfg.vocab_size, (B, 16), generator=torch.Generator().manual_seed(B)
            ).tolist()
            best: dict[tuple[str, int], float] = {}
            for rep in range(repeats + 1):  # the first round warms up; interleaved, so load hits both alike
                for name, model in models.items():
                    for n in (1, new_tokens):
                        t = time.perf_counter()
                        generate_ids(model, prompts, SampleConfig(temperature=0, max_new_tokens=n))
                        if rep:
                            best[name, n] = min(best.get((name, n), float("inf")), time.perf_counter() - t)
            for name in models:
                speeds[name, B] = B * (new_tokens - 1) / (best[name, new_tokens] - best[name, 1])
    return speeds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="pretraining steps of the gpt2-tiny model")
    p.add_argument("--lines", type=int, default=400, help="WikiText-2 test lines scored")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    ppl = perplexities(a.steps, a.lines)
    speeds = decode_speed([1, 8], a.new_tokens, a.repeats)
    print(f"\nweight-only int8 vs float, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"1. gpt2-tiny, {a.steps} steps on WikiText-2 valid; perplexity on the first {a.lines} test lines")
    print(
        f"   float {ppl['float']:.3f}   int8 {ppl['int8']:.3f}   int8/float {ppl['int8'] / ppl['float']:.4f}"
    )
    print(f"2. decode tokens/s, gpt2 124M shape, {a.new_tokens} new tokens, best of {a.repeats}")
    print(f"   {'batch':>5} {'float32':>9} {'int8':>9} {'int8/float':>10}")
    for B in (1, 8):
        f, q = speeds["float", B], speeds["int8", B]
        print(f"   {B:>5} {f:>9.1f} {q:>9.1f} {q / f:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
