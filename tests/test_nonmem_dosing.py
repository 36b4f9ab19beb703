"""NONMEM dosing semantics against closed forms (issue #14).

One-compartment IV model with bioavailability ``F2`` and lag ``ALAG2`` on the central
compartment (as in NONMEM's ADVAN1 with F1/ALAG1). Every expected value is a sum of
closed-form single-dose responses (superposition); steady states are sums over the
implied earlier doses (``N_IMPLIED`` intervals, far beyond the 5 h half-life).
"""

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pk_analytic as ref
import pytest

import twinjax as tj
from twinjax.data import DatasetError, read_nonmem
from twinjax.dosing._regimen import compile_regimens
from twinjax.models import pk
from twinjax.ode._param import fraction, real

TIGHT = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12)
CL, V = 4.0, 30.0
A, L = ref.macro_constants(CL=CL, V=V)
N_IMPLIED = 200


class IVWithF(pk.Compartmental):
    """1-compartment IV PK whose central compartment has F2 and ALAG2."""

    @property
    def params(self):
        return super().params + (
            fraction("F2", 1.0, upper=2.0, doc="bioavailability of the central compartment"),
            real("ALAG2", 0.0, "h", lower=0.0, doc="lag time of the central compartment"),
        )

    def dose_parameters(self):
        return {"central": ("F2", "ALAG2")}


MODEL = IVWithF()
PLAIN = pk.one_compartment()  # no F on the central compartment (constant infusions)


def params(F=1.0, lag=0.0):
    return dict(CL=CL, V=V, F2=F, ALAG2=lag)


# Every single-patient simulation of MODEL runs one compiled program: event tables are
# padded to the same shape (N_RECORDS rows, N_SS steady-state slots, the infusion and
# steady-state code paths on) and save times to N_TIMES. Padding is what the engine does
# for a batch of patients with different regimens (tested at the end of this file); here
# it keeps the file to a few compilations instead of one per regimen.
N_RECORDS, N_SS, N_TIMES = 48, 2, 16


def padded_table(regimen, model=MODEL):
    ev = compile_regimens([regimen], model, n_records=N_RECORDS)
    ss_rec = jnp.pad(ev.ss_rec, ((0, 0), (0, N_SS - ev.ss_rec.shape[-1])), constant_values=-1)
    return dataclasses.replace(ev, ss_rec=ss_rec, has_infusion=True, has_ss=True)


def padded_times(times):
    times = np.asarray(times, float)
    return jnp.asarray(np.concatenate([times, np.full(N_TIMES - len(times), times[-1])]))


def run(regimen, times, model=MODEL, **p):
    r = tj.simulate(model, p, padded_table(regimen, model), padded_times(times), solver=TIGHT)
    return r, len(times)


def sim(regimen, times, F=1.0, lag=0.0):
    r, n = run(regimen, times, **params(F, lag))
    assert int(r.status[0]) == 0
    return np.asarray(r.outputs["C"])[0, :n]


def c_bolus(times, arrivals):
    """``arrivals``: list of (amount, arrival time)."""
    return sum(ref.bolus(times, a, A, L, t0) for a, t0 in arrivals)


def c_inf(times, infusions):
    """``infusions``: list of (amount, duration, start)."""
    return sum(ref.infusion(times, a, d, A, L, t0) for a, d, t0 in infusions)


def ss_bolus(t, amt, ii, F=1.0, lag=0.0, addl=0):
    """Arrivals of a steady-state bolus record at ``t`` (implied doses and ADDL)."""
    return [(F * amt, t + lag + k * ii) for k in range(-N_IMPLIED, addl + 1)]


def ss_inf(t, amt, ii, dur, F=1.0, lag=0.0, addl=0):
    """Infusions of a steady-state infusion record (``dur``: the actual duration)."""
    return [(F * amt, dur, t + lag + k * ii) for k in range(-N_IMPLIED, addl + 1)]


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6 * np.max(np.abs(b)))))


