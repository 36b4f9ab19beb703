"""Estimated covariate coefficients (issue #17 item 3).

A covariate effect made with ``estimate=True`` has its coefficient(s) estimated by
FOCE-I with the typical values, Omega and sigma. Checked here: the coefficient API
(labels, factors, bounds), the refusals before any compilation, the exact gradient of
the FOCE-I objective in the coefficients against central finite differences of the
objective itself, that an estimated effect gives the same objective as the same effect
fixed, and (slow) the NONMEM PHENO model fitted as published, against NONMEM's own
FOCE-I run (calibration/phenobarbital.py).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import twinjax as tj
from twinjax.calibrate import ErrorModel, fit_population
from twinjax.calibrate import _nlme as nlme
from twinjax.calibrate._map import Spec, as_population, prepare_data
from twinjax.models import pk
from twinjax.population import Categorical, Exponential, Linear, Power
from twinjax.solve._ensemble import Ensemble

ROOT = Path(__file__).resolve().parents[1]
ORAL = pk.one_compartment(absorption="first_order")
START = dict(typical={"KA": 1.5, "CL": 2.8, "V": 32.0}, omega={"KA": 0.4, "CL": 0.07, "V": 0.02})


# ------------------------------------------------------------------ the coefficient API
def test_coefficients_labels_and_factors():
    x = jnp.asarray([1.0, 2.0, 4.0, 5.0, 9.0])
    p = Power("CL", "WT", 0.75, ref=70.0, estimate=True)
    assert p.coefficients() == {"CL~WT": 0.75} and p.coefficient_bounds() == (-math.inf, math.inf)
    np.testing.assert_allclose(p.factor_from(x, [0.5]), (x / 70.0) ** 0.5)
    np.testing.assert_allclose(p.factor(x), (x / 70.0) ** 0.75)
    assert p.with_coefficients([0.6]).theta == 0.6 and p.with_coefficients([0.6]).estimate
    lin = Linear("V", "AGE", 0.01, ref=3.0, estimate=True, name="V_slope")
    assert list(lin.coefficients()) == ["V_slope"]
    np.testing.assert_allclose(lin.factor_from(x, [-0.1]), 1.0 - 0.1 * (x - 3.0))
    ex = Exponential("KA", "AGE", 0.2, ref=2.0, estimate=True)
    np.testing.assert_allclose(ex.factor_from(x, [0.3]), np.exp(0.3 * (x - 2.0)))
    # a tuple of categories shares one factor (NONMEM's IF (APGR.LT.5) ...)
    c = Categorical("V", "APGAR", theta=1.2, level=(1, 2, 3, 4), estimate=True)
    assert c.coefficients() == {"V~APGAR": 1.2} and c.coefficient_bounds() == (0.0, math.inf)
    np.testing.assert_allclose(c.factor(x), [1.2, 1.2, 1.2, 1.0, 1.0])
    # one coefficient per listed category; the reference (unlisted) stays 1
    c2 = Categorical("CL", "RACE", factors={2: 0.8, 3: 1.3}, estimate=True)
    assert list(c2.coefficients()) == ["CL~RACE[2]", "CL~RACE[3]"]
    np.testing.assert_allclose(c2.factor_from(jnp.asarray([1.0, 2, 3]), [0.5, 2.0]), [1, 0.5, 2])
    assert c2.with_coefficients([0.5, 2.0]).table() == {2: 0.5, 3: 2.0}
    # positional arguments are as before; estimate/bounds/name are keyword only
    assert Power("CL", "WT", 1.0, 1.0).ref == 1.0 and not Power("CL", "WT").estimate


def test_bad_coefficient_settings_are_refused():
    with pytest.raises(ValueError, match="lower < upper"):
        Power("CL", "WT", 0.75, estimate=True, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"CL~WT = 0.75 .*strictly inside the bounds \(0.8, 2.0\)"):
        Power("CL", "WT", 0.75, estimate=True, bounds=(0.8, 2.0))
    with pytest.raises(ValueError, match="pair"):
        Power("CL", "WT", 0.75, bounds=(0.0,))
    with pytest.raises(ValueError, match="estimate must be True or False"):
        Power("CL", "WT", 0.75, estimate="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty tuple"):
        Categorical("V", "APGAR", theta=1.2, level=())


def _theo_with_covariates():
    """Theophylline with two covariate columns added: WT (from the data), and a
    made-up binary FORM (subjects 1-6: 0, 7-12: 1) to exercise categorical checks."""
    data = tj.data.datasets.theophylline()
    fd = prepare_data(ORAL, data, ErrorModel("additive", add=0.7))
    cov = fd.covariates.copy()
    cov["FORM"] = (np.arange(fd.n) >= 6).astype(float)
    cov["ONE"] = 1.0
    return dict(
        times=fd.times, dv=fd.dv, mask=fd.mask, regimens=fd.regimens, ids=fd.ids, covariates=cov
    )


def test_covariate_model_is_checked_before_fitting():
    data = _theo_with_covariates()
    err = ErrorModel("additive", add=0.7)

    def fit_with(*covs):
        pop = tj.Population(ORAL, covariates=covs, **START)
        return fit_population(ORAL, data, pop, err, max_outer=1, covariance=False)

    with pytest.raises(ValueError, match=r"Power\(CL ~ CRCL\).*no covariate column 'CRCL'"):
        fit_with(Power("CL", "CRCL", 0.75, estimate=True))
    with pytest.raises(ValueError, match=r"factor is -.* for subject ID 1 .*WT = 79.6"):
        fit_with(Linear("CL", "WT", 0.1, ref=90.0, estimate=True))
    with pytest.raises(ValueError, match="ONE is 1.0 for every subject"):
        fit_with(Power("CL", "ONE", 0.75, estimate=True))
    with pytest.raises(ValueError, match=r"no subject has FORM in \[2\]"):
        fit_with(Categorical("CL", "FORM", theta=0.9, level=2, estimate=True))
    with pytest.raises(ValueError, match="every category in the data.*reference"):
        fit_with(Categorical("CL", "FORM", factors={0: 1.0, 1: 0.9}, estimate=True))
    with pytest.raises(ValueError, match=r"share the labels \['CL~WT'\]"):
        fit_with(Power("CL", "WT", 0.75, estimate=True), Linear("CL", "WT", 0.0, estimate=True))
    with pytest.raises(ValueError, match=r"labels \['V'\] are model parameter names"):
        fit_with(Power("CL", "WT", 0.75, estimate=True, name="V"))


# ------------------------------------------------------------------ exact gradient
class Problem:
    """The theophylline FOCE-I objective with estimated covariate coefficients, built
    as ``fit_population`` builds it, at tight ODE tolerances (so that central finite
    differences of the objective are accurate to ~1e-6)."""

    def __init__(self, covariates):
        model = ORAL
        pop = as_population(model, tj.Population(model, covariates=covariates, **START))
        fd = prepare_data(model, tj.data.datasets.theophylline(), ErrorModel("additive"))
        self.spec = Spec(
            model,
            Ensemble(rtol=1e-10, atol=1e-12),
            model.output_names[0],
            tuple(pop.iiv),
            ErrorModel("additive"),
        )
        effects, slots, self.coef0 = nlme.covariate_model(pop, fd, model, ("KA", "CL", "V"))
        self.lay = nlme.Layout(("KA", "CL", "V"), tuple(pop.iiv), False, 1, slots)
        self.base = {k: float(v) for k, v in pop.typical.items()}
        if effects:
            fixed = nlme.factor_table(pop, fd.covariates, fd.n, fixed_only=True)
            self.factors = nlme.CovariateFactors(
                {k: jnp.asarray(v) for k, v in fixed.items()},
                {c.covariate: jnp.asarray(fd.covariates[c.covariate], float) for c in effects},
                effects,
            )
        else:
            self.factors = {
                k: jnp.asarray(v) for k, v in nlme.factor_table(pop, fd.covariates, fd.n).items()
            }
        self.args = (fd.ev, jnp.asarray(fd.t_eval), jnp.asarray(fd.dv), jnp.asarray(fd.mask))
        self.n = fd.n
        self.model = model

    def phi(self, coefs):
        th = {"KA": 1.45, "CL": 2.9, "V": 31.0}
        om = np.diag([0.35, 0.08, 0.03])
        return nlme.pack_outer(self.model, self.lay, th, om, np.array([0.75]), coefs)

    def modes(self, phi):
        eta0 = jnp.zeros((self.n, len(self.lay.iiv)))
        a = (self.spec, self.lay, self.base, self.factors, jnp.asarray(phi), eta0)
        out = nlme.inner_modes(*a, *self.args, jnp.asarray(200), 1e-14)
        assert bool(np.all(out["converged"]))
        return out["eta"]

    def value_and_grad(self, phi, eta=None):
        eta = self.modes(phi) if eta is None else eta
        a = (self.spec, self.lay, self.base, self.factors, jnp.asarray(phi), eta)
        v, g = nlme.ofv_and_grad(*a, *self.args)
        return float(v), np.asarray(g)


COVS = (
    Power("CL", "WT", 0.75, ref=70.0, estimate=True),
    Linear("V", "WT", 0.01, ref=70.0, estimate=True, bounds=(-0.05, 0.05)),
)
COEFS = (0.6, 0.004)  # the point of the check (not the starting values)


@pytest.fixture(scope="module")
def problem():
    return Problem(COVS)


def test_gradient_in_the_coefficients_matches_finite_differences(problem):
    phi = problem.phi(COEFS)
    val, grad = problem.value_and_grad(phi)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    nt = len(problem.lay.theta)
    # the coefficients' entries of phi, and CL's typical value (it trades off with them)
    idx = [nt, nt + 1, 1]
    h = 1e-4
    for j in idx:
        e = np.zeros(phi.size)
        e[j] = h
        fd = (problem.value_and_grad(phi + e)[0] - problem.value_and_grad(phi - e)[0]) / (2 * h)
        assert grad[j] == pytest.approx(fd, abs=1e-4 * max(1.0, abs(fd))), j
    # the coefficients move the objective (the check is not of zeros)
    assert np.all(np.abs(grad[nt : nt + 2]) > 1e-2)


def test_estimated_effect_equals_the_same_effect_fixed(problem):
    """At the same coefficients the objective (and its gradient in the shared
    parameters) is the one of the fixed effects: the fixed path is unchanged."""
    phi = problem.phi(COEFS)
    eta = problem.modes(phi)
    val, grad = problem.value_and_grad(phi, eta)
    fixed = Problem((Power("CL", "WT", COEFS[0], ref=70.0), Linear("V", "WT", COEFS[1], ref=70.0)))
    assert fixed.lay.cov == () and isinstance(fixed.factors, dict)
    phi_f = fixed.phi(())
    np.testing.assert_allclose(phi_f, np.delete(phi, [3, 4]), rtol=0, atol=1e-14)
    val_f, grad_f = fixed.value_and_grad(phi_f, eta)
    assert val == pytest.approx(val_f, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(np.delete(grad, [3, 4]), grad_f, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ PHENO vs NONMEM
@pytest.mark.slow
def test_pheno_model_as_published_matches_nonmem():
    """NONMEM's PHENO model (CL = THETA1*WT, V = THETA2*WT*(1+THETA3 if APGAR<5)),
    FOCE-I from a start away from the estimates: every THETA within 2 % of NONMEM
    7.4.2's FOCE-I estimates and the OFV within 0.1 (pharmpy's pheno_real.ext)."""
    sys.path.insert(0, str(ROOT / "calibration"))
    import phenobarbital as pheno

    out = pheno.run(vpc=False, covariance=False)
    res, table = out["result"], out["comparison"]
    assert res.converged, res.message
    assert set(res.covariate_effects) == {pheno.APGAR}
    fitted = [c for c in res.population.covariates if c.estimate]
    assert fitted[0].theta == pytest.approx(res.covariate_effects[pheno.APGAR], rel=1e-12)
    for k in ("THETA1", "THETA2", "THETA3"):
        assert abs(table.loc[k, "rel_diff"]) <= pheno.THETA_RTOL, (k, table.loc[k].to_dict())
    assert abs(res.ofv - pheno.NONMEM_OFV) <= pheno.OFV_ATOL, res.ofv
    assert isinstance(table, pd.DataFrame)
