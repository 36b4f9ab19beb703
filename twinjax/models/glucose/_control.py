"""Closed-loop simulation of the UVA/Padova model: CGM sensor, controllers, compiled loop.

A controller is called every sampling interval (5 min by default): it reads the
CGM value and the meal announced for the interval and sets the insulin delivery
rate, held over the interval. The run is the engine's controlled run
(``solve/_controlled.py``, one compiled program for the whole cohort): the sensor
and the controller are its controller hook (:class:`SensedController`), the meals
its input schedule per patient step (1 min, as in the academic simulator) with the
meal-memory reset (:class:`Meals`); each step is integrated by a twinjax solver
(default ``solvers.Ensemble``).

Meals follow the academic simulator: a meal announced at a time is eaten at
``eat_rate`` g/min (5 g/min) from that minute on, and the gastric-emptying meal
memory ``D`` is reset at the start of each meal to the stomach content, then
grows with what is eaten (Dalla Man et al. 2006; simglucose ``T1DPatient``).

References:
    - Kovatchev BP, Breton M, Dalla Man C, Cobelli C. In silico preclinical trials: a
      proof of concept in closed-loop control of type 1 diabetes. J Diabetes Sci
      Technol 3:44-55, 2009.
    - Breton M, Kovatchev B. Analysis, modeling, and simulation of the accuracy of
      continuous glucose sensors. J Diabetes Sci Technol 2:853-862, 2008 (CGM error:
      Johnson SU transform of an AR(1) process sampled every 15 min).
    - Steil GM, Rebrin K, Darwin C, Hariri F, Saad MF. Feasibility of automating insulin
      delivery for the treatment of type 1 diabetes. Diabetes 55:3344-3350, 2006 (PID).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...ode._model import default_float
from ...solve import ControllerHook, Inputs, InputSchedule, run_controlled
from ...solve._batch import batch_params, patient_rows, unbatch
from ...solve._controlled import check_grid
from ...solve._ensemble import Ensemble
from ._metrics import outcomes
from ._uva_padova import U_TO_PMOL, UvaPadova


# ---------------------------------------------------------------------------- sensor
class CGM(eqx.Module):
    """A continuous glucose monitor: subcutaneous glucose plus noise, clipped to its range.

    The error model is that of the academic simulator (Breton & Kovatchev 2008):
    a Gaussian AR(1) process ``e_k = PACF (e_{k-1} + n_k)`` every 15 min, mapped by
    the Johnson SU transform ``xi + lambda sinh((e - gamma) / delta)`` and
    interpolated to the sensor's sampling times (linearly here; simglucose uses
    cubic interpolation). Default constants: simglucose ``sensor_params.csv``
    (Dexcom/GuardianRT). ``noise=False`` gives an ideal sensor.

    Arguments:
        noise: add the error model (needs a ``key`` in :func:`simulate_closed_loop`).
        PACF, gamma, lam, delta, xi: the error model's constants.
        lo, hi: the sensor's reporting range (mg/dL).
    """

    noise: bool = True
    PACF: float = 0.7
    gamma: float = -0.5444
    lam: float = 15.9574
    delta: float = 1.6898
    xi: float = -5.47
    lo: float = 39.0
    hi: float = 600.0

    def error(self, key, n: int, n_samples: int, sample_time: float, dtype):
        """``(n, n_samples)`` sensor errors (mg/dL) at times ``k * sample_time``."""
        if not self.noise:
            return jnp.zeros((n, n_samples), dtype)
        if key is None:
            raise ValueError("a noisy CGM needs a JAX key: simulate_closed_loop(..., key=...)")
        n15 = int(math.ceil(n_samples * sample_time / 15.0)) + 2
        z = jax.random.normal(key, (n15, n), dtype)

        def ar(e, zk):
            e = self.PACF * (e + zk)
            return e, e

        _, e = jax.lax.scan(ar, z[0], z[1:])
        e = jnp.concatenate([z[:1], e], 0).T  # (n, n15); e_0 = n_0 as in simglucose
        eps = self.xi + self.lam * jnp.sinh((e - self.gamma) / self.delta)
        s = np.arange(n_samples) * sample_time / 15.0
        i = np.floor(s).astype(int)
        w = jnp.asarray(s - i, dtype)[None, :]
        return eps[:, i] * (1 - w) + eps[:, i + 1] * w

    def read(self, Gsub, err):
        return jnp.clip(Gsub + err, self.lo, self.hi)


# ---------------------------------------------------------------------------- controllers
class Controller(eqx.Module):
    """A controller called every sampling interval inside the compiled loop.

    Subclasses implement :meth:`init` and :meth:`__call__`; their array fields may
    be scalars or ``(N,)`` arrays (one value per patient).
    """

    @abc.abstractmethod
    def init(self, p: dict, cgm):
        """The controller's state (a pytree of ``(N,)`` arrays) given the first reading."""

    @abc.abstractmethod
    def __call__(self, state, t, cgm, meal, p: dict, sample_time: float):
        """One control decision.

        Arguments:
            state: the controller state.
            t: ``(N,)`` time (min).
            cgm: ``(N,)`` CGM reading (mg/dL).
            meal: ``(N,)`` carbohydrate announced for this interval (g).
            p: the patient's model parameters (``(N,)`` arrays).
            sample_time: the sampling interval (min).

        Returns:
            ``(state, insulin)``: the new state and the insulin delivery rate (U/min)
            held over the interval.
        """


