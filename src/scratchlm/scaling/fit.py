"""Fitting scaling laws to a results table, as Chinchilla (Hoffmann et al. 2022) does; numpy and scipy only.

Input: one row per run with its budget C, parameters N, tokens D, validation loss L and training FLOPs per token.

Approach 2 (IsoFLOP profiles). Per budget, a parabola of L in log N; its minimum is N_opt(C) (a parabola of L in
log D gives D_opt(C) the same way). Then least squares on the logs: N_opt = k_N C^a and D_opt = k_D C^b.
Intervals: a residual bootstrap (the parabolas' residuals, pooled over budgets, resampled and added back to the
fitted losses; everything refitted). With exactly 3 sizes per budget the parabolas leave no residuals, so no
interval: 4 or more sizes per budget give one.

Approach 3 (parametric loss). L(N, D) = E + A / N^alpha + B / D^beta, fitted as the paper does: parameters
a = log A, b = log B, e = log E so that log L = LSE(a - alpha log N, b - beta log D, e), minimizing the Huber loss
(delta 1e-3) between that and the observed log L with L-BFGS from a grid of initialisations (alpha, beta in
{0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}); we start L-BFGS from the best grid points by
objective (not all 4,500) and keep alpha, beta in [0, 5] (L-BFGS-B). Intervals: bootstrap over runs (resampled
with replacement, refitted).

Compute-optimal allocation. With C = F(N) D, where the per-token FLOPs F(N) = c N^gamma are fitted to the table
(6N: c = 6, gamma = 1 exactly), minimizing L(N, C / F(N)) gives
    N_opt = (alpha A / (gamma beta B c^beta))^(1 / (alpha + gamma beta)) C^a,   a = beta / (alpha + gamma beta),
    D_opt = C / F(N_opt) ~ C^b,  b = 1 - gamma a        (Chinchilla's G (C/6)^a with gamma = 1, c = 6)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scratchlm.errors import ScratchlmError

HUBER_DELTA = 1e-3
MIN_SIZES = 3

# published exponents: N_opt ~ C^a, D_opt ~ C^b
KAPLAN = {"a": 0.73, "b": 0.27}
"""Kaplan et al. 2020 (compute-efficient frontier, non-embedding N)."""
CHINCHILLA = {
    "approach 1": {"a": 0.50, "b": 0.50},
    "approach 2": {"a": 0.49, "b": 0.51},
    "approach 3": {"a": 0.46, "b": 0.54},
}
"""Hoffmann et al. 2022, Table 2."""
CHINCHILLA_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
"""Hoffmann et al. 2022, approach 3 (MassiveText, their tokenizer: its E, A, B are not comparable with ours)."""


@dataclass
class Run:
    """One row of the table."""

    budget: float
    n_params: float
    tokens: float
    loss: float
    flops_per_token: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        """A row of `scaling.results.collect`."""
        return cls(row["budget"], row["n_params"], row["tokens"], row["val_loss"], row["flops_per_token"])


@dataclass
class Approach2:
    budgets: list[float]
    n_opt: list[float]
    d_opt: list[float]
    loss_opt: list[float]
    """The parabolas' minima: the best loss each budget reaches."""
    curves: list[tuple[float, float, float]]
    """Per budget: the parabola's coefficients (c2, c1, c0) of L in ln N."""
    a: float
    b: float
    k_n: float
    k_d: float
    a_ci: tuple[float, float] | None
    b_ci: tuple[float, float] | None
    notes: list[str] = field(default_factory=list)

    def n_at(self, c: float) -> float:
        return self.k_n * c**self.a

    def d_at(self, c: float) -> float:
        return self.k_d * c**self.b


