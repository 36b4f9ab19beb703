"""Beat-level results of the circulation: per-beat hemodynamics of a saved trajectory,
the periodic steady state (beat map, plain iteration), the pressure-volume loop, and
the quasi-static steady states at given drug concentrations (:func:`quasi_static`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...ode import Link
from ...ode._model import default_float
from ...solve._batch import batch_params, stack_initial, unbatch
from ...solve._diffrax import Diffrax
from ...solve._engine import vector_field
from ...solve._periodic import first_failure, solve_fixed_point
from ...solve._reductions import StepReduction, hermite_extrema
from ._model import CHAMBERS, Circulation

# ---------------------------------------------------------------------------------
# per-beat reduction
# ---------------------------------------------------------------------------------
METRICS = ("SBP", "DBP", "MAP", "SV", "EF", "CO", "EDV", "ESV", "HR")
METRIC_UNITS = dict(
    SBP="mmHg", DBP="mmHg", MAP="mmHg", SV="mL", EF="%", CO="L/min", EDV="mL", ESV="mL",
    HR="1/min",
)  # fmt: skip


def _interp_rows(xq, x, f):
    """Linear interpolation along the last axis, row by row (``x`` increasing)."""
    fn = lambda a, b, c: jnp.interp(a, b, c)  # noqa: E731
    for _ in range(x.ndim - 1):
        fn = jax.vmap(fn)
    return fn(xq, x, f)


def beat_metrics(result, beat: int | None = None, prefix: str = "") -> dict:
    """Per-beat hemodynamics of one beat of a saved trajectory of :class:`Circulation`.

    The beat is located with the phase state ``phi``: beat ``k`` spans ``k <= phi <
    k + 1``. Mean arterial pressure and stroke volume come from the cumulative
    integrals ``int_p_AR_SYS`` and ``int_Q_AV`` interpolated at the beat's ends (so
    they are accurate even on a coarse save grid); extremes (systolic and diastolic
    pressure, end-diastolic and end-systolic volumes) are taken over the saves
    inside the beat, so save densely (>= 100 points per beat) for those.

    Arguments:
        result: a :class:`~twinjax.Result` of a :class:`Circulation` (one patient or a
            batch; times shared or per patient).
        beat: which beat (0-based); default the last complete beat (per patient).
        prefix: namespace of the circulation's states in a coupled model (``"circ."``).

    Returns:
        ``{name: value}`` with ``SBP, DBP, MAP`` (mmHg), ``SV`` (mL, ejected through the
        aortic valve), ``EF`` (%, ``SV / EDV``), ``CO`` (L/min), ``EDV, ESV`` (mL, max
        and min LV volume), ``HR`` (1/min, from the beat's duration); scalars or
        ``(N,)``.
    """
    st = {k[len(prefix) :]: v for k, v in result.states.items() if k.startswith(prefix)}
    phi = st["phi"]
    t = jnp.broadcast_to(result.times, phi.shape)
    k = jnp.floor(phi[..., -1:]) - 1.0 if beat is None else jnp.full(phi[..., -1:].shape, beat)
    k = k.astype(phi.dtype)
    t0 = _interp_rows(k, phi, t)
    t1 = _interp_rows(k + 1.0, phi, t)
    T = (t1 - t0)[..., 0]
    ip = st["int_p_AR_SYS"]
    iq = st["int_Q_AV"]
    MAP = (_interp_rows(k + 1.0, phi, ip) - _interp_rows(k, phi, ip))[..., 0] / T
    SV = (_interp_rows(k + 1.0, phi, iq) - _interp_rows(k, phi, iq))[..., 0]
    inside = (phi >= k) & (phi <= k + 1.0)
    return _reduce(st["p_AR_SYS"], st["V_LV"], inside, MAP, SV, T)


def _reduce(p_ar, v_lv, inside, MAP, SV, T):
    big = jnp.asarray(jnp.inf, p_ar.dtype)
    SBP = jnp.max(jnp.where(inside, p_ar, -big), axis=-1)
    DBP = jnp.min(jnp.where(inside, p_ar, big), axis=-1)
    EDV = jnp.max(jnp.where(inside, v_lv, -big), axis=-1)
    ESV = jnp.min(jnp.where(inside, v_lv, big), axis=-1)
    return dict(
        SBP=SBP,
        DBP=DBP,
        MAP=MAP,
        SV=SV,
        EF=100.0 * SV / EDV,
        CO=SV / T * 60.0 / 1000.0,
        EDV=EDV,
        ESV=ESV,
        HR=60.0 / T,
    )


# ---------------------------------------------------------------------------------
# periodic steady state
# ---------------------------------------------------------------------------------
class SteadyState(eqx.Module):
    """The outcome of :func:`to_periodic_steady_state`.

    Attributes:
        state: ``{state: (N,)}`` (scalars for one patient) at the start of the reduced
            beat, on the periodic orbit (phase reset to 0, cumulative integrals to 0).
        beats: number of beats simulated before convergence (per patient).
        converged: whether the beat-to-beat change fell below ``tol``.
        change: the last beat-to-beat change (see :func:`to_periodic_steady_state`).
        metrics: per-beat hemodynamics of one more beat (see :func:`beat_metrics`);
            NaN for a patient whose status is not OK.
        beat: the densely saved last beat: ``{"t": ..., state and output names: ...}``
            with a trailing axis of ``n_save`` points (``t`` from the beat's start, s);
            NaN for a patient whose status is not OK; ``{}`` with ``n_save=None``.
        status: :class:`~twinjax.Status` code per patient: ``OK``, an integrator's
            failure code, or ``NOT_CONVERGED`` (``max_beats`` used up; ``state`` is then
            the last beat's start, a start for another try).
        params: the full parameter dict used.
    """

    state: dict
    beats: jax.Array
    converged: jax.Array
    change: jax.Array
    metrics: dict
    beat: dict
    status: jax.Array
    params: dict


def _phase_field(model):
    """The vector field with the phase as independent variable, plus elapsed time.

    ``dY/dphi = f(Y) / (dphi/dt)`` and ``dt/dphi = 1 / (dphi/dt)`` (appended last), so
    that integrating over ``[k, k + 1]`` is exactly one beat whatever the heart rate.
    """
    f = vector_field(model)
    i_phi = model.state_names.index("phi")

    def g(s, Z, args):
        dY = f(s, Z[..., :-1], args)
        rate = dY[..., i_phi : i_phi + 1]
        return jnp.concatenate([dY / rate, 1.0 / rate], -1)

    return g


def _dynamic_mask(model):
    return np.asarray([not s.cumulative for s in model.states])


def beat_map(model, solver, p, Y0, n_save=None, *, metrics=False):
    """The period map of :mod:`twinjax.solve._periodic` for the circulation:
    ``(G, embed, x0)``. ``G`` maps the non-cumulative states ``x`` at the start of a
    beat to those one beat later, integrated in the phase from 0 to 1 (0 to 0 for
    inactive patients) with the phase and cumulative integrals reset to 0; ``embed``
    puts ``x`` back into the full state and ``x0`` is the start (the non-cumulative
    part of ``Y0``).

    With ``n_save``, ``G`` is the map of ``solve_fixed_point(..., final=...)``:
    ``G(x, active, final) -> (G(x), status, (Zs, Z1))``, the patients in their final
    evaluation integrated over one beat too, saved at ``n_save`` phases evenly spaced
    over it (``Zs`` ``(n, n_save, S + 1)``, the elapsed time last; ``Z1`` the end).
    Everyone's save times are passed, a patient's own past its beat's end unless it
    is in its final evaluation: the integrator writes no save for it (a saved beat is
    the same integration, its dense output read at the save times), and the program
    holds one integration instead of two.

    With ``metrics`` (a solver with ``step_reductions``, no ``n_save``), ``G`` is the
    map of ``solve_fixed_point(..., final=...)`` too, its third output ``(A, Z1)``:
    the per-beat extremes of :func:`beat_reduction` folded in at every step of the
    integration (``A`` ``(n, 4)``; every patient's, kept for those in their final
    evaluation) and the end state, no saves.
    """
    g = _phase_field(model)
    n, S = Y0.shape
    dtype = Y0.dtype
    dyn = _dynamic_mask(model)
    idx = np.flatnonzero(dyn)
    Ybase = jnp.where(jnp.asarray(dyn)[None, :], Y0, 0.0)  # phase and integrals at 0
    args = (p, jnp.zeros((n, S), dtype))
    zero = jnp.zeros((n,), dtype)

    def embed(x):
        return Ybase.at[:, idx].set(x)

    def Z_of(x):
        return jnp.concatenate([embed(x), jnp.zeros((n, 1), dtype)], -1)

    if metrics:

        def G_metrics(x, active, final):
            s1 = jnp.where(active | final, 1.0, 0.0).astype(dtype)
            Z = Z_of(x)
            _, Z1, st, A = solver.integrate(
                g, zero, s1, Z, None, args, model, reduce=beat_reduction(model, Z)
            )
            return Z1[:, idx], st, (A, Z1)

        return G_metrics, embed, Y0[:, idx]

    if n_save is None:

        def G(x, active):
            s1 = jnp.where(active, 1.0, 0.0).astype(dtype)
            _, Z1, st = solver.integrate(g, zero, s1, Z_of(x), None, args, model)
            return Z1[:, idx], st

        return G, embed, Y0[:, idx]

    phases = jnp.linspace(0.0, 1.0, n_save, dtype=dtype)

    def G_final(x, active, final):
        s1 = jnp.where(active | final, 1.0, 0.0).astype(dtype)
        ts = jnp.where(final[:, None], phases[None, :], jnp.asarray(2.0, dtype))
        Zs, Z1, st = solver.integrate(g, zero, s1, Z_of(x), ts, args, model)
        return Z1[:, idx], st, (Zs, Z1)

    if solver.skips_saves_past_end:
        return G_final, embed, Y0[:, idx]

    # a solver that works through every save time it is given (diffrax clips those
    # past a beat's end into it) would make each iterated beat pay for n_save saves:
    # the beats in which no patient is in its final evaluation integrate without saves
    # (a second integration in the program; the steps do not depend on the save times,
    # so the states are the same)
    Zs_zero = saved_beat_zeros(Y0, n_save)[0]

    def G_final_diffrax(x, active, final):
        def unsaved():
            s1 = jnp.where(active, 1.0, 0.0).astype(dtype)
            _, Z1, st = solver.integrate(g, zero, s1, Z_of(x), None, args, model)
            return Z1[:, idx], st, (Zs_zero, Z1)

        return jax.lax.cond(jnp.any(final), lambda: G_final(x, active, final), unsaved)

    return G_final_diffrax, embed, Y0[:, idx]


def beat_reduction(model, Z) -> StepReduction:
    """The per-step reduction of a beat's extremes for ``Ensemble.integrate(reduce=)``:
    accumulators ``(max p_AR_SYS, min p_AR_SYS, max V_LV, min V_LV)`` (SBP, DBP, EDV,
    ESV), starting at the beat's start state ``Z`` ``(n, S + 1)``, each step folding
    in the extremes of its cubic Hermite interpolant (the step's ends and derivatives:
    fourth order in the step, as the dense output that n_save saves read; between
    saves n_save points miss a peak by up to its curvature times a
    (1 / (n_save - 1))^2 / 8 of a beat)."""
    names = model.state_names
    i_p, i_v = names.index("p_AR_SYS"), names.index("V_LV")
    acc0 = jnp.stack([Z[:, i_p], Z[:, i_p], Z[:, i_v], Z[:, i_v]], -1)

    def update(A, ok, t, h, y, y_new, k, k_new):
        del t
        new = []
        for r, i in enumerate((i_p, i_v)):
            lo, hi = hermite_extrema(y[i], y_new[i], h * k[i], h * k_new[i])
            new += [jnp.maximum(A[2 * r], hi), jnp.minimum(A[2 * r + 1], lo)]
        return jnp.where(ok[None, :], jnp.stack(new), A)

    return StepReduction(acc0, update)


def reduce_metrics(model, p, Y, A, Z1, status):
    """The beat from the steady state ``Y`` to ``Z1`` reduced from the accumulators
    ``A`` of :func:`beat_reduction` (no saved beat): ``(state, metrics, {})``; NaN
    metrics for a patient whose ``status`` is not OK."""
    del p
    names = model.state_names
    T = Z1[:, -1]
    MAP = Z1[:, names.index("int_p_AR_SYS")] / T
    SV = Z1[:, names.index("int_Q_AV")]
    one = jnp.ones((Z1.shape[0], 1), bool)
    # _reduce's extremes of the (n, 2) pairs (max, min) are the accumulated ones
    metrics = _reduce(A[:, 0:2], A[:, 2:4], one, MAP, SV, T)
    bad = status != 0
    metrics = {k: jnp.where(bad, jnp.nan, v) for k, v in metrics.items()}
    return {k: Y[:, i] for i, k in enumerate(names)}, metrics, {}


def final_beat(model, solver, p, Y0, n_save):
    """What a periodic-steady-state search needs for its last beat: ``(G, embed, x0,
    zeros, finish)``: the beat map with ``final`` (:func:`beat_map`), the ``final``
    start and ``finish(Y, final, status) -> (state, metrics, dense)``. ``n_save``
    None: the metrics from the per-step reduction (:func:`beat_reduction`) where the
    solver has ``step_reductions``, else from 201 saves, and no dense beat (``{}``);
    an int: the beat saved at ``n_save`` phases and reduced (:func:`reduce_beat`)."""
    if n_save is None and solver.step_reductions:
        G, embed, x0 = beat_map(model, solver, p, Y0, metrics=True)
        n, S = Y0.shape
        zeros = (jnp.zeros((n, 4), Y0.dtype), jnp.zeros((n, S + 1), Y0.dtype))

        def finish(Y, final, status):
            return reduce_metrics(model, p, Y, *final, status)

        return G, embed, x0, zeros, finish
    n_s = 201 if n_save is None else n_save
    G, embed, x0 = beat_map(model, solver, p, Y0, n_s)

    def finish_saved(Y, final, status):
        state, metrics, dense = reduce_beat(model, p, Y, *final, status)
        return state, metrics, (dense if n_save is not None else {})

    return G, embed, x0, saved_beat_zeros(Y0, n_s), finish_saved


def saved_beat_zeros(Y0, n_save):
    """Zeros shaped as the saved beat ``(Zs, Z1)`` of :func:`beat_map`'s ``G`` with
    ``n_save`` (the ``final`` start of ``solve_fixed_point``)."""
    n, S = Y0.shape
    return jnp.zeros((n, n_save, S + 1), Y0.dtype), jnp.zeros((n, S + 1), Y0.dtype)


def reduce_beat(model, p, Y, Zs, Z1, status):
    """The saved beat ``Zs`` from the steady state ``Y`` (phase and integrals at 0) to
    ``Z1`` (see :func:`beat_map`) reduced: ``(state, metrics, dense)``; NaN metrics
    and dense beat for a patient whose ``status`` is not OK."""
    names = model.state_names
    states = {k: Zs[..., i] for i, k in enumerate(names)}
    t = Zs[..., -1]
    pe = {k: v[:, None] for k, v in p.items()}
    outputs = model.observe(t, states, pe)
    T = Z1[:, -1]
    i_p, i_q = names.index("int_p_AR_SYS"), names.index("int_Q_AV")
    MAP = Z1[:, i_p] / T
    SV = Z1[:, i_q]
    inside = jnp.ones(Zs.shape[:2], bool)
    metrics = _reduce(states["p_AR_SYS"], states["V_LV"], inside, MAP, SV, T)
    dense = {"t": t, **states, **{k: jnp.broadcast_to(v, t.shape) for k, v in outputs.items()}}
    bad = status != 0
    metrics = {k: jnp.where(bad, jnp.nan, v) for k, v in metrics.items()}
    dense = {k: jnp.where(bad[:, None], jnp.nan, v) for k, v in dense.items()}
    Y0s = {k: Y[:, i] for i, k in enumerate(names)}
    return Y0s, metrics, dense


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # tests count traces: eqx.debug.get_num_traces
def _pss_core(model, solver, p, Y0, tol, max_beats, batch, n_save):
    # the plain iteration and, per patient once it stops, one more beat saved densely
    # or reduced per step (``final``: the same call of the beat map, one integration
    # in the program)
    G, embed, x0, zeros, finish = final_beat(model, solver, p, Y0, n_save)
    fp = solve_fixed_point(
        G, x0, method="plain", tol=tol, max_iter=max_beats, batch=batch, final=zeros
    )
    status = first_failure(fp.status, fp.final_status)
    Y0s, metrics, dense = finish(embed(fp.x), fp.final, status)
    return Y0s, fp.iterations, fp.converged, fp.residual, metrics, dense, status


def to_periodic_steady_state(
    model: Circulation,
    params: Mapping | None = None,
    solver=None,
    *,
    tol: float = 1e-3,
    max_beats: int = 200,
    batch: int = 1,
    n_save: int | None = 201,
    y0: Mapping | None = None,
    dtype=None,
) -> SteadyState:
    """Run the circulation beat by beat until it reaches its periodic steady state.

    Each beat is integrated with the phase ``phi`` as the independent variable, from
    ``phi = 0`` to 1 (so a beat is exactly one cycle even when the heart rate changes
    within it, as with the baroreflex); the elapsed time is integrated alongside. A
    patient has converged when the largest change of a non-cumulative state between
    the starts of two consecutive beats, relative to ``1 + |y|`` (mL, mmHg, mL/s),
    falls below ``tol``; converged patients stop (their segments have zero length)
    while the others go on (plain fixed-point iteration of the beat map, with
    :func:`twinjax.solve._periodic.solve_fixed_point`). Then one more beat is
    integrated with ``n_save`` saves and reduced to per-beat metrics (in the same
    loop, a patient's extra beat as soon as it stops: ``final``).

    Arguments:
        model: a :class:`Circulation` (with or without baroreflex).
        params: ``{name: value}``; scalars for one patient, ``(N,)`` arrays for a batch.
        solver: ``solvers.Ensemble(...)`` or ``solvers.Diffrax(...)`` (default Diffrax
            with rtol 1e-6, atol 1e-6).
        tol: convergence tolerance of the beat-to-beat change.
        max_beats: give up after this many beats (``converged`` is then False and the
            status ``Status.NOT_CONVERGED``).
        batch: beats per convergence check (``beats`` is then a multiple of it).
        n_save: saves over the reduced beat (extremes are taken over them, and
            ``beat`` holds them); None: no saved beat (``beat`` is ``{}``), the
            metrics from a per-step reduction of the integration where the solver
            has one (``Ensemble``: the extremes of each step's cubic Hermite
            interpolant, :func:`beat_reduction`), else from 201 saves.
        y0: initial state (default ``model.init(params)``), e.g. a previous steady state.
        dtype: floating dtype (default float64 with x64 on, else float32).

    Returns:
        A :class:`SteadyState`: per patient the number of beats, convergence flag,
        the state at beat start, metrics ``SBP, DBP, MAP, SV, EF, CO, EDV, ESV, HR``
        and the densely saved beat (for :func:`pv_loop`).
    """
    if not isinstance(model, Circulation):
        raise TypeError(f"to_periodic_steady_state needs a Circulation, got {type(model)}")
    if not (tol > 0 and max_beats >= 1 and batch >= 1 and (n_save is None or n_save >= 3)):
        raise ValueError("need tol > 0, max_beats >= 1, batch >= 1 and n_save >= 3 (or None)")
    dtype = dtype or default_float()
    solver = solver if solver is not None else Diffrax(rtol=1e-6, atol=1e-6)
    p, N, nb = batch_params(model, params, dtype)
    Y0 = stack_initial(model, p, y0, nb, dtype)
    # tol and max_beats are inputs of the compiled program (a plain float or int would
    # be compiled in: every new tolerance or beat limit would compile the search again)
    tol_a = jnp.asarray(tol, dtype)
    max_a = jnp.asarray(int(max_beats), jnp.int32)
    n_save = None if n_save is None else int(n_save)
    out = _pss_core(model, solver, p, Y0, tol_a, max_a, int(batch), n_save)
    Ys, beats, conv, ch, metrics, dense, status, p = unbatch((*out, p), N)
    return SteadyState(Ys, beats, conv, ch, metrics, dense, status, p)


def pv_loop(ss: SteadyState, chamber: str = "LV"):
    """The pressure-volume loop of a chamber over the reduced steady-state beat.

    Arguments:
        ss: a :class:`SteadyState` from :func:`to_periodic_steady_state`.
        chamber: ``"LV"``, ``"RV"``, ``"LA"`` or ``"RA"``.

    Returns:
        ``(V, p)``: volumes (mL) and pressures (mmHg), trailing axis ``n_save``.
    """
    if chamber not in CHAMBERS:
        raise ValueError(f"chamber must be one of {CHAMBERS}, got {chamber!r}")
    if not ss.beat:
        raise ValueError("no saved beat: run to_periodic_steady_state with n_save (not None)")
    return ss.beat[f"V_{chamber}"], ss.beat[f"p_{chamber}"]


# ---------------------------------------------------------------------------------
# quasi-static steady states at the concentrations of chosen times
# ---------------------------------------------------------------------------------
def _interp(tq, t, c):
    if t.ndim == 1 and c.ndim == 1:
        return jnp.interp(tq, t, c)
    t2 = jnp.broadcast_to(t, c.shape)
    return jax.vmap(lambda a, b: jnp.interp(tq, a, b))(t2, c)


def quasi_static(
    model: Circulation,
    pk_result,
    times,
    links: Sequence[Link],
    params: Mapping | None = None,
    solver=None,
    **steady_state_kw,
) -> dict:
    """Periodic steady states of the circulation at the concentrations of chosen times.

    Arguments:
        model: the organ model (a :class:`~twinjax.models.circulation.Circulation`).
        pk_result: a :class:`~twinjax.Result` of the drug's PK (one patient or ``N``).
        times: ``(K,)`` times, in the PK model's time unit, inside its saved range.
        links: :class:`~twinjax.Link` objects ``Link("pk.<output>", "<any>.<param>",
            kind, params)``: the PK output (e.g. ``"pk.C"``) modifies a parameter of
            ``model`` exactly as in :func:`~twinjax.couple`.
        params: the organ's parameters (scalars, or ``(N,)`` matching the PK batch).
        solver: passed to :func:`to_periodic_steady_state`.
        **steady_state_kw: ``tol``, ``max_beats``, ``batch``, ``n_save``.

    Returns:
        ``{"times": (K,), "C": {output: (K,) or (N, K)}, "metrics": {name: (K,) or (N,
        K)}, "beats": ..., "converged": ..., "steady_state": SteadyState}`` (the
        steady state is flattened over ``N * K``).

    Raises:
        ValueError: a link whose target is not a parameter of ``model`` or whose
            source is not an output of the PK result.
    """
    ts = jnp.asarray(times, pk_result.times.dtype)
    if ts.ndim != 1:
        raise ValueError(f"times must be a (K,) array, got shape {ts.shape}")
    K = ts.shape[0]
    N = pk_result.n_patients
    base, n_p = model.complete(params, dtype=ts.dtype)
    if n_p is not None and N is not None and n_p != N:
        raise ValueError(f"params have {n_p} patients but the PK result has {N}")
    nb = N or n_p
    conc = {}
    for ln in links:
        _, so = ln.source.split(".", 1)
        _, tp = ln.target.split(".", 1)
        if so not in pk_result.outputs:
            raise ValueError(f"Link source {ln.source!r}: no output {so!r} in the PK result")
        if tp not in model.param_names:
            raise ValueError(f"Link target {ln.target!r}: {type(model).__name__} has no {tp!r}")
        if so not in conc:
            conc[so] = _interp(ts, pk_result.times, pk_result.outputs[so])  # (K,) or (N, K)

    def grid(v):  # -> (N, K) or (K,)
        v = jnp.asarray(v)
        if nb is None:
            return jnp.broadcast_to(v, (K,))
        return jnp.broadcast_to(v[:, None] if v.ndim == 1 else v, (nb, K))

    p = {k: grid(v) for k, v in base.items()}
    for ln in links:
        _, so = ln.source.split(".", 1)
        _, tp = ln.target.split(".", 1)
        q = {x.name: x.value for x in ln.param_table()}
        p[tp] = ln.apply(grid(conc[so]), p[tp], q)
    shape = p["HR"].shape
    flat = {k: v.reshape(-1) for k, v in p.items()}
    ss = to_periodic_steady_state(model, flat, solver, **steady_state_kw)
    unflat = lambda v: v.reshape(shape)  # noqa: E731
    return dict(
        times=ts,
        C={k: grid(v) for k, v in conc.items()},
        metrics={k: unflat(v) for k, v in ss.metrics.items()},
        beats=unflat(ss.beats),
        converged=unflat(ss.converged),
        steady_state=ss,
    )
