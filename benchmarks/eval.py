"""Tokens/s of sliding-window perplexity on CPU: scratchlm vs the Hugging Face guide's loop, same weights.

A GPT-2-shaped model (124M, random weights) is saved as a scratchlm checkpoint and exported to a Hugging Face
folder (what `scratchlm convert to-hf` writes); both evaluate the same WikiText-2 tokens with the same windows.
The guide's loop runs one window at a time and computes the output head on every position; ours batches windows
and runs the head only on the positions that are scored.

    python benchmarks/eval.py                      # gpt2 shape, 8,192 tokens, context 1024, stride 512
    python benchmarks/eval.py --small              # a quick check: 2 layers, 2,048 tokens, context 256
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from scratchlm import checkpoint
from scratchlm import tokenizer as tokenizers
from scratchlm.eval.perplexity import perplexity_of_ids
from scratchlm.eval.report import table
from scratchlm.interop import hf as hf_io
from scratchlm.model import GPT, ModelConfig


def hf_guide(model: torch.nn.Module, input_ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """https://huggingface.co/docs/transformers/perplexity, counting the labels HF's loss averaged over."""
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        ids = input_ids[:, begin:end]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * n
        n_tokens += n
        prev_end = end
        if end == seq_len:
            break
    return nll_sum, n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="2 layers, 2,048 tokens, context 256 (a quick check)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens of WikiText-2 test to evaluate")
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--stride", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each, the best is reported")
    args = ap.parse_args()
    import transformers

    config = ModelConfig.from_preset("gpt2")
    n_tokens, context = 8192, 1024
    if args.small:
        config = config.replace(n_layer=2, context_length=256)
        n_tokens, context = 2048, 256
    n_tokens = args.tokens or n_tokens
    context = args.context or context
    stride = args.stride or context // 2

    from scratchlm import assets

    tok = tokenizers.load("gpt2")
    text = assets.fetch("wikitext-2-test").read_text(encoding="utf-8")
    ids = tok.encode_ordinary(text[: n_tokens * 6])[:n_tokens]
    torch.manual_seed(0)
    model = GPT(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint.save(Path(tmp) / "ckpt", model, tok)
        hf_dir, _ = hf_io.export_hf(ckpt, Path(tmp) / "hf")
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    input_ids = torch.tensor(ids)[None]  # (1, N)

    def ours() -> float:
        return perplexity_of_ids(model, ids, context, stride, batch_size=args.batch_size).nll

    def theirs() -> float:
        return hf_guide(hf_model, input_ids, context, stride)[0]

    # warm-up: one short run of each (allocator, kernels)
    perplexity_of_ids(model, ids[: context + 1], context, stride)
    hf_guide(hf_model, input_ids[:, : context + 1], context, stride)
    rows, nlls = [], {}
    for name, fn in (("scratchlm (batched, head on scored positions)", ours), ("transformers, HF guide loop", theirs)):
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            nlls[name] = fn()
            best = min(best, time.perf_counter() - t0)
        rows.append([name, best, len(ids) / best])
    speedup = rows[1][1] / rows[0][1]
    first, second = nlls.values()
    print(f"perplexity on CPU ({torch.get_num_threads()} threads): {config.n_layer} layers, d_model "
          f"{config.d_model}, {len(ids):,} tokens, context {context}, stride {stride}, batch {args.batch_size}")
    print(table(["implementation", "seconds", "tokens/s"], rows))
    print(f"speed-up {speedup:.2f}x; same loss: relative difference {abs(first - second) / abs(second):.2e}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
