"""`scratchlm serve`: an OpenAI-compatible HTTP server (and web chat page) for a checkpoint, under uvicorn."""

from __future__ import annotations

import errno
import math
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
MIN_CACHE_LEN = 64
"""A cache row shorter than this (or than the context) is too short to be useful: refuse the budget instead."""


@dataclass
class ServeConfig:
    """Serve a checkpoint over HTTP: /v1/models, /v1/completions, /v1/chat/completions, /health, and a chat page
    at /. Existing OpenAI clients work with base_url=http://HOST:PORT/v1."""

    checkpoint: Path
    """Checkpoint step folder, or a run folder (its latest step)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 or :: exposes the server to your network; IPv6 addresses work)."""
    port: int = 8000
    """TCP port (1-65535)."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on /v1 requests (401 otherwise)."""
    model_name: str | None = None
    """The model id clients send (default: the checkpoint folder's name)."""
    slots: int = 8
    """Sequences decoded together in one batch; more requests wait in the queue."""
    max_waiting: int = 64
    """Sequences allowed to wait for a slot; beyond that requests get 429."""
    max_len: int | None = None
    """Tokens (prompt + reply) per sequence, which sizes the KV cache: slots x max_len tokens. Default: the
    model's context, or less if that does not fit --kv-budget-mb. Longer prompts get 400; replies stop there."""
    kv_budget_mb: float = 2048.0
    """Memory for the KV cache (MiB) when --max-len is not given: max_len is the longest that fits."""
    max_request_mb: float = 4.0
    """Largest request body (MiB); bigger ones get 413 before they are read."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    int8: bool = False
    """Weight-only int8 linear layers (per-channel scales): 4x smaller weights, faster memory-bound decoding."""
    compile: bool = False
    """Compile the decode step with torch.compile before serving (same tokens; faster steps on a GPU)."""
    log_level: str = "info"
    """uvicorn's log level: critical, error, warning, info, debug, trace."""
    reward_model: Path | None = None
    """Also serve this reward model (`scratchlm finetune reward`) at POST /v1/score."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ScratchlmError(f"--slots must be >= 1, got {self.slots}")
        if self.max_waiting < 0:
            raise ScratchlmError(f"--max-waiting must be >= 0, got {self.max_waiting}")
        if not 1 <= self.port <= 65535:
            raise ScratchlmError(f"--port must be between 1 and 65535, got {self.port}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ScratchlmError(
                f"--log-level must be one of {', '.join(LOG_LEVELS)}; got {self.log_level!r}"
            )
        self.log_level = self.log_level.lower()
        if self.max_len is not None and self.max_len < 1:
            raise ScratchlmError(f"--max-len must be >= 1, got {self.max_len}")
        if not (math.isfinite(self.kv_budget_mb) and self.kv_budget_mb > 0):
            raise ScratchlmError(f"--kv-budget-mb must be a positive number, got {self.kv_budget_mb}")
        if not (math.isfinite(self.max_request_mb) and self.max_request_mb > 0):
            raise ScratchlmError(f"--max-request-mb must be a positive number, got {self.max_request_mb}")


def _check_port_free(host: str, port: int) -> None:
    """Bind the address once (IPv4 or IPv6, whichever `host` is) so a busy port is one line, not a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ScratchlmError(f"cannot listen on {host!r} ({e.strerror}); check --host") from None
    family, type_, proto, _, address = infos[0]
    with socket.socket(family, type_, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ScratchlmError(
                    f"port {port} on {host} is already in use; choose another with --port"
                ) from None
            raise ScratchlmError(
                f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port"
            ) from None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cache_len(cfg: ServeConfig, model: Any) -> tuple[int, str]:
    """The cache row length to serve with, and the line that says why (printed at start)."""
    from scratchlm.generate.engine import cache_bytes, max_len_for_budget

    context = model.config.context_length
    if cfg.max_len is not None:
        if cfg.max_len > context:
            raise ScratchlmError(
                f"--max-len {cfg.max_len} is beyond the model's context of {context}; lower it"
            )
        n, why = cfg.max_len, "--max-len"
    else:
        n = max_len_for_budget(model, cfg.slots, int(cfg.kv_budget_mb * 2**20))
        if n < min(MIN_CACHE_LEN, context):
            raise ScratchlmError(
                f"--kv-budget-mb {cfg.kv_budget_mb:g} holds only {n} tokens per slot for {cfg.slots} slots; "
                "raise --kv-budget-mb, lower --slots, or set --max-len"
            )
        why = "the whole context" if n == context else f"what fits --kv-budget-mb {cfg.kv_budget_mb:g}"
    mib = cache_bytes(model, cfg.slots, n) / 2**20  # local layers hold at most their window
    line = (
        f"KV cache: {cfg.slots} slots x {n} tokens = {mib:.4g} MiB ({why}; the model's context is {context})"
    )
    return n, line


def serve(argv: list[str], prog: str) -> int:
    import uvicorn

    from scratchlm.cli.generate import load_for_generation
    from scratchlm.serve.app import create_app
    from scratchlm.tokenizer.chat import ChatTemplate

    cfg = parse(ServeConfig, argv, prog)
    _check_port_free(cfg.host, cfg.port)
    model, tok, config = load_for_generation(cfg.checkpoint, cfg.device, cfg.int8)
    max_len, cache_line = cache_len(cfg, model)
    reward = None
    if cfg.reward_model is not None:
        from scratchlm.rl.reward import RewardScorer

        reward = RewardScorer(cfg.reward_model, cfg.device)
    name = cfg.model_name or cfg.checkpoint.resolve().name
    if cfg.compile:
        print("compiling the decode step (once, before serving)", file=sys.stderr, flush=True)
    app = create_app(
        model,
        tok,
        model_name=name,
        chat_template=ChatTemplate.from_config(config.get("chat_template")),
        api_key=cfg.api_key,
        slots=cfg.slots,
        max_waiting=cfg.max_waiting,
        max_len=max_len,
        max_request_bytes=int(cfg.max_request_mb * 2**20),
        compile=cfg.compile,
        reward=reward,
    )
    print(cache_line, file=sys.stderr, flush=True)
    url = _url(cfg.host, cfg.port)
    print(f"serving {name!r} on {url} (chat page at /, API at /v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0
