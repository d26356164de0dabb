"""Tokenizer speed: encode MB/s on WikiText-2 (test) and BPE training seconds on tinyshakespeare.

    taskset -c 0 python benchmarks/tokenizer.py            # one core, as the targets are stated
    python benchmarks/tokenizer.py --quick                 # a smoke run: smaller inputs, short naive cap

Rows, all from this one run:
- encode, ours (pure Python), cold cache: a fresh tokenizer object for each repetition, so every distinct chunk
  runs the BPE loop once (target: at least 3 MB/s on one core). Warm cache: the same object again.
- encode, ours exported with `to_tiktoken()`, and tiktoken's GPT-2 built offline from the same two files.
- training to vocab 512 / 1024 / 4096: ours (incremental pair counts, target under 60 s at 4096) and the naive
  reference (recount every pair of every chunk occurrence after each merge, as minbpe does). The naive run stops
  after --naive-cap seconds; later sizes are then extrapolated from its merges per second and marked `~`.
  Both must make the same merges: checked on the merges the naive run finished.
Assets come from $SCRATCHLM_MIRROR or the download cache (`scratchlm fetch`). Timings take the best of --repeat.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import regex

from scratchlm import assets
from scratchlm.tokenizer import GPT2_PATTERN, read_gpt2
from scratchlm.tokenizer.train import count_chunks, train_bpe

TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def naive_train(
    text: str, n_merges: int, cap_s: float
) -> tuple[list[tuple[int, int, int]], dict[int, float], float]:
    """Textbook BPE: all pairs of all chunk occurrences recounted after each merge (same tie-break as ours).

    Returns the merges made, the elapsed seconds after each merge count reached, and merges per second."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text)]
    vocab = [bytes([b]) for b in range(256)]
    merges: list[tuple[int, int, int]] = []
    elapsed: dict[int, float] = {}
    start = time.perf_counter()
    while len(merges) < n_merges and time.perf_counter() - start < cap_s:
        counts: Counter[tuple[int, int]] = Counter()
        for seq in chunks:
            counts.update(zip(seq, seq[1:]))
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))
        t = len(vocab)
        vocab.append(vocab[a] + vocab[b])
        new_chunks = []
        for seq in chunks:
            out, i, n = [], 0, len(seq)
            while i < n:
                if seq[i] == a and i + 1 < n and seq[i + 1] == b:
                    out.append(t)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            new_chunks.append(out)
        chunks = new_chunks
        merges.append((a, b, t))
        elapsed[len(merges)] = time.perf_counter() - start
    total = time.perf_counter() - start
    return merges, elapsed, len(merges) / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller inputs and a 10 s naive cap (smoke run)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-cap", type=float, default=180.0, help="seconds the naive trainer may run")
    args = ap.parse_args()
    if args.quick:
        args.naive_cap, args.repeat = min(args.naive_cap, 10.0), 1

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_json, vocab_bpe = assets.fetch("gpt2-encoder"), assets.fetch("gpt2-vocab")
    wiki = assets.fetch("wikitext-2-test").read_text(encoding="utf-8")
    shakespeare = assets.fetch("tinyshakespeare").read_text(encoding="utf-8")
    if args.quick:
        wiki, shakespeare = wiki[:300_000], shakespeare[:300_000]
    mb = len(wiki.encode("utf-8")) / 1e6
    rows: list[tuple[str, str, str]] = []

    # ---- encoding ---------------------------------------------------------------------------------------------
    ours = read_gpt2(encoder_json, vocab_bpe, name="gpt2")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json)
    )
    ref = tiktoken.Encoding(
        name="gpt2",
        pat_str=TIKTOKEN_GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    exported = ours.to_tiktoken()
    expected = ref.encode_ordinary(wiki)

    def cold() -> None:
        ours.clear_cache()  # as a fresh object: every distinct chunk runs BPE once
        ours.encode_ordinary(wiki)

    t_cold = best_of(args.repeat, cold)
    assert ours.encode_ordinary(wiki) == expected
    t_warm = best_of(args.repeat, lambda: ours.encode_ordinary(wiki))
    t_exp = best_of(args.repeat, lambda: exported.encode_ordinary(wiki))
    t_ref = best_of(args.repeat, lambda: ref.encode_ordinary(wiki))
    assert exported.encode_ordinary(wiki) == expected
    what = f"encode wikitext-2-test ({mb:.2f} MB)"
    rows += [
        (what, "ours, pure Python, cold cache", f"{mb / t_cold:.2f} MB/s"),
        (what, "ours, pure Python, warm cache", f"{mb / t_warm:.2f} MB/s"),
        (what, "ours exported to tiktoken", f"{mb / t_exp:.2f} MB/s"),
        (what, "tiktoken gpt2 (reference)", f"{mb / t_ref:.2f} MB/s"),
    ]

    # ---- training ---------------------------------------------------------------------------------------------
    sizes = [512, 1024, 4096]
    ours_merges = {}
    for vocab_size in sizes:

        def run(v: int = vocab_size) -> None:
            ours_merges[v] = train_bpe(count_chunks([shakespeare], GPT2_PATTERN), v - 256)[1]

        t = best_of(args.repeat, run)
        rows.append((f"train tinyshakespeare, vocab {vocab_size}", "ours, incremental", f"{t:.2f} s"))
    naive_merges, elapsed, rate = naive_train(shakespeare, max(sizes) - 256, args.naive_cap)
    assert naive_merges == ours_merges[max(sizes)][: len(naive_merges)], "naive and incremental merges differ"
    for vocab_size in sizes:
        n = vocab_size - 256
        if n in elapsed:
            cell = f"{elapsed[n]:.1f} s"
        else:
            cell = (
                f"~{n / rate:.0f} s (extrapolated: {len(naive_merges)} merges in {args.naive_cap:.0f} s cap)"
            )
        rows.append((f"train tinyshakespeare, vocab {vocab_size}", "naive recount reference", cell))

    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("benchmark", "implementation", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"(naive trainer: {rate:.2f} merges/s; same merges as ours for the {len(naive_merges)} it made)")


if __name__ == "__main__":
    main()
