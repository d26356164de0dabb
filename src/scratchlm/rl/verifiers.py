"""Verifiers: (record, completion) -> reward in [0, 1]; the reference answer is `record["answer"]`.

Minimal stand-in (only `exact` and a last-number `math`); the reward branch replaces this module.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from scratchlm.errors import ScratchlmError

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class Verifier(Protocol):
    def __call__(self, record: dict, completion: str) -> float: ...


def _exact(record: dict, completion: str) -> float:
    return float(completion.strip() == str(record["answer"]).strip())


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def _math(record: dict, completion: str) -> float:
    got, want = _number(completion), _number(str(record["answer"]))
    return float(got is not None and want is not None and got == want)


def get_verifier(spec: str, *, device: Any = None) -> Verifier:
    """`exact` or `math` (the last number of the completion equals the answer's)."""
    if spec == "exact":
        return _exact
    if spec == "math":
        return _math
    raise ScratchlmError(f"unknown verifier {spec!r}; choose math or exact")


def safe_reward(verifier: Verifier, record: dict, completion: str) -> tuple[float, str | None]:
    """The verifier's reward, or 0.0 and the error's text when it raises."""
    try:
        return float(verifier(record, completion)), None
    except Exception as e:  # noqa: BLE001 - a broken verifier scores 0, the error is reported
        return 0.0, f"{type(e).__name__}: {e}"
