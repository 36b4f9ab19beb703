"""Uncertainty of FOCE-I population fits: covariance step, likelihood profiles, bootstrap.

The reference problem is the linear random-intercept model ``y_ij = B + eta_i + eps_ij``
(``eta ~ N(0, omega)``, ``eps ~ N(0, sigma^2)``, balanced: ``n`` observations per
subject). FOCE-I's Laplace approximation is exact for it, and everything has a closed
form: subject ``i``'s ``-2 log L`` is ``log det V + r' V^-1 r`` with ``V = sigma^2 I +
omega 11'``; the MLE is ``B = mean(ybar_i)``, ``sigma^2 = SSW / (N (n - 1))``, ``tau =
mean((ybar_i - B)^2)``, ``omega = tau - sigma^2 / n``; the profile of ``B`` is
``N log(1 + (B - B_hat)^2 / tau_hat)`` and that of ``sigma`` is ``N (n - 1) log(s^2 /
sigma_hat^2) + SSW (1 / s^2 - 1 / sigma_hat^2)``.
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
    bootstrap,
    covariance_step,
    fit_population,
    profile_likelihood,
    resample_counts,
)
from twinjax.calibrate._covstep import Problem, _refuse_not_pd
from twinjax.ode import Model, State
from twinjax.ode._param import real

N_SUB, N_OBS = 20, 4


class Intercept(Model):
    """``Y = B`` (a constant state keeps the ODE machinery in the loop)."""

    time_unit = "h"

    @property
    def states(self):  # type: ignore[override]
        return (State("x", "1"),)

    @property
    def params(self):  # type: ignore[override]
        return (real("B", 5.0, "1", doc="level"),)

    def rhs(self, t, y, p, u):
        return {"x": 0.0 * y["x"]}

    def init(self, p):
        return {"x": jnp.zeros_like(p["B"])}

    def observe(self, t, y, p):
        return {"Y": p["B"] + y["x"]}


MODEL = Intercept()


def _data(seed=0):
    rng = np.random.default_rng(seed)
    b = 10.0 + 2.0 * rng.standard_normal(N_SUB)
    y = b[:, None] + rng.standard_normal((N_SUB, N_OBS))
    rows = [
        dict(ID=i + 1, TIME=float(j + 1), DV=y[i, j], AMT=0.0, EVID=0, CMT=1)
        for i in range(N_SUB)
        for j in range(N_OBS)
    ]
    return tj.Dataset(pd.DataFrame(rows), compartments={1: "x"}), y


DATA, Y = _data()


def closed_mle(w=None):
    """Closed-form MLE ``(B, omega, sigma)`` with subject weights ``w`` (counts)."""
    w = np.ones(N_SUB) if w is None else np.asarray(w, float)
    yb = Y.mean(1)
    ssw = ((Y - yb[:, None]) ** 2).sum(1)
    b = (w * yb).sum() / w.sum()
    s2 = (w * ssw).sum() / (w.sum() * (N_OBS - 1))
    tau = (w * (yb - b) ** 2).sum() / w.sum()
    return np.array([b, tau - s2 / N_OBS, np.sqrt(s2)])


def closed_terms(phi):
    """Per-subject ``-2 log L`` (no ``n log 2 pi``) at ``phi = (B, log sqrt(omega),
    log sigma)``, the outer vector of ``fit_population``."""
    b, w, ls = phi[0], phi[1], phi[2]
    V = jnp.exp(2 * ls) * jnp.eye(N_OBS) + jnp.exp(2 * w) * jnp.ones((N_OBS, N_OBS))
    r = jnp.asarray(Y) - b
    _, ld = jnp.linalg.slogdet(V)
    return ld + jnp.einsum("ij,jk,ik->i", r, jnp.linalg.inv(V), r)


@pytest.fixture(scope="module")
def lin_fit():
    start = tj.Population(MODEL, typical={"B": 8.0}, omega={"B": 1.0})
    return fit_population(MODEL, DATA, start, ErrorModel("additive", add=2.0))


# ------------------------------------------------------------------ covariance step
def test_covariance_step_matches_the_closed_form(lin_fit):
    fit = lin_fit
    assert fit.converged
    np.testing.assert_allclose(fit.estimates.estimate.values, closed_mle(), rtol=2e-5)
    steps = {k: covariance_step(fit, DATA, kind=k) for k in ("R", "S", "sandwich")}
    c = steps["sandwich"]
    phi = Problem.from_fit(fit, DATA).phi_hat
    f = jax.jit(lambda p: jnp.sum(closed_terms(p)))
    R = np.asarray(jax.hessian(f)(jnp.asarray(phi)))
    g = np.asarray(jax.jacfwd(closed_terms)(jnp.asarray(phi)))  # (N, P)
    S = g.T @ g
    # FOCE-I is exact here: the objective, R and S are the closed form's
    assert c.ofv == pytest.approx(float(f(jnp.asarray(phi))), abs=1e-6)
    assert c.ofv == pytest.approx(fit.ofv, abs=1e-6)
    np.testing.assert_allclose(c.subject_gradients, g, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c.R, R, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.S, S, rtol=1e-4, atol=1e-6)
    # NONMEM's three matrices (MATRIX=R: 2 R^-1, MATRIX=S: 4 S^-1, default R^-1 S R^-1)
    Ri = np.linalg.inv(R)
    # (atol: entries that are 0 in the closed form come out ~1e-15)
    np.testing.assert_allclose(steps["R"].cov_phi, 2 * Ri, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(steps["S"].cov_phi, 4 * np.linalg.inv(S), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(c.cov_phi, Ri @ S @ Ri, rtol=1e-4, atol=1e-12)
    # MATRIX=R is what fit_population reports
    np.testing.assert_allclose(steps["R"].table.se, fit.estimates.se, rtol=1e-4)
    # natural scale by the delta method: B is phi[0]; OMEGA = exp(2 w); SIGMA = exp(ls)
    for k, cs in steps.items():
        J = np.diag([1.0, 2 * closed_mle()[1], closed_mle()[2]])
        se = np.sqrt(np.diag(J @ cs.cov_phi @ J))
        np.testing.assert_allclose(cs.table.se.values, se, rtol=1e-4, err_msg=k)
        assert list(cs.table.index) == list(fit.estimates.index)
    # B's sandwich and R SEs both equal sqrt(tau_hat / N) in this model
    tau = closed_mle()[1] + closed_mle()[2] ** 2 / N_OBS
    assert c.table.loc["B", "se"] == pytest.approx(np.sqrt(tau / N_SUB), rel=1e-4)
    assert steps["R"].table.loc["B", "se"] == pytest.approx(np.sqrt(tau / N_SUB), rel=1e-4)


def test_subject_gradients_are_derivatives_of_the_subject_terms(lin_fit):
    """Away from the optimum, each subject's gradient (modes re-solved) against central
    finite differences of its own FOCE-I term."""
    prob = Problem.from_fit(lin_fit, DATA)
    phi = prob.phi_hat + np.array([0.3, -0.2, 0.1])
    v, g, _ = prob.subject_terms(phi)
    np.testing.assert_allclose(v, np.asarray(closed_terms(jnp.asarray(phi))), atol=1e-6)
    h = 1e-5
    fd = np.zeros_like(g)
    for j in range(phi.size):
        e = np.zeros(phi.size)
        e[j] = h
        fd[:, j] = (prob.subject_terms(phi + e)[0] - prob.subject_terms(phi - e)[0]) / (2 * h)
    assert np.max(np.abs(g)) > 0.1  # not at a stationary point
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-5)


def test_not_positive_definite_is_refused_naming_the_parameters():
    labels = ["CL", "V", "OMEGA(CL,CL)"]
    M = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # V and OMEGA collinear
    with pytest.raises(np.linalg.LinAlgError, match=r"not positive definite.*V.*OMEGA\(CL,CL\)"):
        _refuse_not_pd("R", M, labels, "fix one")
    _refuse_not_pd("R", np.eye(3), labels, "")  # positive definite: no error


def test_bad_input_is_refused(lin_fit):
    with pytest.raises(ValueError, match="kind must be one of"):
        covariance_step(lin_fit, DATA, kind="RS")
    other = DATA.subset(list(range(1, 11)))
    with pytest.raises(ValueError, match="10 subjects.*fit had 20 subjects"):
        covariance_step(lin_fit, other)
    with pytest.raises(TypeError, match="PopulationFitResult"):
        covariance_step(lin_fit.individual, DATA)
    from twinjax.calibrate import SAEMResult

    saem_like = SAEMResult(
        **{f.name: getattr(lin_fit, f.name) for f in dataclasses.fields(lin_fit)}
    )
    with pytest.raises(TypeError, match="a SAEM fit"):
        bootstrap(saem_like, DATA, n=4)
    with pytest.raises(ValueError, match="not a fitted parameter.*'B'"):
        profile_likelihood(lin_fit, DATA, "CL")
    with pytest.raises(ValueError, match=r"outside its domain \(0.0, inf\)"):
        profile_likelihood(lin_fit, DATA, "SIGMA_add", values=[0.5, -1.0])
    with pytest.raises(ValueError, match="n must be an integer >= 3"):
        profile_likelihood(lin_fit, DATA, "B", n=2)
    with pytest.raises(ValueError, match="counts row 1 sums to 19"):
        bad = np.ones((3, N_SUB), int)
        bad[1, 0] = 0
        bootstrap(lin_fit, DATA, counts=bad)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        bootstrap(lin_fit, DATA, n=1)


# ------------------------------------------------------------------ profiles
def test_profiles_match_the_closed_form(lin_fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, om, s = closed_mle()
    tau = om + s**2 / N_OBS
    pr = profile_likelihood(lin_fit, DATA, "B", n=7)
    assert pr.values.size == 7 and pr.estimate == pytest.approx(b, rel=1e-6)
    ref = N_SUB * np.log1p((pr.values - b) ** 2 / tau)
    np.testing.assert_allclose(pr.delta_ofv, ref, atol=2e-4)
    assert pr.converged.all()
    # omega follows B in the refits: omega(B) = omega_hat + (B - B_hat)^2
    np.testing.assert_allclose(pr.others["OMEGA(B,B)"], om + (pr.values - b) ** 2, rtol=1e-3)
    # the 95 % interval: N log(1 + d^2 / tau) = 3.8415
    d = np.sqrt(tau * np.expm1(3.841458820694124 / N_SUB))
    fine = profile_likelihood(lin_fit, DATA, "B", values=b + d * np.linspace(0.96, 1.04, 5))
    assert fine.ci[1] == pytest.approx(b + d, abs=2e-3 * d)
    assert np.isnan(fine.ci[0])  # the grid does not reach below the estimate
    assert pr.ci[0] == pytest.approx(b - d, abs=0.02 * d)  # coarse grid: interpolated
    # a variance parameter: SIGMA's profile
    ssw = ((Y - Y.mean(1, keepdims=True)) ** 2).sum()
    ps = profile_likelihood(lin_fit, DATA, "SIGMA_add", n=5, width=2.0)
    v2 = ps.values**2
    ref = N_SUB * (N_OBS - 1) * np.log(v2 / s**2) + ssw * (1 / v2 - 1 / s**2)
    np.testing.assert_allclose(ps.delta_ofv, ref, atol=2e-4)
    fig = pr.plot()
    assert fig.axes[0].get_xlabel() == "B" and len(fig.axes[0].lines) >= 4
    plt.close(fig)


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_refits_match_the_closed_form(lin_fit):
    W = resample_counts(N_SUB, 8, seed=1)
    assert W.shape == (8, N_SUB) and np.all(W.sum(1) == N_SUB)
    np.testing.assert_array_equal(W, resample_counts(N_SUB, 8, seed=1))
    # batch=3: three compiled calls per evaluation, the last one padded
    bs = bootstrap(lin_fit, DATA, counts=W, batch=3, tol=1e-8)
    assert bs.n_failed == 0 and bs.n_not_converged == 0 and bs.converged.all()
    ref = np.stack([closed_mle(w) for w in W])
    np.testing.assert_allclose(bs.estimates, ref, rtol=1e-4)
    lo, hi = np.quantile(ref, [0.025, 0.975], axis=0)
    np.testing.assert_allclose(bs.table.ci_lo, lo, rtol=1e-4)
    np.testing.assert_allclose(bs.table.ci_hi, hi, rtol=1e-4)
    np.testing.assert_allclose(bs.table.boot_se, ref.std(0, ddof=1), rtol=2e-3)
    # seeded draws: the same seed, the same resamples (with the progress bar on)
    same = bootstrap(lin_fit, DATA, n=8, seed=1, batch=3, tol=1e-8, progress=True)
    np.testing.assert_array_equal(same.counts, W)
    np.testing.assert_allclose(same.estimates, bs.estimates, rtol=1e-8)


# ------------------------------------------------------------------ published models
def _at(model, data, pop, error, **kw):
    """A ``PopulationFitResult`` at given estimates (no outer iteration)."""
    return fit_population(
        model, data, pop, error, max_outer=0, polish=False, covariance=False, **kw
    )


@pytest.mark.slow
def test_pheno_sandwich_matches_nonmem_covariance_step():
    """NONMEM 7.4.2's ``$COVARIANCE UNCONDITIONAL`` (default matrix: the sandwich) of
    PHENO (pharmpy ``pheno_real.mod`` / ``.ext``, the reference of
    ``calibration/phenobarbital.py``), evaluated at NONMEM's final estimates."""
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "calibration"))
    import phenobarbital as ph

    est = {k: v[0] for k, v in ph.NONMEM.items()}
    model, start = ph.model_and_start(1.0 + est["THETA3"])
    pop = tj.Population(
        model,
        typical={"CL": est["THETA1"], "V": est["THETA2"]},
        covariates=start.covariates,
        omega={"CL": est["OMEGA(1,1)"], "V": est["OMEGA(2,2)"]},
    )
    err = ErrorModel("proportional", prop=math.sqrt(est["SIGMA(1,1)"]))
    fit = _at(model, tj.data.datasets.phenobarbital(), pop, err)
    assert fit.ofv == pytest.approx(ph.NONMEM_OFV, abs=1e-3)
    c = covariance_step(fit, None, kind="sandwich")
    mine = ph.twinjax_as_nonmem(dataclasses.replace(fit, estimates=c.table))
    for k, (_, ref_se) in ph.NONMEM.items():
        assert mine[k][1] == pytest.approx(ref_se, rel=0.01), k  # measured: within 0.1 %