TIMES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 11.9, 12.0, 12.5, 14.0, 24.0, 30.0, 48.0])


# ---------------------------------------------------------------------- (a) EVID 4 + SS 1


@pytest.mark.parametrize("evid", [1, 4])
def test_evid4_with_ss1_equals_evid1(evid):
    """A reset-and-dose steady-state record is the steady state (reset first)."""
    t0 = 24.0
    reg = tj.Regimen(
        [
            tj.Dose(300.0, "central", 0.0),  # discarded by the SS record
            tj.Dose(100.0, "central", t0, ii=12.0, addl=1, ss=1, evid=evid),
        ]
    )
    times = t0 + TIMES
    want = c_bolus(times, ss_bolus(t0, 100.0, 12.0, addl=1))
    got = sim(reg, times)
    assert rel(got, want) < 1e-7
    assert got[0] == pytest.approx(100.0 / V / (1 - np.exp(-CL / V * 12.0)), rel=1e-8)


# ------------------------------------------------------------------- (b) SS with a lag


@pytest.mark.parametrize("F,lag", [(1.0, 1.5), (0.6, 1.5), (0.8, 13.0)])
def test_ss_bolus_with_lag_is_at_steady_state_at_record_time(F, lag):
    reg = tj.Regimen([tj.Dose(100.0, "central", 0.0, ii=12.0, addl=2, ss=1)])
    want = c_bolus(TIMES, ss_bolus(0.0, 100.0, 12.0, F, lag, addl=2))
    got = sim(reg, TIMES, F, lag)
    assert got[0] > 0.5 * want[0] > 0  # not zero between t and t + lag
    assert rel(got, want) < 1e-7


@pytest.mark.parametrize("lag", [0.0, 1.5, 11.0])
def test_ss_infusion_with_lag(lag):
    reg = tj.Regimen([tj.Dose(100.0, "central", 0.0, dur=4.0, ii=12.0, ss=1)])
    want = c_inf(TIMES, ss_inf(0.0, 100.0, 12.0, 4.0, 0.7, lag))
    assert rel(sim(reg, TIMES, 0.7, lag), want) < 1e-7


# ------------------------------------------------- (c) SS infusions longer than II


@pytest.mark.parametrize("lag", [0.0, 2.5])
@pytest.mark.parametrize("dur", [12.0, 15.0, 30.0])
def test_ss_infusion_longer_than_interval(dur, lag):
    """Overlapping infusions: the sum over every infusion started k * II earlier."""
    reg = tj.Regimen([tj.Dose(100.0, "central", 0.0, dur=dur, ii=12.0, addl=1, ss=1)])
    want = c_inf(TIMES, ss_inf(0.0, 100.0, 12.0, dur, 0.9, lag, addl=1))
    assert rel(sim(reg, TIMES, 0.9, lag), want) < 1e-7


@pytest.mark.parametrize("F", [1.0, 0.5, 1.6])
def test_ss_infusion_by_rate_uses_f_for_duration(F):
    """RATE given: duration F * AMT / RATE, which may exceed II only because of F."""
    amt, rate, ii = 100.0, 5.0, 12.0  # AMT/RATE = 20 h > II
    reg = tj.Regimen([tj.Dose(amt, "central", 0.0, rate=rate, ii=ii, ss=1)])
    want = c_inf(TIMES, ss_inf(0.0, amt, ii, F * amt / rate, F))
    got = sim(reg, TIMES, F)
    assert rel(got, want) < 1e-7
    # at steady state the mean input rate is F * AMT / II
    assert got[0] * CL == pytest.approx(F * amt / ii, rel=0.2)


