"""Model-as-judge against a stub OpenAI-compatible server on loopback: well-formed, messy and missing scores,
retries, a judge that is down (one line, partial report kept, resumed), and the CLI end to end."""

from __future__ import annotations

import json
import socket
import string
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.eval.judge import JudgeClient, JudgeUnavailable, chat_url, parse_score, run_judge, summarize
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import CharTokenizer


@pytest.mark.parametrize(
    "reply,score",
    [
        ("The answer is correct and complete.\nScore: 92", 92.0),
        ("Score: 85/100", 85.0),
        ("**Score:** 70", 70.0),
        ("I would rate this 64 out of 100.", 64.0),
        ("Rubric: 90-100 means perfect. The response misses a step.\n\nFinal score = 55.", 55.0),
        ("score: 40 ... on reflection, Score: 45", 45.0),  # the last verdict wins
        ("  88  ", 88.0),
        ("Score: 7.5", 7.5),
        ("Rating: 30", 30.0),
        ("I cannot evaluate this response.", None),  # missing
        ("Score: 250", None),  # out of range is not a score
        ("", None),
        (None, None),
    ],
)
def test_parse_score(reply: str | None, score: float | None) -> None:
    assert parse_score(reply) == score


def test_chat_url() -> None:
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


class StubJudge:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that answers from a script of replies.

    A reply of the form ("status", CODE) answers with that HTTP error instead.
    """

    def __init__(self, replies: list) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                reply = stub.replies.pop(0) if stub.replies else "Score: 50"
                if isinstance(reply, tuple):
                    self.send_response(reply[1])
                    self.end_headers()
                    return
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RECORDS = [
    {"instruction": "Name a primary colour.", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello."},
]


def test_run_judge_with_stub_server(tmp_path: Path) -> None:
    replies = ["Clear and right.\nScore: 90", ("status", 503), "**Score**: 40/100 - wrong sum", "No idea, sorry."]
    with StubJudge(replies) as stub:
        client = JudgeClient(stub.url, "judge-1", api_key="k", backoff=0.01)
        report = run_judge(RECORDS, lambda r: f"answer to {r['instruction']}", client, tmp_path / "r.json")
    assert [it["score"] for it in report["items"]] == [90.0, 40.0, None]
    s = report["summary"]
    assert (s["mean"], s["scored"], s["missing"], s["judged"]) == (65.0, 2, 1, 3)
    assert s["distribution"]["90-100"] == 1 and s["distribution"]["40-49"] == 1
    assert [w["index"] for w in s["worst"]] == [1, 0]
    # the request: the fixed rubric, the instruction with its input, the reference, the response, greedy
    body = stub.requests[1]["body"]
    assert stub.requests[0]["path"] == "/v1/chat/completions" and stub.requests[0]["auth"] == "Bearer k"
    assert body["model"] == "judge-1" and body["temperature"] == 0
    assert body["messages"][0]["content"].startswith("You are an impartial judge")
    assert body["messages"][1]["content"] == (
        "### Instruction\nAdd the numbers.\n\n2 and 3\n\n### Reference answer\n5\n\n"
        "### Response\nanswer to Add the numbers.")
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["mean"] == 65.0


def test_judge_down_keeps_partial_results_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    with StubJudge(["Score: 80"]) as stub:
        url = stub.url
        calls = []
        client = JudgeClient(url, "j", retries=2, backoff=0.01)
        # the judge answers the first item, then goes away
        def respond(r: dict) -> str:
            calls.append(r["instruction"])
            if len(calls) == 2:
                stub.server.shutdown()
                stub.server.server_close()
            return "resp"
        with pytest.raises(JudgeUnavailable) as e:
            run_judge(RECORDS, respond, client, out)
    msg = str(e.value)
    assert "\n" not in msg and f"the judge at {url}/v1/chat/completions did not answer after 3 tries" in msg
    assert msg.endswith(f"1 of 3 items judged, kept in {out} (rerun to resume)")
    saved = json.loads(out.read_text())
    assert [it["score"] for it in saved["items"]] == [80.0, None, None]
    assert saved["items"][1]["response"] == "resp"  # generated before the judge failed: kept
    # a rerun with a judge back up resumes: item 0 is not judged again, item 1 is not regenerated
    with StubJudge(["Score: 10", "Score: 20"]) as stub2:
        report = run_judge(RECORDS, lambda r: calls.append(r["instruction"]) or "new", JudgeClient(stub2.url, "j"), out)
    assert [it["score"] for it in report["items"]] == [80.0, 10.0, 20.0]
    assert len(stub2.requests) == 2 and calls[2:] == ["Say hello."]


def test_summary_of_nothing_scored() -> None:
    s = summarize([{"index": 0, "judge_reply": "??", "score": None}])
    assert s["scored"] == 0 and s["missing"] == 1 and s["mean"] is None


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    tok = CharTokenizer(sorted(set(string.printable) - set("\x0b\x0c")))
    tok.add_special_tokens(["<|endoftext|>"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=128, n_layer=1, n_head=2, d_model=16))
    return checkpoint.save(tmp_path / "ckpt", model, tok)


def test_cli_judge_end_to_end(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(RECORDS))
    out = tmp_path / "report.json"
    with StubJudge(["Score: 90", "meh 30/100", "no score here"]) as stub:
        argv = ["eval", "judge", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--judge-url",
                stub.url, "--judge-model", "stub", "--out", str(out), "--max-new-tokens", "5", "--json"]
        assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["mean"], summary["scored"], summary["missing"]) == (60.0, 2, 1)
    items = json.loads(out.read_text())["items"]
    assert all(isinstance(it["response"], str) for it in items)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_judge_down_is_one_line_exit_2(tiny_checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(RECORDS[:1]))
    url = f"http://127.0.0.1:{_free_port()}"
    out = tmp_path / "report.json"
    argv = ["eval", "judge", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--judge-url", url,
            "--judge-model", "stub", "--out", str(out), "--max-new-tokens", "3", "--retries", "2", "--backoff", "0.01"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: the judge at {url}/v1/chat/completions did not answer after 3 tries (")
    assert err.endswith(f"0 of 1 items judged, kept in {out} (rerun to resume)")
    assert json.loads(out.read_text())["items"][0]["response"] is not None
    assert not list(tmp_path.glob(".report.json.*"))  # no temporary file left behind


@pytest.mark.parametrize("code, hint", [(401, "; check --api-key"), (404, "; check --judge-url and --judge-model"),
                                        (400, "")])
def test_a_refusal_is_one_line_with_the_fix_that_fits(code: int, hint: str) -> None:
    with StubJudge([("status", code)]) as stub:
        with pytest.raises(ScratchlmError) as e:
            JudgeClient(stub.url, "j", retries=0).ask([{"role": "user", "content": "hi"}])
    assert str(e.value) == f"the judge at {stub.url}/v1/chat/completions refused the request (HTTP {code}: ){hint}"
