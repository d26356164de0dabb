"""Model-as-judge: a response per instruction, scored 0-100 by a judge model behind any OpenAI-compatible
`/v1/chat/completions` endpoint (another `scratchlm serve`, vLLM, llama.cpp's server, OpenAI itself).

- The rubric prompt is fixed (`RUBRIC`), so scores from different runs compare.
- The judge's reply is parsed robustly (`parse_score`): "Score: 85", "**Score:** 85/100", "I'd give it 85 out of
  100", a bare "85"; a reply with no score in 0..100 counts as missing, never as 0.
- The judge is called with urllib (stdlib), retried with exponential back-off on connection errors, timeouts,
  429 and 5xx. When it stays down, the run stops with one line, and the report written so far is kept: it is
  rewritten atomically after every item, and a rerun with the same `--out` resumes where it stopped.

Generation is a callable `respond(item) -> str` so this module knows nothing of checkpoints or engines.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.eval.report import write_json

RUBRIC = """You are an impartial judge of how well an AI assistant followed an instruction.
Rate the response on a scale from 0 to 100:
- 90-100: fully correct, complete and directly answers the instruction;
- 70-89: mostly correct, small omissions or flaws;
- 40-69: partly correct or partly relevant;
- 10-39: mostly wrong, irrelevant or unhelpful;
- 0-9: empty, nonsensical or harmful.
Judge correctness and helpfulness, not length or style. If a reference answer is given, compare with it.
Explain briefly, then end with a line of the form "Score: N" where N is an integer from 0 to 100."""


def judge_messages(instruction: str, response: str, reference: str | None = None) -> list[dict[str, str]]:
    """The chat messages sent to the judge for one item."""
    parts = [f"### Instruction\n{instruction}"]
    if reference:
        parts.append(f"### Reference answer\n{reference}")
    parts.append(f"### Response\n{response}")
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": "\n\n".join(parts)}]


# ---- parsing ------------------------------------------------------------------------------------------------------

_NUM = r"(\d{1,3}(?:\.\d+)?)"
_PATTERNS = [
    # "Score: 85", "**Score**: 85/100", "score = 85", "Final score - 85"
    re.compile(rf"score\W{{0,6}}(?:is\W{{0,3}})?(?:of\W{{0,3}})?{_NUM}(?:\s*(?:/|out of)\s*100)?", re.I),
    re.compile(rf"{_NUM}\s*(?:/|out of)\s*100", re.I),  # "85/100", "85 out of 100"
    re.compile(rf"(?:rating|grade)\W{{0,6}}{_NUM}", re.I),
]


def parse_score(text: str | None) -> float | None:
    """The 0-100 score in a judge's reply, or None when there is none.

    The last match of the most specific pattern wins (judges often restate the rubric before the verdict);
    a reply that is only a number is taken as the score. Numbers outside 0..100 are not scores.
    """
    if not text:
        return None
    for pattern in _PATTERNS:
        for match in reversed(list(pattern.finditer(text))):
            value = float(match.group(1))
            if 0 <= value <= 100:
                return value
    bare = text.strip().strip("*.` ")
    if re.fullmatch(_NUM, bare) and 0 <= float(bare) <= 100:
        return float(bare)
    return None


# ---- the judge client -----------------------------------------------------------------------------------------


def chat_url(base: str) -> str:
    """Accept http://host:port, .../v1 or the full .../v1/chat/completions."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class JudgeUnavailable(ScratchlmError):
    """The judge endpoint did not answer after all retries."""


_REFUSAL_HINTS = {401: "; check --api-key", 403: "; check --api-key", 404: "; check --judge-url and --judge-model"}


def _error_detail(body: bytes) -> str:
    """The server's own message from an OpenAI-style error body, else the start of the body, on one line."""
    text = body.decode("utf-8", "replace")
    try:
        text = str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = text[:200]
    return " ".join(text.split())


