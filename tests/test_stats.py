"""Trial statistics checked against statsmodels and SciPy on the same numbers (issue #18)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from twinjax.trial import _stats

sm = pytest.importorskip("statsmodels.api")
smp = pytest.importorskip("statsmodels.stats.proportion")
smm = pytest.importorskip("statsmodels.stats.multitest")


def _arm(events: int, n: int) -> np.ndarray:
    return np.r_[np.ones(events), np.zeros(n - events)].astype(bool)


def _newcombe_sm(ex, nx, ey, ny, alpha=0.05):
    """statsmodels' Newcombe interval for ``rate(y) - rate(x)`` (its count1 is y)."""
    return smp.confint_proportions_2indep(ey, ny, ex, nx, method="newcomb", alpha=alpha)


# --- binary endpoints: difference in proportions -------------------------------------------

COUNTS = [
    (0, 50, 0, 50),  # zero events in both arms: was the CI [0, 0]
    (0, 50, 5, 50),  # zero events in one arm: Wald excluded 0 while Fisher p = 0.056
    (50, 50, 0, 50),  # boundary: -1
    (0, 50, 50, 50),  # boundary: +1
    (2, 40, 38, 40),  # near the boundary: Wald went above 1
    (5, 50, 15, 50),
    (17, 83, 9, 61),
    (1, 7, 6, 9),
    (120, 400, 150, 410),
]


@pytest.mark.parametrize("ex,nx,ey,ny", COUNTS)
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_risk_difference_is_newcombe_as_statsmodels(ex, nx, ey, ny, alpha):
    r = _stats.risk_difference(_arm(ex, nx), _arm(ey, ny), alpha)
    lo, hi = _newcombe_sm(ex, nx, ey, ny, alpha)
    assert r["diff"] == pytest.approx(ey / ny - ex / nx, abs=1e-15)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert -1.0 <= r["ci_low"] <= r["diff"] <= r["ci_high"] <= 1.0
    assert r["ci_method"].startswith("Newcombe")


def test_zero_events_in_both_arms_gives_a_real_interval():
    r = _stats.risk_difference(_arm(0, 50), _arm(0, 50))
    # Wilson upper limit of 0/50 is z^2 / (n + z^2)
    z2 = sps.norm.ppf(0.975) ** 2
    assert r["ci_high"] == pytest.approx(z2 / (50 + z2), rel=1e-12)
    assert r["ci_low"] == pytest.approx(-r["ci_high"], rel=1e-12)
    assert r["p_value"] == 1.0


def test_boundary_interval_stays_within_minus_one_one():
    r = _stats.risk_difference(_arm(50, 50), _arm(0, 50))
    assert r["diff"] == -1.0
    assert r["ci_low"] == -1.0 and -1.0 < r["ci_high"] < 0.0
    lo, hi = _newcombe_sm(50, 50, 0, 50)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    r = _stats.risk_difference(_arm(2, 40), _arm(38, 40))
    assert r["ci_high"] <= 1.0  # the Wald interval gave 1.048-like upper limits here


def test_fisher_exact_reference_matches_scipy():
    for ex, nx, ey, ny in COUNTS:
        r = _stats.risk_difference(_arm(ex, nx), _arm(ey, ny))
        want = sps.fisher_exact([[ey, ny - ey], [ex, nx - ex]]).pvalue
        assert r["p_fisher"] == pytest.approx(want, rel=1e-12)


def test_newcombe_p_value_inverts_the_statsmodels_interval():
    """p is the alpha at which the (1 - alpha) Newcombe interval just touches 0."""
    for ex, nx, ey, ny in COUNTS:
        r = _stats.risk_difference(_arm(ex, nx), _arm(ey, ny))
        p = r["p_value"]
        if ex / nx == ey / ny:
            assert p == 1.0
            continue
        if p < 1e-200:  # 50/50 vs 0/50: z* ~ 11
            continue
        lo, hi = _newcombe_sm(ex, nx, ey, ny, alpha=p)
        bound = lo if ey / ny > ex / nx else hi
        assert bound == pytest.approx(0.0, abs=1e-9), (ex, nx, ey, ny, p, lo, hi)