@dataclass
class Approach3:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    flops_c: float
    flops_gamma: float
    """F(N) = flops_c * N^flops_gamma, the table's training FLOPs per token."""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Bootstrap intervals of E, A, B, alpha, beta, a, b."""

    def loss(self, n: Any, d: Any) -> Any:
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.flops_gamma * self.beta)

    @property
    def b(self) -> float:
        return 1.0 - self.flops_gamma * self.a

    def n_at(self, c: float) -> float:
        g, k = self.flops_gamma, self.flops_c
        coef = self.alpha * self.A / (g * self.beta * self.B * k**self.beta)
        return coef ** (1.0 / (self.alpha + g * self.beta)) * c**self.a

    def d_at(self, c: float) -> float:
        return c / (self.flops_c * self.n_at(c) ** self.flops_gamma)


@dataclass
class ScalingFit:
    approach2: Approach2
    approach3: Approach3
    n_runs: int
    ci_level: float

    def predict(self, c: float) -> dict[str, float]:
        """Compute-optimal N, D and loss at budget `c`, by both approaches."""
        a2, a3 = self.approach2, self.approach3
        n2, d2, n3, d3 = a2.n_at(c), a2.d_at(c), a3.n_at(c), a3.d_at(c)
        return {
            "budget": c,
            "n_opt_2": n2,
            "d_opt_2": d2,
            "loss_at_2": float(a3.loss(n2, d2)),
            "n_opt_3": n3,
            "d_opt_3": d3,
            "loss_opt_3": float(a3.loss(n3, d3)),
        }

    def to_dict(self) -> dict[str, Any]:
        """The law as JSON-ready data (`fit.json`, read back by `model info --law`)."""
        a2, a3 = self.approach2, self.approach3
        return {
            "format": "scratchlm-scaling-fit",
            "format_version": 1,
            "n_runs": self.n_runs,
            "ci_level": self.ci_level,
            "approach2": {
                "a": a2.a,
                "b": a2.b,
                "k_n": a2.k_n,
                "k_d": a2.k_d,
                "a_ci": a2.a_ci,
                "b_ci": a2.b_ci,
                "budgets": a2.budgets,
                "n_opt": a2.n_opt,
                "d_opt": a2.d_opt,
                "loss_opt": a2.loss_opt,
                "notes": a2.notes,
            },
            "approach3": {
                "E": a3.E,
                "A": a3.A,
                "B": a3.B,
                "alpha": a3.alpha,
                "beta": a3.beta,
                "a": a3.a,
                "b": a3.b,
                "flops_c": a3.flops_c,
                "flops_gamma": a3.flops_gamma,
                "objective": a3.objective,
                "ci": {k: list(v) for k, v in a3.ci.items()},
            },
        }


# ---- approach 2 -------------------------------------------------------------------------------------------------


def _by_budget(runs: Sequence[Run]) -> dict[float, list[Run]]:
    groups: dict[float, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.budget].append(r)
    return dict(sorted(groups.items()))


def check_table(runs: Sequence[Run]) -> None:
    """At least two budgets, each with at least 3 distinct sizes, finite positive numbers; one line otherwise."""
    for r in runs:
        values = (r.budget, r.n_params, r.tokens, r.loss, r.flops_per_token)
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ScratchlmError(
                f"a run of budget {r.budget:g} has a non-positive or non-finite value {values}; "
                "delete its result.json and rerun the sweep"
            )
    groups = _by_budget(runs)
    for budget, group in groups.items():
        sizes = sorted({r.n_params for r in group})
        if len(sizes) < MIN_SIZES:
            shown = ", ".join(f"{n:,.0f}" for n in sizes)
            raise ScratchlmError(
                f"budget {budget:.3g} has {len(sizes)} model size(s) ({shown}); approach 2 fits a parabola per budget "
                f"and needs at least {MIN_SIZES}: add sizes to that budget (or finish its runs) and fit again"
            )
    if len(groups) < 2:
        raise ScratchlmError(
            f"the table has {len(groups)} budget(s); a power law in C needs at least 2 (3 or more for a useful "
            "interval): add budgets to the sweep"
        )


def _parabola_minima(
    x: np.ndarray, y: np.ndarray, groups: list[np.ndarray]
) -> tuple[list, list, list] | None:
    """Per group: (argmin x, min y, coefficients) of a least-squares parabola; None if one opens downward."""
    xs, ys, coefs = [], [], []
    for idx in groups:
        c2, c1, c0 = np.polyfit(x[idx], y[idx], 2)
        if c2 <= 0:
            return None
        xm = -c1 / (2 * c2)
        xs.append(xm)
        ys.append(c0 - c1 * c1 / (4 * c2))
        coefs.append((float(c2), float(c1), float(c0)))
    return xs, ys, coefs


def _near(minima: list[float], x: np.ndarray, groups: list[np.ndarray], reach: float = math.log(100)) -> bool:
    """Every group's minimum within a factor 100 of the sizes (or tokens) it was fitted on."""
    return all(x[i].min() - reach <= m <= x[i].max() + reach for m, i in zip(minima, groups))


