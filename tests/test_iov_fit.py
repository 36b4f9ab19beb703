"""Inter-occasion variability (IOV) in fits: FOCE-I estimates omega_iov, MAP puts the
kappas on the right occasions, padding occasions leave the OFV alone, the outer
gradient is the objective's, and bad input is refused before anything compiles.

Model: P on occasion k of subject i is ``g^-1(g(TV_i) + eta_i + kappa_ik)``, ``kappa_ik
~ N(0, omega_iov^2)`` (one variance per parameter shared by all occasions; NONMEM's
``$OMEGA BLOCK(1) ... SAME``). Data: an integer ``OCC`` column on every record.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import twinjax as tj
from twinjax.calibrate import ErrorModel, fit_individual, fit_population
from twinjax.calibrate import _nlme as nlme
from twinjax.calibrate._map import as_population, make_spec, prepare_data
from twinjax.calibrate._nlme import Layout, factor_table, pack_outer
from twinjax.models import pk
from twinjax.solve._ensemble import Ensemble

ORAL = pk.one_compartment(absorption="first_order")
TRUE = {"KA": 1.0, "CL": 3.0, "V": 30.0}
SAMPLES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)  # h after each dose
TAU = 24.0  # one dose per occasion, every 24 h
PROP = 0.1  # proportional error SD


def simulate_cohort(
    n: int,
    n_occ,
    *,
    omega=(0.09, 0.04),
    iov_sd: float = 0.25,
    seed: int = 0,
    cl_factor=None,
    noise: bool = True,
):
    """A one-compartment oral cohort: 100 mg into the depot at the start of each
    occasion (every 24 h), 6 samples per occasion; IIV on CL and V (variances
    ``omega``), IOV on CL (SD ``iov_sd``), proportional error 10 %. Simulated with
    twinjax's own engine, CL a LOCF ``tj.Piecewise`` on the occasion starts (as the
    trial's ``OccasionVariability`` does). ``n_occ``: occasions per subject (an int, or
    one per subject); ``cl_factor``: ``(n, K)`` multipliers of CL per occasion instead
    of drawn kappas. Returns ``(Dataset, kappas (n, K))``."""
    rng = np.random.default_rng(seed)
    n_occ = np.broadcast_to(np.asarray(n_occ), (n,))
    K = int(n_occ.max())
    eta = rng.normal(0.0, np.sqrt(omega), (n, 2))
    kappa = iov_sd * rng.standard_normal((n, K))
    if cl_factor is not None:
        kappa = np.log(np.asarray(cl_factor, float))
    starts = TAU * np.arange(K)
    cl = TRUE["CL"] * np.exp(eta[:, :1] + kappa)
    # each subject's own samples; padded rows repeat the last time, dropped after
    ts = np.array([[TAU * o + s for o in range(K) for s in SAMPLES]] * n)
    reg = tj.Regimen([tj.Dose(amt=100.0, cmt="depot", time=t) for t in starts])
    r = tj.simulate(
        ORAL,
        {
            "CL": tj.Piecewise(np.broadcast_to(starts, (n, K)), cl, "locf"),
            "V": TRUE["V"] * np.exp(eta[:, 1]),
            "KA": TRUE["KA"],
        },
        reg,
        ts,
        solver=Ensemble(rtol=1e-8, atol=1e-10),
    )
    c = np.asarray(r.outputs["C"])
    if noise:
        c = c * (1.0 + PROP * rng.standard_normal(c.shape))
    rows = []
    for i in range(n):
        for o in range(int(n_occ[i])):
            rows.append(dict(ID=i + 1, TIME=starts[o], DV=0.0, AMT=100.0, EVID=1, MDV=1, CMT=1))
            rows[-1]["OCC"] = o + 1
            for j, s in enumerate(SAMPLES):
                dv = float(c[i, o * len(SAMPLES) + j])
                rows.append(dict(ID=i + 1, TIME=starts[o] + s, DV=dv, AMT=0.0, EVID=0, MDV=0))
                rows[-1].update(CMT=2, OCC=o + 1)
    frame = pd.DataFrame(rows)
    return tj.data.Dataset(frame, {1: "depot", 2: "central"}), kappa


def start_population():
    return tj.Population(
        ORAL, typical={"KA": 1.2, "CL": 2.5, "V": 25.0}, omega={"CL": 0.2, "V": 0.2}
    )


ERR = ErrorModel("proportional", prop=0.2)


@eqx.filter_jit
def _terms(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ):
    hess = nlme.exact_hessian(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ)
    return nlme.ofv_terms(spec, lay, base, factors, phi, eta, ev, ts, y, mask, hess, occ)


class Problem:
    """The FOCE-I objective with IOV on CL as ``fit_population`` builds it, at a
    tight ODE tolerance (see tests/test_foce_exact.py: at the default tolerance the
    discretised solution's derivative differs from finite differences by solver
    error, not by the gradient formula)."""

    def __init__(self, ds, k_occ: int | None = None):
        pop = as_population(ORAL, start_population())
        fd = prepare_data(ORAL, ds, ERR, occasion_column="OCC")
        occ = fd.occasions if k_occ is None else fd.occasions.padded_to(k_occ)
        solver = Ensemble(rtol=1e-10, atol=1e-12)
        self.spec = make_spec(ORAL, solver, pop.iiv, (ERR,), ("C",), "none", ("CL",), occ.k)
        self.lay = Layout(("KA", "CL", "V"), tuple(pop.iiv), False, 1, (), ("CL",), occ.k)
        self.base = {k: float(v) for k, v in pop.typical.items()}
        self.factors = {
            k: jnp.asarray(v) for k, v in factor_table(pop, fd.covariates, fd.n).items()
        }
        self.args = (fd.ev, jnp.asarray(fd.t_eval), fd.obs(), jnp.asarray(fd.mask))
        self.occ = jnp.asarray(occ.times)
        self.n = fd.n

    def phi(self, ka=1.1, cl=2.8, v=28.0, om=(0.1, 0.05), iov=0.08, s=0.12):
        th = {"KA": ka, "CL": cl, "V": v}
        return pack_outer(ORAL, self.lay, th, np.diag(om), np.array([s]), (), [iov])

    def modes(self, phi):
        sp, lay = self.spec, self.lay
        eta0 = jnp.zeros((self.n, sp.n_random))
        out = nlme.inner_modes(
            sp, lay, self.base, self.factors, jnp.asarray(phi), eta0, *self.args,
            jnp.asarray(200), 1e-14, self.occ,
        )  # fmt: skip
        assert bool(np.all(out["converged"]))
        return out["eta"]

    def terms(self, phi):
        """Per-subject OFV terms at tightly converged modes."""
        phi = jnp.asarray(phi)
        eta = self.modes(phi)
        sp, lay, b, f = self.spec, self.lay, self.base, self.factors
        return np.asarray(_terms(sp, lay, b, f, phi, eta, *self.args, self.occ))

    def value_and_grad(self, phi):
        phi = jnp.asarray(phi)
        eta = self.modes(phi)
        v, g = nlme.ofv_and_grad(
            self.spec, self.lay, self.base, self.factors, phi, eta, *self.args, self.occ
        )
        return float(v), np.asarray(g)


def test_outer_gradient_matches_finite_differences_of_the_objective():
    """d OFV / d phi (typical values, Omega, the IOV SD, sigma) is the derivative of
    the objective itself, with the kappas among the modes."""
    ds, _ = simulate_cohort(6, 3, seed=5)
    prob = Problem(ds)
    phi = prob.phi()
    val, grad = prob.value_and_grad(phi)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    assert prob.terms(phi).sum() == pytest.approx(val, rel=1e-12)
    h = 1e-4
    fdg = np.zeros_like(grad)
    for j in range(phi.size):
        e = np.zeros(phi.size)
        e[j] = h
        # the objective's value alone (the same ofv_terms, summed; no tangents)
        fdg[j] = (prob.terms(phi + e).sum() - prob.terms(phi - e).sum()) / (2 * h)
    scale = max(1.0, float(np.max(np.abs(fdg))))
    # the IOV SD (index 5) and CL (index 1) carry real slopes here, not zeros
    assert abs(fdg[5]) > 1e-2 and abs(fdg[1]) > 1e-2
    np.testing.assert_allclose(grad, fdg, rtol=0, atol=1e-4 * scale)


def test_padding_occasions_do_not_change_the_ofv():
    """A subject with 2 occasions contributes the same OFV whether the batch pads to
    K = 2 or K = 3 occasions (the padding kappas touch no data: mode 0, Laplace
    factor 1)."""
    ds, _ = simulate_cohort(2, [2, 3], seed=7)
    p2 = Problem(ds.subset([1]))  # the 2-occasion subject alone: K = 2
    pb = Problem(ds)  # in a batch whose other subject has 3 occasions: K = 3
    assert (p2.spec.n_occ, pb.spec.n_occ) == (2, 3)
    phi = p2.phi()
    np.testing.assert_array_equal(phi, pb.phi())  # one omega_iov, whatever K
    o2, ob = p2.terms(phi), pb.terms(phi)
    assert np.isfinite(o2[0]) and abs(ob[1] - o2[0]) > 1.0  # the other subject differs
    np.testing.assert_allclose(ob[0], o2[0], rtol=0, atol=1e-9)
    # the padding kappa stays at 0, the real ones move
    eta = np.asarray(pb.modes(phi))
    assert eta[0, 2 + 2] == 0.0 and abs(eta[0, 2 + 1]) > 1e-3


def test_map_puts_the_kappas_on_the_right_occasions():
    """A subject whose CL doubles on its second occasion gets kappa_2 > 0 > kappa_1;
    the occasion frame gives the individual CL per occasion."""
    ds, _ = simulate_cohort(3, [3, 2, 3], seed=1, cl_factor=np.array([[1.0, 2.0, 1.0]] * 3))
    prior = tj.Population(ORAL, typical=TRUE, omega={"CL": 0.09, "V": 0.04})
    r = fit_individual(ORAL, ds, prior, ErrorModel("proportional", prop=PROP), iov={"CL": 0.0625})
    assert r.converged.all()
    k = r.kappas[:, 0]  # (N, K)
    assert np.all(k[:, 1] > 0) and np.all(k[:, 0] < 0)
    assert np.all(k[:, 1] - k[:, 0] > 0.4)  # log 2 = 0.69, shrunk by the prior
    assert k[1, 2] == 0.0  # subject 2 has no third occasion: padding, kappa 0
    occ = r.occasions
    assert list(occ.columns) == ["ID", "OCC", "START", "kappa_CL", "CL"]
    assert len(occ) == 8 and list(occ[occ.ID == 2].OCC) == [1, 2]
    assert list(occ[occ.ID == 1].START) == [0.0, 24.0, 48.0]
    row = occ[(occ.ID == 1) & (occ.OCC == 2)].iloc[0]
    cl_i = r.params["CL"][0]  # without kappa
    assert row.CL == pytest.approx(cl_i * np.exp(row.kappa_CL), rel=1e-10)
    # the individual CL per occasion is the fit's time course
    np.testing.assert_allclose(r.varying["CL"].values[0], occ[occ.ID == 1].CL, rtol=1e-12)
    assert r.etas.shape == (3, 2) and r.cov_kappa.shape == (3, 3, 3)


def test_diagnostics_of_an_iov_fit_use_its_kappas():
    """CWRES linearise around the kappas too and replicates draw new kappas per
    occasion; posterior samples of a new occasion draw its kappa. Data: CL doubled on
    every subject's second occasion."""
    import dataclasses

    import jax

    from twinjax.calibrate._diagnostics import cwres, simulate_replicates

    ds, _ = simulate_cohort(3, [3, 2, 3], seed=1, cl_factor=np.array([[1.0, 2.0, 1.0]] * 3))
    prior = tj.Population(ORAL, typical=TRUE, omega={"CL": 0.09, "V": 0.04})
    r = fit_individual(ORAL, ds, prior, ErrorModel("proportional", prop=PROP), iov={"CL": 0.0625})
    assert r.converged.all()
    # the same fit read without its IOV: what the diagnostics computed before
    plain = dataclasses.replace(r, iov={}, kappas=None, cov_kappa=None, occasions=None)
    second = r.mask & (r.times > 24.0) & (r.times < 48.0)
    cw, cw_plain = cwres(r), cwres(plain)
    assert np.isfinite(cw[r.mask]).all()
    # the kappas' variance is in Cov: CWRES about standard (measured SD 1.09; occasion
    # 2, a 2.8-SD change of CL under the prior, mean -0.81); read without the IOV the
    # occasion-2 records are far off (mean -2.93, SD of all 2.39)
    assert np.std(cw[r.mask]) < 1.5 and np.std(cw_plain[r.mask]) > 2.0
    assert np.mean(cw[second]) > -1.5 and np.mean(cw_plain[second]) < -2.0
    # replicates (no residual error): the 12 h sample of occasions 1 and 2 differ by
    # the two kappas' CL (their log ratio varies), not only by carry-over
    key = jax.random.key(3)
    j1, j2 = SAMPLES.index(12.0), len(SAMPLES) + SAMPLES.index(12.0)
    sim = simulate_replicates(r, 400, key, residual=False)
    sim_plain = simulate_replicates(plain, 400, key, residual=False)
    lr, lr_plain = (np.log(x[:, 0, j2] / x[:, 0, j1]) for x in (sim, sim_plain))
    assert np.var(lr) > 0.05  # theory about 0.15: var(kappa_2 - kappa_1) = 0.125, x ~1.1
    assert np.var(lr_plain) < 0.01
    # a future dose is a new occasion (forecasts and doses: tests/test_iov_forecast.py):
    # eta from the subject's posterior, a new kappa from N(0, omega_iov^2), not its fitted
    # kappas (continuing the last occasion, occasion="last": tests/test_iov_forecast.py)
    n = 1000
    params, re = tj.calibrate.posterior_samples(r, n, key, 1, occasion="new")
    assert re.shape == (n, 3)  # [eta_CL, eta_V | kappa_CL]
    log_cl = np.log(r.typical["CL"][0]) + re[:, 0] + re[:, 2]
    np.testing.assert_allclose(np.log(params["CL"]), log_cl, rtol=1e-12)
    assert np.var(re[1:, 2], ddof=1) == pytest.approx(0.0625, rel=4 * np.sqrt(2 / (n - 2)))


