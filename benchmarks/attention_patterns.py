"""Sliding-window decoding: the rolling KV cache against a plain one, same model and tokens, in one run.

    python benchmarks/attention_patterns.py                  # ~1 min on 2 cores
    python benchmarks/attention_patterns.py --contexts 1024  # a quicker look

A Llama-shaped model (4 layers, d_model 256, 8 heads / 2 KV heads, random weights) whose layers are all `local`
with window W = 256. For each context n it prefills n - 64 tokens and decodes the last 64 one at a time, once
with a plain cache (n slots per layer, the reference) and once with a rolling cache (W slots per local layer,
what the engine uses). It reports the cache bytes, the decode time per token (best of `--repeats`) and the
largest logit difference between the two (they must agree: same keys, same masks).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scratchlm.model import GPT, KVCache, ModelConfig  # noqa: E402

W, DECODE = 256, 64


def decode(model: GPT, ids: torch.Tensor, rolling: bool) -> tuple[torch.Tensor, float, int]:
    """Logits of the last DECODE tokens, seconds per decoded token, cache bytes."""
    B, n = ids.shape
    cache = KVCache.for_model(model, B, n, rolling=rolling)
    prefill = n - DECODE
    with torch.inference_mode():
        model(ids[:, :prefill], cache, torch.arange(prefill).expand(B, prefill))
        out = []
        start = time.perf_counter()
        for t in range(prefill, n):
            out.append(model(ids[:, t : t + 1], cache, torch.full((B, 1), t)))
        seconds = (time.perf_counter() - start) / DECODE
    return torch.cat(out, dim=1), seconds, cache.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in args.contexts:
        config = ModelConfig(vocab_size=1024, context_length=n, n_layer=4, n_head=8, n_kv_head=2, d_model=256,
                             norm="rmsnorm", mlp="swiglu", positions="rope", bias=False,
                             attn_pattern=("local",), attn_window=W)  # fmt: skip
        torch.manual_seed(0)
        model = GPT(config).eval()
        ids = torch.randint(0, 1024, (1, n), generator=torch.Generator().manual_seed(1))
        plain = [decode(model, ids, rolling=False) for _ in range(args.repeats)]
        ring = [decode(model, ids, rolling=True) for _ in range(args.repeats)]
        diff = (plain[0][0] - ring[0][0]).abs().max().item()
        rows.append((n, plain[0][2], ring[0][2], min(p[1] for p in plain), min(r[1] for r in ring), diff))
    print(f"sliding window W={W}, 4 layers all local, batch 1, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; decode of the last {DECODE} tokens of each context")  # fmt: skip
    print(f"{'context':>8} {'cache plain':>12} {'cache rolling':>14} {'ms/token plain':>15} "
          f"{'ms/token rolling':>17} {'max |logit diff|':>17}")  # fmt: skip
    for n, pb, rb, pt, rt, diff in rows:
        print(f"{n:>8} {pb / 2**20:>10.2f}Mi {rb / 2**20:>12.2f}Mi {pt * 1e3:>15.2f} {rt * 1e3:>17.2f} {diff:>17.2e}")


if __name__ == "__main__":
    main()
