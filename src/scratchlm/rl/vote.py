"""Self-consistency (Wang et al., 2023): the answer most of n sampled completions agree on."""

from __future__ import annotations

from collections import Counter


def majority_vote(answers: list[str]) -> str:
    """The most frequent answer (compared after stripping whitespace); a tie goes to the answer seen first.

    Empty answers (no final answer found) vote only when nothing else does. `[]` -> "".
    """
    stripped = [a.strip() for a in answers]
    counts = Counter(a for a in stripped if a)
    if not counts:
        return ""
    best = max(counts.values())
    return next(a for a in stripped if counts.get(a) == best)