@pytest.mark.slow
def test_theophylline_covariance_step():
    """Theophylline (FOCE-I optimum, tight ODE tolerances): each subject's gradient
    against finite differences of its own term; sandwich SEs of the magnitude of the
    R-matrix SEs (measured ratios 0.73-1.91, see docs/calibration.md)."""
    from twinjax.models import pk
    from twinjax.solve._ensemble import Ensemble

    oral = pk.one_compartment(absorption="first_order")
    # the FOCE-I optimum (docs/calibration.md, calibration/theophylline.py)
    pop = tj.Population(
        oral,
        typical={"KA": 1.590237, "CL": 2.751537, "V": 31.808869},
        omega={"KA": 0.402355, "CL": 0.069095, "V": 0.019159},
    )
    data = tj.data.datasets.theophylline()
    solver = Ensemble(rtol=1e-10, atol=1e-12)
    fit = _at(oral, data, pop, ErrorModel("additive", add=0.694410), solver=solver)
    assert fit.ofv == pytest.approx(116.803, abs=2e-3)
    prob = Problem.from_fit(fit, data)
    phi = prob.phi_hat
    v, g, _ = prob.subject_terms(phi)
    h = 1e-4
    fd = np.zeros_like(g)
    for j in range(phi.size):
        e = np.zeros(phi.size)
        e[j] = h
        fd[:, j] = (prob.subject_terms(phi + e)[0] - prob.subject_terms(phi - e)[0]) / (2 * h)
    scale = max(1.0, float(np.max(np.abs(fd))))
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-4 * scale)
    assert np.max(np.abs(g.sum(0))) < 0.05  # at the optimum the subjects' gradients cancel
    r = covariance_step(fit, data, kind="R").table.se
    s = covariance_step(fit, data, kind="sandwich").table.se
    ratio = s / r
    assert np.all((ratio > 0.5) & (ratio < 2.5)), ratio.to_dict()
