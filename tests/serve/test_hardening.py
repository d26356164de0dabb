"""Issue #13's server items on a live loopback server: request-size limit and tokenizing off the event loop,
cancelling abandoned requests, seeds and other malformed fields, requests that can never fit, the Bearer scheme,
the parameter named in errors, and --max-len bounding the KV cache."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

from scratchlm.serve.app import BackgroundServer, create_app

MODEL = "tiny"


def _health_latencies(url: str, until: threading.Event, limit_s: float = 30.0) -> list[float]:
    """Time /health again and again until `until` is set (at most `limit_s`); at least once, since a refused
    request can be answered before the first probe."""
    out: list[float] = []
    end = time.monotonic() + limit_s
    with httpx.Client(timeout=10) as c:
        while not out or (not until.is_set() and time.monotonic() < end):
            t0 = time.monotonic()
            assert c.get(url + "/health").status_code == 200
            out.append(time.monotonic() - t0)
            time.sleep(0.02)
    return out


class _SlowTokenizer:
    """GPT-2's tokenizer, but `encode` takes 1.5 s (without holding the GIL): a stand-in for a huge prompt."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def encode(self, *args: Any, **kwargs: Any) -> list[int]:
        time.sleep(1.5)
        return self._tok.encode(*args, **kwargs)


def test_health_answers_while_a_prompt_is_tokenized(loaded: tuple) -> None:
    model, tok = loaded
    with BackgroundServer(create_app(model, _SlowTokenizer(tok), model_name=MODEL)) as url:
        done = threading.Event()
        answers: list[httpx.Response] = []

        def ask() -> None:
            body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3}
            answers.append(httpx.post(url + "/v1/completions", json=body, timeout=30))
            done.set()

        t = threading.Thread(target=ask)
        t.start()
        latencies = _health_latencies(url, done)
        t.join()
    assert answers[0].status_code == 200 and answers[0].json()["usage"]["completion_tokens"] == 3
    assert len(latencies) >= 5  # /health was asked all through the 1.5 s of tokenizing
    assert max(latencies) < 0.5


@pytest.mark.parametrize(
    "limit, status, code",
    [({}, 413, "request_too_large"), ({"max_request_bytes": 16 * 2**20}, 400, "context_length_exceeded")],
)
def test_8mb_prompts_are_refused_without_stalling_health(
    loaded: tuple, limit: dict, status: int, code: str
) -> None:
    """Over the body limit (4 MiB by default): 413. Under it: refused as too long for the context before it
    is tokenized (tokenizing 8 MB takes many seconds)."""
    model, tok = loaded
    app = create_app(model, tok, model_name=MODEL, **limit)
    body = json.dumps({"model": MODEL, "prompt": "word " * 1_600_000}).encode()  # 8 MB
    with BackgroundServer(app) as url:
        answers: list[httpx.Response] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(
                    httpx.post(
                        url + "/v1/completions",
                        content=body,
                        headers={"Content-Type": "application/json"},
                        timeout=60,
                    )
                )
            )
            for _ in range(3)
        ]
        done = threading.Event()
        for t in threads:
            t.start()

        def all_answered() -> None:
            for t in threads:
                t.join()
            done.set()

        watcher = threading.Thread(target=all_answered)
        watcher.start()
        latencies = _health_latencies(url, done)
        watcher.join()
        assert (
            httpx.post(
                url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
            ).status_code
            == 200
        )
    assert [r.status_code for r in answers] == [status] * 3
    assert {r.json()["error"]["code"] for r in answers} == {code}
    assert max(latencies) < 0.5


def test_abandoned_non_streaming_requests_are_cancelled(loaded: tuple) -> None:
    """80 clients hang up mid-request: their sequences leave the engine, and a new request runs at once."""
    model, tok = loaded
    app = create_app(model, tok, model_name=MODEL, slots=4, max_waiting=100)
    engine = app.state.scratchlm.worker.engine
    real_step = engine.step

    def slow_step():  # noqa: ANN202 - 80 x 120 tokens on 4 slots then take 48 s; the first 4 alone 2.4 s
        time.sleep(0.02)
        return real_step()

    engine.step = slow_step
    with BackgroundServer(app) as url:
        host, port = url.removeprefix("http://").split(":")
        payload = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 120, "ignore_eos": True}).encode()
        request = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        socks = []
        for _ in range(80):
            s = socket.create_connection((host, int(port)))
            s.sendall(request)
            socks.append(s)

        def busy() -> int:
            h = httpx.get(url + "/health").json()
            return h["running"] + h["waiting"]

        deadline = time.monotonic() + 20
        while busy() < 76 and time.monotonic() < deadline:  # all 80 are in (a few may have finished)
            time.sleep(0.01)
        assert busy() >= 76
        for s in socks:
            s.close()
        deadline = time.monotonic() + 5
        while busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy() == 0
        before = httpx.get(url + "/health").json()["steps"]
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 20, "ignore_eos": True}
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        steps = httpx.get(url + "/health").json()["steps"] - before
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
    assert steps <= 20  # its own decoding steps only: nobody else was in the batch


def _post(url: str, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"Content-Type": "application/json"}, timeout=30)


