"""Shared pieces of the scaling tests: small char-level shards, a tiny sweep, a sweep folder written by hand."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from scratchlm.data import prepare_text
from scratchlm.scaling.family import FamilyConfig
from scratchlm.scaling.fit import Run
from scratchlm.scaling.results import RESULT_FILE, RUNS_DIR, SWEEP_FILE, SWEEP_FORMAT, format_budget
from scratchlm.scaling.sweep import RunSettings, SweepConfig, SweepOutcome, sweep

# a tiny family (d_model 8 x depth, context 32, 4 sequences a step: 128 tokens) and budgets whose 6 runs take
# 33 to 471 steps of models of 1.4k to 22k parameters: a whole sweep trains in seconds
TINY_BUDGETS = "2e8,5e8"


def tiny_sweep_config(data: Path, out: Path, **changes: object) -> SweepConfig:
    fields = dict(
        data=data,
        out=out,
        budgets=TINY_BUDGETS,
        per_budget=3,
        min_steps=5,
        workers=1,
        threads=1,
        device="cpu",
        family=FamilyConfig(aspect=8, head_dim=8, context_length=32),
        run=RunSettings(micro_batch_size=4, eval_batches=4),
    )
    fields.update(changes)
    return SweepConfig(**fields)  # type: ignore[arg-type]


TINY_FLAGS = [
    "--budgets",
    TINY_BUDGETS,
    "--per-budget",
    "3",
    "--min-steps",
    "5",
    "--workers",
    "1",
    "--device",
    "cpu",
    "--family.aspect",
    "8",
    "--family.head-dim",
    "8",
    "--family.context-length",
    "32",
    "--run.micro-batch-size",
    "4",
    "--run.eval-batches",
    "4",
]


def _mirror_text(name: str) -> str:
    return (Path(os.environ["SCRATCHLM_MIRROR"]) / name).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory, _session_env: None) -> Path:
    """The first 100,000 characters of tinyshakespeare, char-level (the last 10% validation)."""
    folder = tmp_path_factory.mktemp("scaling") / "shards"
    prepare_text(_mirror_text("tinyshakespeare.txt")[:100_000], folder, tokenizer="char", val_fraction=0.1)
    return folder


@pytest.fixture(scope="session")
def other_shards(tmp_path_factory: pytest.TempPathFactory, _session_env: None) -> Path:
    """Other data: The Verdict, char-level."""
    folder = tmp_path_factory.mktemp("scaling") / "other-shards"
    prepare_text(_mirror_text("the-verdict.txt"), folder, tokenizer="char", val_fraction=0.1)
    return folder


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> tuple[Path, SweepOutcome]:
    """The tiny sweep, trained once without interruption (in this process): the reference the others match."""
    out = tmp_path_factory.mktemp("scaling") / "uninterrupted"
    return out, sweep(tiny_sweep_config(shards, out))


def chinchilla_table(
    law: dict[str, float] | None = None,
    budgets: tuple[float, ...] = (1e18, 3e18, 1e19, 3e19, 1e20),
    per_budget: int = 7,
    sigma: float = 0.004,
    seed: int = 0,
    flops: tuple[float, float] = (6.0, 1.0),
) -> list[Run]:
    """Losses from a chosen L(N, D) = E + A/N^alpha + B/D^beta on IsoFLOP profiles (N from a tenth to ten times
    each budget's optimum), times
    exp(noise) (log-normal noise of `sigma`). `flops` = (c, gamma): FLOPs per token c N^gamma, D = C / (c N^gamma)."""
    law = law or {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    rng = np.random.default_rng(seed)
    c, gamma = flops
    runs = []
    al, be = law["alpha"], law["beta"]
    for budget in budgets:
        # centred on the law's own optimum along this budget, as a well-placed sweep is
        n_opt = (al * law["A"] / (gamma * be * law["B"] * c**be)) ** (1 / (al + gamma * be)) * budget ** (
            be / (al + gamma * be)
        )
        for n in n_opt * np.logspace(-1, 1, per_budget):
            d = budget / (c * n**gamma)
            loss = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]
            runs.append(
                Run(
                    budget,
                    float(n),
                    float(d),
                    float(loss * math.exp(sigma * rng.standard_normal())),
                    float(c * n**gamma),
                )
            )
    return runs


def write_sweep_folder(folder: Path, runs: list[Run]) -> Path:
    """A sweep folder as `scaling sweep` leaves it, with these runs' results (for the fitting commands)."""
    (folder / RUNS_DIR).mkdir(parents=True)
    (folder / SWEEP_FILE).write_text(json.dumps({"format": SWEEP_FORMAT, "format_version": 1}))
    for i, r in enumerate(runs):
        name = f"c{format_budget(r.budget)}_d{i:02d}"
        row = {
            "name": name,
            "budget": r.budget,
            "depth": i,
            "n_params": r.n_params,
            "tokens": r.tokens,
            "steps": 1,
            "flops_per_token": r.flops_per_token,
            "compute": r.tokens * r.flops_per_token,
            "val_loss": r.loss,
            "seconds": 0.0,
        }
        (folder / RUNS_DIR / name).mkdir()
        (folder / RUNS_DIR / name / RESULT_FILE).write_text(json.dumps(row))
    return folder
