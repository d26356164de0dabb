"""`loss.png`: train and validation loss against step, redrawn from metrics.jsonl's records at each eval; with
reward metrics in the records (GRPO), a second panel of the reward mean and pass@1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.fs import atomic_path


def plot_loss(records: list[dict[str, Any]], path: Path) -> None:
    """Write the loss curves of `records` (MetricsLog records) to `path` as PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
    rl = {key: [(r["step"], r[key]) for r in records if r.get("kind") == "train" and r.get(key) is not None]
          for key in ("reward_mean", "pass_at_1")}
    if any(rl.values()):
        fig, (ax, ax_rl) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
        for key, points in rl.items():
            if points:
                ax_rl.plot(*zip(*points), label=key, linewidth=1.0)
        ax_rl.set_xlabel("step")
        ax_rl.set_ylabel("reward")
        ax_rl.grid(alpha=0.3)
        ax_rl.legend()
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="val", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, "loss plot") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