def basal_rate(p):
    """The patient's basal insulin rate in U/min (``u2ss * BW / 6000``)."""
    return p["u2ss"] * p["BW"] / U_TO_PMOL


class OpenLoop(Controller):
    """Basal insulin only, at the patient's steady-state rate ``u2ss`` (no boluses)."""

    def init(self, p, cgm):
        return ()

    def __call__(self, state, t, cgm, meal, p, sample_time):
        return state, basal_rate(p) + jnp.zeros_like(cgm)


class BasalBolus(Controller):
    """Basal-bolus therapy: basal rate ``u2ss`` plus a meal bolus with correction.

    ``bolus = meal / CR + (CGM > threshold) (CGM - target) / CF`` (U) at each
    announced meal, delivered over the sampling interval; this is the simglucose
    ``BBController``.

    Arguments:
        CR: carbohydrate ratio (g/U), scalar or ``(N,)``.
        CF: correction factor (mg/dL per U), scalar or ``(N,)``.
        target: glucose target of the correction (mg/dL).
        threshold: glucose above which the meal bolus is corrected (mg/dL).
    """

    CR: jax.Array | float = 10.0
    CF: jax.Array | float = 40.0
    target: float = 140.0
    threshold: float = 150.0

    def init(self, p, cgm):
        return ()

    def __call__(self, state, t, cgm, meal, p, sample_time):
        correction = jnp.where(cgm > self.threshold, (cgm - self.target) / self.CF, 0.0)
        bolus = jnp.where(meal > 0, meal / self.CR + correction, 0.0)
        return state, basal_rate(p) + jnp.maximum(bolus, 0.0) / sample_time


class PID(Controller):
    """A PID controller on the CGM error ``e = CGM - target`` (Steil et al. 2006).

    ``insulin = max(basal + P e + I sum(e dt) + D de/dt, 0)`` (U/min), where
    ``basal`` is the patient's basal rate if ``add_basal`` (else 0, as simglucose's
    ``PIDController``). The derivative starts at 0 (the first reading is its
    previous value).

    Arguments:
        P: proportional gain (U/min per mg/dL).
        I: integral gain (U/min per mg/dL/min).
        D: derivative gain (U/min per mg/dL/min * min).
        target: glucose target (mg/dL).
        add_basal: add the patient's basal rate to the PID output.
    """

    P: jax.Array | float = 1e-4
    I: jax.Array | float = 1e-7
    D: jax.Array | float = 1e-3
    target: float = 120.0
    add_basal: bool = True

    def init(self, p, cgm):
        return (jnp.zeros_like(cgm), cgm)

    def __call__(self, state, t, cgm, meal, p, sample_time):
        integral, prev = state
        e = cgm - self.target
        u = self.P * e + self.I * integral + self.D * (cgm - prev) / sample_time
        if self.add_basal:
            u = u + basal_rate(p)
        return (integral + e * sample_time, cgm), jnp.maximum(u, 0.0)


