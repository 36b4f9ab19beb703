"""Parameters that change in time (``tj.Piecewise``) and pre-dose saves (issue #14, items 4-5).

Every expected value is an exact propagation of the one-compartment model,
``A' = -k(t) A + R(t)`` with ``k = CL / V``, piecewise constant between the change
times, the dose times and the infusion ends: over a piece of length ``h``,
``A -> A exp(-k h) + R / k (1 - exp(-k h))``. Nothing integrates an ODE numerically.

Conventions (NONMEM's data semantics): with ``"nocb"`` the record that ends an interval
supplies its value (at a record's time the value is that record's; just after it, the
next record's); with ``"locf"`` a value holds from its time to the next one. A dose
record uses the parameters at its own time (F, ALAG of the record); a steady-state
record is solved with the parameters at its time; an output at a save time sees the
parameters at that time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk

TIGHT = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12)
IV = pk.one_compartment()  # central, eliminated; CL, V
MOD = IV.with_dose_modifiers(central=("F", "ALAG"), F_upper=2.0)  # F1, ALAG1 on central
TS = np.array([0.0, 3.0, 6.0, 10.0, 12.0, 15.0, 20.0, 23.0, 24.0, 30.0, 36.0, 48.0])


def value(times, values, rule, t, after=False):
    """The reference convention, written out: the value at ``t`` (or just after)."""
    times, values = np.asarray(times, float), np.asarray(values, float)
    if rule == "locf":
        i = np.sum(times <= t) - 1
    elif after:
        i = np.sum(times <= t)
    else:
        i = np.sum(times < t)
    return values[int(np.clip(i, 0, len(times) - 1))]


def exact(doses, CL, V, ts, F=None, lag=None):
    """Amounts/V of the 1-cmt model by exact piecewise propagation.

    ``doses``: ``[(time, amt, duration)]`` (duration 0: a bolus); ``CL``, ``V``, ``F``,
    ``lag``: ``(times, values, rule)`` or a number. A dose record's F and lag are
    the values at its record time.
    """

    def fn(x):
        if isinstance(x, tuple):
            return lambda t, after=False: value(*x, t, after)
        return lambda t, after=False: float(x)

    cl, v = fn(CL), fn(V)
    f = fn(F if F is not None else 1.0)
    lg = fn(lag if lag is not None else 0.0)
    arrivals = []  # (start, amount, duration)
    for t, amt, dur in doses:
        arrivals.append((t + lg(t), f(t) * amt, dur))
    cuts = {0.0, *map(float, ts)}
    for x in (CL, V):
        if isinstance(x, tuple):
            cuts |= set(map(float, x[0]))
    for s, _, d in arrivals:
        cuts |= {s, s + d}
    cuts = sorted(c for c in cuts if c <= max(ts))
    A, out, t = 0.0, {}, 0.0
    for c in cuts:
        # integrate (t, c] with the values just after t
        h = c - t
        if h > 0:
            k = cl(t, True) / v(t, True)
            R = sum(a / d for s, a, d in arrivals if d > 0 and s <= t < s + d)
            A = A * np.exp(-k * h) + R / k * (1 - np.exp(-k * h))
        t = c
        A += sum(a for s, a, d in arrivals if d == 0 and s == c)
        out[c] = A / v(c)
    return np.array([out[float(x)] for x in ts])


def pw(times, values, rule, n):
    return tj.Piecewise(np.tile(times, (n, 1)), np.asarray(values, float), rule)


# patients of one simulate call: CL and V change at 10, 24 (and 36 for V); doses at
# change times, between them, and an infusion across a change
CL_T = np.array([0.0, 10.0, 24.0, 36.0])
CL_V = np.array([[2.0, 1.0, 4.0, 3.0], [1.5, 3.0, 0.5, 2.0], [2.0, 2.0, 1.0, 1.0]])
V_T = np.array([0.0, 10.0, 24.0, 36.0])
V_V = np.array([[20.0, 20.0, 25.0, 25.0], [10.0, 12.0, 12.0, 15.0], [30.0, 20.0, 20.0, 20.0]])
DOSES = [
    [(0.0, 100.0, 0.0), (24.0, 50.0, 0.0)],
    [(0.0, 100.0, 0.0), (6.0, 80.0, 8.0)],  # an infusion from 6 to 14, across 10
    [(10.0, 100.0, 0.0), (20.0, 100.0, 6.0)],  # a bolus at a change time
]


def regimen(doses):
    return tj.Regimen(
        [tj.Dose(a, "central", t, dur=d) if d else tj.Dose(a, "central", t) for t, a, d in doses]
    )


@pytest.mark.parametrize("rule", ["nocb", "locf"])
def test_clearance_and_volume_change_as_the_convention_says(rule):
    r = tj.simulate(
        IV,
        {"CL": pw(CL_T, CL_V, rule, 3), "V": pw(V_T, V_V, rule, 3)},
        [regimen(d) for d in DOSES],
        TS,
        solver=TIGHT,
    )
    assert np.all(np.asarray(r.status) == 0)
    for i in range(3):
        want = exact(DOSES[i], (CL_T, CL_V[i], rule), (V_T, V_V[i], rule), TS)
        np.testing.assert_allclose(r.outputs["C"][i], want, rtol=1e-8)
    # the two conventions give different profiles for the same table
    other = "locf" if rule == "nocb" else "nocb"
    alt = exact(DOSES[0], (CL_T, CL_V[0], other), (V_T, V_V[0], other), TS)
    assert np.max(np.abs(np.asarray(r.outputs["C"][0]) - alt)) > 0.1


def test_ensemble_solver_switches_parameters_too():
    r = tj.simulate(
        IV,
        {"CL": pw(CL_T, CL_V, "nocb", 3), "V": 20.0},
        [regimen(d) for d in DOSES],
        TS,
        solver=tj.solvers.Ensemble("dopri5", rtol=1e-10, atol=1e-12),
    )
    for i in range(3):
        want = exact(DOSES[i], (CL_T, CL_V[i], "nocb"), 20.0, TS)
        np.testing.assert_allclose(r.outputs["C"][i], want, rtol=1e-7)


def test_dose_record_uses_its_own_bioavailability_and_lag():
    # F1 and ALAG1 change at 0, 12, 24; doses at 6 (between records), 12 and 30
    ft, fv = np.array([0.0, 12.0, 24.0]), np.array([1.0, 0.5, 1.6])
    lt, lv = np.array([0.0, 12.0, 24.0]), np.array([0.0, 1.0, 2.0])
    doses = [(6.0, 100.0, 0.0), (12.0, 100.0, 0.0), (30.0, 100.0, 0.0)]
    for rule in ("nocb", "locf"):
        r = tj.simulate(
            MOD,
            {"CL": 2.0, "V": 20.0, "F1": pw(ft, fv, rule, 1), "ALAG1": pw(lt, lv, rule, 1)},
            [regimen(doses)],
            TS,
            solver=TIGHT,
        )
        want = exact(doses, 2.0, 20.0, TS, F=(ft, fv, rule), lag=(lt, lv, rule))
        np.testing.assert_allclose(r.outputs["C"][0], want, rtol=1e-8)
    # the dose at 6: NOCB gives it the record at 12's F (0.5), LOCF the one at 0's (1.0)
    nocb = exact(doses, 2.0, 20.0, TS, F=(ft, fv, "nocb"), lag=(lt, lv, "nocb"))
    locf = exact(doses, 2.0, 20.0, TS, F=(ft, fv, "locf"), lag=(lt, lv, "locf"))
    assert abs(nocb[3] - locf[3]) > 0.5  # at t = 10


def test_steady_state_record_uses_the_parameters_at_its_time():
    # SS 1 bolus every 12 h at t = 24; CL changes from 1 to 3 at 24 (LOCF), so the
    # steady state is the one with CL 3, and the state before it is discarded
    k, V, D, ii = 3.0 / 20.0, 20.0, 100.0, 12.0
    reg = tj.Regimen([tj.Dose(D, "central", 0.0), tj.Dose(D, "central", 24.0, ii=ii, ss=1)])
    ts = np.array([24.0, 27.0, 30.0, 35.9])
    r = tj.simulate(
        IV,
        {"CL": tj.Piecewise([0.0, 24.0], [1.0, 3.0], "locf"), "V": V},
        reg,
        ts,
        solver=TIGHT,
    )
    tau = ts - 24.0
    want = D / V * np.exp(-k * tau) / (1 - np.exp(-k * ii))  # SS bolus, closed form
    np.testing.assert_allclose(r.outputs["C"], want, rtol=1e-8)


def test_gradients_forward_and_reverse_match_finite_differences():
    doses = DOSES[1]

    def f(v, solver=TIGHT):
        cl = tj.Piecewise(CL_T, jnp.concatenate([jnp.array([2.0]), v]), "nocb")
        r = tj.simulate(IV, {"CL": cl, "V": 20.0}, regimen(doses), TS, solver=solver)
        return jnp.sum(r.outputs["C"] * jnp.arange(1.0, len(TS) + 1))

    v = jnp.array([1.0, 4.0, 3.0])
    value_and_grad = jax.value_and_grad(f)
    g_rev = value_and_grad(v)[1]
    forward = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12, adjoint="forward")
    g_fwd = jax.jacfwd(lambda v: f(v, forward))(v)
    eps = 1e-5

    def value(v):  # from the two programs jax.grad compiled (no third, plain program)
        return value_and_grad(v)[0]

    fd = np.array(
        [(value(v.at[i].add(eps)) - value(v.at[i].add(-eps))) / (2 * eps) for i in range(3)]
    )
    np.testing.assert_allclose(g_rev, fd, rtol=1e-6)
    np.testing.assert_allclose(g_fwd, fd, rtol=1e-6)
    # the last value (from 36 on) moves the profile after 36 only
    assert abs(fd[2]) > 0


def test_pre_dose_saves_see_the_state_before_the_events():
    reg = tj.Regimen(
        [tj.Dose(100.0, "central", 0.0, ii=12.0, addl=1), tj.Dose(40.0, "central", 12.0, dur=2.0)]
    )
    ts = np.array([0.0, 0.0, 12.0, 12.0, 13.0])
    pre = np.array([True, False, True, False, False])
    r = tj.simulate(IV, {"CL": 2.0, "V": 20.0}, reg, ts, solver=TIGHT, pre_dose=pre)
    k = 0.1
    before = 5.0 * np.exp(-12 * k)
    after = before + 5.0
    at13 = after * np.exp(-k) + 20.0 / 2.0 * (1 - np.exp(-k))  # infusion 20 mg/h
    np.testing.assert_allclose(r.outputs["C"], [0.0, 5.0, before, after, at13], rtol=1e-8)


def test_bad_input_is_refused_before_compiling():
    reg = regimen(DOSES[0])
    with pytest.raises(ValueError, match="'CL'.*one value per time"):
        tj.simulate(IV, {"CL": tj.Piecewise([0.0, 1.0], [1.0, 2.0, 3.0])}, reg, TS)
    with pytest.raises(ValueError, match="'CL'.*non-decreasing"):
        tj.simulate(IV, {"CL": tj.Piecewise([5.0, 1.0], [1.0, 2.0])}, reg, TS)
    with pytest.raises(ValueError, match="'CL'.*>= 0"):
        tj.simulate(IV, {"CL": tj.Piecewise([-1.0, 1.0], [1.0, 2.0])}, reg, TS)
    with pytest.raises(ValueError, match="parameter 'CL' = -2"):
        tj.simulate(IV, {"CL": tj.Piecewise([0.0, 1.0], [1.0, -2.0])}, reg, TS)
    with pytest.raises(ValueError, match="interpolation"):
        tj.Piecewise([0.0], [1.0], "linear")
    with pytest.raises(ValueError, match="unknown parameter"):
        tj.simulate(IV, {"WT": tj.Piecewise([0.0], [70.0])}, reg, TS)
    with pytest.raises(ValueError, match="different numbers of patients"):
        tj.simulate(
            IV, {"CL": pw(CL_T, CL_V, "nocb", 3), "V": pw(V_T, V_V[:2], "nocb", 2)}, reg, TS
        )
    with pytest.raises(ValueError, match="pre-dose saves first"):
        tj.simulate(IV, None, reg, [0.0, 24.0, 24.0], pre_dose=[False, False, True])
    with pytest.raises(ValueError, match="pre_dose has shape"):
        tj.simulate(IV, None, reg, [0.0, 24.0], pre_dose=[True])


# ---------------------------------------------------------------- from a NONMEM dataset

# WT and CRCL change on later records (an EVID 2 record carries a change at 30); the
# trough at 24 is listed before the dose at 24 (pre-dose), the one at 48 after it
DATA = """ID,TIME,DV,AMT,EVID,CMT,WT,CRCL
1,0,.,100,1,1,70,100
1,12,1.0,0,0,1,70,100
1,24,1.0,0,0,1,75,80
1,24,.,100,1,1,75,80
1,30,.,0,2,1,80,60
1,36,1.0,0,0,1,80,.
1,48,.,100,1,1,80,50
1,48,1.0,0,0,1,80,50
2,0,.,100,1,1,60,120
2,24,1.0,0,0,1,60,120
"""


def cl_model(wt, crcl):
    """A renal-clearance covariate model: CL = 0.5 (WT/70)^0.75 + 0.02 CRCL."""
    return 0.5 * (wt / 70.0) ** 0.75 + 0.02 * crcl


def read_data():
    import io

    return tj.read_nonmem(io.StringIO(DATA), compartments=IV)


def test_dataset_keeps_every_records_covariates_and_pre_dose_order():
    ds = read_data()
    assert ds.time_varying == ["WT", "CRCL"]
    wt = ds.piecewise("WT")
    np.testing.assert_array_equal(wt.times[0], [0, 12, 24, 24, 30, 36, 48, 48])
    np.testing.assert_array_equal(wt.values[0], [70, 70, 75, 75, 80, 80, 80, 80])
    np.testing.assert_array_equal(wt.values[1], [60] * 8)  # padded by the last record
    # the missing CRCL at 36 is carried backward (NOCB) or forward (LOCF)
    assert ds.piecewise("CRCL").values[0, 5] == 50.0
    assert ds.piecewise("CRCL", "locf").values[0, 5] == 60.0
    pad = ds.padded()
    np.testing.assert_array_equal(pad.pre_dose[0], [False, True, False, False])
    with pytest.raises(KeyError, match="not a covariate"):
        ds.piecewise("AGE")


def test_dataset_covariates_simulate_as_a_hand_built_piecewise_table():
    ds = read_data()
    wt, crcl = ds.piecewise("WT"), ds.piecewise("CRCL")
    cl = tj.Piecewise(wt.times, cl_model(wt.values, crcl.values), "nocb")
    pad = ds.padded()
    r = tj.simulate(
        IV, {"CL": cl, "V": 20.0}, ds.regimens, pad.times, solver=TIGHT, pre_dose=pad.pre_dose
    )
    # subject 1 by hand: NOCB intervals (0,12] (12,24] (24,30] (30,36] (36,48] take the
    # values of the records ending them
    t1 = [0.0, 12.0, 24.0, 30.0, 36.0, 48.0]
    v1 = [cl_model(70, 100), cl_model(70, 100), cl_model(75, 80), cl_model(80, 60)]
    v1 += [cl_model(80, 50), cl_model(80, 50)]
    doses = [(0.0, 100.0, 0.0), (24.0, 100.0, 0.0), (48.0, 100.0, 0.0)]
    want = exact(doses, (np.array(t1), np.array(v1), "nocb"), 20.0, [12.0, 24.0, 36.0, 48.0])
    # the trough at 24 is before that dose
    want[1] -= 100.0 / 20.0
    np.testing.assert_allclose(r.outputs["C"][0], want, rtol=1e-8)
    want2 = exact([(0.0, 100.0, 0.0)], cl_model(60, 120), 20.0, [24.0])
    np.testing.assert_allclose(r.outputs["C"][1, 0], want2[0], rtol=1e-8)


# ---------------------------------------------------------------- fits (issue #14 item 4)
FIT_SOLVER = tj.solvers.Ensemble(rtol=1e-10, atol=1e-12)  # forward-mode differentiable
POW_WT = tj.population.Power("CL", "WT", 0.75, ref=70.0)
POW_CRCL = tj.population.Power("CL", "CRCL", 0.5, ref=100.0)


def test_an_individual_fit_uses_every_records_covariates():
    """PRED and IPRED of a MAP fit equal the exact solution with the typical CL changing
    at the records (NOCB), times exp(eta) for IPRED; the fit reports the course."""
    ds = read_data()
    pop = tj.Population(
        IV,
        typical={"CL": 2.0, "V": 20.0},
        omega={"CL": 0.3},
        covariates=[POW_WT, POW_CRCL],
    )
    err = tj.calibrate.ErrorModel("proportional", prop=0.2)
    fit = tj.calibrate.fit_individual(IV, ds, pop, err, solver=FIT_SOLVER)
    assert fit.converged.all()

    def cl(wt, crcl):
        return 2.0 * (wt / 70.0) ** 0.75 * (crcl / 100.0) ** 0.5

    t1 = [0.0, 12.0, 24.0, 30.0, 36.0, 48.0]
    v1 = [cl(70, 100), cl(70, 100), cl(75, 80), cl(80, 60), cl(80, 50), cl(80, 50)]
    doses = [(0.0, 100.0, 0.0), (24.0, 100.0, 0.0), (48.0, 100.0, 0.0)]
    obs_t = [12.0, 24.0, 36.0, 48.0]
    for scale, got in ((1.0, fit.pred[0]), (np.exp(fit.etas[0, 0]), fit.ipred[0])):
        want = exact(doses, (np.array(t1), scale * np.array(v1), "nocb"), 20.0, obs_t)
        want[1] -= 100.0 / 20.0  # the trough at 24 is before that dose
        np.testing.assert_allclose(got[:4], want, rtol=1e-6)
    # the estimates at time 0 and the whole course of the individual CL
    np.testing.assert_allclose(fit.params["CL"][0], cl(70, 100) * np.exp(fit.etas[0, 0]))
    course = fit.varying["CL"]
    assert isinstance(course, tj.Piecewise) and course.interpolation == "nocb"
    ce = np.exp(fit.etas[0, 0])
    for t, v in zip(t1, v1):
        np.testing.assert_allclose(
            value(course.times[0], course.values[0], "nocb", t), v * ce, rtol=1e-10
        )
    # only the record times at which a covariate changes are kept as change times
    assert course.times.shape[1] < ds.piecewise("WT").times.shape[1]
    # subject 2 has constant covariates: its CL is one value
    np.testing.assert_allclose(course.values[1], cl(60, 120) * np.exp(fit.etas[1, 0]))


def _renal_dataset(n=24, exponent=1.0, seed=3):
    """Subjects whose creatinine clearance falls day by day (renal impairment), dosed
    100 mg IV q24h for four days; CL = 2 (CRCL/100)^exponent exp(eta), V = 20 exp(eta),
    proportional error 10 %. Simulated with hand-built NOCB tables of CL."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    obs = [1.0, 6.0, 12.0, 20.0]
    rows, times, cls, ts = [], [], [], []
    eta = rng.normal(0.0, [0.3, 0.2], (n, 2))
    for i in range(n):
        base = rng.uniform(80.0, 130.0)
        crcl = base * np.array([1.0, 0.75, 0.55, 0.4]) * rng.uniform(0.9, 1.1, 4)
        rec_t, rec_c = [], []
        for d in range(4):
            rows.append((i + 1, 24.0 * d, np.nan, 100.0, 1, crcl[d]))
            rec_t.append(24.0 * d)
            rec_c.append(crcl[d])
            for t in obs:
                rows.append((i + 1, 24.0 * d + t, 0.0, 0.0, 0, crcl[d]))
                rec_t.append(24.0 * d + t)
                rec_c.append(crcl[d])
        times.append(rec_t)
        cls.append(2.0 * (np.array(rec_c) / 100.0) ** exponent * np.exp(eta[i, 0]))
        ts.append([24.0 * d + t for d in range(4) for t in obs])
    cl = tj.Piecewise(np.array(times), np.array(cls), "nocb")
    reg = tj.Regimen([tj.Dose(amt=100.0, cmt="central", time=24.0 * d) for d in range(4)])
    r = tj.simulate(IV, {"CL": cl, "V": 20.0 * np.exp(eta[:, 1])}, reg, np.array(ts), solver=TIGHT)
    c = np.asarray(r.outputs["C"]) * (1.0 + 0.1 * rng.standard_normal((n, len(ts[0]))))
    frame = pd.DataFrame(rows, columns=["ID", "TIME", "DV", "AMT", "EVID", "CRCL"])
    frame.loc[frame.EVID == 0, "DV"] = c.ravel()
    frame["DV"] = frame["DV"].fillna(0.0)
    frame["MDV"] = (frame.EVID == 1).astype(int)
    frame["CMT"] = 1
    return tj.data.Dataset(frame, compartments=IV)