def test_interval_and_test_are_consistent():
    """The case of the issue: 0/50 vs 5/50 (Fisher p = 0.056, yet the CI excluded 0)."""
    r = _stats.risk_difference(_arm(0, 50), _arm(5, 50))
    lo, _ = _newcombe_sm(0, 50, 5, 50)
    assert r["ci_low"] == pytest.approx(lo) and lo > 0  # Newcombe excludes 0 here ...
    assert r["p_value"] < 0.05  # ... and so does the test reported with it
    assert r["p_fisher"] > 0.05  # Fisher's exact p would not have been consistent
    # exhaustive: a CI excluding 0 appears exactly when p < alpha
    for alpha in (0.05, 0.01):
        for n1, n2 in ((10, 10), (30, 20), (50, 50)):
            for e1 in range(n1 + 1):
                for e2 in range(0, n2 + 1, 2):
                    r = _stats.risk_difference(_arm(e1, n1), _arm(e2, n2), alpha)
                    excludes = r["ci_low"] > 0 or r["ci_high"] < 0
                    assert excludes == (r["p_value"] < alpha), (alpha, e1, n1, e2, n2, r)


# --- single proportions ------------------------------------------------------------------


@pytest.mark.parametrize("events,n", [(0, 50), (50, 50), (1, 50), (7, 50), (25, 50), (3, 8)])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_single_proportion_interval(events, n, alpha):
    lo, hi, method = _stats.proportion_ci(events, n, alpha)
    if events in (0, n):
        assert method.startswith("Clopper")
        want = smp.proportion_confint(events, n, alpha=alpha, method="beta")
    else:
        assert method == "Wilson"
        want = smp.proportion_confint(events, n, alpha=alpha, method="wilson")
    assert (lo, hi) == pytest.approx(want, abs=1e-12)
    assert _stats.wilson(events, n, alpha) == pytest.approx(
        smp.proportion_confint(events, n, alpha=alpha, method="wilson"), abs=1e-12
    )
    assert _stats.clopper_pearson(events, n, alpha) == pytest.approx(
        smp.proportion_confint(events, n, alpha=alpha, method="beta"), abs=1e-12
    )


def test_binary_summary_has_its_interval():
    s = _stats.summarize(_arm(0, 50).astype(float), True)
    assert s["events"] == 0 and s["ci_low"] == 0.0
    assert s["ci_high"] == pytest.approx(smp.proportion_confint(0, 50, method="beta")[1])
    s = _stats.summarize(_arm(12, 50).astype(float), True, alpha=0.1)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(
        smp.proportion_confint(12, 50, alpha=0.1, method="wilson")
    )


# --- continuous endpoints ------------------------------------------------------------------


def test_welch_matches_scipy_and_skips_missing_values():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 37), rng.normal(0.5, 2, 51)
    r = _stats.welch(np.r_[x, np.nan], y)
    ref = sps.ttest_ind(y, x, equal_var=False)
    ci = ref.confidence_interval(0.9)
    r = _stats.welch(np.r_[x, np.nan], y, alpha=0.1)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_welch_constant_arms():
    r = _stats.welch(np.ones(5), np.ones(6))
    assert r["diff"] == 0 and r["p_value"] == 1.0
    r = _stats.welch(np.ones(5), np.full(6, 2.0))
    assert r["diff"] == 1.0 and r["p_value"] == 0.0 and r["ci_low"] == r["ci_high"] == 1.0


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_ancova_matches_statsmodels_ols(alpha):
    rng = np.random.default_rng(3)
    nx, ny = 40, 55
    bx, by = rng.normal(100, 10, nx), rng.normal(102, 12, ny)
    cx = -0.3 * (bx - 100) + rng.normal(0, 4, nx)
    cy = -0.3 * (by - 100) - 5 + rng.normal(0, 4, ny)
    r = _stats.ancova(cx, cy, bx, by, alpha)
    X = np.column_stack([np.ones(nx + ny), np.r_[np.zeros(nx), np.ones(ny)], np.r_[bx, by]])
    fit = sm.OLS(np.r_[cx, cy], X).fit()
    ci = fit.conf_int(alpha)
    assert r["diff"] == pytest.approx(fit.params[1], rel=1e-10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(ci[1]), rel=1e-10)
    assert r["p_value"] == pytest.approx(fit.pvalues[1], rel=1e-8)
    assert r["statistic"] == pytest.approx(fit.tvalues[1], rel=1e-10)
    assert r["se"] == pytest.approx(fit.bse[1], rel=1e-10)
    assert r["slope"] == pytest.approx(fit.params[2], rel=1e-10)
    assert r["df"] == fit.df_resid


