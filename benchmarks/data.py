"""`scratchlm data prepare` throughput and memory on generated corpora, with tiktoken as the yardstick.

    python benchmarks/data.py                 # 200 MB JSONL + 20 MB WARC (the acceptance sizes; ~30 min on 2 cores)
    python benchmarks/data.py --mb 10 --warc-mb 5    # a quick smoke run
    python benchmarks/data.py --mb 0          # the WARC rows only

The WARC corpus (issue 17): gzipped WARC files of HTML pages (navigation, menu, sidebar and footer around an
article of 3-8 paragraphs of the same generated prose; 3% exact and 3% near copies under other URLs, with other
boilerplate), plus a warcinfo and a request record per 50 pages. `prepare` runs with the web filters on
(--languages en, C4's line rules, --mask-pii) with the local executor and with Ray, 2 workers each, each in a fresh
subprocess; MB/s counts WARC bytes on disk over wall time (Ray's includes starting Ray). Then one process runs the
per-document code (`DocProcessor`) over the same pages on one thread with timers, for the share of time spent in
HTML extraction, language identification and tokenization.

The corpus: JSONL files of documents of 200-1,200 words drawn from WikiText-2 (valid)'s word frequencies, so that
the GPT-2 tokenizer sees English-like words; 3% of documents are exact copies and 3% near copies (a few words
changed) of earlier ones. It is written under a temporary folder and deleted at the end.

Rows, from this one run: `prepare` with the GPT-2 tokenizer (decontamination against WikiText-2 test on, as by
default) with 1 worker and with all cores, with and without near-dedup, each in a fresh subprocess; and a plain
loop that reads the same files and encodes every document with tiktoken's GPT-2 (built offline from the same
BPE files), on one thread. MB/s counts input bytes over wall time. Peak RSS is the largest sum of the resident
memory of the prepare process and all its descendants (sampled from /proc every 50 ms); CPU s is their summed
user + system time, which shows the work added by the worker processes even on a busy machine.
Targets: peak RSS under 1 GiB at 200 MB; all-cores throughput at least 1.6x one worker on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scratchlm import assets


def prose_maker(rng: np.random.Generator) -> Callable[[int], str]:
    """`prose(n)`: n words drawn from WikiText-2 (valid)'s word frequencies, in sentences of 15 words."""
    words = assets.fetch("wikitext-2-valid").read_text(encoding="utf-8").split()
    counts = collections.Counter(w for w in words if w not in ("<unk>", "=", "@-@", "@,@", "@.@"))
    vocab = np.array(list(counts))
    p = np.array(list(counts.values()), dtype=np.float64)
    p /= p.sum()

    def prose(n: int) -> str:
        ws = vocab[rng.choice(len(vocab), size=n, p=p)].tolist()
        for i in range(0, n, 15):
            ws[i] = ws[i].capitalize()
            if i:
                ws[i - 1] += "."
        return " ".join(ws) + "."

    return prose


def make_corpus(folder: Path, mb: float, seed: int = 0) -> tuple[int, int]:
    """Write ~`mb` MB of JSONL documents into `folder`; returns (bytes, documents)."""
    rng = np.random.default_rng(seed)
    prose = prose_maker(rng)
    pyrng = random.Random(seed)
    target, total, docs, file_no = int(mb * 1e6), 0, 0, 0
    recent: collections.deque[str] = collections.deque(maxlen=200)
    f = None
    while total < target:
        if f is None or f.tell() > 50e6:
            if f:
                f.close()
            f = open(folder / f"part_{file_no:03d}.jsonl", "w", encoding="utf-8")
            file_no += 1
        r = pyrng.random()
        if r < 0.03 and recent:
            text = pyrng.choice(recent)  # exact copy
        elif r < 0.06 and recent:
            ws = pyrng.choice(recent).split(" ")
            for _ in range(3):
                ws[pyrng.randrange(len(ws))] = "changed"
            text = " ".join(ws)  # near copy
        else:
            text = prose(int(rng.integers(200, 1200)))
            recent.append(text)
        line = json.dumps({"text": text}) + "\n"
        f.write(line)
        total += len(line.encode())
        docs += 1
    assert f is not None
    f.close()
    return total, docs