@pytest.mark.slow
def test_a_population_fit_estimates_the_effect_of_a_changing_covariate():
    """FOCE-I estimates the exponent of a covariate that changes within subjects; the
    information is within subjects, so a baseline-only fit would miss it."""
    ds = _renal_dataset()
    assert ds.time_varying == ["CRCL"]
    pop = tj.Population(
        IV,
        typical={"CL": 1.5, "V": 15.0},
        omega={"CL": 0.1, "V": 0.1},
        covariates=[tj.population.Power("CL", "CRCL", 0.3, ref=100.0, estimate=True)],
    )
    err = tj.calibrate.ErrorModel("proportional", prop=0.2)
    res = tj.calibrate.fit_population(IV, ds, pop, err)
    est = res.estimates
    got = est.loc["CL~CRCL", "estimate"]
    se = est.loc["CL~CRCL", "se"]
    assert res.converged
    assert 0.0 < se < 0.15
    assert abs(got - 1.0) < 3 * se, (got, se)
    assert abs(res.theta["CL"] - 2.0) < 0.3
    # the post-hoc fit's CL follows the covariate
    course = res.individual.varying["CL"]
    v = np.asarray(course.values)
    assert np.all(v[:, -1] < v[:, 0])


def test_saem_simulates_the_changing_covariates():
    """SAEM's individual parameters (``g(p(t)) = z + log factor(t)``, mu-referenced) give
    the exact solution with the hand-built NOCB table of CL, at any z."""
    from twinjax.calibrate._map import make_spec, prepare_data
    from twinjax.calibrate._saem import _problem, _simulate

    ds = read_data()
    pop = tj.Population(
        IV,
        typical={"CL": 2.0, "V": 20.0},
        omega={"CL": 0.3, "V": 0.1},
        covariates=[POW_WT, POW_CRCL],
    )
    err = tj.calibrate.ErrorModel("proportional", prop=0.2)
    fd = prepare_data(IV, ds, err)
    spec = make_spec(IV, FIT_SOLVER, pop.iiv, (err,), ("C",))
    P = _problem(IV, pop, fd, spec)
    z = jnp.asarray([[np.log(2.0) + 0.3, np.log(20.0) - 0.1], [np.log(2.0) - 0.2, np.log(25.0)]])
    _, f = _simulate(P.st, z, P.tv, P.off, P.ev, P.ts, P.obs, P.mask, err.sigma())

    def cl(wt, crcl):
        return (wt / 70.0) ** 0.75 * (crcl / 100.0) ** 0.5

    t1 = [0.0, 12.0, 24.0, 30.0, 36.0, 48.0]
    v1 = np.array([cl(70, 100), cl(70, 100), cl(75, 80), cl(80, 60), cl(80, 50), cl(80, 50)])
    doses = [(0.0, 100.0, 0.0), (24.0, 100.0, 0.0), (48.0, 100.0, 0.0)]
    V1 = float(np.exp(z[0, 1]))
    want = exact(doses, (np.array(t1), float(np.exp(z[0, 0])) * v1, "nocb"), V1, [12, 24, 36, 48])
    want[1] -= 100.0 / V1  # the trough at 24 is before that dose
    np.testing.assert_allclose(np.asarray(f[0, :4]), want, rtol=1e-6)
    want2 = exact([(0.0, 100.0, 0.0)], float(np.exp(z[1, 0])) * cl(60, 120), 25.0, [24.0])
    np.testing.assert_allclose(float(f[1, 0]), want2[0], rtol=1e-6)


