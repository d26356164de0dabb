"""The verifier interface: a prompt record and a completion in, a reward in [0, 1] out.

    verifier = get_verifier("math")
    verifier({"question": "2+2?", "answer": "4"}, "... so \\boxed{4}")   -> 1.0

Specs (`--verifier`):
    math                 the completion's last \\boxed{} (else last number) equals record["answer"] (SymPy)
    exact                the completion, stripped, equals record["answer"], stripped
    regex:PATTERN        1 when PATTERN matches somewhere in the completion; `{answer}` in PATTERN stands for
                         record["answer"], escaped ("regex:answer is {answer}\\b")
    python:MODULE:FUNC   FUNC(record, completion) -> bool or float in [0, 1]; MODULE is a dotted module name or
                         a path to a .py file
    reward:RM_PATH       a reward-model checkpoint (`scratchlm finetune reward`): sigmoid of its score of the
                         prompt rendered from the record plus the completion

A verifier may raise on a strange record; callers go through `safe_reward`, which turns that into reward 0 and
an error message they count, so one bad record never stops an evaluation or an RL run. A reward model trained
with another tokenizer than the policy's is the whole run's problem instead: `check_tokenizer` says so in one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from scratchlm.errors import ScratchlmError
from scratchlm.rl.mathanswer import answers_equal, extract_answer, reference_answer

__all__ = ["Verifier", "get_verifier", "safe_reward", "check_tokenizer", "SPECS"]

SPECS = ("math", "exact", "regex:PATTERN", "python:MODULE:FUNC", "reward:RM_PATH")


class Verifier(Protocol):
    def __call__(self, record: dict, completion: str) -> float:
        """The reward of `completion` for the prompt `record`, in [0, 1]."""
        ...


def _answer(record: Mapping[str, Any]) -> str:
    if "answer" not in record:
        raise KeyError("the record has no 'answer' field (the reference answer)")
    return str(record["answer"])


def math_verifier(record: dict, completion: str) -> float:
    """1.0 when the completion's final answer equals the reference answer mathematically."""
    reference = reference_answer(_answer(record))  # first: a record without an answer fails on every completion
    predicted = extract_answer(completion)
    return float(predicted is not None and answers_equal(predicted, reference))


def exact_verifier(record: dict, completion: str) -> float:
    return float(completion.strip() == _answer(record).strip())


class RegexVerifier:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        if "{answer}" not in pattern:
            self.compiled: re.Pattern[str] | None = _compile(pattern)
        else:
            _compile(pattern.replace("{answer}", "x"))  # a typo in the pattern is the whole run's problem
            self.compiled = None

    def __call__(self, record: dict, completion: str) -> float:
        compiled = self.compiled or re.compile(self.pattern.replace("{answer}", re.escape(_answer(record).strip())))
        return float(compiled.search(completion) is not None)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ScratchlmError(f"--verifier regex:{pattern} is not a valid regular expression ({e}); fix it") from None


class PythonVerifier:
    """A user's predicate FUNC(record, completion); booleans become 0/1, other values must lie in [0, 1]."""

    def __init__(self, func: Callable[[dict, str], Any]) -> None:
        self.func = func

    def __call__(self, record: dict, completion: str) -> float:
        value = self.func(record, completion)
        reward = float(value)
        if not 0.0 <= reward <= 1.0 or math.isnan(reward):
            raise ValueError(f"the verifier returned {value!r}, outside [0, 1]")
        return reward


def _load_function(target: str) -> Callable[[dict, str], Any]:
    module_name, sep, func_name = target.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ScratchlmError(f"--verifier python:{target} needs MODULE:FUNC (e.g. python:mychecks.py:is_correct)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ScratchlmError(f"--verifier python:{target}: no file {path}; give an existing .py file")
            spec = importlib.util.spec_from_file_location(f"scratchlm_verifier_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ScratchlmError:
        raise
    except Exception as e:  # the user's module failed to import: name it and the reason
        raise ScratchlmError(f"--verifier python:{target}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ScratchlmError(f"--verifier python:{target}: {module_name} has no function {func_name!r}")
    return func


def get_verifier(spec: str, *, device: Any = None) -> Verifier:
    """The verifier a spec names (see the module docstring); a bad spec is a one-line ScratchlmError."""
    kind, _, arg = spec.partition(":")
    if kind == "math" and not arg:
        return math_verifier
    if kind == "exact" and not arg:
        return exact_verifier
    if kind == "regex" and arg:
        return RegexVerifier(arg)
    if kind == "python" and arg:
        return PythonVerifier(_load_function(arg))
    if kind == "reward" and arg:
        from scratchlm.rl.reward import RewardVerifier  # torch and a checkpoint: only when asked for

        return RewardVerifier(arg, device=device)
    raise ScratchlmError(f"--verifier {spec!r} is unknown; use one of {', '.join(SPECS)}")


def safe_reward(verifier: Verifier, record: dict, completion: str) -> tuple[float, str | None]:
    """(reward, None), or (0.0, a one-line message) when the verifier raises; the caller counts the errors."""
    try:
        reward = float(verifier(record, completion))
    except Exception as e:  # any failure on this record; the whole run's problems surface in get_verifier
        return 0.0, f"{type(e).__name__}: {e}".splitlines()[0]
    if not 0.0 <= reward <= 1.0 or math.isnan(reward):
        return 0.0, f"reward {reward} outside [0, 1]"
    return reward, None


def check_tokenizer(verifier: Verifier, tokenizer: Any, where: str = "the policy") -> None:
    """Refuse a reward-model verifier whose tokenizer differs from `tokenizer` (no-op for other verifiers)."""
    check = getattr(verifier, "check_tokenizer", None)
    if check is not None:
        check(tokenizer, where)