# ---------------------------------------------------------------------------- scenarios
def daily_meals(days: int, meals=((420.0, 50.0), (720.0, 70.0), (1140.0, 80.0))):
    """The same meals every day.

    Arguments:
        days: number of days.
        meals: ``(time of day in min, carbohydrate in g)`` pairs (default 50 g at
            7:00, 70 g at 12:00, 80 g at 19:00).

    Returns:
        ``(times, grams)``: two ``(days * len(meals),)`` numpy arrays.
    """
    t = np.asarray([d * 1440.0 + m[0] for d in range(days) for m in meals])
    g = np.asarray([m[1] for _ in range(days) for m in meals], float)
    return t, g


# ---------------------------------------------------------------------------- the loop
class ClosedLoopResult(eqx.Module):
    """The outcome of :func:`simulate_closed_loop`, sampled every ``sample_time``.

    Attributes:
        times: ``(T,)`` sampling times (min).
        bg: ``(N, T)`` plasma glucose ``Gp / Vg`` (mg/dL).
        cgm: ``(N, T)`` CGM readings (mg/dL).
        insulin: ``(N, T)`` insulin rate set by the controller (U/min).
        cho: ``(N, T)`` carbohydrate eaten in each interval (g).
        status: ``(N,)`` :class:`~twinjax.Status` codes (``OK`` = 0; the worst code of
            the patient's steps; ``NONFINITE`` when a recorded value became NaN or
            infinite). A failed patient's traces are NaN.
    """

    times: jax.Array
    bg: jax.Array
    cgm: jax.Array
    insulin: jax.Array
    cho: jax.Array
    status: jax.Array

    def outcomes(self, which: str = "cgm") -> dict:
        """Glycaemic outcomes (:func:`outcomes`) of the ``"cgm"`` or ``"bg"`` traces."""
        return outcomes(self.cgm if which == "cgm" else self.bg)


def _announced(meal_t, meal_g, t0, t1):
    """``(N,)`` carbohydrate (g) announced in ``[t0, t1)``."""
    hit = (meal_t >= t0[:, None]) & (meal_t < t1[:, None])
    return jnp.sum(jnp.where(hit, meal_g, 0.0), -1)


