"""`scratchlm serve` itself: a subprocess on a free loopback port, with --api-key; a busy port is a user error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scratchlm.cli.main import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_with_api_key(tiny_checkpoint: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "scratchlm", "serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
           "--api-key", "k3y", "--slots", "2", "--log-level", "warning", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 3}
        assert httpx.post(url + "/v1/completions", json=body).status_code == 401
        ok = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 200 and ok.json()["model"] == "tiny"  # the model id is the run folder's name
        assert "<title>scratchlm chat</title>" in httpx.get(url + "/").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_busy_port_is_one_line_exit_2(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} on 127.0.0.1 is already in use; choose another with --port\n"