def test_population_typical_values_follow_a_piecewise_covariate():
    """Population.typical_values and .individual take Piecewise covariates: the
    parameters they act on become Piecewise on the same change times."""
    ds = read_data()
    pop = tj.Population(
        IV, typical={"CL": 2.0, "V": 20.0}, omega={"CL": 0.3}, covariates=[POW_WT, POW_CRCL]
    )
    wt, crcl = ds.piecewise("WT"), ds.piecewise("CRCL")
    tv = pop.typical_values({"WT": wt, "CRCL": crcl})
    assert isinstance(tv["CL"], tj.Piecewise) and not isinstance(tv["V"], tj.Piecewise)
    want = 2.0 * (wt.values / 70.0) ** 0.75 * (crcl.values / 100.0) ** 0.5
    np.testing.assert_allclose(np.asarray(tv["CL"].values), want, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(tv["CL"].times), wt.times)
    etas = jnp.asarray([[0.2], [-0.1]])
    ind = pop.individual(tv, etas)
    np.testing.assert_allclose(
        np.asarray(ind["CL"].values), want * np.exp(np.asarray(etas)), rtol=1e-12
    )
    # a Piecewise times a Piecewise on other change times: exact on the union
    a = tj.Piecewise([0.0, 10.0], [1.0, 2.0], "locf")
    b = tj.Piecewise([0.0, 5.0, 20.0], [3.0, 4.0, 5.0], "locf")
    c = a * b
    for t in (0.0, 4.0, 5.0, 9.9, 10.0, 15.0, 20.0, 30.0):
        got = value(np.asarray(c.times)[0], np.asarray(c.values)[0], "locf", t)
        assert got == value([0, 10], [1, 2], "locf", t) * value([0, 5, 20], [3, 4, 5], "locf", t)
    with pytest.raises(ValueError, match="'nocb' and a 'locf'"):
        a * tj.Piecewise([0.0], [1.0], "nocb")