def _power_law(c: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of v = k c^p by least squares on the logs."""
    p, log_k = np.polyfit(np.log(c), np.log(v), 1)
    return float(p), float(math.exp(log_k))


def fit_approach2(runs: Sequence[Run], bootstrap: int = 1000, ci: float = 0.95, seed: int = 0) -> Approach2:
    check_table(runs)
    groups = _by_budget(runs)
    budgets = np.array(list(groups))
    flat = [r for g in groups.values() for r in g]
    ln_n = np.log([r.n_params for r in flat])
    ln_d = np.log([r.tokens for r in flat])
    loss = np.array([r.loss for r in flat])
    idx, start = [], 0
    for g in groups.values():
        idx.append(np.arange(start, start + len(g)))
        start += len(g)
    notes: list[str] = []
    fits_n = _parabola_minima(ln_n, loss, idx)
    fits_d = _parabola_minima(ln_d, loss, idx)
    if fits_n is None or fits_d is None:
        bad = [f"{b:.3g}" for b, i in zip(budgets, idx) if np.polyfit(ln_n[i], loss[i], 2)[0] <= 0]
        raise ScratchlmError(
            f"the loss of budget(s) {', '.join(bad)} does not curve upward on both sides of a best size (the parabola "
            "opens downward); add smaller and larger sizes around the best one and fit again"
        )
    xs_n, loss_opt, curves = fits_n
    xs_d, _, _ = fits_d
    for b, i, xm in zip(budgets, idx, xs_n):
        if not ln_n[i].min() <= xm <= ln_n[i].max():
            notes.append(
                f"budget {b:.3g}: the best size {math.exp(xm):,.0f} lies outside the sizes trained "
                f"({math.exp(ln_n[i].min()):,.0f} to {math.exp(ln_n[i].max()):,.0f}); it is extrapolated"
            )
    n_opt, d_opt = np.exp(xs_n), np.exp(xs_d)
    a, k_n = _power_law(budgets, n_opt)
    b, k_d = _power_law(budgets, d_opt)

    # residual bootstrap: the parabolas' residuals, pooled, rescaled for the 3 parameters each parabola fitted
    fitted = np.concatenate([np.polyval(np.polyfit(ln_n[i], loss[i], 2), ln_n[i]) for i in idx])
    resid = loss - fitted
    dof = len(loss) - 3 * len(idx)
    a_ci = b_ci = None
    if dof > 0 and bootstrap > 0 and np.any(resid != 0):
        resid = resid * math.sqrt(len(loss) / dof)
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            y = fitted + rng.choice(resid, size=len(resid), replace=True)
            fn, fd = _parabola_minima(ln_n, y, idx), _parabola_minima(ln_d, y, idx)
            if fn is None or fd is None or not (_near(fn[0], ln_n, idx) and _near(fd[0], ln_d, idx)):
                continue  # a resample whose parabola opens downward or is nearly flat has no usable minimum
            samples.append((_power_law(budgets, np.exp(fn[0]))[0], _power_law(budgets, np.exp(fd[0]))[0]))
        if len(samples) >= max(10, bootstrap // 2):
            arr = np.array(samples)
            lo, hi = 50 * (1 - ci), 50 * (1 + ci)
            a_ci = tuple(float(v) for v in np.percentile(arr[:, 0], [lo, hi]))
            b_ci = tuple(float(v) for v in np.percentile(arr[:, 1], [lo, hi]))
        else:
            notes.append(
                f"only {len(samples)} of {bootstrap} bootstrap resamples kept a minimum in every budget: "
                "no interval for a and b"
            )
        if samples and len(samples) < bootstrap:
            notes.append(
                f"{bootstrap - len(samples)} of {bootstrap} bootstrap resamples found no minimum within 100x of the "
                "sizes trained in some budget and were left out: the interval is optimistic"
            )
    elif dof <= 0:
        notes.append(
            "3 sizes per budget leave the parabolas no residuals: no interval for a and b "
            "(4 or more sizes per budget give one)"
        )
    return Approach2(
        list(map(float, budgets)),
        list(map(float, n_opt)),
        list(map(float, d_opt)),
        list(map(float, loss_opt)),
        curves,
        a,
        b,
        k_n,
        k_d,
        a_ci,
        b_ci,
        notes,
    )


# ---- approach 3 -------------------------------------------------------------------------------------------------


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals `r` and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return value, grad


def _lse_terms(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray) -> np.ndarray:
    """The three log-terms (a - alpha ln N, b - beta ln D, e) for parameters theta = (a, b, e, alpha, beta):
    theta of shape (..., 5) -> (..., runs, 3)."""
    a, b, e, alpha, beta = (theta[..., i : i + 1] for i in range(5))
    return np.stack(
        [a - alpha * ln_n, b - beta * ln_d, np.broadcast_to(e, (a - alpha * ln_n).shape)], axis=-1
    )


def _objective(
    theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber(LSE(...) - ln L) and its gradient in theta."""
    terms = _lse_terms(theta, ln_n, ln_d)  # (runs, 3)
    top = terms.max(axis=-1, keepdims=True)
    w = np.exp(terms - top)
    total = w.sum(axis=-1, keepdims=True)
    pred = (top + np.log(total))[:, 0]
    w = w / total  # softmax: d pred / d term
    value, psi = _huber(pred - ln_l, delta)
    grad = np.array(
        [
            np.sum(psi * w[:, 0]),
            np.sum(psi * w[:, 1]),
            np.sum(psi * w[:, 2]),
            -np.sum(psi * w[:, 0] * ln_n),
            -np.sum(psi * w[:, 1] * ln_d),
        ]
    )
    return float(value.sum()), grad


def _grid() -> np.ndarray:
    """Chinchilla's initialisation grid of (a, b, e, alpha, beta): 6 x 6 x 5 x 5 x 5 = 4,500 points."""
    ab = np.arange(0, 30, 5.0)
    e = np.arange(-1, 1.5, 0.5)
    ex = np.arange(0, 2.5, 0.5)
    mesh = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def _grid_objective(
    grid: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, delta: float
) -> np.ndarray:
    terms = _lse_terms(grid, ln_n[None, :], ln_d[None, :])  # (grid, runs, 3)
    top = terms.max(axis=-1)
    pred = top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))
    return _huber(pred - ln_l[None, :], delta)[0].sum(axis=-1)