def _tree(root: int) -> dict[int, tuple[int, int]]:
    """{pid: (resident bytes, CPU ticks)} of `root` and all its descendants (scans /proc)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            children[int(fields[1])].append(int(entry))
            stats[int(entry)] = (int(fields[21]) * os.sysconf("SC_PAGE_SIZE"), int(fields[11]) + int(fields[12]))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid]
        todo.extend(children.get(pid, []))
    return out


WEB_FLAGS = ["--languages", "en", "--line-terminal-punct", "--min-line-words", "5", "--drop-notice-lines",
             "--drop-lorem-ipsum", "--mask-pii"]


def _page(paragraphs: list[str], noise: int) -> str:
    nav = "".join(f'<li><a href="/s{i}">Section {i + noise}</a></li>' for i in range(12))
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Page {noise}</title></head><body>'
        f'<header><nav><ul><li><a href="/">Home</a></li>{nav}</ul></nav><div class="menu">Menu | News | Sport</div>'
        f"</header><main><article><h1>Article {noise}</h1>\n{body}\n<p>Please enable JavaScript to see the "
        "comments.</p></article></main><aside><h3>Most read</h3><ul>"
        + "".join(f'<li><a href="/r{i}">Story number {i + noise} of the week</a></li>' for i in range(8))
        + f"</ul></aside><footer><p>Copyright 2024 Example {noise}. All rights reserved.</p></footer></body></html>"
    )


def make_warc(folder: Path, mb: float, seed: int = 1) -> tuple[int, int]:
    """Write ~`mb` MB of gzipped WARC files of HTML pages into `folder`; returns (bytes on disk, pages)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    rng, pyrng = np.random.default_rng(seed), random.Random(seed)
    prose = prose_maker(rng)
    target, total, pages, file_no = int(mb * 1e6), 0, 0, 0
    recent: collections.deque[list[str]] = collections.deque(maxlen=100)
    while total < target:
        path = folder / f"CC-MAIN-{file_no:05d}.warc.gz"
        with open(path, "wb") as f:
            w = WARCWriter(f, gzip=True)
            w.write_record(w.create_warcinfo_record(path.name, {"software": "benchmarks/data.py"}))
            while f.tell() < 20e6 and total + f.tell() < target:
                r = pyrng.random()
                if r < 0.03 and recent:
                    paras = pyrng.choice(recent)
                elif r < 0.06 and recent:
                    paras = [x.replace(" the ", " a ", 1) for x in pyrng.choice(recent)]
                else:
                    paras = [prose(int(rng.integers(40, 160))) for _ in range(int(rng.integers(3, 9)))]
                    recent.append(paras)
                url = f"https://site{pyrng.randrange(500)}.example/{pages}"
                if pages % 50 == 0:
                    req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example")], is_http_request=True)
                    w.write_record(w.create_warc_record(url, "request", http_headers=req))
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                           protocol="HTTP/1.1")
                w.write_record(w.create_warc_record(url, "response", http_headers=headers,
                                                    payload=io.BytesIO(_page(paras, pages).encode())))
                pages += 1
            total += f.tell()
        file_no += 1
    return total, pages


def stage_shares(corpus: Path, tokenizer: str = "gpt2") -> dict[str, float]:
    """Seconds per stage of the per-document code over every page of `corpus`, one thread, in this process."""
    from scratchlm import tokenizer as tokenizers
    from scratchlm.data.decontaminate import EvalNgrams
    from scratchlm.data.inputs import read_documents, resolve_inputs
    from scratchlm.data.prepare import PrepareConfig, _settings
    from scratchlm.data.process import DocProcessor

    cfg = PrepareConfig(out=corpus / "unused", input=(corpus,), languages=("en",), line_terminal_punct=True,
                        min_line_words=5, drop_notice_lines=True, drop_lorem_ipsum=True, mask_pii=True)
    tok = tokenizers.load(tokenizer)
    files = resolve_inputs([corpus], "text")
    settings = _settings(cfg, files, tok, [tok.eot_id], [])
    processor = DocProcessor(settings, tok.to_dict(), EvalNgrams.from_names(cfg.decontaminate, 13), [], timed=True)
    for doc in read_documents(files, False, 8 << 20):
        processor.process_one(doc)
    assert processor.timings is not None
    return processor.timings