CMPL = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {**CMPL, "seed": 2**64}, "seed"),
        ("/v1/completions", {**CMPL, "seed": 2**64, "stream": True}, "seed"),
        ("/v1/completions", {**CMPL, "seed": -(2**63) - 1}, "seed"),
        ("/v1/completions", {**CMPL, "seed": 1.5}, "seed"),
        ("/v1/chat/completions", {**CHAT, "seed": 2**70}, "seed"),
        ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', "temperature"),
        (
            "/v1/completions",
            b'{"model": "tiny", "prompt": "hi", "frequency_penalty": -Infinity}',
            "frequency_penalty",
        ),
        ("/v1/completions", {**CMPL, "temperature": "hot"}, "temperature"),
        ("/v1/completions", {**CMPL, "top_p": 0}, "top_p"),
        ("/v1/completions", {**CMPL, "n": 17}, "n"),
        ("/v1/completions", {**CMPL, "n": 0}, "n"),
        ("/v1/completions", {**CMPL, "logprobs": 21}, "logprobs"),
        ("/v1/completions", {**CMPL, "top_k": -1}, "top_k"),
        ("/v1/completions", {**CMPL, "min_p": 2}, "min_p"),
        ("/v1/completions", {**CMPL, "repetition_penalty": 0}, "repetition_penalty"),
        ("/v1/completions", {**CMPL, "presence_penalty": 3}, "presence_penalty"),
        ("/v1/completions", {**CMPL, "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {**CMPL, "max_tokens": 1e30}, "max_tokens"),
        ("/v1/completions", {**CMPL, "stop": 5}, "stop"),
        ("/v1/completions", {**CMPL, "prompt": [[-1]]}, "prompt"),
        ("/v1/completions", {**CMPL, "prompt": []}, "prompt"),
        ("/v1/completions", {**CMPL, "prompt": 5}, "prompt"),
        ("/v1/completions", {**CMPL, "stream_options": "x"}, "stream_options"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 30}, "top_logprobs"),
    ],
)
def test_every_malformed_field_is_a_400_naming_it(server_url: str, path: str, body: Any, param: str) -> None:
    r = _post(server_url, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"].split(".")[0] == param and err["message"]
    assert _post(server_url, "/v1/completions", CMPL).json()["usage"]["completion_tokens"] == 2


def test_errors_name_max_completion_tokens_when_that_was_sent(server_url: str) -> None:
    r = _post(server_url, "/v1/chat/completions", {**CHAT, "max_completion_tokens": -3})
    assert r.json()["error"]["message"] == "max_completion_tokens must be >= 0, got -3"
    r = _post(server_url, "/v1/chat/completions", {**CHAT, "max_tokens": -3})
    assert r.json()["error"]["message"] == "max_tokens must be >= 0, got -3"


def test_a_request_that_can_never_fit_is_400_not_429(server_url: str) -> None:
    """8 slots + 64 waiting places: 5 prompts x n=16 = 80 sequences can never be queued."""
    r = _post(server_url, "/v1/completions", {**CMPL, "prompt": [[1, 2]] * 5, "n": 16})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "n" and err["code"] == "invalid_value"
    assert err["message"] == (
        "this request needs 80 sequences (prompts x n) but the server takes at most 72 at once "
        "(--slots 8 + --max-waiting 64); send fewer prompts or a smaller n"
    )
    assert _post(server_url, "/v1/completions", {**CMPL, "prompt": [[1, 2]] * 4, "n": 16}).status_code == 200


def test_a_failed_stream_still_ends_with_done(loaded: tuple) -> None:
    model, tok = loaded
    app = create_app(model, tok, model_name=MODEL)
    engine = app.state.scratchlm.worker.engine

    def broken_step():  # noqa: ANN202
        raise RuntimeError("the device fell over")

    engine.step = broken_step
    with BackgroundServer(app) as url:
        with httpx.stream("POST", url + "/v1/completions", json={**CMPL, "stream": True}, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["type"] == "server_error"
    assert lines[-1] == "data: [DONE]"


def test_bearer_scheme_is_case_insensitive(loaded: tuple) -> None:
    model, tok = loaded
    with BackgroundServer(create_app(model, tok, model_name=MODEL, api_key="s3cret")) as url:
        codes = {
            h: httpx.get(url + "/v1/models", headers={"Authorization": h}).status_code
            for h in (
                "Bearer s3cret",
                "bearer s3cret",
                "BEARER  s3cret",
                "Bearer wrong",
                "Basic s3cret",
                "s3cret",
            )
        }
        client = OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert client.models.list().data[0].id == MODEL
    assert codes == {
        "Bearer s3cret": 200,
        "bearer s3cret": 200,
        "BEARER  s3cret": 200,
        "Bearer wrong": 401,
        "Basic s3cret": 401,
        "s3cret": 401,
    }


def test_max_len_bounds_the_cache_and_the_requests(loaded: tuple) -> None:
    """max_len 32: the cache holds 32 tokens per slot; a longer prompt is a 400 naming --max-len; a reply that
    would run past it stops there with finish reason "length"."""
    model, tok = loaded
    app = create_app(model, tok, model_name=MODEL, slots=2, max_len=32)
    assert app.state.scratchlm.worker.engine.cache.k[0].shape[2] == 32
    with BackgroundServer(app) as url:
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert client.models.list().data[0].model_extra["context_length"] == 32
        r = _post(url, "/v1/completions", {**CMPL, "prompt": list(range(1, 41))})
        assert r.status_code == 400
        assert r.json()["error"] == {
            "message": "The server's --max-len is 32 tokens, however you requested 40 tokens in the prompt; "
            "shorten the prompt",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "context_length_exceeded",
        }
        done = client.completions.create(
            model=MODEL, prompt=list(range(1, 21)), max_tokens=50, extra_body={"ignore_eos": True}
        )
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 12


def test_ipv6_loopback(loaded: tuple) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    model, tok = loaded
    with BackgroundServer(create_app(model, tok, model_name=MODEL), host="::1") as url:
        assert url.startswith("http://[::1]:")
        r = _post(url, "/v1/completions", CMPL)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