def _minimize(
    starts: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, delta: float
) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    best, best_value = starts[0], math.inf
    bounds = [(None, None)] * 3 + [(0.0, 5.0)] * 2
    for x0 in starts:
        res = minimize(
            _objective,
            x0,
            args=(ln_n, ln_d, ln_l, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-9},
        )
        if np.all(np.isfinite(res.x)) and res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best, best_value


def _flops_law(runs: Sequence[Run]) -> tuple[float, float]:
    """F(N) = c N^gamma fitted to the runs' FLOPs per token (6N gives c = 6, gamma = 1 exactly)."""
    n = np.array([r.n_params for r in runs])
    f = np.array([r.flops_per_token for r in runs])
    if np.allclose(f, 6 * n, rtol=1e-9):
        return 6.0, 1.0
    gamma, c = _power_law(n, f)
    return c, gamma


def fit_approach3(
    runs: Sequence[Run],
    bootstrap: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    starts: int = 16,
    delta: float = HUBER_DELTA,
) -> Approach3:
    check_table(runs)
    ln_n = np.log([r.n_params for r in runs])
    ln_d = np.log([r.tokens for r in runs])
    ln_l = np.log([r.loss for r in runs])
    grid = _grid()

    def solve(idx: np.ndarray, extra: np.ndarray | None, k: int) -> tuple[np.ndarray, float]:
        values = _grid_objective(grid, ln_n[idx], ln_d[idx], ln_l[idx], delta)
        chosen = grid[np.argsort(values, kind="stable")[:k]]
        if extra is not None:
            chosen = np.vstack([extra[None, :], chosen])
        return _minimize(chosen, ln_n[idx], ln_d[idx], ln_l[idx], delta)

    all_idx = np.arange(len(runs))
    theta, value = solve(all_idx, None, starts)
    c, gamma = _flops_law(runs)
    law = Approach3(
        float(math.exp(theta[2])),
        float(math.exp(theta[0])),
        float(math.exp(theta[1])),
        float(theta[3]),
        float(theta[4]),
        value,
        c,
        gamma,
    )
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(runs), size=len(runs))
            t, _ = solve(idx, theta, 1)  # from the full table's optimum and the resample's best grid point
            e, a_, b_, al, be = math.exp(t[2]), math.exp(t[0]), math.exp(t[1]), t[3], t[4]
            share = be / (al + gamma * be) if al + gamma * be > 0 else float("nan")
            samples.append((e, a_, b_, al, be, share, 1 - gamma * share))
        arr = np.array(samples)
        lo, hi = 50 * (1 - ci), 50 * (1 + ci)
        for j, name in enumerate(("E", "A", "B", "alpha", "beta", "a", "b")):
            col = arr[:, j][np.isfinite(arr[:, j])]
            if len(col):
                law.ci[name] = (float(np.percentile(col, lo)), float(np.percentile(col, hi)))
    return law


