"""The engine's controlled run (solve/_controlled.py) on a model that is not glucose.

A one-compartment IV PK model (``dA/dt = -k A + R``, ``k = CL / V``) whose infusion
rate a proportional controller sets at each sample to hold a target concentration.
With ``R`` held over each interval the amount has a closed form,
``A(t0 + h) = A(t0) e^(-k h) + R / k (1 - e^(-k h))``, iterated sample by sample here in
NumPy float64.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.solve import ControllerHook, Inputs, InputSchedule, simulate_controlled

MODEL = pk.one_compartment("iv")
TIGHT = tj.solvers.Ensemble(rtol=1e-11, atol=1e-11)
PARAMS = dict(CL=np.array([2.0, 5.0, 9.0]), V=np.array([20.0, 35.0, 50.0]))
TARGET, GAIN, LOAD = 4.0, 3.0, 60.0  # mg/L, (mg/h) per (mg/L), mg


class Proportional(ControllerHook):
    """``R = max(GAIN (target - C), 0)`` at each sample; a loading bolus at the first."""

    target: float
    gain: float
    load: float

    def init(self, y, t, p):
        return jnp.zeros((), jnp.int32)

    def __call__(self, y, t, k, p):
        c = y["central"] / p["V"]
        rate = jnp.maximum(self.gain * (self.target - c), 0.0)
        bolus = jnp.where(k == 0, self.load, 0.0)  # a scalar: the same for every patient
        return k + 1, Inputs(rates={"central": rate}, boluses={"central": bolus}), (c, rate)


def closed_form(CL, V, n_samples, h):
    """Concentration and rate at each sample, and the amount at the end."""
    k, a, cs, rs = CL / V, 0.0, [], []
    for s in range(n_samples):
        c = a / V
        r = max(GAIN * (TARGET - c), 0.0)
        cs.append(c)
        rs.append(r)
        a += LOAD if s == 0 else 0.0
        a = a * np.exp(-k * h) + r / k * (1 - np.exp(-k * h))
    return np.asarray(cs), np.asarray(rs), a


def test_proportional_controller_matches_the_closed_form():
    hook = Proportional(TARGET, GAIN, LOAD)
    times, run = simulate_controlled(
        MODEL, PARAMS, hook, n_samples=24, sample_time=0.5, solver=TIGHT
    )
    np.testing.assert_array_equal(times, 0.5 * np.arange(24))
    assert run.records[0].shape == (3, 24) and np.all(np.asarray(run.status) == 0)
    for i in range(3):
        c, r, a_end = closed_form(PARAMS["CL"][i], PARAMS["V"][i], 24, 0.5)
        np.testing.assert_allclose(run.records[0][i], c, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(run.records[1][i], r, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(run.y[i, 0], a_end, rtol=1e-8)
    # the loop settles at proportional control's fixed point, C = GAIN target / (CL + GAIN)
    settled = GAIN * TARGET / (PARAMS["CL"] + GAIN)
    np.testing.assert_allclose(run.records[0][:, -1], settled, rtol=0.05)
    # one patient: scalars in, the patient axis dropped, the same numbers
    one = {k: v[1] for k, v in PARAMS.items()}
    _, r1 = simulate_controlled(MODEL, one, hook, n_samples=24, sample_time=0.5, solver=TIGHT)
    assert r1.records[0].shape == (24,) and int(r1.status) == 0
    np.testing.assert_allclose(r1.records[0], run.records[0][1], rtol=1e-12)


class Ramp(InputSchedule):
    """``extra * (j + 1)`` mg/h in sub-step ``j`` of each sample; ``eliminated`` reset
    to ``start`` at each sub-step."""

    extra: float
    start: float

    def init(self, y, t, p):
        return jnp.zeros_like(t)

    def __call__(self, j, t0, t1, p):
        rate = self.extra * (j + 1.0)
        return j + 1.0, {"central": rate}, rate * (t1 - t0)

    def reset(self, j, y, t, p):
        return j, {"eliminated": jnp.full_like(t, self.start)}


class HeldRamp(Ramp):
    held = ("eliminated",)


def test_sub_steps_schedule_reset_and_held_states():
    n, h, m = 6, 1.0, 4
    hook = Proportional(TARGET, GAIN, LOAD)

    def run(schedule_cls):
        sched = schedule_cls(extra=0.5, start=7.0)
        return simulate_controlled(
            MODEL, PARAMS, hook, n_samples=n, sample_time=h, dt=h / m, schedule=sched,
            solver=TIGHT,
        )[1]  # fmt: skip

    r = run(Ramp)
    # the schedule's counter runs over the whole run: its sub-step j adds 0.5 (j + 1) mg/h
    for i in range(3):
        CL, V = PARAMS["CL"][i], PARAMS["V"][i]
        k, a = CL / V, 0.0
        j = 0
        for s in range(n):
            c = a / V
            rate = max(GAIN * (TARGET - c), 0.0)
            np.testing.assert_allclose(r.records[0][i, s], c, rtol=1e-8, atol=1e-12)
            a += LOAD if s == 0 else 0.0
            delivered = 0.0
            for _ in range(m):
                u = rate + 0.5 * (j + 1)
                delivered += 0.5 * (j + 1) * h / m
                a_new = a * np.exp(-k * h / m) + u / k * (1 - np.exp(-k * h / m))
                eliminated = a + u * h / m - a_new  # mass balance over the sub-step
                a, j = a_new, j + 1
            np.testing.assert_allclose(r.sub_records[i, s], delivered, rtol=1e-12)
        np.testing.assert_allclose(r.y[i, 0], a, rtol=1e-8)
        # reset to 7 at the last sub-step's start, then what that sub-step eliminated
        np.testing.assert_allclose(r.y[i, 1], 7.0 + eliminated, rtol=1e-8)
    held = run(HeldRamp)  # the held state keeps its reset value; the rest is unchanged
    np.testing.assert_array_equal(held.y[:, 1], 7.0)
    np.testing.assert_allclose(held.y[:, 0], r.y[:, 0], rtol=1e-12)


def test_a_failed_patient_is_nan_and_the_others_are_intact():
    hook = Proportional(TARGET, GAIN, LOAD)
    good_p = {k: np.append(v, 20.0) for k, v in PARAMS.items()}
    bad_p = {k: v.copy() for k, v in good_p.items()}
    bad_p["V"][-1] = np.nan
    kw = dict(n_samples=8, sample_time=0.5, solver=TIGHT, check=False)
    _, bad = simulate_controlled(MODEL, bad_p, hook, **kw)
    _, good = simulate_controlled(MODEL, good_p, hook, **kw)  # the same program
    assert np.asarray(good.status).tolist() == [0, 0, 0, 0]
    assert np.asarray(bad.status).tolist() == [0, 0, 0, tj.Status.NONFINITE]
    assert np.all(np.isnan(bad.records[0][-1])) and np.all(np.isnan(bad.records[1][-1]))
    assert np.all(np.isnan(bad.y[-1])) and np.all(np.isfinite(bad.y[:3]))
    np.testing.assert_array_equal(bad.y[:3], good.y[:3])
    np.testing.assert_array_equal(bad.records[0][:3], good.records[0][:3])
    np.testing.assert_array_equal(bad.records[1][:3], good.records[1][:3])


def test_a_patient_with_non_finite_records_has_a_nan_final_state():
    """Its integration succeeds (finite state) but a record is infinite: NONFINITE, and
    its final state is NaN like its records; the others' runs are those without."""

    class InfRecord(Proportional):
        def __call__(self, y, t, k, p):
            k, inputs, (c, rate) = super().__call__(y, t, k, p)
            return k, inputs, (c, rate / (p["V"] - 20.0))  # infinite for V = 20

    kw = dict(n_samples=4, sample_time=0.5, solver=TIGHT)
    _, bad = simulate_controlled(MODEL, PARAMS, InfRecord(TARGET, GAIN, LOAD), **kw)
    _, good = simulate_controlled(MODEL, PARAMS, Proportional(TARGET, GAIN, LOAD), **kw)
    assert np.asarray(bad.status).tolist() == [tj.Status.NONFINITE, 0, 0]
    assert np.all(np.isnan(bad.y[0])) and np.all(np.isnan(bad.records[1][0]))
    np.testing.assert_array_equal(bad.y[1:], good.y[1:])


