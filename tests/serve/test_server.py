"""A live server on loopback, driven by the official `openai` client and by raw HTTP; answers are checked against
the library's own in-process generation."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from scratchlm.cli.main import main
from scratchlm.generate import SampleConfig, complete
from scratchlm.generate.chat import chat_prompt
from scratchlm.serve.app import BackgroundServer, create_app
from scratchlm.tokenizer.chat import ChatTemplate

MODEL = "tiny"
HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def test_models_and_health(client: OpenAI, server_url: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    health = httpx.get(server_url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 8


def test_completion_matches_in_process_generation(client: OpenAI, loaded: tuple) -> None:
    model, tok = loaded
    r = client.completions.create(model=MODEL, prompt="The meaning of life is", max_tokens=12, temperature=0)
    [[ref]] = complete(model, tok, ["The meaning of life is"], SampleConfig(temperature=0, max_new_tokens=12))
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == ref.finish_reason == "length"
    assert r.usage.prompt_tokens == len(tok.encode("The meaning of life is"))
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streamed_completion_joins_to_the_whole(client: OpenAI) -> None:
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=20, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completion_and_streamed_pieces_join_to_it(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    assert text
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) > 1  # it really streamed
    assert "".join(pieces) == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_n_seed_and_logprobs(client: OpenAI, loaded: tuple) -> None:
    model, tok = loaded
    base = client.completions.create(model=MODEL, prompt="A", max_tokens=16, temperature=0).choices[0].text
    stop = base[5:8]
    cut = client.completions.create(model=MODEL, prompt="A", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == base[: base.find(stop)] and cut.choices[0].finish_reason == "stop"

    r = client.completions.create(model=MODEL, prompt="A", max_tokens=10, temperature=1.0, seed=11, n=3)
    again = client.completions.create(model=MODEL, prompt="A", max_tokens=10, temperature=1.0, seed=11, n=3)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    assert len({c.text for c in r.choices}) == 3  # n samples differ (seed + i)
    [ref] = complete(model, tok, ["A"], SampleConfig(temperature=1.0, max_new_tokens=10, seed=11, n=3))
    assert [c.text for c in r.choices] == [c.text for c in ref]

    lp = client.completions.create(model=MODEL, prompt="A", max_tokens=5, temperature=0, logprobs=2).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value < 0 and top[token] == pytest.approx(value) == max(top.values())  # greedy: the chosen token is the best
    assert "".join(lp.tokens) == base[: len("".join(lp.tokens))]


def test_same_seed_same_text_in_generate_chat_and_server(
    client: OpenAI, tiny_checkpoint, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--temperature", "0.9", "--top-k", "50", "--seed", "7", "--max-new-tokens", "14"]
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--prompt", "In the beginning", *flags]) == 0
    cli_text = capsys.readouterr().out
    server = client.completions.create(
        model=MODEL, prompt="In the beginning", max_tokens=14, temperature=0.9, top_p=1.0, seed=7, extra_body={"top_k": 50}
    )
    assert cli_text == server.choices[0].text + "\n"

    monkeypatch.setattr(sys, "stdin", io.StringIO(HELLO[0]["content"] + "\n/exit\n"))
    assert main(["chat", "--checkpoint", str(tiny_checkpoint), *flags]) == 0
    chat_text = capsys.readouterr().out
    server_chat = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=14, temperature=0.9, seed=7, extra_body={"top_k": 50}
    )
    assert chat_text == server_chat.choices[0].message.content + "\n"
    assert chat_text.strip() and cli_text.strip()
    assert server_chat.choices[0].message.content != server.choices[0].text


def test_concurrent_requests_share_decoding_steps(server_url: str, loaded: tuple) -> None:
    """Six requests at once give the same greedy text as alone, in far fewer engine steps than one at a time."""
    model, tok = loaded
    prompts = ["one", "two words", "three words here", "a much longer prompt than the others are", "x", "y z"]
    before = httpx.get(server_url + "/health").json()["steps"]

    def ask(p: str) -> str:
        body = {"model": MODEL, "prompt": p, "max_tokens": 30, "temperature": 0}
        return httpx.post(server_url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]

    with ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(ask, prompts))
    steps = httpx.get(server_url + "/health").json()["steps"] - before
    refs = complete(model, tok, prompts, SampleConfig(temperature=0, max_new_tokens=30), slots=1)
    assert texts == [g[0].text for g in refs]
    assert steps < 6 * 30 * 0.75


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        (b'{"model": "tiny", "prompt": ', 400, None, "invalid_json"),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "model", "model_not_found"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": -5}, 400, "max_tokens", "invalid_value"),
        ({"model": "tiny", "prompt": "word " * 300}, 400, "prompt", "context_length_exceeded"),
        ({"model": "tiny", "prompt": "hi", "temperature": -1}, 400, "temperature", "invalid_value"),
        ({"model": "tiny"}, 400, "prompt", "invalid_value"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server_url: str, body: object, status: int, param: str | None, code: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server_url + "/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
    assert err["message"]
    ok = httpx.post(server_url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_chat_errors(server_url: str) -> None:
    long_chat = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 300}]}
    r = httpx.post(server_url + "/v1/chat/completions", json=long_chat)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(server_url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = httpx.get(server_url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_api_key(loaded: tuple) -> None:
    model, tok = loaded
    with BackgroundServer(create_app(model, tok, model_name=MODEL, api_key="s3cret")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        good = OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="hi", max_tokens=3).usage.completion_tokens == 3
        assert httpx.get(url + "/health").status_code == 200  # health and the page stay open


def test_full_queue_answers_429(loaded: tuple) -> None:
    """1 slot, 1 waiting place: a third concurrent request is refused, and later ones are served again."""
    model, tok = loaded
    app = create_app(model, tok, model_name=MODEL, slots=1, max_waiting=1)
    engine = app.state.scratchlm.worker.engine
    real_step = engine.step

    def slow_step():  # noqa: ANN202
        time.sleep(0.05)
        return real_step()

    engine.step = slow_step
    with BackgroundServer(app) as url:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 20, "stream": True}
        first_chunk = threading.Event()

        def long_stream() -> None:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        first_chunk.set()

        t1 = threading.Thread(target=long_stream)
        t1.start()
        assert first_chunk.wait(30)  # request A holds the slot
        t2 = threading.Thread(target=long_stream)  # request B waits
        t2.start()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        t1.join()
        t2.join()
        r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200


def test_chat_prompt_uses_the_plain_fallback(loaded: tuple) -> None:
    _, tok = loaded
    p = chat_prompt(ChatTemplate.from_config(None), tok, HELLO)
    assert tok.decode(p.ids) == "User: Hello, who are you?\nAssistant: "
    assert p.stop_strings == ["\nUser:"] and tok.eot_id in p.stop_ids