@dataclass
class JudgeClient:
    url: str
    model: str
    api_key: str | None = None
    retries: int = 4
    """Attempts after the first one."""
    backoff: float = 1.0
    """Seconds before the first retry; doubles each time."""
    timeout: float = 120.0
    max_tokens: int = 512

    def ask(self, messages: list[dict[str, str]]) -> str:
        """The judge's reply text, retrying transient failures (connection, timeout, 429, 5xx)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = chat_url(self.url)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read().decode("utf-8"))
                return _reply_text(data, url)
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}"
                    continue
                raise ScratchlmError(f"the judge at {url} refused the request (HTTP {e.code}: "
                                     f"{_error_detail(e.read())}){_REFUSAL_HINTS.get(e.code, '')}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last = str(reason) or type(reason).__name__
        raise JudgeUnavailable(
            f"the judge at {url} did not answer after {self.retries + 1} tries ({last}); start it or fix --judge-url"
        )


def _reply_text(data: Any, url: str) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ScratchlmError(f"the judge at {url} did not answer like /v1/chat/completions (no choices[0].message)") from None
    return content or ""


# ---- the run ----------------------------------------------------------------------------------------------------


def read_instructions(path: Path) -> list[dict[str, str]]:
    """Alpaca-style records: a JSON list (or JSONL) of {"instruction", optional "input", optional "output"}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScratchlmError(f"instruction file {path} does not exist; pass a JSON list of instructions") from None
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ScratchlmError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
            raise ScratchlmError(f"{path}: record {i} has no \"instruction\" string; each record needs one")
    if not records:
        raise ScratchlmError(f"{path} holds no instructions")
    return records


def prompt_text(record: dict[str, str]) -> str:
    """The instruction as the user would type it: the instruction, then its input (if any)."""
    extra = record.get("input") or ""
    return record["instruction"] + (f"\n\n{extra}" if extra else "")


BUCKETS = [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60), (60, 70), (70, 80), (80, 90), (90, 101)]


def summarize(items: Sequence[dict[str, Any]], worst: int = 5) -> dict[str, Any]:
    """Mean, distribution by tens and the worst items of the judged records."""
    scores = [it["score"] for it in items if it.get("score") is not None]
    distribution = {f"{lo}-{min(hi, 100) - (0 if hi > 100 else 1)}": sum(lo <= s < hi for s in scores)
                    for lo, hi in BUCKETS}
    ranked = sorted((it for it in items if it.get("score") is not None), key=lambda it: it["score"])
    return {
        "mean": sum(scores) / len(scores) if scores else None,  # None, not NaN: the report stays valid JSON
        "scored": len(scores),
        "missing": sum(1 for it in items if it.get("judge_reply") is not None and it.get("score") is None),
        "judged": sum(1 for it in items if it.get("judge_reply") is not None),
        "distribution": distribution,
        "worst": [{k: it[k] for k in ("index", "score", "instruction", "response")} for it in ranked[:worst]],
    }


def run_judge(
    records: Sequence[dict[str, str]],
    respond: Callable[[dict[str, str]], str],
    client: JudgeClient,
    out: Path,
    meta: dict[str, Any] | None = None,
    limit: int = 0,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Generate, judge and record each item; the report at `out` is rewritten atomically after each one.

    A report already at `out` for the same instructions is resumed: items with a judge reply are kept, items
    with only a response are judged again without regenerating.
    """
    chosen = list(records[:limit] if limit else records)
    items = _resume(out, chosen)
    report: dict[str, Any] = {"meta": {**(meta or {}), "judge_url": client.url, "judge_model": client.model,
                                       "rubric": RUBRIC}, "summary": {}, "items": items}
    for i, record in enumerate(chosen):
        item = items[i]
        if item.get("judge_reply") is not None:
            continue
        if item.get("response") is None:
            item["response"] = respond(record)
        try:
            reply = client.ask(judge_messages(prompt_text(record), item["response"], record.get("output")))
        except ScratchlmError as e:
            report["summary"] = summarize(items)
            write_json(out, report)  # what was done so far stays, whatever happens next
            judged = report["summary"]["judged"]
            raise type(e)(f"{e}; {judged} of {len(chosen)} items judged, kept in {out} (rerun to resume)") from None
        item["judge_reply"] = reply
        item["score"] = parse_score(reply)
        report["summary"] = summarize(items)
        write_json(out, report)
        if progress:
            progress(i + 1, len(chosen), item)
    report["summary"] = summarize(items)
    write_json(out, report)
    return report


def _resume(out: Path, records: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    fresh = [{"index": i, "instruction": prompt_text(r), "response": None, "judge_reply": None, "score": None}
             for i, r in enumerate(records)]
    if not out.is_file():
        return fresh
    try:
        old = json.loads(out.read_text(encoding="utf-8")).get("items", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return fresh
    for item, prev in zip(fresh, old):
        if isinstance(prev, dict) and prev.get("instruction") == item["instruction"]:
            item.update({k: prev.get(k) for k in ("response", "judge_reply", "score")})
    return fresh
