"""`scratchlm scaling sweep` and `scratchlm scaling fit`: measure the scaling law of your data and tokenizer.

    scratchlm scaling sweep --data SHARDS --budgets 1e12,3e12,1e13 --sizes auto --out runs/scaling
    scratchlm scaling fit runs/scaling --predict 1e15

The sweep's `--out` follows the output rule (`scratchlm.fs.check_out_dir`): a new or empty folder, or a sweep
folder of the same data and settings, which is extended (finished runs are skipped). `fit` writes fit.json,
isoflop.png and frontier.png into the sweep folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tyro

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError

FIT_FILE = "fit.json"


def sweep(argv: list[str], prog: str) -> int:
    from scratchlm.scaling.results import format_results
    from scratchlm.scaling.sweep import SweepConfig
    from scratchlm.scaling.sweep import sweep as run_sweep

    cfg = parse(SweepConfig, argv, prog)
    outcome = run_sweep(cfg)
    if cfg.dry_run or os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    if outcome.results:
        print(format_results(outcome.results))
    if outcome.interrupted:
        print(
            f"stopped: {len(outcome.results)} of {len(outcome.planned)} runs finished; run the same command "
            "again to train the rest"
        )
        return 130
    print(
        f"{len(outcome.trained)} run(s) trained, {len(outcome.skipped)} already finished; "
        f"fit the law with `scratchlm scaling fit {cfg.out}`"
    )
    return 0


@dataclass
class FitCommand:
    """Fit scaling laws to a sweep folder: Chinchilla's approach 2 (a parabola per budget, then power laws
    N_opt ~ C^a, D_opt ~ C^b) and approach 3 (L(N, D) = E + A/N^alpha + B/D^beta by Huber loss), with bootstrap
    intervals, beside Kaplan's and Chinchilla's exponents; writes fit.json, isoflop.png and frontier.png there."""

    folder: tyro.conf.Positional[Path]
    """The sweep folder (`scratchlm scaling sweep --out`)."""
    predict: float | None = None
    """Also print the compute-optimal size, tokens and loss the laws predict for this budget (FLOPs)."""
    bootstrap: int = 200
    """Bootstrap resamples for approach 3's intervals (approach 2 draws 5x as many; 0: no intervals)."""
    ci: float = 0.95
    """Confidence level of the intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    plots: bool = True
    """Write isoflop.png and frontier.png."""


def fit(argv: list[str], prog: str) -> int:
    import json

    from scratchlm.fs import atomic_write_text
    from scratchlm.scaling.fit import Run, format_fit, format_prediction
    from scratchlm.scaling.fit import fit as fit_law
    from scratchlm.scaling.results import collect, format_results

    cfg = parse(FitCommand, argv, prog)
    if cfg.bootstrap < 0 or not 0 < cfg.ci < 1:
        raise ScratchlmError("--bootstrap must be >= 0 and --ci between 0 and 1 (e.g. 0.95)")
    if cfg.predict is not None and not cfg.predict > 0:
        raise ScratchlmError(
            f"--predict {cfg.predict} is not a positive number of FLOPs; e.g. --predict 1e15"
        )
    rows = collect(cfg.folder)
    if not rows:
        raise ScratchlmError(
            f"sweep folder {cfg.folder} has no finished run yet; run the sweep (again) first"
        )
    print(format_results(rows))
    runs = [Run.from_row(r) for r in rows]
    result = fit_law(runs, bootstrap=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
    print(format_fit(result))
    if cfg.predict is not None:
        print(format_prediction(result.predict(cfg.predict)))
    atomic_write_text(cfg.folder / FIT_FILE, json.dumps(result.to_dict(), indent=2) + "\n", "fitted law")
    written = [cfg.folder / FIT_FILE]
    if cfg.plots:
        from scratchlm.scaling.plots import plot_frontier, plot_isoflop

        plot_isoflop(runs, result, cfg.folder / "isoflop.png")
        plot_frontier(result, cfg.folder / "frontier.png", cfg.predict)
        written += [cfg.folder / "isoflop.png", cfg.folder / "frontier.png"]
    print("wrote " + ", ".join(map(str, written)))
    return 0