@pytest.mark.parametrize(
    "case, match",
    [
        ("unknown", r"iov\['CLX'\]: unknown parameter"),
        ("no_transform", r"iov\['TLAG'\].*no\s+transform"),
        ("negative", r"iov\['CL'\].*> 0, got -0.1"),
        ("no_column", r"no occasion column 'VISIT'"),
        ("non_integer", r"line 4, column OCC: occasion 1.5 is not an integer"),
        ("missing", r"line 3, column OCC: occasion nan is not an integer"),
        ("decreasing", r"line 10: occasion OCC=1 of subject ID 1 is lower than 2"),
        ("mapping", r"IOV needs the data as a twinjax Dataset"),
    ],
)
def test_bad_input_is_refused_before_compiling(case, match, monkeypatch):
    ds, _ = simulate_cohort(2, 2, seed=3, noise=False)
    iov: dict = {"CL": 0.1}
    col = "OCC"
    data: object = ds
    f = ds.data
    f["OCC"] = f["OCC"].astype(float)
    if case == "unknown":
        iov = {"CLX": 0.1}
    elif case == "no_transform":
        iov = {"TLAG": 0.1}
    elif case == "negative":
        iov = {"CL": -0.1}
    elif case == "no_column":
        col = "VISIT"
    elif case in ("non_integer", "missing", "decreasing"):
        if case == "non_integer":
            f.loc[2, "OCC"] = 1.5  # file line 4 (header = line 1)
        elif case == "missing":
            f.loc[1, "OCC"] = np.nan
        else:
            f.loc[8, "OCC"] = 1  # after the dose opening occasion 2: line 10
        data = tj.data.Dataset(f, {1: "depot", 2: "central"})
    elif case == "mapping":
        p = ds.padded()
        data = dict(times=p.times, dv=p.dv, mask=p.mask, regimens=p.regimens)

    def no_compile(*a, **k):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(nlme, "inner_modes", no_compile)
    monkeypatch.setattr(tj.calibrate._map, "map_program", no_compile)
    with pytest.raises(ValueError, match=match):
        fit_population(ORAL, data, start_population(), ERR, iov=iov, occasion_column=col)
    with pytest.raises(ValueError, match=match):
        fit_individual(ORAL, data, start_population(), ERR, iov=iov, occasion_column=col)


