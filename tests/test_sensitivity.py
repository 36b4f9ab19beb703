"""twinjax.sensitivity: local sensitivities by forward-mode AD and Sobol' indices.

References for the checks:
- Ishigami function (Ishigami & Homma 1990), a = 7, b = 0.1: analytic first-order
  indices S1 = (0.3139, 0.4424, 0) and totals ST = (0.5576, 0.4424, 0.2437) (e.g.
  Saltelli et al., *Global Sensitivity Analysis: The Primer*, 2008; SALib's test
  values). Variances: V = a^2/8 + b pi^4/5 + b^2 pi^8/18 + 1/2.
- One-compartment oral PK (Bateman function, Gabrielsson & Weiner 2016 ch. 2):
  C(t) = F D KA / (V (KA - k)) (exp(-k t) - exp(-KA t)), k = CL/V, and
  AUC(0-inf) = F D / CL, so d log AUC / d log (CL, V, KA, F) = (-1, 0, 0, 1).
- SALib 1.6 ``sobol.analyze`` (calc_second_order=False): first order
  mean(B (AB - A)) / var (Saltelli et al. 2010), total 0.5 mean((A - AB)^2) / var
  (Jansen 1999) on the output centred and scaled by its mean and SD, bootstrap
  ``default_rng(seed).integers(N, size=(N, R))``, conf = z * SD; samples interleaved
  (A_i, AB_1i, ..., AB_ki, B_i).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.solve._simulate import simulate_core
from twinjax.trial import Endpoint

SALib = pytest.importorskip("SALib")
from SALib.analyze import sobol as salib_analyze  # noqa: E402
from SALib.sample import sobol as salib_sample  # noqa: E402

A_ISH, B_ISH = 7.0, 0.1
S1_ISH = np.array([0.3139, 0.4424, 0.0])
ST_ISH = np.array([0.5576, 0.4424, 0.2437])
ISH_BOUNDS = {f"x{i}": (-math.pi, math.pi) for i in (1, 2, 3)}
DOSE = 100.0


def ishigami(q):
    return (
        jnp.sin(q["x1"]) + A_ISH * jnp.sin(q["x2"]) ** 2 + B_ISH * q["x3"] ** 4 * jnp.sin(q["x1"])
    )


def _problem(bounds):
    return {
        "num_vars": len(bounds),
        "names": list(bounds),
        "bounds": [list(b) for b in bounds.values()],
    }


def test_ishigami_analytic_values():
    # the reference numbers themselves, from the variance decomposition
    a, b, pi = A_ISH, B_ISH, math.pi
    V1 = 0.5 * (1 + b * pi**4 / 5) ** 2
    V2 = a**2 / 8
    V13 = b**2 * pi**8 * (1 / 18 - 1 / 50)
    V = V1 + V2 + V13
    np.testing.assert_allclose([V1 / V, V2 / V, 0.0], S1_ISH, atol=1e-4)
    np.testing.assert_allclose([(V1 + V13) / V, V2 / V, V13 / V], ST_ISH, atol=1e-4)


@pytest.fixture(scope="module")
def ish():
    return tj.sensitivity.sobol(ishigami, ISH_BOUNDS, n=8192, seed=3, n_bootstrap=500)


def test_sobol_ishigami_within_monte_carlo_error(ish):
    assert ish.samples.shape == (8192 * 5, 3) and ish.n_dropped == 0
    se1 = ish.S1_conf / 1.959963984540054  # bootstrap SD
    seT = ish.ST_conf / 1.959963984540054
    assert np.all(np.abs(ish.S1 - S1_ISH) < 3 * se1), (ish.S1, se1)
    assert np.all(np.abs(ish.ST - ST_ISH) < 3 * seT), (ish.ST, seT)
    # the Monte Carlo error itself is small at N = 8192: the test has teeth
    assert np.all(se1 < 0.015) and np.all(seT < 0.02)
    # percentile intervals bracket the estimates and contain the analytic values
    assert np.all((ish.S1_ci[:, 0] <= ish.S1) & (ish.S1 <= ish.S1_ci[:, 1]))
    assert np.all((ish.S1_ci[:, 0] <= S1_ISH) & (S1_ISH <= ish.S1_ci[:, 1]))
    assert np.all((ish.ST_ci[:, 0] <= ST_ISH) & (ST_ISH <= ish.ST_ci[:, 1]))
    df = ish.to_frame()
    assert list(df.index) == ["x1", "x2", "x3"]
    np.testing.assert_array_equal(df["ST"].to_numpy(), ish.ST)


def test_sobol_ishigami_same_as_salib_on_the_same_samples(ish):
    problem = _problem(ISH_BOUNDS)
    X, y = ish.salib_order()
    np.testing.assert_allclose(y, ishigami(dict(zip(ISH_BOUNDS, X.T))), rtol=1e-12, atol=1e-12)
    S = salib_analyze.analyze(
        problem, y, calc_second_order=False, num_resamples=500, seed=3, conf_level=0.95
    )
    for key in ("S1", "ST", "S1_conf", "ST_conf"):
        np.testing.assert_allclose(getattr(ish, key), S[key], rtol=1e-9, atol=1e-12)
    # and the other way round: SALib's own Saltelli samples through sobol_indices
    Xs = salib_sample.sample(problem, 1024, calc_second_order=False, seed=5)
    ys = np.asarray(ishigami(dict(zip(ISH_BOUNDS, Xs.T))))
    blocks = ys.reshape(1024, 5).T.reshape(-1)  # SALib's interleaved -> block order
    ours = tj.sensitivity.sobol_indices(blocks, 3, n_bootstrap=200, seed=7)
    S = salib_analyze.analyze(problem, ys, calc_second_order=False, num_resamples=200, seed=7)
    for key in ("S1", "ST", "S1_conf", "ST_conf"):
        np.testing.assert_allclose(ours[key], S[key], rtol=1e-9, atol=1e-12)


def test_saltelli_design_layout():
    b = {"p": (1.0, 2.0), "q": (-3.0, 5.0)}
    n, k = 16, 2
    X = tj.sensitivity.saltelli_sample(b, n, seed=11)
    assert X.shape == (n * (k + 2), k)
    lo, hi = np.array([1.0, -3.0]), np.array([2.0, 5.0])
    assert np.all((X >= lo) & (X <= hi))
    from scipy.stats import qmc

    base = lo[[0, 1, 0, 1]] + qmc.Sobol(d=4, scramble=True, rng=11).random(n) * (
        hi[[0, 1, 0, 1]] - lo[[0, 1, 0, 1]]
    )
    A, B = X[:n], X[-n:]
    np.testing.assert_array_equal(A, base[:, :2])
    np.testing.assert_array_equal(B, base[:, 2:])
    for i in range(k):
        AB = X[(i + 1) * n : (i + 2) * n]
        np.testing.assert_array_equal(AB[:, i], B[:, i])
        np.testing.assert_array_equal(np.delete(AB, i, 1), np.delete(A, i, 1))
    # SALib's design has the same structure (interleaved by base sample)
    Xs = salib_sample.sample(_problem(b), n, calc_second_order=False, seed=11)
    Xs = Xs.reshape(n, k + 2, k)
    np.testing.assert_array_equal(Xs[:, 1, 1], Xs[:, 0, 1])
    np.testing.assert_array_equal(Xs[:, 1, 0], Xs[:, 3, 0])


def test_local_function_matches_analytic_derivatives():
    x = {"x1": jnp.array([0.3, -1.0, 2.0]), "x2": jnp.array([1.0, 0.5, -2.5]), "x3": 1.5}
    r = tj.sensitivity.local(ishigami, x)
    x1, x2, x3 = np.array([0.3, -1.0, 2.0]), np.array([1.0, 0.5, -2.5]), 1.5
    d1 = np.cos(x1) * (1 + B_ISH * x3**4)
    d2 = 2 * A_ISH * np.sin(x2) * np.cos(x2)
    d3 = 4 * B_ISH * x3**3 * np.sin(x1)
    np.testing.assert_allclose(r.absolute, np.stack([d1, d2, d3], -1), rtol=1e-12)
    y = np.asarray(ishigami({"x1": x1, "x2": x2, "x3": x3}))
    np.testing.assert_allclose(
        r.normalised, np.stack([d1 * x1, d2 * x2, d3 * x3], -1) / y[:, None], rtol=1e-12
    )
    assert r.parameters == ("x1", "x2", "x3") and r.status.tolist() == [0, 0, 0]
    assert len(r.to_frame()) == 9


# ---- PK: one-compartment oral, single dose ------------------------------------------
PK = pk.one_compartment("first_order")
REG = tj.Regimen([tj.Dose(time=0.0, amt=DOSE, cmt="depot")])
COHORT = {
    "CL": np.array([5.0, 4.0, 6.5]),
    "V": np.array([50.0, 62.0, 41.0]),
    "KA": np.array([1.0, 1.6, 0.7]),
    "F": np.array([0.8, 0.9, 0.95]),
}
NAMES = ("CL", "V", "KA", "F")
TIGHT = dict(rtol=1e-10, atol=1e-12)


def bateman(t, CL, V, KA, F):
    k = CL / V
    return F * DOSE * KA / (V * (KA - k)) * (jnp.exp(-k * t) - jnp.exp(-KA * t))


def test_local_pk_concentration_matches_closed_form():
    ts = np.linspace(0.0, 48.0, 49)
    before = eqx.debug.get_num_traces(simulate_core)
    r = tj.sensitivity.local(
        PK, COHORT, REG, ts, output="C", parameters=NAMES, solver=tj.solvers.Ensemble(**TIGHT)
    )
    # the cohort and all k directions: one program
    assert eqx.debug.get_num_traces(simulate_core) == before + 1
    assert r.absolute.shape == (3, 49, 4) and r.times is not None

    def closed(theta):  # (4,) -> (T,)
        return bateman(jnp.asarray(ts), *theta)

    for i in range(3):
        th = jnp.array([COHORT[k][i] for k in NAMES])
        J = np.asarray(jax.jacfwd(closed)(th))  # (T, 4)
        c = np.asarray(closed(th))
        np.testing.assert_allclose(r.y[i], c, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(r.absolute[i], J, rtol=1e-6, atol=1e-10)
        norm = J[1:] * np.asarray(th)[None] / c[1:, None]
        np.testing.assert_allclose(r.normalised[i, 1:], norm, rtol=1e-6, atol=1e-8)
    assert np.all(np.isnan(r.normalised[:, 0, :]))  # C(0) = 0: undefined, not inf
    s = r.summary(time=2.0)
    assert set(s.index) == set(NAMES)


@pytest.fixture(scope="module")
def auc_local():
    ts = np.linspace(0.0, 240.0, 4801)  # 0.05 h: trapezoid error ~1e-5 relative
    ep = Endpoint("auc", "auc", output="C")
    r = tj.sensitivity.local(
        PK, COHORT, REG, ts, endpoint=ep, parameters=NAMES, solver=tj.solvers.Diffrax(**TIGHT)
    )
    return ts, ep, r


def test_local_pk_auc_analytic(auc_local):
    ts, ep, r = auc_local
    assert r.normalised.shape == (3, 4) and r.times is None
    # AUC(0-inf) = F D / CL: -1 to CL, 0 to V and KA, +1 to F. The trapezoid over a
    # 0.05 h grid to 240 h (>= 19 half-lives) differs from it by ~2e-5 relative.
    expected = np.array([-1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(r.normalised, np.broadcast_to(expected, (3, 4)), atol=1e-4)
    np.testing.assert_allclose(r.y, COHORT["F"] * DOSE / COHORT["CL"], rtol=1e-4)


def _fd_batch(ts):
    """The cohort, then each parameter times (1 + h) and (1 - h): one simulation."""
    h = 1e-4
    rows = {k: [COHORT[k]] for k in NAMES}
    for j in range(4):
        for sgn in (1.0, -1.0):
            for k in NAMES:
                rows[k].append(COHORT[k] * (1 + sgn * h) if k == NAMES[j] else COHORT[k])
    batch = {k: np.concatenate(v) for k, v in rows.items()}
    return h, tj.simulate(PK, batch, REG, ts, solver=tj.solvers.Diffrax(**TIGHT))


def test_local_pk_auc_against_finite_differences(auc_local):
    ts, ep, r = auc_local
    h, sim = _fd_batch(ts)  # central differences, relative step 1e-4
    auc = ep.compute(ts, sim.outputs)
    # the endpoint is the trial's own: the same number as Endpoint.compute
    np.testing.assert_allclose(r.y, auc[:3], rtol=1e-12)
    auc = auc[3:].reshape(4, 2, 3)
    fd = (auc[:, 0] - auc[:, 1]) / (2 * h) / r.y[None]  # d log AUC / d log theta, (4, 3)
    np.testing.assert_allclose(r.normalised, fd.T, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_local_pk_cmax_against_finite_differences():
    ts = np.linspace(0.0, 24.0, 481)
    # Cmax: the maximum over the save grid, differentiated through its argmax
    cm = Endpoint("cmax", "cmax", output="C")
    rc = tj.sensitivity.local(
        PK, COHORT, REG, ts, endpoint=cm, parameters=NAMES, solver=tj.solvers.Diffrax(**TIGHT)
    )
    h, sim = _fd_batch(ts)
    cmax = cm.compute(ts, sim.outputs)
    np.testing.assert_allclose(rc.y, cmax[:3], rtol=1e-12)
    cmax = cmax[3:].reshape(4, 2, 3)
    fdc = (cmax[:, 0] - cmax[:, 1]) / (2 * h) / rc.y[None]
    np.testing.assert_allclose(rc.normalised, fdc.T, rtol=1e-5, atol=1e-7)
    # Cmax is proportional to F / V for fixed k and KA: d log Cmax / d log F = 1
    np.testing.assert_allclose(rc.normalised[:, 3], 1.0, rtol=1e-9)
    # C(t) = F D / V g(t; CL / V, KA): scaling CL and V together scales C by 1 / V at
    # every save time, so the elasticities of Cmax to CL and V add up to -1
    np.testing.assert_allclose(rc.normalised[:, 0] + rc.normalised[:, 1], -1.0, rtol=1e-6)


@pytest.mark.slow
def test_sobol_pk_auc_against_salib_and_closed_form():
    bounds = {"CL": (3.0, 8.0), "V": (30.0, 70.0), "KA": (0.5, 2.0), "F": (0.5, 1.0)}
    ts = np.linspace(0.0, 240.0, 961)
    ep = Endpoint("auc", "auc", output="C")
    before = eqx.debug.get_num_traces(simulate_core)
    res = tj.sensitivity.sobol(
        PK,
        bounds,
        regimen=REG,
        times=ts,
        endpoint=ep,
        n=256,
        seed=2,
        n_bootstrap=300,
        solver=tj.solvers.Ensemble(rtol=1e-8, atol=1e-10),
    )
    assert eqx.debug.get_num_traces(simulate_core) == before + 1  # all 256 x 6 samples: one cohort
    assert res.n_dropped == 0 and res.y.shape == (256 * 6,)
    X, y = res.salib_order()
    S = salib_analyze.analyze(
        _problem(bounds), y, calc_second_order=False, num_resamples=300, seed=2
    )
    for key in ("S1", "ST", "S1_conf", "ST_conf"):
        np.testing.assert_allclose(getattr(res, key), S[key], rtol=1e-9, atol=1e-12)
    # the simulated AUC on the design is the trapezoid of the closed form on the same
    # grid (to the solver's tolerance) ...
    CL, V, KA, F = (res.samples[:, j][:, None] for j in range(4))
    closed = np.trapezoid(np.asarray(bateman(ts[None, :], CL, V, KA, F)), ts, axis=1)
    np.testing.assert_allclose(res.y, closed, rtol=1e-6)
    # ... so the indices are those of the closed form on the same samples, and close
    # to those of AUC(0-inf) = F D / CL (the trapezoid is 2e-3 off at most)
    exact = tj.sensitivity.sobol_indices(closed, 4, n_bootstrap=0)
    np.testing.assert_allclose(res.S1, exact["S1"], atol=1e-5)
    np.testing.assert_allclose(res.ST, exact["ST"], atol=1e-5)
    inf = tj.sensitivity.sobol_indices(
        res.samples[:, 3] * DOSE / res.samples[:, 0], 4, n_bootstrap=0
    )
    np.testing.assert_allclose(res.S1, inf["S1"], atol=0.01)
    np.testing.assert_allclose(res.ST, inf["ST"], atol=0.01)
    # V and KA do not act on AUC: totals ~ 0; CL dominates, F second
    assert np.all(np.abs(res.ST[[1, 2]]) < 0.01)
    assert res.ST[0] > res.ST[3] > 0.1


# ---- bad input: clear errors before any simulation ---------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bounds={"CLX": (1.0, 2.0)}), r"unknown parameter\(s\) in bounds \['CLX'\].*'CL'"),
        (dict(bounds={"CL": (2.0, 2.0)}), r"bounds\['CL'\] = \(2.0, 2.0\): lower must be < upper"),
        (dict(bounds={"CL": (3.0, 1.0)}), r"lower must be < upper"),
        (dict(bounds={"F": (0.5, 1.2)}), r"bounds\['F'\]: 1.2 is outside its bounds \[0, 1\]"),
        (dict(n=1000), r"n = 1000 base samples; it must be a power of two >= 2.*1024"),
        (dict(endpoint=None), r"endpoint="),
        (dict(endpoint=Endpoint("x", "auc", output="Q")), r"unknown output 'Q'"),
        (dict(params={"V": np.full(3, 50.0)}), r"params must be scalars"),
        (dict(params={"CL": 4.0}), r"both in bounds \(varied\) and in params \(fixed\)"),
        (dict(n_bootstrap=-1), r"n_bootstrap"),
        (dict(confidence=1.5), r"confidence"),
    ],
)
def test_sobol_bad_input(kwargs, match):
    args = dict(
        bounds={"CL": (3.0, 8.0)},
        regimen=REG,
        times=np.linspace(0, 24, 25),
        endpoint=Endpoint("auc", "auc", output="C"),
        n=64,
    )
    args.update(kwargs)
    before = eqx.debug.get_num_traces(simulate_core)
    with pytest.raises(ValueError, match=match):
        tj.sensitivity.sobol(PK, **args)
    assert eqx.debug.get_num_traces(simulate_core) == before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(parameters=["CL", "VV"]), r"unknown parameter\(s\) \['VV'\]; allowed: \['CL'"),
        (dict(output="nope"), r"unknown output 'nope'"),
        (dict(output=None), r"say what to analyse"),
        (dict(output=None, endpoint=Endpoint("t", "tmax", output="C")), r"piecewise constant"),
        (dict(params={"CL": -1.0}), r"CL"),
    ],
)
def test_local_bad_input(kwargs, match):
    args = dict(regimen=REG, times=np.linspace(0, 24, 25), output="C")
    args.update(kwargs)
    before = eqx.debug.get_num_traces(simulate_core)
    with pytest.raises(ValueError, match=match):
        tj.sensitivity.local(PK, **args)
    assert eqx.debug.get_num_traces(simulate_core) == before


def test_plots(ish):
    import matplotlib.pyplot as plt

    ax = ish.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x1", "x2", "x3"]
    assert len(ax.patches) == 6  # S1 and ST bars per parameter
    x = {"x1": jnp.array([0.3, -1.0, 2.0]), "x2": jnp.array([1.0, 0.5, -2.5]), "x3": 1.5}
    r = tj.sensitivity.local(ishigami, x)
    ax2 = r.plot()
    labels = [t.get_text() for t in ax2.get_yticklabels()]
    top = r.summary().index[0]
    assert labels[-1] == top and len(ax2.patches) == 3  # largest effect on top
    plt.close("all")


def test_sobol_failed_samples_are_dropped_with_a_warning():
    def f(q):  # fails (NaN) where x1 > 2.5: those base samples leave the estimate
        y = ishigami(q)
        return jnp.where(q["x1"] > 2.5, jnp.nan, y)

    with pytest.warns(RuntimeWarning, match=r"base samples had a failed run"):
        res = tj.sensitivity.sobol(f, ISH_BOUNDS, n=256, seed=4, n_bootstrap=50)
    k = 3
    bad = ~np.all(np.isfinite(res.y.reshape(k + 2, 256)), axis=0)
    assert res.n_dropped == int(bad.sum()) > 0
    kept = res.y.reshape(k + 2, 256)[:, ~bad].reshape(-1)
    ref = tj.sensitivity.sobol_indices(kept, k, n_bootstrap=0)
    np.testing.assert_allclose(res.S1, ref["S1"], rtol=1e-12)
    np.testing.assert_allclose(res.ST, ref["ST"], rtol=1e-12)
