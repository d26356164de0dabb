"""Prompt records for verifiers, RL and `eval verify`: local GSM8K and MATH files, converted to one shape.

    GSM8K   {"question": "...", "answer": "...worked solution...\\n#### 72"}
    MATH    {"problem": "...", "solution": "... \\boxed{\\frac{3}{4}} ...", "level": ..., "type": ...}
    plain   {"prompt": "..." or [messages], "answer": "..."}; also Alpaca {"instruction", "input", "output"}

`to_prompt_record` turns each into {"prompt": text, "answer": final answer, ...the original fields kept}: the
GSM8K answer after `####` (thousands separators dropped), the MATH solution's last \\boxed{} content. The
verifiers read `record["answer"]`; `prompt_messages` renders the prompt as chat messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.rl.mathanswer import last_boxed

FORMATS = ("auto", "gsm8k", "math", "plain")


def detect_format(record: Mapping[str, Any]) -> str:
    """gsm8k, math or plain, by the record's keys."""
    if "question" in record and isinstance(record.get("answer"), str) and "####" in record["answer"]:
        return "gsm8k"
    if "problem" in record and "solution" in record:
        return "math"
    return "plain"


def gsm8k_record(record: Mapping[str, Any], where: str = "record") -> dict[str, Any]:
    """{"question", "answer": "... #### 1,234"} -> {"prompt": question, "answer": "1234", "solution": ...}."""
    answer = record.get("answer")
    if not isinstance(record.get("question"), str) or not isinstance(answer, str) or "####" not in answer:
        raise ScratchlmError(f"{where} is not a GSM8K record: it needs 'question' and an 'answer' ending in '#### N'")
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return {**record, "prompt": record["question"], "answer": final, "solution": answer}


def math_record(record: Mapping[str, Any], where: str = "record") -> dict[str, Any]:
    """{"problem", "solution": "... \\boxed{X} ..."} -> {"prompt": problem, "answer": "X", "solution": ...}."""
    solution = record.get("solution")
    if not isinstance(record.get("problem"), str) or not isinstance(solution, str):
        raise ScratchlmError(f"{where} is not a MATH record: it needs 'problem' and 'solution'")
    final = last_boxed(solution)
    if final is None:
        raise ScratchlmError(f"{where}: the MATH solution has no \\boxed{{...}} answer; add one or drop the record")
    return {**record, "prompt": record["problem"], "answer": final}


def to_prompt_record(record: Mapping[str, Any], fmt: str = "auto", where: str = "record") -> dict[str, Any]:
    """One record in the common shape (see the module docstring)."""
    if fmt not in FORMATS:
        raise ScratchlmError(f"--format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if not isinstance(record, Mapping):
        raise ScratchlmError(f"{where} is not a JSON object")
    kind = detect_format(record) if fmt == "auto" else fmt
    if kind == "gsm8k":
        return gsm8k_record(record, where)
    if kind == "math":
        return math_record(record, where)
    if not any(k in record for k in ("prompt", "instruction", "messages", "question", "problem")):
        raise ScratchlmError(f"{where} has no prompt: give 'prompt' (or 'instruction', 'question', 'problem')")
    return dict(record)


def load_prompt_records(path: str | Path, fmt: str = "auto", limit: int = 0) -> list[dict[str, Any]]:
    """A JSON list or JSONL file of records, each converted by `to_prompt_record`; `limit` > 0 keeps the first N."""
    from scratchlm.data.finetune import read_records  # the project's one JSON/JSONL reader

    records = read_records(path)
    if limit > 0:
        records = records[:limit]
    return [to_prompt_record(r, fmt, f"{path}: record {i}") for i, r in enumerate(records)]


def prompt_messages(record: Mapping[str, Any], template: Any = None) -> list[dict[str, str]]:
    """The record's prompt as chat messages (user turn(s), no assistant answer)."""
    prompt = record.get("prompt", record.get("question", record.get("problem")))
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return [dict(m) for m in prompt]
    if "messages" in record:
        messages = [dict(m) for m in record["messages"]]
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()  # the reference answer is not part of the prompt
        return messages
    if "instruction" in record:
        if template is None:
            text = str(record["instruction"]) + (f"\n\n{record['input']}" if record.get("input") else "")
            return [{"role": "user", "content": text}]
        return template.alpaca_messages(record, with_output=False)
    raise KeyError("the record has no prompt ('prompt', 'question', 'problem', 'messages' or 'instruction')")
