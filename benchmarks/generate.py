"""Decode tokens/s on CPU: scratchlm's KV-cache engine vs `transformers`' `generate` with its cache, same weights.

A GPT-2-shaped model (124M parameters, random weights, fp32) is built in Hugging Face's `GPT2LMHeadModel` and
copied into ours through the HF state-dict map, so both decode the same network. Greedy decoding, no stop
tokens, prompts of 16 tokens, batch 1 and batch 8. Decode speed excludes the prefill: it is measured as
B * (N - 1) / (time for N new tokens - time for 1 new token), best of `--repeats` runs. Both must produce the
same greedy tokens (checked). Repeats are interleaved (ours, theirs, ours, ...) so that load elsewhere on the
machine does not favour one side.

    python benchmarks/generate.py                  # gpt2 shape, 64 new tokens
    python benchmarks/generate.py --small          # a quick check: 2 layers, width 128, 16 new tokens
    python benchmarks/generate.py --threads 1      # one thread each
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from scratchlm.generate import SampleConfig, generate_ids
from scratchlm.model import GPT
from scratchlm.model.hf import config_from_hf, state_dict_from_hf


def build(small: bool) -> tuple[torch.nn.Module, GPT]:
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = dict(n_layer=2, n_embd=128, n_head=4) if small else {}
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**shape)).eval()
    cfg = config_from_hf(hf.config.to_dict())
    ours = GPT(cfg)
    missing, unexpected = ours.load_state_dict(state_dict_from_hf(cfg, hf.state_dict()), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    ours.tie_weights()
    return hf, ours.eval()


def elapsed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="2 layers, width 128, 16 new tokens")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens to decode (default 64, 16 with --small)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_new = args.new_tokens or (16 if args.small else 64)

    hf, ours = build(args.small)
    V = ours.config.vocab_size
    rows = []
    with torch.inference_mode():
        for B in args.batches:
            g = torch.Generator().manual_seed(B)
            prompt = torch.randint(0, V, (B, args.prompt_len), generator=g)
            mask = torch.ones_like(prompt)

            def run_hf(n: int, prompt: torch.Tensor = prompt, mask: torch.Tensor = mask) -> torch.Tensor:
                out = hf.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  use_cache=True, pad_token_id=0)
                return out[:, prompt.shape[1]:]

            def run_ours(n: int, prompt: torch.Tensor = prompt) -> list[list[int]]:
                groups = generate_ids(ours, prompt.tolist(), SampleConfig(temperature=0, max_new_tokens=n))
                return [g[0].output for g in groups]

            same = run_hf(n_new).tolist() == run_ours(n_new)
            impls = {"transformers generate": run_hf, "scratchlm engine": run_ours}
            best = {(name, n): float("inf") for name in impls for n in (1, n_new)}
            # Interleaved repeats: a burst of load elsewhere on the machine hits both implementations alike.
            for _ in range(args.repeats):
                for name, fn in impls.items():
                    for n in (1, n_new):
                        best[name, n] = min(best[name, n], elapsed(lambda fn=fn, n=n: fn(n)))
            for name in impls:
                t1, tn = best[name, 1], best[name, n_new]
                rows.append((name, B, B * (n_new - 1) / (tn - t1), tn, same))

    print(f"decode tokens/s, {'small' if args.small else 'gpt2 (124M)'} shape, fp32, CPU, "
          f"{torch.get_num_threads()} threads, prompt {args.prompt_len}, {n_new} new tokens, greedy")
    print(f"{'implementation':<24}{'batch':>6}{'decode tok/s':>14}{'total s':>9}{'ratio':>7}  same tokens")
    for name, B, tps, tn, same in rows:
        ref = next(r[2] for r in rows if r[1] == B and r[0].startswith("transformers"))
        print(f"{name:<24}{B:>6}{tps:>14.1f}{tn:>9.2f}{tps / ref:>7.2f}  {same}")


if __name__ == "__main__":
    main()
