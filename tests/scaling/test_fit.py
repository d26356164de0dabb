"""The fits recover a law chosen in the test: Chinchilla's approaches 2 and 3 on loss tables made from a known
L(N, D) with noise, the closed-form optimum against a brute-force one, and the refusals of tables too thin to fit."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from scratchlm.errors import ScratchlmError
from scratchlm.scaling.fit import Run, fit, fit_approach2, fit_approach3

_spec = importlib.util.spec_from_file_location("scaling_conftest", Path(__file__).with_name("conftest.py"))
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)
chinchilla_table = _conf.chinchilla_table

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# another law, far from the initialisation grid's favourites: data-hungry (alpha > beta), a low floor
OTHER = {"E": 0.8, "A": 90.0, "B": 2500.0, "alpha": 0.45, "beta": 0.36}


def _exponents(law: dict[str, float], gamma: float = 1.0) -> tuple[float, float]:
    a = law["beta"] / (law["alpha"] + gamma * law["beta"])
    return a, 1 - gamma * a


@pytest.mark.parametrize("law", [CHINCHILLA, OTHER], ids=["chinchilla", "other"])
def test_approach2_recovers_the_exponents(law: dict[str, float]) -> None:
    a, b = _exponents(law)
    result = fit_approach2(chinchilla_table(law, sigma=0.004), bootstrap=300, seed=1)
    # tolerance: the noise (0.4% of the loss) moves a parabola's minimum by a few percent of N
    assert result.a == pytest.approx(a, abs=0.02)
    assert result.b == pytest.approx(b, abs=0.02)
    assert result.a_ci[0] <= a <= result.a_ci[1] and result.b_ci[0] <= b <= result.b_ci[1]
    assert result.a_ci[1] - result.a_ci[0] < 0.1
    # each budget's minimum, against the law's own optimum (6N: the closed form)
    for budget, n_opt in zip(result.budgets, result.n_opt):
        g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1 / (law["alpha"] + law["beta"]))
        assert n_opt == pytest.approx(g * (budget / 6) ** a, rel=0.15)


def test_approach2_without_noise_is_exact_up_to_the_parabola() -> None:
    a, b = _exponents(CHINCHILLA)
    result = fit_approach2(chinchilla_table(sigma=0.0, per_budget=9), bootstrap=0)
    assert result.a == pytest.approx(a, abs=0.01)
    assert result.a + result.b == pytest.approx(1.0, abs=1e-9)  # D_opt = C / (6 N_opt) exactly


@pytest.mark.parametrize("law", [CHINCHILLA, OTHER], ids=["chinchilla", "other"])
def test_approach3_recovers_the_law(law: dict[str, float]) -> None:
    result = fit_approach3(chinchilla_table(law, sigma=0.004), bootstrap=20, seed=2)
    assert result.alpha == pytest.approx(law["alpha"], abs=0.03)
    assert result.beta == pytest.approx(law["beta"], abs=0.03)
    assert result.E == pytest.approx(law["E"], abs=0.06)
    # A and B trade off against the exponents: within 30%
    assert result.A == pytest.approx(law["A"], rel=0.3)
    assert result.B == pytest.approx(law["B"], rel=0.3)
    a, b = _exponents(law)
    assert (result.a, result.b) == (pytest.approx(a, abs=0.02), pytest.approx(b, abs=0.02))
    lo, hi = result.ci["alpha"]
    assert lo <= law["alpha"] <= hi
    # the fitted surface reproduces the noiseless losses to within the noise
    runs = chinchilla_table(law, sigma=0.0)
    truth = np.array([r.loss for r in runs])
    fitted = result.loss(np.array([r.n_params for r in runs]), np.array([r.tokens for r in runs]))
    assert np.max(np.abs(fitted / truth - 1)) < 0.01


def test_approach3_without_noise_is_exact() -> None:
    result = fit_approach3(chinchilla_table(sigma=0.0), bootstrap=0)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(result, name) == pytest.approx(CHINCHILLA[name], rel=2e-3), name


def test_optimum_with_planner_flops_matches_brute_force() -> None:
    """FLOPs per token c N^gamma (attention makes gamma < 1): the closed-form N_opt(C) is the argmin along C."""
    flops = (9.0, 0.97)
    result = fit_approach3(chinchilla_table(flops=flops, sigma=0.0), bootstrap=0)
    assert (result.flops_c, result.flops_gamma) == (pytest.approx(9.0), pytest.approx(0.97))
    budget = 1e21
    n = np.logspace(6, 12, 200_001)
    losses = result.loss(n, budget / (flops[0] * n ** flops[1]))
    assert result.n_at(budget) == pytest.approx(n[np.argmin(losses)], rel=1e-3)
    assert result.d_at(budget) * flops[0] * result.n_at(budget) ** flops[1] == pytest.approx(budget)
    assert result.a == pytest.approx(CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + 0.97 * CHINCHILLA["beta"]))


def test_predict_is_chinchillas_closed_form() -> None:
    result = fit(chinchilla_table(sigma=0.0), bootstrap=0)
    p = result.predict(5.76e23)  # Chinchilla's own budget
    law = result.approach3
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    assert p["n_opt_3"] == pytest.approx(g * (5.76e23 / 6) ** (law.beta / (law.alpha + law.beta)), rel=1e-9)
    assert p["n_opt_3"] * p["d_opt_3"] * 6 == pytest.approx(5.76e23)
    assert p["loss_opt_3"] == pytest.approx(float(law.loss(p["n_opt_3"], p["d_opt_3"])))
    # the published law gives Chinchilla about 40B parameters at that budget (paper, Table 3 regime)
    assert 2e10 < p["n_opt_3"] < 6e10


def test_refuses_fewer_than_three_sizes_per_budget() -> None:
    runs = chinchilla_table(budgets=(1e18, 1e19), per_budget=3)
    thin = [r for r in runs if not (r.budget == 1e19 and r is runs[-1])]
    with pytest.raises(
        ScratchlmError, match=r"^budget 1e\+19 has 2 model size\(s\) .*needs at least 3: add sizes"
    ):
        fit(thin, bootstrap=0)
    with pytest.raises(ScratchlmError, match="needs at least 3"):
        fit_approach3(thin, bootstrap=0)
    one_budget = [r for r in runs if r.budget == 1e18]
    with pytest.raises(ScratchlmError, match="1 budget"):
        fit(one_budget, bootstrap=0)


def test_three_sizes_give_no_interval_and_say_so() -> None:
    result = fit_approach2(chinchilla_table(per_budget=3), bootstrap=100)
    assert result.a_ci is None and result.b_ci is None
    assert any("4 or more sizes" in note for note in result.notes)


def test_a_budget_whose_loss_bends_the_wrong_way_is_one_line() -> None:
    runs = chinchilla_table(budgets=(1e18, 1e19), per_budget=5, sigma=0.0)
    bent = [
        Run(r.budget, r.n_params, r.tokens, 5 - r.loss if r.budget == 1e19 else r.loss, r.flops_per_token)
        for r in runs
    ]
    with pytest.raises(ScratchlmError, match=r"budget\(s\) 1e\+19 does not curve upward"):
        fit_approach2(bent, bootstrap=0)


def test_same_table_same_fit() -> None:
    runs = chinchilla_table()
    one, two = fit(runs, bootstrap=5, seed=3), fit(runs, bootstrap=5, seed=3)
    assert one.to_dict() == two.to_dict()
    assert math.isfinite(one.approach3.objective)