def test_compare_adds_ancova_when_a_baseline_is_given():
    rng = np.random.default_rng(4)
    bx, by = rng.normal(0, 1, 30), rng.normal(0, 1, 30)
    x, y = bx + rng.normal(0, 0.5, 30), by + 1 + rng.normal(0, 0.5, 30)
    plain = _stats.compare(x, y, False)
    both = _stats.compare(x, y, False, baseline_x=bx, baseline_y=by)
    assert plain["p_value"] == both["p_value"]  # Welch stays the primary analysis
    assert "ancova_p" not in plain
    anc = _stats.ancova(x, y, bx, by)
    assert both["ancova_diff"] == anc["diff"] and both["ancova_p"] == anc["p_value"]
    # constant baseline: ANCOVA not estimable, reported as missing
    nan = _stats.ancova(x, y, np.ones(30), np.ones(30))
    assert math.isnan(nan["diff"]) and math.isnan(nan["p_value"])


# --- multiplicity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p",
    [
        [0.01, 0.04, 0.03, 0.005],
        [0.5],
        [0.02, 0.02, 0.9],
        [1e-300, 0.0, 0.049, 0.051, 0.2],
        [0.3, 0.01, 0.2, 0.04, 0.02],
    ],
)
def test_holm_matches_statsmodels(p):
    want = smm.multipletests(p, method="holm")[1]
    assert _stats.holm(p) == pytest.approx(want, rel=1e-12)


def test_holm_ignores_missing_p_values():
    got = _stats.holm([0.01, np.nan, 0.04])
    assert math.isnan(got[1])
    assert got[[0, 2]] == pytest.approx(smm.multipletests([0.01, 0.04], method="holm")[1])


def test_adjust_comparisons_per_endpoint():
    comp = pd.DataFrame(
        {
            "endpoint": ["a", "a", "a", "b", "b"],
            "arm": ["1", "2", "3", "1", "2"],
            "p_value": [0.01, 0.04, 0.03, 0.02, 0.5],
            "ancova_p": [0.02, 0.01, 0.5, np.nan, np.nan],
        }
    )
    out = _stats.adjust(comp)
    a = smm.multipletests([0.01, 0.04, 0.03], method="holm")[1]
    b = smm.multipletests([0.02, 0.5], method="holm")[1]
    assert out["p_adjusted"].to_numpy() == pytest.approx(np.r_[a, b])
    assert (out["adjustment"] == "Holm").all()
    anc = smm.multipletests([0.02, 0.01, 0.5], method="holm")[1]
    assert out["ancova_p_adjusted"].to_numpy()[:3] == pytest.approx(anc)
    assert out["ancova_p_adjusted"].isna().to_numpy()[3:].all()
    assert _stats.adjust(comp.iloc[:0]).empty


# --- p-value formatting --------------------------------------------------------------------


@pytest.mark.parametrize(
    "p,text",
    [
        (0.0, "< 0.001"),
        (7.995e-289, "< 0.001"),
        (0.000999, "< 0.001"),
        (0.001, "0.00100"),
        (0.0123456, "0.0123"),
        (0.052, "0.0520"),
        (0.5, "0.500"),
        (1.0, "1.00"),
        (math.nan, "NA"),
        (None, "NA"),
    ],
)
def test_format_p(p, text):
    assert _stats.format_p(p) == text


# --- power ---------------------------------------------------------------------------------


def test_power_reports_its_monte_carlo_standard_error():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, 5000)
    y = rng.normal(0.8, 1.0, 5000)
    R = 300
    pc = _stats.power_curve(x, y, [5, 20, 60], R, False, 0.05, np.random.default_rng(2))
    assert list(pc.columns[:4]) == ["n_per_arm", "power", "mc_se", "replicates"]
    for row in pc.itertuples():
        assert row.mc_se == pytest.approx(math.sqrt(row.power * (1 - row.power) / R))
        want = _stats.analytic_power(0.8, 1.0, row.n_per_arm)
        assert abs(row.power - want) < 4 * row.mc_se + 0.01


def test_binary_power_uses_the_reported_test():
    rng = np.random.default_rng(5)
    x = rng.random(4000) < 0.1
    y = rng.random(4000) < 0.4
    pc = _stats.power_curve(x, y, [10, 40], 200, True, 0.05, np.random.default_rng(6))
    assert (pc["power"].diff().dropna() > 0).all()
    assert pc["power"].iloc[-1] > 0.8