def test_bad_inputs_are_refused_before_compiling():
    hook = Proportional(TARGET, GAIN, LOAD)
    with pytest.raises(ValueError, match="multiple of dt"):
        simulate_controlled(MODEL, PARAMS, hook, n_samples=4, sample_time=1.0, dt=0.3)
    with pytest.raises(ValueError, match="n_samples"):
        simulate_controlled(MODEL, PARAMS, hook, n_samples=0, sample_time=1.0)

    class Wrong(Proportional):
        def __call__(self, y, t, k, p):
            return k, Inputs(rates={"centrall": 1.0}), ()

    with pytest.raises(ValueError, match="centrall"):
        simulate_controlled(MODEL, PARAMS, Wrong(1.0, 1.0, 1.0), n_samples=2, sample_time=1.0)


def test_bad_hook_outputs_and_arguments_are_refused_before_compiling():
    """Each names the key or argument and what is allowed (the model's states)."""
    hook = Proportional(TARGET, GAIN, LOAD)
    kw = dict(n_samples=2, sample_time=1.0)
    states = r"\['central', 'eliminated'\]"

    class BadBolus(Proportional):
        def __call__(self, y, t, k, p):
            return k, Inputs(boluses={"centrall": 1.0}), ()

    with pytest.raises(ValueError, match=rf"boluses.*'centrall'.*{states}"):
        simulate_controlled(MODEL, PARAMS, BadBolus(1.0, 1.0, 1.0), **kw)

    class ScalarRecord(Proportional):
        def __call__(self, y, t, k, p):
            return k, Inputs(), jnp.sum(y["central"])

    with pytest.raises(ValueError, match=r"record.*shape \(\).*3 patients first"):
        simulate_controlled(MODEL, PARAMS, ScalarRecord(1.0, 1.0, 1.0), **kw)

    class BadReset(Ramp):
        def reset(self, j, y, t, p):
            return j, {"eliminatd": t}

    with pytest.raises(ValueError, match=rf"reset.*'eliminatd'.*{states}"):
        simulate_controlled(MODEL, PARAMS, hook, schedule=BadReset(0.5, 7.0), dt=0.5, **kw)
    with pytest.raises(ValueError, match=rf"y0: unknown states \['centrall'\].*{states}"):
        simulate_controlled(MODEL, PARAMS, hook, y0={"centrall": 1.0, "eliminated": 0.0}, **kw)
    with pytest.raises(ValueError, match="n_samples 2.5 must be an integer"):
        simulate_controlled(MODEL, PARAMS, hook, n_samples=2.5, sample_time=1.0)


