"""The two layouts of ``solvers.Ensemble``'s step loop, and the helpers that work on
either.

Explicit methods on models of up to ``_ensemble.ROWS_MAX`` states run on a tuple of
``S`` rows ``(N,)`` (one array per state): every stage is then elementwise on
``(N,)`` arrays and XLA:CPU fuses a whole step into a few loops over the patients,
like a hand-written structure-of-arrays loop. On a stacked ``(S, N)`` array (one
contiguous row of patients per state) each stage's ``jnp.stack`` of derivatives is
materialised and the step becomes a dozen separate loops (Lorenz RK4, N = 65,536: 24
ns against 7 ns per trajectory-step). Larger models keep the stacked array (one HLO
op per stage, not S: compile time), and so does Rosenbrock (its LU works on the
stacked Jacobian). Which layout a solver takes is ``Ensemble._rows``.
"""

from __future__ import annotations

import jax.numpy as jnp


def rms(x):
    """RMS over states: of the rows of a state-major ``(S, N)`` array, or of a tuple
    of ``S`` rows ``(N,)`` (the explicit loop's layout).

    Written as an unrolled sum of rows for the usual few states: XLA:CPU lowers a
    small-axis reduction to a library call that costs as much as the whole RK step.
    """
    S = len(x) if isinstance(x, tuple) else x.shape[0]
    if S > 64 and not isinstance(x, tuple):
        return jnp.sqrt(jnp.mean(x * x, axis=0))
    acc = x[0] * x[0]
    for i in range(1, S):
        acc = acc + x[i] * x[i]
    return jnp.sqrt(acc / S)


def tmap(fn, *xs):
    """``fn`` row by row on tuples of rows, or once on stacked arrays."""
    if isinstance(xs[0], tuple):
        return tuple(fn(*r) for r in zip(*xs))
    return fn(*xs)


def stacked(x):
    """A stacked ``(S, N)`` array of either layout."""
    return jnp.stack(x, 0) if isinstance(x, tuple) else x


def col(a, y):
    """Per-patient ``(N,)`` values ``a`` broadcast against states ``y``."""
    return a if isinstance(y, tuple) else a[None, :]


def all_finite(*xs):
    """Per patient: every state of every ``xs`` finite."""
    ok = None
    for x in xs:
        rows = x if isinstance(x, tuple) else (jnp.all(jnp.isfinite(x), axis=0),)
        for r in rows:
            r = jnp.isfinite(r) if isinstance(x, tuple) else r
            ok = r if ok is None else ok & r
    return ok


def state_major(f):
    """``f`` on state-major ``(S, N)`` arrays (the engine's field has one built in)."""
    g = getattr(f, "state_major", None)
    if g is not None:
        return g
    return lambda t, Y, args: f(t, Y.T, args).T


def on_rows(g, S):
    """State-major ``g`` on a tuple of ``S`` rows (stack in, rows out: XLA removes
    the stack/slice pairs, so the model's arithmetic is on the rows themselves)."""

    def f(t, Y, args):
        G = g(t, jnp.stack(Y, 0), args)
        return tuple(G[i] for i in range(S))

    return f