class SensedController(ControllerHook):
    """A :class:`Controller` reading a :class:`CGM`, as the engine's controller hook.

    At each sample it reads the sensor (``Gs / Vg`` plus the sensor error of that
    sample), tells the controller the carbohydrate announced for the interval, and
    sets the insulin rate (U/min, as pmol/kg/min into ``isc1``) held over it. It
    records plasma glucose ``Gp / Vg``, the CGM reading and the insulin rate. Its state
    is the sample index and the controller's state.

    Arguments:
        controller: the :class:`Controller`.
        sensor: the :class:`CGM`.
        err: ``(N, n_samples)`` sensor errors (:meth:`CGM.error`), at least one
            column per sample of the run.
        meal_t, meal_g: ``(N, M)`` (or ``(M,)``) meal times (min) and grams.
        sample_time: the sampling interval (min); it must be the run's.
    """

    controller: Controller
    sensor: CGM
    err: jax.Array
    meal_t: jax.Array
    meal_g: jax.Array
    sample_time: float = eqx.field(static=True)

    def check(self, n, n_samples, sample_time, dt):
        if abs(sample_time - self.sample_time) > 1e-9 * max(1.0, sample_time):
            raise ValueError(
                f"SensedController: its sample_time {self.sample_time} differs from the "
                f"run's {sample_time}; build it with the run's sample_time"
            )
        shape = jnp.shape(self.err)
        if len(shape) != 2 or shape[0] not in (1, n) or shape[1] < n_samples:
            raise ValueError(
                f"SensedController: sensor errors err have shape {shape}; the run needs "
                f"({n}, n) with n >= n_samples = {n_samples} (CGM.error)"
            )

    def init(self, y, t, p):
        cgm0 = self.sensor.read(y["Gs"] / p["Vg"], self.err[:, 0])
        return (jnp.zeros((), jnp.int32), self.controller.init(p, cgm0))

    def __call__(self, y, t, state, p):
        k, cstate = state
        bg = y["Gp"] / p["Vg"]
        cgm = self.sensor.read(y["Gs"] / p["Vg"], self.err[:, k])
        meal = _announced(self.meal_t, self.meal_g, t, t + self.sample_time)
        cstate, u = self.controller(cstate, t, cgm, meal, p, self.sample_time)
        u = jnp.broadcast_to(u, cgm.shape).astype(cgm.dtype)
        u_sc = u * U_TO_PMOL / p["BW"]  # U/min -> pmol/kg/min
        return (k + 1, cstate), Inputs(rates={"isc1": u_sc}), (bg, cgm, u)


class Meals(InputSchedule):
    """Meals eaten as the academic simulator eats them, as the engine's input schedule.

    Carbohydrate announced in a patient step is added to what is left to eat; at most
    ``eat_rate * dt`` g of it is eaten in each step (``dt = t1 - t0``, the run's
    sub-step), at a rate held over the step
    (mg/min into ``qsto1``). The reset: when eating starts, the gastric-emptying meal
    memory ``Dmeal`` restarts from the stomach content ``qsto1 + qsto2`` and grows by
    what has been eaten up to the end of the current step (simglucose
    ``T1DPatient``); ``Dmeal`` is held over each step. Records the grams eaten.

    Arguments:
        meal_t, meal_g: ``(N, M)`` (or ``(M,)``) meal times (min) and grams.
        dt: None (the default: the run's sub-step is used), or the patient step (min)
            the schedule was meant for, then checked against the run's ``dt``.
        eat_rate: eating rate (g/min).
    """

    meal_t: jax.Array
    meal_g: jax.Array
    dt: float | None = eqx.field(static=True, default=None)
    eat_rate: float = eqx.field(static=True, default=5.0)
    held: ClassVar[tuple[str, ...]] = ("Dmeal",)

    def check(self, n, n_samples, sample_time, dt):
        if self.dt is not None and abs(self.dt - dt) > 1e-9 * max(1.0, dt):
            raise ValueError(
                f"Meals: its dt {self.dt} differs from the run's sub-step dt {dt}; "
                "leave Meals.dt None (the run's) or make them equal"
            )

    def init(self, y, t, p):
        z = jnp.zeros_like(t)  # left to eat, rate this step and last, stomach, eaten
        return (z, z, z, z, z, z)

    def __call__(self, state, t0, t1, p):
        planned, cho, _, _, last_q, taken = state
        planned = planned + _announced(self.meal_t, self.meal_g, t0, t1)
        dt = t1 - t0  # the run's sub-step
        to_eat = jnp.minimum(self.eat_rate * dt, planned)
        planned = planned - to_eat
        new_cho = to_eat / dt  # g/min held over the step
        state = (planned, new_cho, cho, to_eat, last_q, taken)
        return state, {"qsto1": 1000.0 * new_cho}, to_eat

    def reset(self, state, y, t, p):
        planned, cho, last_cho, to_eat, last_q, taken = state
        starts = (cho > 0) & (last_cho <= 0)
        last_q = jnp.where(starts, y["qsto1"] + y["qsto2"], last_q)
        taken = jnp.where(starts, 0.0, taken) + to_eat
        state = (planned, cho, last_cho, to_eat, last_q, taken)
        return state, {"Dmeal": last_q + 1000.0 * taken}