class Clock(ControllerHook):
    """Records the time it is given at each sample."""

    def init(self, y, t, p):
        return ()

    def __call__(self, y, t, state, p):
        return state, Inputs(), t


class SubClock(InputSchedule):
    """Records each sub-step's start and end."""

    def init(self, y, t, p):
        return ()

    def __call__(self, state, t0, t1, p):
        return state, {}, (t0, t1 - t0)


def test_times_come_from_integer_counters_without_drift():
    """float32, 300 samples of 1/3 h in 4 sub-steps: summing dt drifted by ~0.03 h."""
    n, h, m = 300, 1.0 / 3.0, 4
    _, r = simulate_controlled(
        MODEL, PARAMS, Clock(), n_samples=n, sample_time=h, dt=h / m, schedule=SubClock(),
        dtype=np.float32,
    )  # fmt: skip
    k = np.arange(n)
    want = (k * np.float64(h)).astype(np.float32)
    np.testing.assert_allclose(r.records[:, :], np.broadcast_to(want, (3, n)), rtol=0, atol=1e-4)
    starts, lengths = r.sub_records  # summed over each sample's sub-steps
    want_starts = m * k * h + h / m * sum(range(m))
    np.testing.assert_allclose(starts[0], want_starts, rtol=1e-6)
    # the sub-steps tile each sample (to float32 rounding of times near 100 h)
    np.testing.assert_allclose(lengths[0], h, rtol=0, atol=3e-5)
