"""`scratchlm serve` itself: a subprocess on a free loopback port, with --api-key; a busy port is a user error."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from scratchlm.cli.main import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_with_api_key(tiny_checkpoint: Path, serve_process) -> None:
    args = ["--checkpoint", str(tiny_checkpoint), "--api-key", "k3y", "--slots", "2", "--log-level", "warning",
            "--device", "cpu"]
    with serve_process(args) as url:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 3}
        assert httpx.post(url + "/v1/completions", json=body).status_code == 401
        ok = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 200 and ok.json()["model"] == "tiny"  # the model id is the run folder's name
        assert "<title>scratchlm chat</title>" in httpx.get(url + "/").text


def test_busy_port_is_one_line_exit_2(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} on 127.0.0.1 is already in use; choose another with --port\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "-1"], "--port must be between 1 and 65535, got -1"),
        (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
        (
            ["--log-level", "loud"],
            "--log-level must be one of critical, error, warning, info, debug, trace; got 'loud'",
        ),
        (["--max-len", "0"], "--max-len must be >= 1, got 0"),
        (["--kv-budget-mb", "-1"], "--kv-budget-mb must be a positive number, got -1.0"),
        (["--max-request-mb", "nan"], "--max-request-mb must be a positive number, got nan"),
        (["--max-len", "1000"], "--max-len 1000 is beyond the model's context of 128; lower it"),
        (
            ["--kv-budget-mb", "0.01"],
            "--kv-budget-mb 0.01 holds only 2 tokens per slot for 8 slots; raise --kv-budget-mb, lower --slots, "
            "or set --max-len",
        ),
    ],
)
def test_bad_serve_flags_are_one_line_exit_2(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(_free_port()), *args]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize(
    "args, max_len, line",
    [
        ([], 128, "KV cache: 8 slots x 128 tokens = 0.5 MiB (the whole context; the model's context is 128)"),
        (
            [
                "--kv-budget-mb",
                "0.25",
            ],  # 2 layers x 2 heads x 16 dims x K and V x 4 bytes = 512 bytes a token
            64,
            "KV cache: 8 slots x 64 tokens = 0.25 MiB (what fits --kv-budget-mb 0.25; the model's context is 128)",
        ),
        (
            ["--max-len", "40", "--slots", "2"],
            40,
            "KV cache: 2 slots x 40 tokens = 0.03906 MiB (--max-len; the model's context is 128)",
        ),
    ],
)
def test_serve_sizes_the_kv_cache_and_says_so(
    tiny_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    max_len: int,
    line: str,
) -> None:
    import uvicorn

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    port = _free_port()
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port), *args]) == 0
    engine = ran["app"].state.scratchlm.worker.engine
    assert engine.max_len == max_len and engine.cache.k[0].shape[2] == max_len
    assert capsys.readouterr().err.splitlines()[0] == line


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback")
def test_serve_on_ipv6(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    with socket.socket(socket.AF_INET6) as s:  # a busy IPv6 port is reported as such
        s.bind(("::1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert (
            main(["serve", "--checkpoint", str(tiny_checkpoint), "--host", "::1", "--port", str(busy)]) == 2
        )
    assert (
        capsys.readouterr().err
        == f"error: port {busy} on ::1 is already in use; choose another with --port\n"
    )
    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw))
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--host", "::1", "--port", str(port)]) == 0
    assert ran["host"] == "::1" and ran["port"] == port
    assert f"serving 'tiny' on http://[::1]:{port} (chat page at /, API at /v1)" in capsys.readouterr().err