@pytest.mark.slow
def test_focei_recovers_the_iov_variance():
    """48 subjects x 3 occasions (a dose each), IOV SD 0.25 on CL (variance 0.0625).

    The IOV variance is informed by the 48 x (3 - 1) = 96 within-subject contrasts, so
    its relative SE is about sqrt(2 / 96) = 14 % (more with shrinkage): the estimate
    must lie within 35 % (about 2.5 SE) of the truth and within 2.5 of its own reported
    SEs. Leaving the IOV out must cost a clear likelihood-ratio (> 10.83, p < 0.001 for
    one parameter); on data simulated without IOV the estimate must be small (SD < 0.1
    vs 0.25)."""
    truth = 0.25**2
    ds, _ = simulate_cohort(48, 3, seed=11)
    est3 = ("KA", "CL", "V")
    r = fit_population(ORAL, ds, start_population(), ERR, estimate=est3, iov={"CL": 0.1})
    print(r.summary(), r.wall_s)
    assert r.converged, r.message
    est = r.estimates.loc["OMEGA_IOV(CL)"]
    assert r.omega_iov["CL"] == pytest.approx(est.estimate)
    assert est.estimate == pytest.approx(truth, rel=0.35)
    assert np.isfinite(est.se) and 0 < est.se < est.estimate
    assert abs(est.estimate - truth) < 2.5 * est.se
    for k, v in TRUE.items():
        assert r.theta[k] == pytest.approx(v, rel=0.15), k
    occ = r.individual.occasions
    assert len(occ) == 48 * 3 and np.isfinite(occ.kappa_CL).all()
    # the covariance step of an IOV fit (OMEGA_IOV among its parameters) is checked
    # against the closed form in tests/test_iov_uncertainty.py
    r0 = fit_population(ORAL, ds, start_population(), ERR, estimate=est3, covariance=False)
    print("without IOV:", r0.ofv, r0.wall_s)
    assert r0.ofv - r.ofv > 10.83
    dn, _ = simulate_cohort(48, 3, seed=12, iov_sd=0.0)
    rn = fit_population(
        ORAL, dn, start_population(), ERR, estimate=est3, iov={"CL": 0.1}, covariance=False
    )
    print("no IOV in the data:", rn.omega_iov, rn.ofv, rn.wall_s)
    assert rn.omega_iov["CL"] < 0.1**2