def fit(runs: Sequence[Run], bootstrap: int = 200, ci: float = 0.95, seed: int = 0) -> ScalingFit:
    """Both approaches on one table (see the module docstring)."""
    check_table(runs)
    return ScalingFit(
        fit_approach2(runs, bootstrap=max(bootstrap, 0) * 5, ci=ci, seed=seed),
        fit_approach3(runs, bootstrap=bootstrap, ci=ci, seed=seed),
        len(runs),
        ci,
    )


# ---- report -----------------------------------------------------------------------------------------------------


def _interval(ci: tuple[float, float] | None, fmt: str = ".3f") -> str:
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "(no interval)"


def format_fit(result: ScalingFit) -> str:
    """The fitted laws beside the published ones, for people."""
    a2, a3 = result.approach2, result.approach3
    pct = f"{100 * result.ci_level:g}%"
    lines = [f"approach 2 (IsoFLOP parabolas), {len(a2.budgets)} budgets, {result.n_runs} runs:"]
    for b, n, d, lo in zip(a2.budgets, a2.n_opt, a2.d_opt, a2.loss_opt):
        lines.append(f"  C {b:9.3g}: N_opt {n:12,.0f}  D_opt {d:14,.0f}  D/N {d / n:7.1f}  loss {lo:.4f}")
    lines.append(f"  N_opt ~ C^a: a = {a2.a:.3f} {pct} {_interval(a2.a_ci)}")
    lines.append(f"  D_opt ~ C^b: b = {a2.b:.3f} {pct} {_interval(a2.b_ci)}")
    lines += [f"  note: {n}" for n in a2.notes]
    lines.append("approach 3 (L(N, D) = E + A/N^alpha + B/D^beta, Huber on log L):")
    for name, value in (
        ("E", a3.E),
        ("A", a3.A),
        ("B", a3.B),
        ("alpha", a3.alpha),
        ("beta", a3.beta),
        ("a", a3.a),
        ("b", a3.b),
    ):
        fmt = ".4g" if name in ("A", "B") else ".3f"
        lines.append(f"  {name:5} = {value:{fmt}} {pct} {_interval(a3.ci.get(name), fmt)}")
    flops = "6N" if (a3.flops_c, a3.flops_gamma) == (6.0, 1.0) else f"{a3.flops_c:.3g} N^{a3.flops_gamma:.3f}"
    lines.append(f"  (a = beta / (alpha + gamma beta), b = 1 - gamma a, FLOPs per token {flops})")
    lines.append(f"{'published:':<28}{'a':>4}{'b':>7}")
    lines.append(f"  {'Kaplan et al. 2020':<26}{KAPLAN['a']:.2f}   {KAPLAN['b']:.2f}")
    for name, v in CHINCHILLA.items():
        lines.append(f"  {'Chinchilla, ' + name:<26}{v['a']:.2f}   {v['b']:.2f}")
    law = CHINCHILLA_LAW
    lines.append(
        f"  Chinchilla's approach 3 law: E {law['E']}, A {law['A']}, B {law['B']}, alpha {law['alpha']}, "
        f"beta {law['beta']} (their data and tokenizer: E, A, B are not comparable with these)"
    )
    return "\n".join(lines)


