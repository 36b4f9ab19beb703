"""Forecasts, dose optimisation and posterior samples of fits with inter-occasion
variability (IOV): a future dose is a NEW occasion, whose kappa is 0 in the point
prediction and drawn from ``N(0, omega_iov^2)`` in the samples (NONMEM's and
Monolix's convention), while eta is the subject's own Laplace posterior.

Model: one-compartment IV bolus, IIV and IOV on CL only (V fixed), so a simulated
concentration gives back its draw's CL exactly, ``CL = -(V / t) log(C V / dose)``,
and the forecast's spread can be checked against the Laplace posterior in closed form:
``log CL ~ N(log TV + eta_hat, C_eta + omega_iov^2)`` at a new occasion.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import twinjax as tj
from twinjax.calibrate import ErrorModel, fit_individual, forecast, optimise_dose
from twinjax.calibrate import _forecast as fc_mod
from twinjax.calibrate._uncertainty import joint_posterior, posterior_samples
from twinjax.models import pk

IV = pk.one_compartment()
CL, V, DOSE = 3.0, 30.0, 100.0
TAU = 24.0  # one dose per occasion
SAMPLES = (1.0, 4.0, 8.0, 12.0)  # h after each dose
POP = tj.Population(IV, typical={"CL": CL, "V": V}, omega={"CL": 0.09})
ERR = ErrorModel("proportional", prop=0.1)
TINY = 1e-12  # omega_iov^2 -> 0


def cohort(n: int = 4, k: int = 2, seed: int = 0):
    """``n`` subjects, ``k`` occasions of one 100 mg bolus and 4 samples each; CL with
    IIV (SD 0.3) and IOV (SD 0.2), constant on each occasion (closed form: the amount
    after occasion ``o``'s dose is the previous one decayed by that occasion's CL plus
    the dose); proportional error 10 %."""
    rng = np.random.default_rng(seed)
    cl = CL * np.exp(rng.normal(0.0, 0.3, (n, 1)) + rng.normal(0.0, 0.2, (n, k)))
    rows = []
    for i in range(n):
        amount = 0.0
        for o in range(k):
            if o:
                amount *= np.exp(-cl[i, o - 1] / V * TAU)
            amount += DOSE
            t0 = TAU * o
            rows.append(dict(ID=i + 1, TIME=t0, DV=0.0, AMT=DOSE, EVID=1, MDV=1, OCC=o + 1))
            for s in SAMPLES:
                c = amount / V * np.exp(-cl[i, o] / V * s) * (1.0 + 0.1 * rng.standard_normal())
                rows.append(dict(ID=i + 1, TIME=t0 + s, DV=c, AMT=0.0, EVID=0, MDV=0, OCC=o + 1))
    return tj.data.Dataset(pd.DataFrame(rows).assign(CMT=1), {1: "central"})


@pytest.fixture(scope="module")
def data():
    return cohort()


@pytest.fixture(scope="module")
def fits(data):
    """MAP fits with omega_iov^2 = 1e-12, 0.04 and 0.25 (one program for the three)."""
    out = {w: fit_individual(IV, data, POP, ERR, iov={"CL": w}) for w in (TINY, 0.04, 0.25)}
    assert all(bool(np.all(f.converged)) for f in out.values())
    return out


REG = tj.Regimen([tj.Dose(amt=DOSE, cmt="central", time=0.0)])
TIMES = np.array([2.0, 6.0, 12.0])
NS = 4000  # forecast draws (one program: the draw count is static)


def log_cl(c, t):
    """Each draw's log CL from its concentration ``c`` at ``t`` after the bolus."""
    return np.log(-(V / t) * np.log(c * V / DOSE))


