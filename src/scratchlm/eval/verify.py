"""Verifier-based evaluation: sample answers to prompt records, reward each with a verifier, report accuracy.

    records --prompt_messages--> chat prompt ids --engine, n samples each--> completions
        --Selector (first / majority vote / best-of)--> the chosen completion     (generate.select.sample_rows)
        --verifier (safe_reward)--> reward in [0, 1] for every sample             (here)

One row per record goes to a JSONL file: the record, every completion with its reward (and error, if the
verifier raised), the index chosen and the selection scores. `rescore` re-runs any verifier over such a file
without a model, so a new checker never needs new samples. Summary:

    accuracy      mean reward of the chosen completions
    pass@n        mean over records of the best reward among the samples (for 0/1 rewards: any sample right)
    mean_reward   mean reward over all samples
    errors        samples whose verifier raised (scored 0, listed in the rows)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from scratchlm.rl.verifiers import Verifier, safe_reward


def score_row(row: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    """Fill a row's rewards and errors from its completions (in place); returns the row."""
    rewards, errors = [], []
    for text in row["completions"]:
        reward, error = safe_reward(verifier, row["record"], text)
        rewards.append(reward)
        errors.append(error)
    row["rewards"], row["errors"] = rewards, errors
    row["reward"] = rewards[row["chosen"]]
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """accuracy, pass@n, mean reward, error counts (see the module docstring)."""
    n = len(rows)
    samples = sum(len(r["rewards"]) for r in rows)
    errors = [(r["index"], e) for r in rows for e in r["errors"] if e is not None]
    return {
        "records": n,
        "samples_per_record": max((len(r["rewards"]) for r in rows), default=0),
        "accuracy": sum(r["reward"] for r in rows) / n if n else 0.0,
        "pass@n": sum(max(r["rewards"]) for r in rows) / n if n else 0.0,
        "mean_reward": sum(sum(r["rewards"]) for r in rows) / samples if samples else 0.0,
        "errors": len(errors),
        "first_error": None if not errors else f"record {errors[0][0]}: {errors[0][1]}",
    }


def run_verify(
    rows: Iterator[dict[str, Any]] | Sequence[dict[str, Any]],
    verifier: Verifier,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every row with `verifier` (a raising verifier costs that sample its reward, never the run)."""
    done = []
    for row in rows:
        done.append(score_row(row, verifier))
        if progress is not None:
            progress(len(done), row)
    return done, summarize(done)