def format_prediction(p: dict[str, float]) -> str:
    rule_n = math.sqrt(p["budget"] / 120)
    return "\n".join(
        [
            f"predicted for C = {p['budget']:.3g} FLOPs:",
            f"  approach 2: N_opt {p['n_opt_2']:,.0f}, D_opt {p['d_opt_2']:,.0f} (approach 3's loss there "
            f"{p['loss_at_2']:.4f})",
            f"  approach 3: N_opt {p['n_opt_3']:,.0f}, D_opt {p['d_opt_3']:,.0f}, loss {p['loss_opt_3']:.4f}",
            f"  rule of thumb (20 tokens/parameter, C = 6ND): N {rule_n:,.0f}, D {20 * rule_n:,.0f}",
        ]
    )


# ---- the law on disk --------------------------------------------------------------------------------------------

FIT_FILE = "fit.json"


def load_law(folder: Any) -> ScalingFit:
    """The law `scratchlm scaling fit` wrote to `<folder>/fit.json` (enough of it to predict; no curves)."""
    import json
    from pathlib import Path

    path = Path(folder) / FIT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        a2, a3 = data["approach2"], data["approach3"]
        approach2 = Approach2(
            a2["budgets"],
            a2["n_opt"],
            a2["d_opt"],
            a2["loss_opt"],
            [],
            a2["a"],
            a2["b"],
            a2["k_n"],
            a2["k_d"],
            a2["a_ci"],
            a2["b_ci"],
            a2["notes"],
        )
        approach3 = Approach3(
            a3["E"],
            a3["A"],
            a3["B"],
            a3["alpha"],
            a3["beta"],
            a3["objective"],
            a3["flops_c"],
            a3["flops_gamma"],
            {k: tuple(v) for k, v in a3["ci"].items()},
        )
    except FileNotFoundError:
        raise ScratchlmError(
            f"{folder} has no {FIT_FILE}; fit its sweep first: `scratchlm scaling fit {folder}`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ScratchlmError(
            f"cannot read the law in {path} ({e}); fit again: `scratchlm scaling fit {folder}`"
        ) from None
    return ScalingFit(approach2, approach3, data.get("n_runs", 0), data.get("ci_level", 0.95))


def format_budget_answer(budget: float, law: ScalingFit | None = None, source: str = "") -> str:
    """`model info --budget C`: the compute-optimal size and tokens by the rule of thumb, or by a fitted law."""
    rule_n = math.sqrt(budget / (6 * 20))
    lines = [
        f"compute budget {budget:.3g} training FLOPs:",
        f"  rule of thumb (Chinchilla, 20 tokens/parameter, C = 6ND): N {rule_n:,.0f}, D {20 * rule_n:,.0f}",
    ]
    if law is not None:
        p = law.predict(budget)
        a2, a3 = law.approach2, law.approach3
        lines += [
            f"  fitted law ({source}), approach 2 (N ~ C^{a2.a:.2f}): N_opt {p['n_opt_2']:,.0f}, "
            f"D_opt {p['d_opt_2']:,.0f}",
            f"  fitted law ({source}), approach 3 (N ~ C^{a3.a:.2f}): N_opt {p['n_opt_3']:,.0f}, "
            f"D_opt {p['d_opt_3']:,.0f}, predicted loss {p['loss_opt_3']:.4f}",
        ]
        top = max(a2.budgets)
        if budget > 100 * top:
            lines.append(
                f"  (the law was measured up to {top:.3g} FLOPs: this is a {budget / top:,.0f}x extrapolation)"
            )
    return "\n".join(lines)
