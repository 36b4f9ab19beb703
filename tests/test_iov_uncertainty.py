"""Uncertainty of FOCE-I fits with inter-occasion variability (IOV): covariance step,
likelihood profile and bootstrap with ``OMEGA_IOV`` among the estimated parameters.

The reference problem is the linear random-intercept model with occasions, ``y_ijo = B
+ eta_i + kappa_io + eps_ijo`` (``eta ~ N(0, omega)``, ``kappa ~ N(0, omega_iov)``,
``eps ~ N(0, sigma^2)``; ``K`` occasions of ``n`` observations per subject). FOCE-I's
Laplace approximation is exact for it, so the objective has a closed form: subject
``i``'s ``-2 log L`` is ``log det V + r' V^-1 r`` with ``V = sigma^2 I + omega 11' +
omega_iov blockdiag(11')`` (one block per occasion). The outer vector of
``fit_population`` is ``phi = (B, log sqrt(omega), log sqrt(omega_iov), log sigma)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.optimize as so

import twinjax as tj
from twinjax.calibrate import (
    ErrorModel,
    bootstrap,
    covariance_step,
    fit_population,
    profile_likelihood,
)
from twinjax.calibrate._covstep import Problem
from twinjax.ode import Model, State
from twinjax.ode._param import real

N_SUB, K_OCC, N_OBS = 16, 3, 3
TRUE = dict(B=10.0, omega=1.0, omega_iov=0.5, sigma=0.5)


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


def _data(seed=3):
    """``N_SUB`` subjects, ``K_OCC`` occasions 24 h apart, ``N_OBS`` samples each."""
    rng = np.random.default_rng(seed)
    eta = np.sqrt(TRUE["omega"]) * rng.standard_normal((N_SUB, 1, 1))
    kap = np.sqrt(TRUE["omega_iov"]) * rng.standard_normal((N_SUB, K_OCC, 1))
    eps = TRUE["sigma"] * rng.standard_normal((N_SUB, K_OCC, N_OBS))
    y = TRUE["B"] + eta + kap + eps
    rows = [
        dict(ID=i + 1, TIME=24.0 * o + j + 1.0, DV=y[i, o, j], AMT=0.0, EVID=0, CMT=1, OCC=o + 1)
        for i in range(N_SUB)
        for o in range(K_OCC)
        for j in range(N_OBS)
    ]
    return tj.Dataset(pd.DataFrame(rows), compartments={1: "x"}), y.reshape(N_SUB, -1)


DATA, Y = _data()
BLOCKS = jnp.asarray(np.kron(np.eye(K_OCC), np.ones((N_OBS, N_OBS))))


def closed_terms(phi):
    """Per-subject ``-2 log L`` (no ``n log 2 pi``) at the outer vector ``phi``."""
    b, w, wk, ls = phi[0], phi[1], phi[2], phi[3]
    m = K_OCC * N_OBS
    V = jnp.exp(2 * ls) * jnp.eye(m) + jnp.exp(2 * w) * jnp.ones((m, m)) + jnp.exp(2 * wk) * BLOCKS
    r = jnp.asarray(Y) - b
    _, ld = jnp.linalg.slogdet(V)
    return ld + jnp.einsum("ij,jk,ik->i", r, jnp.linalg.inv(V), r)


_total = jax.jit(lambda p, w: jnp.sum(w * closed_terms(p)))
_grad = jax.jit(jax.grad(lambda p, w: jnp.sum(w * closed_terms(p))))


def closed_fit(w=None, fixed=None, start=None):
    """The closed-form objective's minimum (weights ``w``; ``fixed = (j, value)`` holds
    coordinate ``j``): ``(phi, ofv)``."""
    w = jnp.ones(N_SUB) if w is None else jnp.asarray(w, float)
    x0 = np.array([10.0, 0.0, -0.3, -0.7]) if start is None else np.asarray(start, float)
    free = [j for j in range(4) if fixed is None or j != fixed[0]]

    def full(u):
        p = np.array(x0)
        p[free] = u
        if fixed is not None:
            p[fixed[0]] = fixed[1]
        return jnp.asarray(p)

    res = so.minimize(
        lambda u: float(_total(full(u), w)),
        x0[free],
        jac=lambda u: np.asarray(_grad(full(u), w))[free],
        method="BFGS",
        options=dict(gtol=1e-10, maxiter=500),
    )
    return np.asarray(full(res.x)), float(res.fun)


@pytest.fixture(scope="module")
def iov_fit():
    start = tj.Population(MODEL, typical={"B": 8.0}, omega={"B": 2.0})
    return fit_population(MODEL, DATA, start, ErrorModel("additive", add=1.0), iov={"B": 0.2})


def test_iov_covariance_step_matches_the_closed_form(iov_fit):
    """R (Hessian of the OFV) and S (per-subject gradients) with OMEGA_IOV among the
    parameters, against automatic derivatives of the closed-form objective; the three
    NONMEM covariances and the natural-scale table by the delta method."""
    fit = iov_fit
    assert fit.converged, fit.message
    phi_ref, ofv_ref = closed_fit()
    labels = ["B", "OMEGA(B,B)", "OMEGA_IOV(B)", "SIGMA_add"]
    assert list(fit.estimates.index) == labels
    nat_ref = [phi_ref[0], np.exp(2 * phi_ref[1]), np.exp(2 * phi_ref[2]), np.exp(phi_ref[3])]
    np.testing.assert_allclose(fit.estimates.estimate.values, nat_ref, rtol=1e-4)
    assert fit.ofv == pytest.approx(ofv_ref, abs=1e-5)
    steps = {k: covariance_step(fit, DATA, kind=k) for k in ("R", "S", "sandwich")}
    c = steps["sandwich"]
    phi = Problem.from_fit(fit, None).phi_hat  # the fit's own prepared data: the same vector
    np.testing.assert_allclose(phi, Problem.from_fit(fit, DATA).phi_hat, rtol=0, atol=0)
    R = np.asarray(jax.hessian(lambda p: jnp.sum(closed_terms(p)))(jnp.asarray(phi)))
    g = np.asarray(jax.jacfwd(closed_terms)(jnp.asarray(phi)))
    S = g.T @ g
    assert c.ofv == pytest.approx(float(jnp.sum(closed_terms(jnp.asarray(phi)))), abs=1e-6)
    np.testing.assert_allclose(c.subject_gradients, g, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c.R, R, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c.S, S, rtol=1e-4, atol=1e-6)
    Ri = np.linalg.inv(R)
    np.testing.assert_allclose(steps["R"].cov_phi, 2 * Ri, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(steps["S"].cov_phi, 4 * np.linalg.inv(S), rtol=1e-3, atol=1e-10)
    np.testing.assert_allclose(c.cov_phi, Ri @ S @ Ri, rtol=1e-3, atol=1e-10)
    # MATRIX=R is what fit_population reports, OMEGA_IOV included
    np.testing.assert_allclose(steps["R"].table.se, fit.estimates.se, rtol=1e-3)
    # delta method: OMEGA_IOV = exp(2 phi_2), so SE = 2 OMEGA_IOV SE(phi_2)
    oi = fit.omega_iov["B"]
    for k, cs in steps.items():
        print(k, cs.table.to_string(), sep="\n")
        se = 2 * oi * np.sqrt(cs.cov_phi[2, 2])
        assert cs.table.loc["OMEGA_IOV(B)", "se"] == pytest.approx(se, rel=1e-8), k
        assert 0 < cs.table.loc["OMEGA_IOV(B)", "rse_pct"] < 100, k


def test_iov_profile_matches_the_closed_form_and_the_wald_interval(iov_fit):
    """The profile of OMEGA_IOV (the kappas re-estimated at every refit) is the
    closed form's, its 95 % interval contains the simulated truth, and near the estimate
    it is the Wald quadratic of the covariance step's SE: at +-0.5 SE of log omega_iov
    the profile rises by 0.25 (the curvature test of the SE)."""
    fit = iov_fit
    j = 2
    se_z = np.sqrt(fit.cov_phi[j, j])  # SE of log sqrt(omega_iov) (MATRIX=R)
    z_hat = 0.5 * np.log(fit.omega_iov["B"])
    # +-0.5 SE (the curvature) and points on both sides of each 95 % crossing
    zs = z_hat + se_z * np.array([-2.25, -1.75, -0.5, 0.5, 1.75, 2.25])
    pr = profile_likelihood(fit, DATA, "OMEGA_IOV(B)", values=np.exp(2 * zs))
    assert pr.converged.all() and pr.values.size == 7  # the estimate added
    phi_ref, ofv_ref = closed_fit()
    ref = [closed_fit(fixed=(j, 0.5 * np.log(v)), start=phi_ref)[1] - ofv_ref for v in pr.values]
    np.testing.assert_allclose(pr.delta_ofv, ref, atol=2e-4)
    quad = ((0.5 * np.log(pr.values) - z_hat) / se_z) ** 2
    inner = np.abs(np.log(pr.values) - 2 * z_hat) < 2 * se_z  # the +-0.5 SE points
    np.testing.assert_allclose(pr.delta_ofv[inner], quad[inner], rtol=0.05)
    lo, hi = pr.ci
    wald = np.exp(2 * (z_hat + 1.959964 * se_z * np.array([-1.0, 1.0])))
    print(pr, "delta OFV", pr.delta_ofv, "quadratic", quad, "Wald (log scale)", wald)
    assert lo < TRUE["omega_iov"] < hi
    # the Wald interval on the log scale, exp(2 (z_hat +- 1.96 SE)): the profile is
    # within 10 % of the quadratic out to 2.5 SE (measured at +-2.5 SE: 6.45 and 5.62
    # against 6.25), about 5 % of 1.96 SE in log omega_iov, 3 % in the CI's ends
    np.testing.assert_allclose([lo, hi], wald, rtol=0.05)


@pytest.mark.slow  # the batched programs of 20 resamples (about 30 s here)
def test_iov_bootstrap_resamples_subjects_with_their_occasions(iov_fit):
    """B = 20 resamples refitted together in one batched call per evaluation: each
    resample's estimates are the minimum of the closed form with the subjects' counts as
    weights (a subject enters with all its occasions), and the percentile interval of
    OMEGA_IOV contains the estimate."""
    fit = iov_fit
    bs = bootstrap(fit, DATA, n=20, seed=4, tol=1e-6)
    assert bs.n == 20 and bs.n_failed == 0 and bs.converged.all()
    assert bs.n_calls > 0 and bs.phi.shape == (20, 4)
    for b in (0, 7, 19):
        phi_ref, _ = closed_fit(bs.counts[b])
        np.testing.assert_allclose(bs.phi[b], phi_ref, atol=2e-4, err_msg=str(b))
    print(bs.summary())
    row = bs.table.loc["OMEGA_IOV(B)"]
    assert row.ci_lo < fit.omega_iov["B"] < row.ci_hi
    assert row.boot_se > 0


# ------------------------------------------------------------------ bounds on THETA
@pytest.mark.slow  # a fit of its own (another outer layout: about 25 s here)
def test_bounds_hold_a_typical_value_inside():
    """``fit_population(bounds=)`` holds a typical value inside ``(lower, upper)`` by
    its outer coordinate (NONMEM's transform of a bounded THETA): the unbounded MLE of
    B is 9.83 (test_iov_covariance_step_matches_the_closed_form), so with upper = 9.5
    the estimate ends just below 9.5, never above, and is named as at a bound; the
    covariance step and profiles rebuild the same outer vector. Bad bounds are refused
    before anything compiles."""
    start = tj.Population(MODEL, typical={"B": 8.0}, omega={"B": 2.0})
    err = ErrorModel("additive", add=1.0)
    for bad, match in [
        ({"C": (0.0, 1.0)}, r"bounds\['C'\]: unknown parameter"),
        ({"B": (9.0, 5.0)}, r"bounds\['B'\]: lower must be below upper"),
        ({"B": (8.5, 9.5)}, r"initial typical value 8 is not strictly inside \(8.5, 9.5\)"),
        ({"B": "12"}, r"bounds\[.B.\]: expected \(lower, upper\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit_population(MODEL, DATA, start, err, bounds=bad)
    fit = fit_population(MODEL, DATA, start, err, iov={"B": 0.2}, bounds={"B": (0.0, 9.5)})
    print(fit.summary(), fit.message)
    b = fit.theta["B"]
    assert b < 9.5 and b == pytest.approx(9.5, rel=1e-3)
    assert fit.at_bounds == ["B"] and "at a bound: B" in fit.message
    assert fit.bounds == {"B": (0.0, 9.5)}
    prob = Problem.from_fit(fit, None)
    assert prob.lay.theta_coef("B") is not None
    # B's outer coordinate is the logit of (B - 0) / 9.5, and it rebuilds the fit's B
    assert prob.natural(prob.phi_hat)[0] == pytest.approx(b, rel=1e-12)
    assert prob.phi_hat[0] == pytest.approx(np.log(b / (9.5 - b)), rel=1e-9)
    # the other parameters are the closed-form optimum with B held at its estimate
    phi_b, _ = closed_fit(fixed=(0, b))
    np.testing.assert_allclose(prob.phi_hat[1:], phi_b[1:], atol=2e-3)
