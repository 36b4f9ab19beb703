"""Individual full-Bayesian posteriors by NUTS (``twinjax.calibrate.sample_posterior``).

The reference case is a 1-compartment IV bolus with log-normal IIV on CL and V and a
log-transformed (log-normal) residual error: ``C(t) = D/V exp(-CL/V t)`` in closed form,
so each subject's exact posterior of ``(eta_CL, eta_V)`` is computed on a fine 2-D grid
in NumPy, independently of twinjax's objective, and NUTS is compared with it within
Monte-Carlo error.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import twinjax as tj
from twinjax.calibrate import (
    ErrorModel,
    PosteriorResult,
    _posterior,
    _posterior_diagnostics,
    ess_bulk,
    ess_tail,
    fit_individual,
    forecast_posterior,
    optimise_dose_posterior,
    sample_posterior,
    split_rhat,
)
from twinjax.models import pk

IV = pk.one_compartment()
TYP = {"CL": 2.0, "V": 20.0}
OMEGA = {"CL": 0.09, "V": 0.04}  # variances of eta
POP = tj.Population(IV, typical=TYP, omega=OMEGA)
SIG = 0.25  # SD of log C
ERR = ErrorModel("log", add=SIG)
DOSE = 100.0
# subject 1: three samples (sparse; the prior matters); subject 2: 24 samples (rich)
N_SUBJECTS = 2
TIMES = {1: np.array([1.0, 4.0, 12.0]), 2: np.linspace(0.5, 24.0, 24)}
ETA_TRUE = {1: np.array([0.25, -0.15]), 2: np.array([-0.3, 0.2])}
N_CHAINS, N_WARMUP, N_DRAWS = 4, 300, 500


def conc(cl, v, t, dose=DOSE):
    return dose / v * np.exp(-cl / v * t)


def make_data():
    rng = np.random.default_rng(7)
    rows = []
    for sid, ts in TIMES.items():
        cl = TYP["CL"] * np.exp(ETA_TRUE[sid][0])
        v = TYP["V"] * np.exp(ETA_TRUE[sid][1])
        rows.append(dict(ID=sid, TIME=0.0, DV=np.nan, AMT=DOSE, EVID=1, CMT=1))
        dv = conc(cl, v, ts) * np.exp(SIG * rng.standard_normal(ts.size))
        rows += [dict(ID=sid, TIME=t, DV=y, AMT=0.0, EVID=0, CMT=1) for t, y in zip(ts, dv)]
    return tj.Dataset(pd.DataFrame(rows), compartments={1: "central"})


def grid_posterior(sid, dv, centre, half_width, n=401):
    """The exact posterior of (eta_CL, eta_V) on a grid: ``(e1, e2, weights)``."""
    e1 = np.linspace(centre[0] - half_width[0], centre[0] + half_width[0], n)
    e2 = np.linspace(centre[1] - half_width[1], centre[1] + half_width[1], n)
    E1, E2 = np.meshgrid(e1, e2, indexing="ij")
    cl = TYP["CL"] * np.exp(E1)
    v = TYP["V"] * np.exp(E2)
    ts = TIMES[sid]
    f = conc(cl[..., None], v[..., None], ts)
    logp = -0.5 * np.sum(((np.log(dv) - np.log(f)) / SIG) ** 2, axis=-1)
    logp -= 0.5 * (E1**2 / OMEGA["CL"] + E2**2 / OMEGA["V"])
    w = np.exp(logp - logp.max())
    return E1, E2, w / w.sum()


@pytest.fixture(scope="module")
def runs():
    ds = make_data()
    fit = fit_individual(IV, ds, POP, ERR)
    keys = jax.random.split(jax.random.key(3), N_SUBJECTS)
    post = sample_posterior(
        IV,
        ds,
        POP,
        ERR,
        n_chains=N_CHAINS,
        n_warmup=N_WARMUP,
        n_draws=N_DRAWS,
        key=keys,
        init=fit,
    )
    grids = {}
    for i, sid in enumerate(post.ids):
        dv = fit.dv[i][fit.mask[i]]
        sd = np.sqrt(np.diag(fit.cov_eta[i]))
        grids[sid] = grid_posterior(sid, dv, fit.etas[i], 8.0 * sd)
    return ds, fit, post, keys, grids


# ------------------------------------------------------------------ diagnostics
def test_rhat_and_ess_on_known_chains():
    rng = np.random.default_rng(0)
    M, n = 4, 2000
    iid = rng.standard_normal((M, n))
    assert abs(split_rhat(iid) - 1.0) < 0.005
    assert ess_bulk(iid) == pytest.approx(M * n, rel=0.1)
    # AR(1) with coefficient phi: integrated autocorrelation time (1 + phi) / (1 - phi)
    phi = 0.6
    x = np.zeros((M, n))
    e = rng.standard_normal((M, n)) * np.sqrt(1 - phi**2)
    x[:, 0] = rng.standard_normal(M)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    assert ess_bulk(x) == pytest.approx(M * n * (1 - phi) / (1 + phi), rel=0.15)
    assert split_rhat(x) < 1.01
    # a chain stuck elsewhere, and a chain with a trend (caught by splitting)
    shifted = iid.copy()
    shifted[0] += 1.0
    assert split_rhat(shifted) > 1.05
    trend = iid + np.linspace(0.0, 2.0, n)[None]
    assert split_rhat(trend) > 1.05
    # a chain with the right location but 3x the spread: only the folded R-hat sees it
    wide = iid.copy()
    wide[0] *= 3.0
    assert split_rhat(wide) > 1.05
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_rhat(np.zeros((2, 3)))


def test_plain_rhat_by_hand():
    # two chains [0, 1, 2, 3] and [1, 2, 3, 4]: W = 5/3, B = n var(means) = 4 * 0.5 = 2,
    # var+ = 3/4 W + B/4 = 1.75, R-hat = sqrt(1.75 / (5/3)) = sqrt(1.05)
    x = np.array([[0.0, 1, 2, 3], [1.0, 2, 3, 4]])
    assert _posterior_diagnostics._rhat_plain(x) == pytest.approx(np.sqrt(1.05), rel=1e-12)


def test_diagnostics_match_arviz():
    az = pytest.importorskip("arviz")
    rng = np.random.default_rng(2)
    M, n = 4, 500
    phi = 0.7
    x = np.zeros((M, n))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + rng.standard_normal(M)
    x[1] += 0.3
    assert split_rhat(x) == pytest.approx(float(az.rhat(x, method="rank")), rel=1e-10)
    assert ess_bulk(x) == pytest.approx(float(az.ess(x, method="bulk")), rel=1e-8)
    assert ess_tail(x[:, :301]) == pytest.approx(float(az.ess(x[:, :301], method="tail")), rel=1e-8)


# ------------------------------------------------------------------ the target
def test_log_density_gradient_matches_finite_differences():
    ds = make_data()
    from twinjax.calibrate._data import prepare_data
    from twinjax.calibrate._terms import make_spec, typical_values

    fd = prepare_data(IV, ds, ERR)
    spec = make_spec(IV, tj.solvers.Ensemble(rtol=1e-10, atol=1e-12), POP.iiv, (ERR,), ("C",))
    tv = typical_values(POP, fd.covariates, fd.n)
    data = jax.tree.map(
        lambda a: a[1], (tv, fd.ev, jnp.asarray(fd.t_eval), fd.obs(), jnp.asarray(fd.mask))
    )
    omega_inv = jnp.linalg.inv(jnp.asarray(POP.omega))
    f = jax.jit(lambda e: _posterior._logdensity(spec, ERR.sigma(), omega_inv, data, e))
    g = jax.jit(jax.grad(lambda e: _posterior._logdensity(spec, ERR.sigma(), omega_inv, data, e)))
    eta = jnp.asarray([0.1, -0.2])
    h = 1e-5
    fdg = np.array([(f(eta + h * u) - f(eta - h * u)) / (2 * h) for u in jnp.eye(2)])
    np.testing.assert_allclose(np.asarray(g(eta)), fdg, rtol=1e-6, atol=1e-6)
    # and the value is the closed-form log posterior (up to its constant)
    ts, dv = TIMES[2], np.asarray(fd.dv[1][fd.mask[1]])

    def exact(e):
        cl, v = TYP["CL"] * np.exp(e[0]), TYP["V"] * np.exp(e[1])
        r = (np.log(dv) - np.log(conc(cl, v, ts))) / SIG
        return -0.5 * np.sum(r**2) - 0.5 * (e[0] ** 2 / OMEGA["CL"] + e[1] ** 2 / OMEGA["V"])

    e2 = jnp.asarray([-0.3, 0.25])
    assert float(f(eta) - f(e2)) == pytest.approx(
        exact(np.asarray(eta)) - exact(np.asarray(e2)), rel=1e-8
    )


@pytest.mark.slow
def test_nuts_matches_the_exact_posterior(runs):
    """Posterior means and SDs of eta equal the grid posterior's within 4 Monte-Carlo
    standard errors (mean: sd / sqrt(ESS_bulk); sd: sd / sqrt(2 ESS_bulk), the normal
    approximation of the sampling SD of an SD)."""
    _, _, post, _, grids = runs
    assert isinstance(post, PosteriorResult)
    assert post.etas.shape == (N_SUBJECTS, N_CHAINS, N_DRAWS, 2)
    assert post.samples.shape == (N_SUBJECTS, N_CHAINS * N_DRAWS, 2)
    assert not post.flagged.any() and int(post.divergences.sum()) == 0
    assert np.all(post.rhat < 1.01) and np.all(post.ess_bulk > 400)
    for i, sid in enumerate(post.ids):
        E1, E2, w = grids[sid]
        eta = post.etas[i].reshape(-1, 2)
        for j, E in enumerate((E1, E2)):
            mean = float(np.sum(w * E))
            sd = float(np.sqrt(np.sum(w * (E - mean) ** 2)))
            ess = post.ess_bulk[i, j]
            assert abs(eta[:, j].mean() - mean) < 4 * sd / np.sqrt(ess), (sid, j)
            assert abs(eta[:, j].std(ddof=1) - sd) < 4 * sd / np.sqrt(2 * ess), (sid, j)
        # natural scale: CL = TV exp(eta)
        cl_mean = float(np.sum(w * TYP["CL"] * np.exp(E1)))
        assert post.mean[i, 0] == pytest.approx(cl_mean, rel=4 * post.mcse_mean()[i, 0] / cl_mean)
    df = post.to_dataframe()
    assert len(df) == 2 * N_SUBJECTS and {"rhat", "ess_bulk", "q05", "q95"} <= set(df.columns)


@pytest.mark.slow
def test_posterior_median_approaches_map_with_rich_data(runs):
    """The rich subject's posterior median is within 0.1 posterior SD of the MAP (the
    MAP of ``fit_individual``, natural scale within 1 %)."""
    _, fit, post, _, _ = runs
    eta = post.etas.reshape(N_SUBJECTS, -1, 2)
    gap = np.abs(np.median(eta, axis=1) - fit.etas) / eta.std(axis=1)
    assert np.all(gap[1] < 0.1), gap
    assert post.median[1] == pytest.approx(
        np.array([fit.params[k][1] for k in ("CL", "V")]), rel=0.01
    )


@pytest.mark.slow
def test_batched_equals_per_subject_run(runs):
    """A subject's draws depend only on its key, start and data: the rich subject run
    alone with its key (and the same MAP start) gives the batched run's draws, or, where
    the solver's batched and single runs differ in the last bits and a trajectory then
    takes another turn, draws from the same distribution (means within 5 SEs of the
    difference of two independent means)."""
    ds, fit, post, keys, _ = runs
    fit2 = dataclasses.replace(fit, ids=[2], etas=fit.etas[1:], cov_eta=fit.cov_eta[1:])
    one = sample_posterior(
        IV,
        ds.subset([2]),
        POP,
        ERR,
        n_chains=N_CHAINS,
        n_warmup=N_WARMUP,
        n_draws=N_DRAWS,
        key=keys[1:],
        init=fit2,
    )
    a, b = one.etas[0], post.etas[1]
    same = np.isclose(a, b, rtol=1e-9, atol=1e-12).all(axis=-1).mean()
    if same < 1.0:
        sa = a.reshape(-1, 2).std(axis=0) / np.sqrt(one.ess_bulk[0])
        sb = b.reshape(-1, 2).std(axis=0) / np.sqrt(post.ess_bulk[1])
        diff = np.abs(a.reshape(-1, 2).mean(0) - b.reshape(-1, 2).mean(0))
        assert np.all(diff < 5 * np.hypot(sa, sb)), (same, diff, sa, sb)


@pytest.mark.slow
def test_forecast_bands_from_the_posterior(runs):
    """The 90 % band of a new regimen's forecast: the exact (grid) posterior puts 5 %
    of its mass below the lower and above the upper edge, within 4 Monte-Carlo SEs of
    a tail probability, sqrt(0.05 * 0.95 / ESS); the bands cover the simulated truth."""
    _, _, post, _, grids = runs
    reg = tj.Regimen([tj.Dose(amt=DOSE, cmt="central", time=0.0, ii=12.0, addl=2)])
    ts = np.linspace(1.0, 36.0, 8)
    covered = []
    for i, sid in enumerate(post.ids):
        fc = forecast_posterior(post, reg, ts, subject=sid)
        assert fc.samples.shape == (N_CHAINS * N_DRAWS, ts.size)
        assert np.all(fc.pi_lower <= fc.lower) and np.all(fc.upper <= fc.pi_upper)
        E1, E2, w = grids[sid]
        cl, v = TYP["CL"] * np.exp(E1), TYP["V"] * np.exp(E2)
        tol = 4 * np.sqrt(0.05 * 0.95 / np.min(post.ess_tail[i]))
        for j, t in enumerate(ts):
            c = sum(conc(cl, v, t - d) for d in (0.0, 12.0, 24.0) if d <= t)
            assert abs(np.sum(w[c < fc.lower[j]]) - 0.05) < tol, (sid, t)
            assert abs(np.sum(w[c > fc.upper[j]]) - 0.05) < tol, (sid, t)
        e = ETA_TRUE[sid]
        truth = sum(
            conc(TYP["CL"] * np.exp(e[0]), TYP["V"] * np.exp(e[1]), ts - d) * (ts >= d)
            for d in (0.0, 12.0, 24.0)
        )
        covered.append((fc.lower <= truth) & (truth <= fc.upper))
        # the true curve is the median of a new observation: inside the 90 % PI
        assert np.all((fc.pi_lower <= truth) & (truth <= fc.pi_upper)), sid
    # the parameter bands (90 %) hold the true curves at most times (2 subjects x 8
    # times, strongly correlated: a loose check; the exact check is the one above)
    assert np.mean(covered) >= 0.5, np.mean(covered, axis=1)
    fc2 = post.forecast(reg, ts, subject=1, n_samples=200)
    assert fc2.samples.shape == (200, ts.size)


@pytest.mark.slow
def test_dose_by_probability_of_target_attainment(runs):
    """The PTA of every candidate dose equals the exact posterior's within 4 MC SEs,
    and the chosen dose maximises it."""
    _, _, post, _, grids = runs
    window = (1.0, 2.5)
    res = optimise_dose_posterior(
        post,
        target="trough",
        window=window,
        cmt="central",
        dose_range=(50.0, 800.0),
        n_doses=3,
        interval=12.0,
        subject=1,
        n_candidates=15,
        n_samples=None,
    )
    assert res.pta == pytest.approx(res.pta_curve.max()) and res.n_samples == N_CHAINS * N_DRAWS
    E1, E2, w = grids[1]
    cl, v = TYP["CL"] * np.exp(E1), TYP["V"] * np.exp(E2)
    ess = float(np.min(post.ess_bulk[0]))
    for d, p in zip(res.doses, res.pta_curve):
        trough = sum(conc(cl, v, 36.0 - s, dose=d) for s in (0.0, 12.0, 24.0))
        exact = float(np.sum(w[(trough >= window[0]) & (trough <= window[1])]))
        assert abs(p - exact) < 4 * np.sqrt(max(exact * (1 - exact), 0.01) / ess) + 1e-3, d
    assert 0.3 < res.pta <= 1.0 and window[0] <= res.median_value <= window[1]


# ------------------------------------------------------------------ refusals
def test_bad_input_is_refused_before_compiling(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("compiled")

    monkeypatch.setattr(_posterior, "_nuts_batched", boom)
    ds = make_data()
    cases = [
        (dict(n_chains=0), ValueError, "n_chains must be >= 1"),
        (dict(n_draws=2), ValueError, "n_draws must be >= 4"),
        (dict(n_chains=1, n_draws=4), ValueError, "at least 8 draws"),
        (dict(n_warmup=2.5), TypeError, "n_warmup must be an integer"),
        (dict(target_accept=1.2), ValueError, "target_accept must be in"),
        (dict(max_tree_depth=40), ValueError, "max_tree_depth must be in"),
        (dict(key=jax.random.split(jax.random.key(0), 3)), ValueError, "one key or 2 keys"),
        (dict(key=0), TypeError, "typed JAX PRNG key"),
        (dict(init="map"), TypeError, "init must be a FitResult"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            sample_posterior(IV, ds, POP, ERR, **kw)
    with pytest.raises(ValueError, match="no IIV"):
        sample_posterior(IV, ds, tj.Population(IV, typical=TYP), ERR)
    with pytest.raises(ValueError, match="unknown output|output"):
        sample_posterior(IV, ds, POP, ERR, output="nope")
