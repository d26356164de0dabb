"""Serving throughput and latency: many concurrent streaming clients vs one client at a time, same live server.

A small random model (default: 4 layers, width 128, context 256, GPT-2's 50,257-token vocabulary; about 7M
parameters, most of them in the embedding/output head) is saved as a checkpoint and served by
`scratchlm serve` in a subprocess on loopback with 32 slots. Clients stream `/v1/completions` over SSE with
`max_tokens` N and `ignore_eos`, so every request must return exactly N tokens (checked against `usage`).

    phase 1: one client, requests one after another            (the unbatched baseline)
    phase 2: C concurrent clients x R requests each            (continuous batching)

Prints p50/p95 time-to-first-token and latency, and aggregate completion tokens/s per phase. Target: the
aggregate with 32 clients at least 4x the one-client figure.

    python benchmarks/serve.py                     # 32 clients x 4 requests, 64 tokens each
    python benchmarks/serve.py --small             # a quick check: 8 clients x 2 requests, 16 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from scratchlm import checkpoint
from scratchlm import tokenizer as tokenizers
from scratchlm.model import GPT, ModelConfig

PROMPTS = [
    "The old lighthouse keeper",
    "In a distant galaxy, the council of",
    "Recipe for a quick weeknight dinner:",
    "Once upon a time",
    "The stock market today",
    "Dear diary, I finally understood why",
    "Chapter 1. The storm",
    "def fibonacci(n):",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, seed: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, chunks = None, None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and ttft is None:
                ttft = time.perf_counter() - t0
            chunks += bool(chunk["choices"])
    return {"ttft": ttft, "latency": time.perf_counter() - t0, "tokens": tokens, "chunks": chunks}


async def phase(url: str, clients: int, requests: int, max_tokens: int) -> tuple[list[dict], float]:
    async def client_loop(c: int, http: httpx.AsyncClient) -> list[dict]:
        return [await one_request(http, url, PROMPTS[(c + i) % len(PROMPTS)], max_tokens, seed=c * 100 + i)
                for i in range(requests)]

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(client_loop(c, http) for c in range(clients)))
        wall = time.perf_counter() - t0
    return [r for rs in results for r in rs], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="8 clients x 2 requests, 16 tokens")
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--single-requests", type=int, default=8, help="requests in the one-client phase")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the server (OMP_NUM_THREADS)")
    args = ap.parse_args()
    clients = args.clients or (8 if args.small else 32)
    requests = args.requests or (2 if args.small else 4)
    max_tokens = args.max_tokens or (16 if args.small else 64)

    tmp = Path(tempfile.mkdtemp(prefix="scratchlm-bench-serve-"))
    tok = tokenizers.load("gpt2")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=256, n_layer=4, n_head=4, d_model=128)
    model = GPT(cfg)
    ckpt = checkpoint.save(tmp / "bench", model, tok)
    port = free_port()
    cmd = [sys.executable, "-m", "scratchlm", "serve", "--checkpoint", str(ckpt), "--port", str(port),
           "--slots", str(max(clients, 1)), "--max-waiting", str(4 * clients), "--log-level", "warning",
           "--device", "cpu"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    server = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        asyncio.run(phase(url, 1, 1, 4))  # warm-up
        rows = []
        for name, c, r in (("1 client, sequential", 1, args.single_requests), (f"{clients} concurrent clients", clients, requests)):
            results, wall = asyncio.run(phase(url, c, r, max_tokens))
            bad = [x for x in results if x["tokens"] != max_tokens]
            assert not bad, f"{len(bad)} requests returned the wrong token count: {bad[:3]}"
            total = sum(x["tokens"] for x in results)
            ttft = [x["ttft"] for x in results]
            lat = [x["latency"] for x in results]
            rows.append((name, len(results), percentile(ttft, 50), percentile(ttft, 95), percentile(lat, 50),
                         percentile(lat, 95), total / wall))
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"serving: {cfg.n_layer} layers, width {cfg.d_model}, vocab {cfg.vocab_size}, "
          f"{model.num_params() / 1e6:.1f}M params, fp32 CPU, server threads {args.threads or 'default'}; "
          f"{max_tokens} tokens per request, all complete")
    print(f"{'phase':<24}{'requests':>9}{'TTFT p50':>10}{'TTFT p95':>10}{'lat p50':>9}{'lat p95':>9}"
          f"{'agg tok/s':>11}{'vs 1':>7}")
    base = rows[0][-1]
    for name, n, t50, t95, l50, l95, tps in rows:
        print(f"{name:<24}{n:>9}{t50:>9.3f}s{t95:>9.3f}s{l50:>8.2f}s{l95:>8.2f}s{tps:>11.1f}{tps / base:>6.1f}x")


if __name__ == "__main__":
    main()
