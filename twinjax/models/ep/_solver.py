"""Batched Rush-Larsen beat loop: pace a population of cells, biomarkers per beat.

Method (documented choice for the stiff upstroke): a second-order Rush-Larsen
scheme (the exponential midpoint variant of Perego M, Veneziani A. Electron Trans
Numer Anal 35:234-256, 2009; after Rush S, Larsen H. IEEE Trans Biomed Eng
25:389-392, 1978). Gates ``dx/dt = (x_inf - x)/tau`` are advanced exactly for
coefficients frozen at the midpoint, the other states (V, concentrations) by the
explicit midpoint rule. The fast gates (INa m, h, j) that make the model stiff are
thus handled unconditionally stably; what remains is the upstroke of V itself,
resolved by a per-cell step ``dt = clip(dv_max / |dV/dt|, dt_min, dt_max)`` that
shrinks to ``dt_min`` during the upstroke and grows to ``dt_max`` at rest.
Steps land exactly on the end of the stimulus pulse and on the end of the beat.

Batching: structure-of-arrays. One ``lax.scan`` over beats contains one
``lax.while_loop`` over steps (:func:`twinjax.solve._rush_larsen.integrate`, the loop
CiPAORd's pacing shares) in which every cell has its own time and step; the model's
equations are evaluated once per stage for the whole ``(N,)`` batch. No dense
trajectory is stored: biomarkers are accumulated step by step (:mod:`._biomarkers`,
the loop's per-step reduction), and only per-beat numbers leave the loop.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...solve._batch import batch_params, initial_state, unbatch
from ...solve._reductions import StepReduction
from ...solve._rush_larsen import error_controller, integrate, pack, unpack
from . import _biomarkers as bm
from . import _shard

_SAVE_MIN_STEPS = 10  # save_every >= 10 dt_min (steps are capped at save_every)
_V_MAG = 10.0  # mV: V's error scale is rtol * (|V| + 10 mV) (V crosses 0)


class RushLarsen(eqx.Module):
    """Second-order Rush-Larsen integrator with a voltage- and error-controlled step.

    The step of each cell is the smallest of ``dv_max / |dV/dt|``, ``dt_max`` and the
    proposal of a local error controller (relative tolerance ``rtol`` on V and the
    concentrations, from the difference between the second-order step and an explicit
    Euler one; :func:`twinjax.solve._rush_larsen.error_controller`), and at least
    ``dt_min``. The controller gives short steps on the upstroke, notch and Ca2+
    release and long ones in diastole, where the gates sit at their steady states
    (Rush-Larsen advances them exactly for frozen V).

    Arguments:
        dt_max: largest step (ms).
        dt_min: smallest step (ms), taken during the upstroke.
        dv_max: target change of V per step (mV): ``dt = dv_max / |dV/dt|``.
        rtol: relative tolerance of the error controller (V's scale is
            ``|V| + 10 mV``); None turns it off (then ``dt_max`` alone bounds the step
            at rest and on the plateau: use about 0.5 ms).
        max_steps: maximum number of steps per beat before a cell is flagged
            ``Status.MAX_STEPS``.

    Defaults (ORd at 1 Hz, 8 population models, 3 beats, against the same loop at
    ``dt_max = dv_max = 0.02``, ``dt_min = 0.001``; 2026-11-30): 813 steps per beat,
    APD90, APD50 and the concentrations within 1.2e-3 relative, qNet 1.3e-3; the
    previous default (``dt_max = 0.5``, no controller): 2207 steps, APD90 3.0e-3,
    APD50 5.8e-3, qNet 9e-2, V_peak 1.4e-2, concentrations 7.6e-3.
    """

    dt_max: float = 5.0
    dt_min: float = 0.005
    dv_max: float = 0.5
    rtol: float | None = 1e-3
    max_steps: int = 400_000

    def __check_init__(self):
        if not (0 < self.dt_min <= self.dt_max):
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if not self.dv_max > 0:
            raise ValueError(f"dv_max must be positive, got {self.dv_max}")
        if self.rtol is not None and not self.rtol > 0:
            raise ValueError(f"rtol must be positive or None, got {self.rtol}")


def _qnet(model, cur):
    return sum(cur[k] for k in model.qnet_currents)


def beat(model, solver, p, y, ts):
    """One beat for every cell. ``ts``: (T,) save times within the beat or None.

    The step, its rules and the loop are :func:`twinjax.solve._rush_larsen.integrate`
    (the same loop paces CiPAORd); here the model's pieces: the evaluation (with qNet's
    currents for the biomarkers), the step proposal (the smaller of
    ``dv_max / |dV/dt|`` and the error controller's ``h_err``, clipped to
    ``[dt_min, dt_max]``), the stimulus end as the discontinuity to land on, the
    controller (``rtol`` on V and the concentrations; V's scale ``|V| + 10 mV``) and
    the biomarker accumulators (:mod:`._biomarkers`) as the per-step reduction.

    The state and the accumulators are carried packed (two loop buffers instead of
    some 70: ORd on the CPU, about 100 buffer copies in the compiled loop before, 4-6
    after; APD90 and the final V and Ca_i bitwise equal; tests/test_ep_loop.py
    compares the loop with a dict-carry loop). The two stages of a step run as a
    two-iteration ``fori_loop`` around one call of ``model.evaluate`` (ORd, two cells,
    one beat, 2026-11-30: program text 0.44 -> 0.27 MB, compile 17.0 -> 5.9 CPU s,
    steady call 0.22 -> 0.045 CPU s).
    """
    bcl = p["BCL"]
    N = bcl.shape[0]
    dtype = bcl.dtype
    names = tuple(model.state_names)
    iV = names.index("V")
    others = tuple(k for k in names if k not in model.gates)  # V and concentrations
    jV = others.index("V")
    mag = jnp.asarray([_V_MAG if k == "V" else 0.0 for k in others], dtype)[:, None]
    acc0 = bm.init_acc(y["V"])
    anames = tuple(acc0)

    def evaluate(t, yk):
        g, d, cur = model.evaluate(t, yk, p)
        return g, d, _qnet(model, cur)

    def propose(t, y, d, h_err):  # h_err None: no controller (rtol None)
        dt = solver.dv_max / (jnp.abs(d["V"]) + 1e-12)
        dt = dt if h_err is None else jnp.minimum(dt, h_err)
        return jnp.clip(dt, solver.dt_min, solver.dt_max)

    def reduce(A, ok, t, dt, Y, Y_new, D0, D1, qn):
        acc = bm.update_acc(unpack(A, anames), ok, t, dt, Y[iV], Y_new[iV], D0[jV], D1[jV], qn)
        return pack(acc, anames)

    def controller(yc, D0, D1, dt, h_err):
        return error_controller(solver.rtol, yc, D0, D1, dt, h_err, mag)

    o = integrate(
        evaluate,
        {k: y[k] for k in names},
        bcl,
        gates=tuple(model.gates),
        controlled=others,
        propose=propose,
        t_disc=p["stim_dur"],
        max_steps=solver.max_steps,
        reduce=StepReduction(pack(acc0, anames), reduce),
        controller=controller if solver.rtol is not None else None,
        h0=jnp.full((N,), solver.dt_max, dtype),
        ts=ts,
    )
    bio = bm.finish(unpack(o.acc, anames), o.y["V"])
    bio["steps"] = jnp.broadcast_to(o.steps, (N,))
    return o.y, bio, o.status, o.saved


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # tests count traces: eqx.debug.get_num_traces
def _pace(model, solver, p, y0, n_beats, record_all, ts):
    N = p["BCL"].shape[0]
    y_probe, bio_probe, _, out_probe = jax.eval_shape(lambda: beat(model, solver, p, y0, ts))
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731

    def one(carry, _):
        y, status, _, _ = carry
        y, bio, st, out = beat(model, solver, p, y, ts)
        status = jnp.maximum(status, st)
        return (y, status, bio, out), ((bio, out) if record_all else None)

    carry0 = (
        y0,
        jnp.zeros((N,), jnp.int32),
        jax.tree.map(zeros, bio_probe),
        jax.tree.map(zeros, out_probe),
    )
    if record_all:  # a static number of beats: every beat's biomarkers come out
        (y, status, bio, out), rec = jax.lax.scan(one, carry0, None, length=n_beats)
    else:  # a traced number of beats (no recompilation when it changes): the last one
        y, status, bio, out = jax.lax.fori_loop(0, n_beats, lambda i, c: one(c, None)[0], carry0)
        rec = jax.tree.map(lambda a: a[None], (bio, out))
    return y, rec, status


class PacingResult(eqx.Module):
    """The outcome of :func:`pace`.

    Attributes:
        state: the state at the end of the last beat, ``{name: (N,)}`` (or scalars).
        biomarkers: ``{name: (B, N)}`` per recorded beat (``B = n_beats`` with
            ``record="all"``, 1 with ``record="last"``); see :mod:`._biomarkers`.
        status: ``(N,)`` status codes (0 ok), worst over all beats.
        trace: with ``save_every``: ``{state: (B, N, T)}`` sampled at ``times``.
        times: ``(T,)`` save times within a beat (ms), or None.
    """

    state: dict
    biomarkers: dict
    status: jax.Array
    trace: dict | None
    times: jax.Array | None

    def last(self) -> dict:
        """Biomarkers of the last beat, ``{name: (N,)}``."""
        return {k: v[-1] for k, v in self.biomarkers.items()}

    def to_dataframe(self):
        """Biomarkers of the last beat as a pandas DataFrame (one row per cell)."""
        import pandas as pd

        last = self.last()
        return pd.DataFrame({k: np.atleast_1d(np.asarray(v)) for k, v in last.items()})


def batched_inputs(model, params, y0, dtype):
    """Complete the parameters and broadcast them and the initial state to a batch.

    Returns ``(p, y0, n)``: ``{name: (N,)}`` dicts (``N = 1`` for one cell) and ``n``
    (None for one cell, as :meth:`Model.complete` returns it).
    """
    p, n, nb = batch_params(model, params, dtype)
    return p, initial_state(model, p, y0, nb, p["BCL"].dtype), n


def pace(
    model,
    params=None,
    n_beats: int = 1,
    *,
    y0=None,
    solver: RushLarsen | None = None,
    record: str = "all",
    save_every: float | None = None,
    dtype=None,
    devices: int | None = None,
) -> PacingResult:
    """Pace a cell model (one cell or a population) for ``n_beats`` beats.

    Arguments:
        model: a cell model (:class:`~twinjax.models.ep.LuoRudy1991`,
            :class:`~twinjax.models.ep.ORd`).
        params: ``{name: value}`` (scalars, or ``(N,)`` arrays for a population);
            missing entries take their defaults, e.g. ``{"BCL": 2000.0}``.
        n_beats: number of beats.
        y0: initial state ``{name: value}`` (default ``model.init(params)``), e.g.
            ``result.state`` of a previous call to continue pacing.
        solver: a :class:`RushLarsen` (default settings when None).
        record: ``"all"`` (biomarkers of every beat) or ``"last"`` (only the last).
        save_every: if given, also store the states every ``save_every`` ms of each
            recorded beat (at least ``10 * solver.dt_min``; steps are then capped at
            ``save_every``), for plots.
        dtype: floating dtype (default float64 under x64, else float32).
        devices: split a population over this many devices (default: all of this
            process's devices; 1: one loop for every cell). Each device paces its own
            share of the cells, so the results are the same for any count (bitwise
            for a multiple of 8 cells; see :mod:`._shard`).

    Returns:
        A :class:`PacingResult`. Cells that fail are flagged in ``status``; the
        rest of the population is unaffected.

    Raises:
        ValueError: invalid parameters (names, bounds), ``record`` or ``save_every``.
    """
    solver = solver or RushLarsen()
    if record not in ("all", "last"):
        raise ValueError(f"record must be 'all' or 'last', got {record!r}")
    if n_beats < 1:
        raise ValueError(f"n_beats must be >= 1, got {n_beats}")
    p, y0, n = batched_inputs(model, params, y0, dtype)
    nb = p["BCL"].shape[0]
    n_dev = _shard.device_count(devices, nb, n)
    ts = None
    if save_every is not None:
        if save_every < _SAVE_MIN_STEPS * solver.dt_min:
            raise ValueError(
                f"save_every ({save_every}) must be >= {_SAVE_MIN_STEPS} * solver.dt_min "
                f"({_SAVE_MIN_STEPS * solver.dt_min:g} ms)"
            )
        # one save per step at most: the steps are capped at the save spacing
        solver = eqx.tree_at(lambda s: s.dt_max, solver, jnp.minimum(solver.dt_max, save_every))
        bcl = float(np.max(np.asarray(p["BCL"])))
        ts = jnp.arange(0.0, bcl, save_every, dtype=p["BCL"].dtype)
    beats = int(n_beats) if record == "all" else jnp.asarray(n_beats, jnp.int32)
    if n_dev > 1:
        run = jax.tree_util.Partial(
            _pace, model, solver, n_beats=beats, record_all=record == "all", ts=ts
        )
        y, (bio, out), status = _shard.pace_split(run, p, y0, nb, n_dev)
    else:
        y, (bio, out), status = _pace(model, solver, p, y0, beats, record == "all", ts)
    if out is not None:
        out = {k: v for k, v in out.items()}
    y, status = unbatch((y, status), n)
    if n is None:  # biomarkers and saves have the beat axis first, the cells second
        bio = {k: v[:, 0] for k, v in bio.items()}
        if out is not None:
            out = {k: v[:, 0] for k, v in out.items()}
    return PacingResult(y, bio, status, out, ts)
