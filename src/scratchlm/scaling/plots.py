"""`isoflop.png` (loss against N per budget, the parabolas and their minima) and `frontier.png` (N_opt and D_opt
against C: the approach 2 minima, both fitted power laws and the 20-tokens-per-parameter rule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scratchlm.fs import atomic_path
from scratchlm.scaling.fit import Run, ScalingFit


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, what: str) -> None:  # noqa: ANN001
    with atomic_path(path, what) as tmp:
        fig.savefig(tmp, format="png")


def plot_isoflop(runs: Sequence[Run], result: ScalingFit, path: Path) -> None:
    """Validation loss against parameters, one colour per budget, with each budget's parabola and minimum."""
    plt = _pyplot()
    a2 = result.approach2
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(a2.budgets)))
    for budget, color, (c2, c1, c0), n_opt, l_opt in zip(
        a2.budgets, colors, a2.curves, a2.n_opt, a2.loss_opt
    ):
        group = [r for r in runs if r.budget == budget]
        n = np.array([r.n_params for r in group])
        ax.scatter(n, [r.loss for r in group], color=color, s=18, label=f"C = {budget:.2g}")
        lo, hi = min(np.log(n.min()), np.log(n_opt)), max(np.log(n.max()), np.log(n_opt))  # reach the star
        x = np.linspace(lo - 0.2, hi + 0.2, 100)
        ax.plot(np.exp(x), c2 * x * x + c1 * x + c0, color=color, linewidth=1)
        ax.scatter(
            [n_opt], [l_opt], color=color, marker="*", s=120, edgecolor="black", linewidth=0.5, zorder=3
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("IsoFLOP profiles (stars: fitted minima)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, "isoflop plot")
    plt.close(fig)


def plot_frontier(result: ScalingFit, path: Path, predict: float | None = None) -> None:
    """N_opt and D_opt against compute: approach 2's minima and power laws, approach 3's law, the rule of thumb."""
    plt = _pyplot()
    a2, a3 = result.approach2, result.approach3
    lo, hi = min(a2.budgets) / 3, max([*a2.budgets, predict or 0]) * 3
    c = np.logspace(np.log10(lo), np.log10(hi), 50)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    for ax, label, points, law2, law3, rule in (
        (axes[0], "N_opt (parameters)", a2.n_opt, a2.n_at, a3.n_at, np.sqrt(c / 120)),
        (axes[1], "D_opt (tokens)", a2.d_opt, a2.d_at, a3.d_at, 20 * np.sqrt(c / 120)),
    ):
        exp2 = a2.a if ax is axes[0] else a2.b
        exp3 = a3.a if ax is axes[0] else a3.b
        ax.scatter(a2.budgets, points, color="black", s=20, zorder=3, label="approach 2 minima")
        ax.plot(c, [law2(x) for x in c], label=f"approach 2: C^{exp2:.2f}")
        ax.plot(c, [law3(x) for x in c], linestyle="--", label=f"approach 3: C^{exp3:.2f}")
        ax.plot(c, rule, linestyle=":", color="gray", label="20 tokens/parameter (C^0.50)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("compute-optimal frontier")
    fig.tight_layout()
    _save(fig, path, "frontier plot")
    plt.close(fig)
