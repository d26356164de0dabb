"""Shared fixtures. Tests write only under tmp_path and never touch the network."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

MIRROR = Path(os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu`-marked tests need CUDA: without it they are skipped (reported), not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for session-scoped fixtures (built before any test's own environment is set)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCHLM_MIRROR", str(MIRROR.resolve()))
        mp.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test sees the data mirror and a private cache, so nothing is downloaded or written to $HOME."""
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(MIRROR.resolve()))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def mirror() -> Path:
    return MIRROR.resolve()


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tests run tiny models, which gain nothing from threads; on a busy 2-core CPU extra threads only wait on
    each other. (Subprocesses such as the torchrun test choose their own.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    """A loopback port that nothing listens on now (the OS picks it: no clash with other tests' random picks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()` -> a loopback port for a server or torchrun's rendezvous."""
    return _free_port


@pytest.fixture
def serve_process() -> Callable[[list[str]], contextlib.AbstractContextManager[str]]:
    """`with serve_process(["--checkpoint", X, ...]) as url:` runs `python -m scratchlm serve` on a free loopback
    port until /health answers, and stops it afterwards."""

    @contextlib.contextmanager
    def start(args: list[str]) -> Iterator[str]:
        import httpx

        port = _free_port()
        cmd = [sys.executable, "-m", "scratchlm", "serve", *args, "--port", str(port)]
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else "serve exited"
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    return start
