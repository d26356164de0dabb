"""`scratchlm serve`: an OpenAI-compatible HTTP server (and web chat page) for a checkpoint, under uvicorn."""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError


@dataclass
class ServeConfig:
    """Serve a checkpoint over HTTP: /v1/models, /v1/completions, /v1/chat/completions, /health, and a chat page
    at /. Existing OpenAI clients work with base_url=http://HOST:PORT/v1."""

    checkpoint: Path
    """Checkpoint step folder, or a run folder (its latest step)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 exposes the server to your network)."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on /v1 requests (401 otherwise)."""
    model_name: str | None = None
    """The model id clients send (default: the checkpoint folder's name)."""
    slots: int = 8
    """Sequences decoded together in one batch; more requests wait in the queue."""
    max_waiting: int = 64
    """Sequences allowed to wait for a slot; beyond that requests get 429."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    log_level: str = "info"
    """uvicorn's log level: critical, error, warning, info, debug."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ScratchlmError(f"--slots must be >= 1, got {self.slots}")
        if self.max_waiting < 0:
            raise ScratchlmError(f"--max-waiting must be >= 0, got {self.max_waiting}")


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ScratchlmError(f"port {port} on {host} is already in use; choose another with --port") from None
            raise ScratchlmError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from None


def serve(argv: list[str], prog: str) -> int:
    import uvicorn

    from scratchlm.cli.generate import load_for_generation
    from scratchlm.serve.app import create_app
    from scratchlm.tokenizer.chat import ChatTemplate

    cfg = parse(ServeConfig, argv, prog)
    _check_port_free(cfg.host, cfg.port)
    model, tok, config = load_for_generation(cfg.checkpoint, cfg.device)
    name = cfg.model_name or cfg.checkpoint.resolve().name
    app = create_app(
        model,
        tok,
        model_name=name,
        chat_template=ChatTemplate.from_config(config.get("chat_template")),
        api_key=cfg.api_key,
        slots=cfg.slots,
        max_waiting=cfg.max_waiting,
    )
    print(f"serving {name!r} on http://{cfg.host}:{cfg.port} (chat page at /, API at /v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0
