"""The results table of a sweep folder: reading it back, printing it, writing results.csv (no torch).

One row per finished run, read from `runs/<name>/result.json` (each written atomically when its run ends), so the
table is always what the folder holds: a killed sweep's table lists exactly the runs that finished.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_write_text

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "scratchlm-scaling-sweep"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
RESULTS_CSV = "results.csv"


def format_budget(c: float) -> str:
    """1e13 -> "1e13", 3e13 -> "3e13", 2.5e12 -> "2.5e12" (folder names and tables)."""
    exponent = math.floor(math.log10(c))
    mantissa = round(c / 10**exponent, 6)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:g}e{exponent}"


def si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def is_sweep_folder(folder: Path) -> bool:
    try:
        data = json.loads((folder / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == SWEEP_FORMAT


def read_sweep(folder: Path) -> dict[str, Any]:
    """sweep.json of a sweep folder; one line naming the fix when there is none."""
    if not is_sweep_folder(folder):
        raise ScratchlmError(
            f"{folder} is not a scaling sweep folder (no {SWEEP_FILE}); run `scratchlm scaling "
            f"sweep --out {folder} ...` first"
        )
    return json.loads((folder / SWEEP_FILE).read_text(encoding="utf-8"))


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    )


# ---- the results table --------------------------------------------------------------------------------------------

COLUMNS = (
    "name",
    "budget",
    "depth",
    "n_params",
    "tokens",
    "steps",
    "flops_per_token",
    "compute",
    "val_loss",
    "seconds",
)


def collect(out: Path) -> list[dict[str, Any]]:
    """One row per finished run of the sweep folder `out`, ordered by budget then size."""
    read_sweep(out)
    rows = []
    for path in sorted((out / RUNS_DIR).glob(f"*/{RESULT_FILE}")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ScratchlmError(
                f"cannot read {path}; delete it and rerun the sweep to train that run again"
            ) from None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["budget"], r["n_params"]))


def write_csv(out: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(COLUMNS)] + [",".join(str(row.get(c, "")) for c in COLUMNS) for row in rows]
    atomic_write_text(out / RESULTS_CSV, "\n".join(lines) + "\n", "results table")


def format_results(rows: list[dict[str, Any]]) -> str:
    """The results table for people: one line per run."""
    rows_ = [("run", "budget", "N", "D", "D/N", "steps", "val loss", "seconds")]
    for r in rows:
        rows_.append(
            (
                r["name"],
                format_budget(r["budget"]),
                si(r["n_params"]),
                si(r["tokens"]),
                f"{r['tokens'] / r['n_params']:.1f}",
                str(r["steps"]),
                f"{r['val_loss']:.4f}",
                f"{r['seconds']:.0f}",
            )
        )
    return table(rows_)
