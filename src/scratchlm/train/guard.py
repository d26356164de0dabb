"""Loss-spike guard: skip steps whose loss or gradient norm jumps far above their recent history.

A spike (one bad batch, an fp16 overflow, an instability starting) is judged before the optimizer step, by the
z-score of the step's loss and of its gradient norm against the mean and standard deviation of the last `window`
accepted steps (the gradient norm's only without clipping, which bounds such a step by itself). A spike skips the optimizer update (the batch is consumed, the weights and AdamW moments are not
touched). A non-finite loss or gradient norm is always a spike, so NaN/inf never reaches the weights and thus
never reaches a checkpoint. `patience` spikes within one window mean the run itself has gone bad: the loop rolls
back to the last good checkpoint and lowers the learning rate.

Pure Python over floats: the loop calls `check` once per optimizer step with two `.item()` values.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

OK, SKIP, ROLLBACK = "ok", "skip", "rollback"


class SpikeGuard:
    """Moving-window z-score test on (loss, grad_norm); `window == 0` disables it except for non-finite values."""

    def __init__(
        self, window: int = 50, zscore: float = 6.0, patience: int = 3, min_history: int = 10, clipped: bool = False
    ) -> None:
        self.window, self.zscore, self.patience = window, zscore, patience
        # With gradient clipping a jump of the gradient norm alone is no spike: the clip already bounds that
        # step's update, and a run whose norm grows for good (a model leaving its first plateau, loss steady)
        # would otherwise skip every step from then on, its history never learning the new level.
        self.clipped = clipped
        # z-scores over fewer points are noise; and early training legitimately moves fast
        self.min_history = min(min_history, window) if window else 0
        self.losses: deque[float] = deque(maxlen=max(window, 1))
        self.norms: deque[float] = deque(maxlen=max(window, 1))
        self.spike_steps: list[int] = []

    def _z(self, history: deque[float], x: float) -> float:
        n = len(history)
        mean = sum(history) / n
        std = math.sqrt(sum((h - mean) ** 2 for h in history) / n)
        # a floor on std: a perfectly flat history would otherwise flag any change at all
        return (x - mean) / max(std, 1e-3 * abs(mean), 1e-8)

    def check(self, step: int, loss: float, grad_norm: float) -> tuple[str, str]:
        """Return (verdict, reason): OK (step is accepted and enters the history), SKIP or ROLLBACK."""
        reason = ""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            reason = f"non-finite loss {loss} / grad norm {grad_norm}"
        elif self.window and len(self.losses) >= self.min_history:
            z_loss, z_norm = self._z(self.losses, loss), self._z(self.norms, grad_norm)
            if z_loss > self.zscore or (z_norm > self.zscore and not self.clipped):
                reason = f"loss {loss:.4g} (z={z_loss:.1f}), grad norm {grad_norm:.4g} (z={z_norm:.1f})"
        if not reason:
            self.losses.append(loss)
            self.norms.append(grad_norm)
            return OK, ""
        self.spike_steps = [s for s in self.spike_steps if s > step - max(self.window, 1)] + [step]
        if self.patience and len(self.spike_steps) >= self.patience:
            self.spike_steps = []
            return ROLLBACK, reason
        return SKIP, reason

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "norms": list(self.norms), "spike_steps": list(self.spike_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.norms.clear()
        self.norms.extend(state["norms"])
        self.spike_steps = list(state["spike_steps"])