@pytest.mark.slow  # the fit and the forecast without IOV: two more programs (about 10 s)
def test_tiny_iov_forecasts_as_the_fit_without_iov(data, fits):
    plain, tiny = fit_individual(IV, data, POP, ERR), fits[TINY]
    assert bool(np.all(plain.converged))
    # the fits themselves agree (the kappas' prior pins them at 0)
    np.testing.assert_allclose(tiny.etas, plain.etas, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tiny.cov_eta, plain.cov_eta, rtol=1e-5)
    assert np.max(np.abs(tiny.kappas)) < 1e-5
    key = jax.random.key(5)
    a = forecast(plain, REG, TIMES, n_samples=NS, subject=2, key=key)
    b = forecast(tiny, REG, TIMES, n_samples=NS, subject=2, key=key)
    # the same eta draws; kappa SD 1e-6 moves a concentration by 1e-6 x CL t / V (< 1.6)
    c = forecast(tiny, REG, TIMES, n_samples=NS, subject=2, key=key, occasion="last")
    for name in ("map", "median", "lower", "upper", "pi_lower", "pi_upper", "samples"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(getattr(c, name), getattr(a, name), rtol=1e-5, err_msg=name)
    # ... and the MAP forecast is the simulation at the subject's eta_hat, kappa = 0
    p = {"CL": float(tiny.params["CL"][1]), "V": V}
    ref = np.asarray(tj.simulate(IV, p, REG, TIMES, solver=tiny.solver)["C"])
    np.testing.assert_allclose(b.map, ref, rtol=1e-9)


def test_new_occasion_spread_is_the_posterior_plus_omega_iov(fits):
    """The forecast's draws of a new occasion: log CL has the mean of the posterior
    mode and the variance ``C_eta + omega_iov^2``; the 90 % band is the closed-form
    one within Monte-Carlo error, and widens with omega_iov^2."""
    n, t = NS, TIMES[1]
    widths = []
    for w in (TINY, 0.04, 0.25):
        fit = fits[w]
        fc = forecast(fit, REG, TIMES, n_samples=n, subject=3, key=jax.random.key(7))
        x = log_cl(fc.samples[:, 1], t)
        m = np.log(CL) + float(fit.etas[2, 0])
        s2 = float(fit.cov_eta[2, 0, 0]) + w
        # sample variance: relative SE sqrt(2 / (n - 1)) = 2.2 %; mean: SE sqrt(s2 / n)
        assert np.var(x, ddof=1) == pytest.approx(s2, rel=4 * np.sqrt(2 / (n - 1)))
        assert abs(np.mean(x) - m) < 4 * np.sqrt(s2 / n)
        # 5 % / 95 % quantiles (C falls with CL): SE of a 5 % sample quantile is
        # sqrt(0.05 * 0.95 / n) / phi(1.645) = 0.033 SD
        z = norm.ppf(0.95)
        assert abs(log_cl(fc.lower[1], t) - (m + z * np.sqrt(s2))) < 4 * 0.033 * np.sqrt(s2)
        assert abs(log_cl(fc.upper[1], t) - (m - z * np.sqrt(s2))) < 4 * 0.033 * np.sqrt(s2)
        assert float(fc.map[1]) == pytest.approx(DOSE / V * np.exp(-np.exp(m) * t / V), rel=1e-6)
        widths.append(np.log(fc.upper / fc.lower))
    assert np.all(widths[1] > 1.5 * widths[0]) and np.all(widths[2] > 1.5 * widths[1])


def test_last_occasion_draws_eta_and_kappa_jointly(fits):
    """``occasion="last"`` continues the subject's last observed occasion: the point
    forecast uses ``eta_hat + kappa_hat`` of that occasion, and the draws of log CL
    have the variance of the JOINT Laplace posterior, ``C_ee + 2 C_ek + C_kk`` (the
    cross term is the posterior correlation of eta and that occasion's kappa, which
    the marginals ``cov_eta`` and ``cov_kappa`` do not hold)."""
    fit, n, t, sub = fits[0.25], NS, TIMES[1], 3
    mean, C = joint_posterior(fit, sub)
    i, last = 2, 1  # subject 3's row; its second (last) occasion
    # the recomputed curvature is the fit's: its blocks are cov_eta and cov_kappa
    np.testing.assert_allclose(C[:1, :1], fit.cov_eta[i], rtol=1e-8)
    assert C[1, 1] == pytest.approx(float(fit.cov_kappa[i][last, last]), rel=1e-8)
    np.testing.assert_allclose(mean, [fit.etas[i, 0], fit.kappas[i, 0, last]], rtol=1e-12)
    rho = C[0, 1] / np.sqrt(C[0, 0] * C[1, 1])
    print("joint posterior:", mean, C.tolist(), "correlation", rho)
    assert rho < -0.1  # eta and kappa explain the same observations
    fc = forecast(fit, REG, TIMES, n_samples=n, subject=sub, key=jax.random.key(7), occasion="last")
    x = log_cl(fc.samples[:, 1], t)
    m = np.log(CL) + mean[0] + mean[1]
    s2 = C[0, 0] + 2 * C[0, 1] + C[1, 1]
    assert np.var(x, ddof=1) == pytest.approx(s2, rel=4 * np.sqrt(2 / (n - 1)))
    assert abs(np.mean(x) - m) < 4 * np.sqrt(s2 / n)
    assert float(fc.map[1]) == pytest.approx(DOSE / V * np.exp(-np.exp(m) * t / V), rel=1e-6)
    # without the cross term the variance would be off by more than the test's tolerance
    assert abs(2 * C[0, 1]) > 4 * 4 * np.sqrt(2 / (n - 1)) * s2
    # posterior samples: the same eta draws as a new occasion, kappa from the joint
    key = jax.random.key(3)
    p_new, e_new = posterior_samples(fit, 8, key, subject=sub, occasion="new")
    p_last, e_last = posterior_samples(fit, 8, key, subject=sub, occasion="last")
    np.testing.assert_array_equal(e_last[:, 0], e_new[:, 0])
    np.testing.assert_allclose(np.log(p_last["CL"]), np.log(CL) + e_last[:, 0] + e_last[:, 1])
    np.testing.assert_allclose(e_last[0], mean, rtol=1e-12)  # the first: the mode


def test_last_occasion_with_tiny_iov_is_the_new_occasion(fits):
    """omega_iov^2 -> 0: the last occasion's kappa is pinned at 0 with no posterior
    spread, so continuing it forecasts as a new occasion (and as the fit without IOV:
    tests/test_iov_forecast.py's slow test)."""
    fit, key = fits[TINY], jax.random.key(5)
    mean, C = joint_posterior(fit, 2)
    assert abs(mean[1]) < 1e-8 and C[1, 1] < 1e-11 and abs(C[0, 1]) < 1e-9
    a = forecast(fit, REG, TIMES, n_samples=NS, subject=2, key=key, occasion="new")
    b = forecast(fit, REG, TIMES, n_samples=NS, subject=2, key=key, occasion="last")
    for name in ("map", "median", "lower", "upper", "pi_lower", "pi_upper", "samples"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-5, err_msg=name)


@pytest.mark.slow  # the general path's own simulation program
def test_general_path_draws_the_same_new_occasion(fits):
    """Per-draw times take the general path (``posterior_samples(..., occasion="new")``
    then ``simulate``): the same draws, kappas included, as the bucketed program
    (measured: equal to 2e-15)."""
    fit, key = fits[0.25], jax.random.key(7)
    a = forecast(fit, REG, TIMES, n_samples=NS, subject=3, key=key)
    per_draw = np.broadcast_to(TIMES, (NS, TIMES.size))
    b = forecast(fit, REG, per_draw, n_samples=NS, subject=3, key=key)
    np.testing.assert_allclose(b.samples, a.samples, rtol=1e-12)
    np.testing.assert_allclose(b.lower, a.lower, rtol=1e-12)


def test_posterior_samples_of_a_new_occasion(fits):
    fit = fits[0.25]
    key = jax.random.key(3)
    p0, e0 = posterior_samples(fit, 2000, key, subject=1)
    p1, e1 = posterior_samples(fit, 2000, key, subject=1, occasion="new")
    assert e0.shape == (2000, 1) and e1.shape == (2000, 2)  # [eta | kappa_CL]
    np.testing.assert_array_equal(e1[:, :1], e0)  # the same eta draws
    # without occasion: the value without kappa; a new occasion adds the drawn kappa
    np.testing.assert_allclose(np.log(p0["CL"]), np.log(CL) + e0[:, 0], rtol=1e-12)
    np.testing.assert_allclose(np.log(p1["CL"]), np.log(CL) + e1[:, 0] + e1[:, 1], rtol=1e-12)
    assert float(e1[0, 1]) == 0.0 and float(p1["CL"][0]) == pytest.approx(fit.params["CL"][0])
    kap = np.asarray(e1[1:, 1])
    assert np.var(kap, ddof=1) == pytest.approx(0.25, rel=4 * np.sqrt(2 / kap.size))
    assert abs(np.corrcoef(kap, e1[1:, 0])[0, 1]) < 4 / np.sqrt(kap.size)


@pytest.mark.slow  # its own compiled program (about 6 s of CPU)
def test_optimise_dose_integrates_over_the_new_kappa(fits):
    """Trough target after 3 daily boluses: the loss is the mean over draws of
    (log trough - log centre)^2, so its optimum is ``log dose = log centre - mean_s
    log u_s`` with ``u_s`` draw s's trough per unit dose (closed form here). With the
    new occasion's kappas in the draws the dose is that optimum, about 20 % above the
    one of the same eta draws without kappa (the trough ~ exp(-CL tau / V) is concave
    in log CL, so spreading log CL lowers the mean log trough)."""
    fit, S, key = fits[0.25], 200, jax.random.key(11)
    lo, hi = 0.2, 0.5
    n_doses = 3

    def best_dose(params):
        k = np.asarray(params["CL"]) / V
        u = sum(np.exp(-k * (n_doses - j) * TAU) for j in range(n_doses)) / V
        return float(np.exp(np.log(np.sqrt(lo * hi)) - np.mean(np.log(u))))

    with_kappa = best_dose(posterior_samples(fit, S, key, 2, occasion="new")[0])
    without = best_dose(posterior_samples(fit, S, key, 2)[0])
    # measured: 154.6 against 128.1 (x 1.21; about x 1.3 expected over many draws)
    assert with_kappa > 1.1 * without
    d = optimise_dose(
        fit,
        target="trough",
        window=(lo, hi),
        cmt="central",
        n_doses=n_doses,
        interval=TAU,
        dose0=100.0,
        subject=2,
        n_samples=S,
        key=key,
        steps=300,
    )
    assert d.dose == pytest.approx(with_kappa, rel=1e-4)  # measured 1e-6
    # value: the trough at the MAP estimate (kappa 0)
    cl = float(fit.params["CL"][1])
    trough = d.dose / V * sum(np.exp(-cl / V * (n_doses - j) * TAU) for j in range(n_doses))
    assert d.value == pytest.approx(trough, rel=1e-4)
    # continuing the last occasion: the draws of (eta, kappa_last) from their joint
    # posterior, the first the mode; the dose is the closed-form optimum over them
    last = optimise_dose(
        fit,
        target="trough",
        window=(lo, hi),
        cmt="central",
        n_doses=n_doses,
        interval=TAU,
        dose0=100.0,
        subject=2,
        n_samples=S,
        key=key,
        steps=300,
        occasion="last",
    )
    samples = posterior_samples(fit, S, key, 2, occasion="last")[0]
    assert last.dose == pytest.approx(best_dose(samples), rel=1e-4)
    assert abs(np.log(last.dose / d.dose)) > 0.05  # not the new occasion's dose


@pytest.mark.parametrize(
    "call, match",
    [
        ("forecast_none", r"forecast: occasion must be one of \['new', 'last'\].*got None"),
        ("forecast_n", r"n_samples must be an integer >= 1, got 0"),
        ("dose_bad", r"optimise_dose: occasion must be one of \['new', 'last'\].*got 'next'"),
        ("dose_n", r"n_samples must be an integer >= 1, got 1.5"),
        ("samples_bad", r"posterior_samples: occasion must be one of \[None, 'new', 'last'\]"),
    ],
)
def test_bad_arguments_are_refused_before_compiling(fits, call, match, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before refusing")

    for name in ("_forecast_program", "simulate", "simulate_core", "posterior_samples"):
        monkeypatch.setattr(fc_mod, name, no_compile)
    fit = fits[0.04]
    dose = dict(target="trough", window=(1.0, 2.0), cmt="central", subject=1)
    with pytest.raises(ValueError, match=match):
        if call == "forecast_none":
            forecast(fit, REG, TIMES, subject=1, occasion=None)
        elif call == "forecast_n":
            forecast(fit, REG, TIMES, subject=1, n_samples=0)
        elif call == "dose_bad":
            optimise_dose(fit, occasion="next", **dose)
        elif call == "dose_n":
            optimise_dose(fit, n_samples=1.5, **dose)
        else:
            posterior_samples(fit, 4, jax.random.key(0), 1, occasion="old")