def simulate_closed_loop(
    params: dict,
    controller: Controller | None = None,
    *,
    duration: float = 1440.0,
    meals=None,
    sample_time: float = 5.0,
    sensor: CGM | None = None,
    key=None,
    solver=None,
    dt: float = 1.0,
    eat_rate: float = 5.0,
    dtype=None,
    check: bool = True,
) -> ClosedLoopResult:
    """Simulate the UVA/Padova model under a controller, in one compiled loop.

    Arguments:
        params: :class:`UvaPadova` parameters (scalars: one patient; ``(N,)``: a cohort),
            e.g. from :func:`patient_params`.
        controller: a :class:`Controller` (default :class:`OpenLoop`, basal only).
        duration: simulated time (min); a multiple of ``sample_time``.
        meals: ``(times, grams)``: meal start times (min) and carbohydrate (g),
            ``(M,)`` for everyone or ``(N, M)``; pad with 0 g. None: no meals.
        sample_time: the CGM and controller sampling interval (min).
        sensor: a :class:`CGM` (default: ideal, ``CGM(noise=False)``).
        key: a JAX random key for the sensor noise.
        solver: the integrator of each patient step (default ``solvers.Ensemble``
            dopri5 at ``rtol = atol = 1e-6``).
        dt: the patient step (min), a divisor of ``sample_time``: meals are eaten and
            insulin is delivered at rates held constant over it.
        eat_rate: eating rate (g/min).
        dtype: floating dtype (default float64 when x64 is on).
        check: validate the parameters against their bounds.

    Returns:
        A :class:`ClosedLoopResult` with one row per patient (``(T,)`` arrays for one
        patient), sampled at ``k * sample_time`` for ``k < duration / sample_time``.

    Raises:
        ValueError: parameters out of bounds, or ``duration``/``sample_time``/``dt``
            not commensurate.
    """
    dtype = dtype or default_float()
    model = UvaPadova(basal_infusion=False)
    controller = OpenLoop() if controller is None else controller
    sensor = CGM(noise=False) if sensor is None else sensor
    solver = Ensemble(rtol=1e-6, atol=1e-6, dt=dt) if solver is None else solver
    n_samples = int(round(duration / sample_time))
    if abs(n_samples * sample_time - duration) > 1e-9 or n_samples < 1:
        raise ValueError(f"duration {duration} must be a positive multiple of {sample_time}")
    check_grid(n_samples, sample_time, dt)
    p, N, nb = batch_params(model, params, dtype, check)
    if meals is None:
        mt = jnp.zeros((nb, 1), dtype)
        mg = jnp.zeros((nb, 1), dtype)
    else:
        mt = jnp.asarray(meals[0], dtype)
        mg = jnp.asarray(meals[1], dtype)
        if mt.shape != mg.shape or mt.ndim not in (1, 2):
            raise ValueError(
                f"meals: times {mt.shape} and grams {mg.shape} must be equal (M,) or (N, M)"
            )
        mt, mg = patient_rows(mt, nb), patient_rows(mg, nb)
    err = sensor.error(key, nb, n_samples, sample_time, dtype)
    hook = SensedController(controller, sensor, err, mt, mg, float(sample_time))
    schedule = Meals(mt, mg, None, float(eat_rate))
    cfg = (n_samples, float(sample_time), float(dt))
    run = run_controlled(model, solver, hook, p, cfg, schedule)
    (bg, cgm, ins), cho, status = run.records, run.sub_records, run.status
    times = jnp.arange(n_samples, dtype=dtype) * sample_time
    bg, cgm, ins, cho, status = unbatch((bg, cgm, ins, cho, status), N)
    return ClosedLoopResult(times, bg, cgm, ins, cho, status)
