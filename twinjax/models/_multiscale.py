"""Quasi-static multi-scale coupling: an organ's periodic steady state at the drug
concentrations of chosen times.

When the drug kinetics (hours) is much slower than the organ's own dynamics (a few
beats), the organ is, at every time, at the periodic steady state of its parameters
modified by the current concentration. :func:`quasi_static` takes a PK simulation,
reads the concentration at chosen times, applies the same :class:`~twinjax.Link`
objects a full :func:`~twinjax.couple` would use, and runs the circulation to its
periodic steady state for every (patient, time) pair in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from ..model._couple import Link
from .circulation import Circulation, to_periodic_steady_state


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