def test_lag_beyond_compiled_history_is_flagged_not_wrong():
    """A lag of several intervals needs implied doses that were not compiled: the
    patient is flagged (status != 0) instead of returning a wrong profile."""
    reg = tj.Regimen([tj.Dose(100.0, "central", 0.0, ii=12.0, ss=1)])
    r, _ = run(reg, TIMES, **params(1.0, 30.0))
    assert int(r.status[0]) != 0
    assert np.all(np.isnan(np.asarray(r.outputs["C"])))


# ----------------------------------------------------------------------------- SS = 2


def test_ss2_adds_steady_state_to_current_state():
    reg = tj.Regimen(
        [
            tj.Dose(300.0, "central", 0.0),
            tj.Dose(100.0, "central", 6.0, ii=12.0, ss=2, dur=3.0),
        ]
    )
    times = 6.0 + TIMES
    want = c_bolus(times, [(300.0, 0.0)]) + c_inf(times, ss_inf(6.0, 100.0, 12.0, 3.0))
    assert rel(sim(reg, times), want) < 1e-7


# ------------------------------------------------------- constant infusion at steady state


def test_ss_constant_infusion():
    """SS 1, AMT 0, RATE > 0, II 0: at R / CL from the record time until a reset."""
    reg = tj.Regimen(
        [tj.Dose(0.0, "central", 2.0, rate=8.0, ss=1), tj.Reset(20.0)]
        + [tj.Dose(50.0, "central", 10.0)]
    )
    times = np.array([1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    r, n = run(reg, times, PLAIN, CL=CL, V=V)
    assert int(r.status[0]) == 0
    got = np.asarray(r.outputs["C"])[0, :n]
    css = 8.0 / CL
    want = np.where((times >= 2.0) & (times < 20.0), css, 0.0)
    want = want + np.where(times < 20.0, c_bolus(times, [(50.0, 10.0)]), 0.0)
    assert rel(got, want) < 1e-7


def test_ss_constant_infusion_into_compartment_with_f_is_refused():
    model = pk.one_compartment("first_order")
    reg = tj.Regimen([tj.Dose(0.0, "depot", 0.0, rate=8.0, ss=1)])
    with pytest.raises(ValueError, match="constant infusion"):
        tj.simulate(model, {}, reg, jnp.asarray([1.0]))


# ------------------------------------------------------------- several SS records


def test_two_ss_records_in_one_subject():
    """The second SS 1 record discards everything before it, pending ADDL doses too."""
    reg = tj.Regimen(
        [
            tj.Dose(100.0, "central", 0.0, ii=12.0, addl=10, ss=1),
            tj.Dose(200.0, "central", 48.0, dur=20.0, ii=24.0, ss=1),
        ]
    )
    times = np.array([0.0, 6.0, 30.0, 47.9, 48.0, 50.0, 60.0, 72.0, 80.0])
    first = c_bolus(times, ss_bolus(0.0, 100.0, 12.0, addl=10))
    second = c_inf(times, ss_inf(48.0, 200.0, 24.0, 20.0))
    want = np.where(times < 48.0, first, second)
    assert rel(sim(reg, times), want) < 1e-7


# --------------------------------------------------------------------------- gradients


def test_gradient_through_ss_with_f_and_lag_matches_finite_differences():
    # not padded: reverse mode through the padded table compiles several times longer
    times = jnp.asarray([0.5, 3.0, 7.0])
    reg = tj.Regimen([tj.Dose(100.0, "central", 0.0, dur=15.0, ii=12.0, ss=1)])

    def out(F, lag):
        r = tj.simulate(MODEL, dict(params(), F2=F, ALAG2=lag), reg, times, solver=TIGHT)
        return jnp.sum(r.outputs["C"] * jnp.asarray([1.0, 0.3, 2.0]))

    # the values of the finite differences from the programs jax.grad compiled (forward
    # with residuals, backward) instead of a third, plain program
    value_and_grad = jax.value_and_grad(out, argnums=(0, 1))
    g = value_and_grad(0.8, 1.5)[1]

    def value(F, lag):
        return value_and_grad(F, lag)[0]

    h = 1e-5
    fd_f = (value(0.8 + h, 1.5) - value(0.8 - h, 1.5)) / (2 * h)
    fd_l = (value(0.8, 1.5 + h) - value(0.8, 1.5 - h)) / (2 * h)
    assert float(g[0]) == pytest.approx(float(fd_f), rel=1e-5)
    assert float(g[1]) == pytest.approx(float(fd_l), rel=1e-5)


# ------------------------------------------------------------------------- read_nonmem

HEADER = "ID,TIME,DV,AMT,EVID,CMT,RATE,DUR,II,ADDL,SS,MDV"


def read(rows, **kw):
    text = "\n".join([HEADER + kw.pop("extra_header", ""), *rows]) + "\n"
    return read_nonmem(io.StringIO(text), compartments={1: "central"}, **kw)


def test_read_nonmem_ss_records_match_closed_forms():
    ds = read(
        [
            "1,0,.,100,4,1,0,0,12,1,1,1",  # EVID 4 + SS 1
            "2,0,.,100,1,1,5,0,12,0,1,1",  # AMT/RATE = 20 h > II
            "3,0,.,100,1,1,0,30,12,0,1,1",  # DUR 30 > II
            "4,0,.,100,1,1,0,0,0,0,0,1",
            "4,6,.,100,1,1,0,3,12,0,2,1",  # SS 2
            "5,0,.,0,1,1,8,0,0,0,1,1",  # constant infusion at steady state
            "6,0,.,100,1,1,0,0,12,0,1,1",
            "6,24,.,50,1,1,0,0,6,0,1,1",  # a second SS record
        ]
    )
    regs = ds.regimens
    F, lag = 0.8, 1.5
    got = [sim(r, TIMES, F, lag) for r in regs[:4] + regs[5:]]
    plain, n = run(regs[4], TIMES, PLAIN, CL=CL, V=V)
    got.insert(4, np.asarray(plain.outputs["C"])[0, :n])
    want = [
        c_bolus(TIMES, ss_bolus(0.0, 100.0, 12.0, F, lag, addl=1)),
        c_inf(TIMES, ss_inf(0.0, 100.0, 12.0, F * 100.0 / 5.0, F, lag)),
        c_inf(TIMES, ss_inf(0.0, 100.0, 12.0, 30.0, F, lag)),
        c_bolus(TIMES, [(F * 100.0, lag)])
        + np.where(TIMES >= 6.0, c_inf(TIMES, ss_inf(6.0, 100.0, 12.0, 3.0, F, lag)), 0.0),
        np.full(TIMES.shape, 8.0 / CL),
        np.where(
            TIMES < 24.0,
            c_bolus(TIMES, ss_bolus(0.0, 100.0, 12.0, F, lag)),
            c_bolus(TIMES, ss_bolus(24.0, 50.0, 6.0, F, lag)),
        ),
    ]
    for i, (g, w) in enumerate(zip(got, want)):
        assert rel(g, w) < 1e-7, i + 1


def test_read_nonmem_refuses_modelled_rate_without_r_parameter():
    """RATE -1 needs R1 on the dosed compartment; MODEL has F2/ALAG2 but no R2."""
    text = HEADER + "\n1,0,.,100,1,1,-1,0,0,0,0,1\n"
    with pytest.raises(DatasetError, match="RATE -1.*R1"):
        read_nonmem(io.StringIO(text), compartments=MODEL)


def test_read_nonmem_keeps_time_varying_covariates():
    """A covariate that changes within a subject is kept record by record (it used to
    be refused): ``time_varying`` names it, ``covariates`` holds the baseline, and
    ``piecewise`` gives every record's value (tests/test_time_varying.py simulates it)."""
    rows = ["1,0,.,100,1,1,0,0,0,0,0,1,70", "1,24,.,100,1,1,0,0,0,0,0,1,75"]
    ds = read(rows, extra_header=",WT")
    assert ds.time_varying == ["WT"]
    assert ds.covariates.loc[1, "WT"] == 70.0
    np.testing.assert_array_equal(ds.piecewise("WT").values, [[70.0, 75.0]])
    ds = read(["1,0,.,100,1,1,0,0,0,0,0,1,70", "1,24,1.0,0,0,1,0,0,0,0,0,0,."], extra_header=",WT")
    assert ds.time_varying == []  # a missing later value is no change
    assert ds.covariates.loc[1, "WT"] == 70.0
    ds = read(rows, extra_header=",WT", covariates=[])
    assert ds.covariate_names == []


def test_batch_of_regimens_with_different_ss_records_matches_single_patients():
    """Padding: patients with no, one and two SS records in one compiled batch."""
    regs = [
        tj.Regimen([tj.Dose(100.0, "central", 0.0, ii=12.0, addl=2)]),
        tj.Regimen([tj.Dose(100.0, "central", 2.0, dur=15.0, ii=12.0, ss=1)]),
        tj.Regimen(
            [
                tj.Dose(100.0, "central", 0.0, ii=12.0, ss=2),
                tj.Dose(50.0, "central", 24.0, ii=8.0, ss=1, evid=4),
            ]
        ),
    ]
    p = {k: jnp.asarray([v] * 3) for k, v in params(0.9, 1.0).items()}
    batch = tj.simulate(MODEL, p, regs, jnp.asarray(TIMES), solver=TIGHT)
    assert np.all(np.asarray(batch.status) == 0)
    for i, r in enumerate(regs):
        one = sim(r, TIMES, 0.9, 1.0)
        np.testing.assert_allclose(np.asarray(batch.outputs["C"])[i], one, rtol=1e-9, atol=1e-12)


def test_nonlinear_steady_state_converges_or_is_flagged():
    """Michaelis-Menten elimination, 100 mg every 12 h (8.33 mg/h on average): near
    saturation (VMAX 8.4 mg/h) Newton's method needs many iterations; a fixed 6 used to
    return C = 123.6 with status 0 where the steady state is 130.07 (5 % off). Newton now
    iterates to a relative step of 1e-6 and flags a patient that does not converge; with
    VMAX below the mean input rate there is no steady state at all."""
    from scipy.integrate import solve_ivp
    from scipy.optimize import brentq

    model = pk.one_compartment(elimination="michaelis_menten")
    vmax = np.array([20.0, 10.0, 8.6, 8.4, 5.0])
    V, KM, D, ii = 10.0, 1.0, 100.0, 12.0
    ts = np.array([0.0, 6.0, 11.9])
    r = tj.simulate(
        model,
        {"VMAX": vmax, "KM": np.full(5, KM), "V": np.full(5, V)},
        tj.Regimen([tj.Dose(D, "central", 0.0, ii=ii, ss=1)]),
        ts,
        solver=tj.solvers.Diffrax(rtol=1e-10, atol=1e-12),
    )
    status = np.asarray(r.status)

    def after_one_interval(c0, vm):  # concentration ii after the dose, from trough c0
        sol = solve_ivp(
            lambda t, c: [-vm * c[0] / (KM + c[0]) / V],
            (0.0, ii),
            [c0 + D / V],
            method="Radau",
            rtol=1e-12,
            atol=1e-14,
            dense_output=True,
        )
        return sol

    for i, vm in enumerate(vmax[:4]):
        trough = brentq(
            lambda c, vm=vm: after_one_interval(c, vm).y[0, -1] - c, 0.0, 1e4, xtol=1e-13
        )
        want = after_one_interval(trough, vm).sol(ts)[0]
        assert status[i] == 0
        assert rel(r.outputs["C"][i], want) < 1e-6, (vm, r.outputs["C"][i], want)
    assert status[4] != 0 and np.all(np.isnan(np.asarray(r.outputs["C"][4])))