def run_prepare(corpus: Path, out: Path, workers: int, near: bool = True,
                extra: list[str] | None = None) -> tuple[float, int, float, dict]:
    """Wall seconds, peak tree RSS, tree CPU seconds and the report of one `data prepare` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "scratchlm", "data", "prepare", "--input", str(corpus), "--out", str(out),
           "--tokenizer", "gpt2", "--workers", str(workers), "--near-dedup", str(near).lower(), *(extra or [])]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, ticks = [0], {}

    def sample() -> None:
        while proc.poll() is None:
            tree = _tree(proc.pid)
            peak[0] = max(peak[0], sum(rss for rss, _ in tree.values()))
            for pid, (_, cpu) in tree.items():
                ticks[pid] = max(ticks.get(pid, 0), cpu)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{stderr}")
    report = json.loads((out / "manifest.json").read_text())["report"]
    return wall, peak[0], sum(ticks.values()) / os.sysconf("SC_CLK_TCK"), report


def tiktoken_loop(corpus: Path) -> float:
    """Seconds to read every document of the corpus and encode it with tiktoken's GPT-2, one thread."""
    from scratchlm import tokenizer

    enc = tokenizer.load("gpt2").to_tiktoken()
    start = time.perf_counter()
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                enc.encode_ordinary(json.loads(line)["text"])
    return time.perf_counter() - start


def _timed_row(label: str, n_bytes: int, base: dict[bool, float], key: bool, result: tuple) -> tuple:
    """A table row of one `run_prepare` result; the first row of each `key` is the speed-up's reference."""
    wall, peak, cpu, report = result
    mbps = n_bytes / 1e6 / wall
    base.setdefault(key, mbps)
    print(f"  done: {label} ({wall:.0f} s)", file=sys.stderr, flush=True)
    return (label, mbps, f"{mbps / base[key]:.2f}x", f"{peak / 2**20:,.0f} MiB", wall, f"{cpu:.1f}",
            f"{report['documents_kept']:,} kept, {report['exact_duplicates']:,} exact, "
            f"{report['near_duplicates']:,} near")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=200.0, help="JSONL corpus size in MB (default 200; 0 skips)")
    ap.add_argument("--warc-mb", type=float, default=20.0, help="WARC corpus size in MB (default 20; 0 skips)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="'all cores' (default: cpu count)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scratchlm-bench-data-"))
    rows, notes = [], []
    try:
        if args.mb > 0:
            corpus = tmp / "corpus"
            corpus.mkdir()
            t0 = time.perf_counter()
            n_bytes, n_docs = make_corpus(corpus, args.mb)
            print(f"corpus: {n_bytes / 1e6:.1f} MB, {n_docs:,} JSONL documents, generated in "
                  f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores; tokenizer gpt2", flush=True)
            base: dict[bool, float] = {}
            for near in (False, True):
                for workers in (1, args.workers):
                    label = f"prepare, {workers} worker{'s' if workers > 1 else ''}, " + (
                        "exact + near dedup" if near else "exact dedup only")
                    rows.append(_timed_row(label, n_bytes, base, near, run_prepare(corpus, tmp / "out", workers, near)))
            wall = tiktoken_loop(corpus)
            rows.append(("tiktoken gpt2 encode loop, 1 thread", n_bytes / 1e6 / wall, "", "", wall, "", "(yardstick)"))
            shutil.rmtree(corpus)
        if args.warc_mb > 0:
            warc = tmp / "warc"
            warc.mkdir()
            t0 = time.perf_counter()
            n_bytes, n_pages = make_warc(warc, args.warc_mb)
            print(f"WARC corpus: {n_bytes / 1e6:.1f} MB gzipped, {n_pages:,} HTML pages, generated in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            base_warc: dict[bool, float] = {}
            for executor in ("local", "ray"):
                result = run_prepare(warc, tmp / "out", 2, True, [*WEB_FLAGS, "--executor", executor])
                rows.append(_timed_row(f"WARC -> shards, {executor}, 2 workers", n_bytes, base_warc, True, result))
            timings = stage_shares(warc)
            total = sum(timings.values())
            notes.append("per-document time, 1 thread: " + ", ".join(
                f"{name} {100 * t / total:.1f}%" for name, t in timings.items()) + f" of {total:.1f} s "
                "(read = decode + clean; filter = line rules, PII, quality, MinHash, decontamination)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = ("run", "MB/s", "speed-up", "peak RSS (tree)", "wall s", "CPU s", "documents")
    widths = [max(len(head[0]), *(len(r[0]) for r in rows)), 7, 8, 15, 7, 7, 22]
    print("  ".join(h.ljust(w) if i in (0, 6) else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for label, mbps, speedup, peak, wall, cpu, note in rows:
        print(f"{label.ljust(widths[0])}  {mbps:7.2f}  {speedup:>8}  {peak:>15}  {wall:7.1f}  {cpu:>7}  {note}")
    for note in notes:
        print(note)
    print("targets: peak RSS < 1 GiB at 200 MB; all cores >= 1.6x one worker on 2 cores")


if __name__ == "__main__":
    main()
