"""``solvers.Ensemble``: twinjax's batched Runge-Kutta and Rosenbrock over a whole cohort.

One ``lax.while_loop`` advances every patient at once. State is held as
structure-of-arrays inside the loop: for explicit methods on models of up to
``ROWS_MAX`` states a tuple of ``(N,)`` rows, one per state, else state-major
``(S, N)`` (one contiguous row of patients per state); the model's ``rhs`` sees one
``(N,)`` array per state and broadcasts. Each patient has its own adaptive step,
error control, step counter and status. The fixed step (``"rk4"``) runs a lean
loop: no carried derivative, no per-step selects or finiteness checks (a finished
patient steps by 0; a non-finite end state is flagged after the loop; save
times are looked up only in steps that may hold one, see ``lean_body``). On the
Lorenz benchmark (N = 65,536) it costs 1.2x the CPU time of a hand-written RK4 on
three arrays, and 1.27x through ``twinjax.simulate`` with a save at the end
(``benchmarks/results/lorenz_simulate_overhead.json``). No ``vmap`` over
patients: a step is a few fused, vectorised loops over the batch, which is what
makes large cohorts fast on CPU and GPU. Saves are taken from the method's dense
output (DOPRI5: 4th-order continuous extension; Tsit5 and RK4: cubic Hermite
interpolation from the FSAL derivatives; Rodas5P: its own continuous extension) and
written in place into the result.

Stiff models: ``"rodas5p"`` is a linearly implicit Rosenbrock method run by the same
loop (``solve/_rosenbrock.py``): each step a Jacobian per patient by forward-mode AD
and a small LU per patient, both in the same state-major layout. ``"auto"`` (the
default) takes it for models that declare ``stiff = True``.

Performance notes (XLA:CPU, measured on the PK/PD cohort benchmark): the error norm
is an unrolled sum over states (a small-axis reduction became a library call as
costly as the step), the step-size factor's power is taken in float32 (vectorised;
the float64 one is a scalar call per patient), shared save times are looked up in a
1-D table, and batches larger than ``block`` run block by block so that a block's
arrays stay in cache (2048+ patients in one loop ran 1.6x slower per patient).

Differentiation: forward mode (``jax.jvp``, ``jax.jacfwd``), through the loop.
Reverse mode is not supported (a ``while_loop``); use ``solvers.Diffrax`` for it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import _rosenbrock
from ._base import AbstractSolver
from ._status import Status
from ._tableaus import ROSENBROCK, TABLEAUS, RosenbrockTableau, Tableau

METHODS = (*TABLEAUS, *ROSENBROCK, "auto")

SAVES_PER_PASS = 1  # saves written per patient by one vectorised pass after a step
CPU_BLOCK = 1024  # patients per block on CPU (see ``Ensemble.block``)
LEAN_BLOCK_ROWS = 12_288  # (patients x states) per block of the lean fixed-step loop
COMPACT_MIN = 16  # smallest compacted batch worth a second loop


def _rms(x):
    """RMS over states: of the rows of a state-major ``(S, N)`` array, or of a tuple
    of ``S`` rows ``(N,)`` (the explicit loop's layout, see ``_rows``).

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


# -- the two layouts of the step loop ---------------------------------------------
# Explicit methods on models of up to ROWS_MAX states run on a tuple of S rows
# ``(N,)`` (one array per state): every stage is then elementwise on (N,) arrays
# and XLA:CPU fuses a whole step into a few loops over the patients, like a
# hand-written structure-of-arrays loop. On a stacked ``(S, N)`` array each stage's
# ``jnp.stack`` of derivatives is materialised and the step becomes a dozen
# separate loops (Lorenz RK4, N = 65,536: 24 ns against 7 ns per trajectory-step).
# Larger models keep the stacked array (one HLO op per stage, not S: compile time),
# and so does Rosenbrock (its LU works on the stacked Jacobian).
ROWS_MAX = 16
# Adaptive methods on rows too: no gain in CPU time (Lorenz Tsit5, N = 65,536: 5.2 vs
# 4.75 CPU-ns per trajectory-step), while compiling them took more: a MAP fit of the 12
# theophylline subjects (Tsit5) compiled in 15.3 CPU-s on rows vs 10.9 stacked. Off:
# only the fixed-step methods use rows (their lean loop is where the gain is).
ROWS_ADAPTIVE = False


def _tmap(fn, *xs):
    """``fn`` row by row on tuples of rows, or once on stacked arrays."""
    if isinstance(xs[0], tuple):
        return tuple(fn(*r) for r in zip(*xs))
    return fn(*xs)


def _stacked(x):
    """A stacked ``(S, N)`` array of either layout."""
    return jnp.stack(x, 0) if isinstance(x, tuple) else x


def _col(a, y):
    """Per-patient ``(N,)`` values ``a`` broadcast against states ``y``."""
    return a if isinstance(y, tuple) else a[None, :]


def _all_finite(*xs):
    """Per patient: every state of every ``xs`` finite."""
    ok = None
    for x in xs:
        rows = x if isinstance(x, tuple) else (jnp.all(jnp.isfinite(x), axis=0),)
        for r in rows:
            r = jnp.isfinite(r) if isinstance(x, tuple) else r
            ok = r if ok is None else ok & r
    return ok


def _state_major(f):
    """``f`` on state-major ``(S, N)`` arrays (the engine's field has one built in)."""
    g = getattr(f, "state_major", None)
    if g is not None:
        return g
    return lambda t, Y, args: f(t, Y.T, args).T


def _on_rows(g, S):
    """State-major ``g`` on a tuple of ``S`` rows (stack in, rows out: XLA removes
    the stack/slice pairs, so the model's arithmetic is on the rows themselves)."""

    def f(t, Y, args):
        G = g(t, jnp.stack(Y, 0), args)
        return tuple(G[i] for i in range(S))

    return f


class Ensemble(AbstractSolver):
    """Batched Runge-Kutta (explicit) or Rosenbrock (stiff) with a per-patient
    adaptive step.

    Arguments:
        method: ``"auto"`` (default: ``"rodas5p"`` for a model that declares
            ``stiff = True``, else ``"dopri5"``), ``"dopri5"`` (adaptive, 5th order
            with an embedded 4th-order error estimate and a 4th-order dense output),
            ``"tsit5"`` (adaptive; saves by cubic Hermite interpolation, so saved
            values between steps are less accurate than the steps), ``"rk4"``
            (fixed step ``dt``) or ``"rodas5p"`` (stiff: the linearly implicit
            Rosenbrock method Rodas5P of Steinebach 2023, 5th order with an embedded
            4th-order error estimate and its own dense output; a Jacobian per
            patient by forward-mode AD and a small LU per patient each step, see
            ``solve/_rosenbrock.py``).
        rtol, atol: tolerances of the mixed error norm (RMS over states, as Hairer).
        dt: the step of ``"rk4"`` (required there); an initial step otherwise.
        max_steps: maximum number of steps (accepted or rejected) per segment.
        safety, factormin, factormax: step-size controller constants.
        hmin: smallest step relative to ``max(|t|, 1)`` before a patient is flagged
            ``STEP_TOO_SMALL``.
        block: patients per block: larger batches run block after block, each
            block's step loop on arrays that stay in cache. Default: 1024 on CPU
            (measured best on the PK/PD benchmark); for ``"rk4"`` on models of up to
            16 states (its lean loop, see ``ROWS_MAX``) ``LEAN_BLOCK_ROWS / S``
            (4,096 for 3 states); the whole batch on accelerators. ``0`` never
            blocks.
        compact: once no more than this fraction of a segment's patients are still
            stepping, they finish in a compacted batch of that size (the lock-step
            loop otherwise pays for every patient until the slowest is done).
            ``0`` turns it off.
    """

    method: str = "auto"
    rtol: float = 1e-6
    atol: float = 1e-9
    dt: float | None = None
    max_steps: int = 100_000
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    hmin: float = 1e-12
    block: int | None = None
    compact: float = 0.25

    def __check_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Ensemble method {self.method!r} unknown; use one of {list(METHODS)}")
        if self.method == "rk4" and (self.dt is None or not self.dt > 0):
            raise ValueError("Ensemble(method='rk4') needs a fixed step dt > 0")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"tolerances must be positive, got rtol={self.rtol} atol={self.atol}")

    @property
    def tableau(self) -> Tableau | RosenbrockTableau:
        """The method's tableau (``"auto"``: that of the non-stiff choice)."""
        if self.method in ROSENBROCK:
            return ROSENBROCK[self.method]
        return TABLEAUS["dopri5" if self.method == "auto" else self.method]

    def for_model(self, model) -> Ensemble:
        """This solver with ``"auto"`` resolved for ``model`` (by its ``stiff`` flag)."""
        if self.method != "auto":
            return self
        method = "rodas5p" if getattr(model, "stiff", False) else "dopri5"
        return dataclasses.replace(self, method=method)

    # -- one step for the whole batch ------------------------------------------------
    def _step(self, f, t, y, k1, h, args):
        """One step for the whole batch: ``y``, ``k1`` stacked ``(S, N)`` (or tuples of
        ``S`` rows, see ``_rows``), ``h`` ``(N,)``; returns ``(y1, k_end, err, ks)``
        (``k_end`` None when the method is not FSAL, ``err`` None for a fixed step)."""
        tab = self.tableau
        if isinstance(tab, RosenbrockTableau):
            y1, err, Ks = _rosenbrock.step(tab, f, t, y, k1, h, args)
            return y1, None, err, Ks
        dtype = (y[0] if isinstance(y, tuple) else y).dtype
        hc = _col(h, y)
        # (h a_ij) k_j: one product h a_ij per coefficient, shared by the states
        # (h (a_ij k_j) took two multiplications per state)
        ks = [k1]
        for i, row in enumerate(tab.a):
            acc = y
            for aij, kj in zip(row, ks):
                if aij != 0.0:
                    hcoef = hc * jnp.asarray(aij, dtype)
                    acc = _tmap(lambda a, k, w=hcoef: a + w * k, acc, kj)
            ks.append(f(t + tab.c[i + 1] * h, acc, args))
        if tab.fsal:
            y1 = acc  # the last stage is evaluated at the solution
            k_end = ks[-1]
        else:
            y1 = y
            for bi, ki in zip(tab.b, ks):
                if bi != 0.0:
                    hcoef = hc * jnp.asarray(bi, dtype)
                    y1 = _tmap(lambda a, k, w=hcoef: a + w * k, y1, ki)
            k_end = None
        err = None
        if tab.b_err is not None:
            terms = [(jnp.asarray(ei, dtype), ki) for ei, ki in zip(tab.b_err, ks) if ei != 0.0]
            err = _tmap(lambda k: terms[0][0] * k, terms[0][1])
            for c, ki in terms[1:]:
                err = _tmap(lambda a, k, c=c: a + c * k, err, ki)
            err = _tmap(lambda e: hc * e, err)
        return y1, k_end, err, ks

    def _dense(self, theta, y0, y1, k0, k1, h, ks):
        """States at ``t + theta h`` from the step's data.

        ``theta``: ``(N, K)`` (K points per patient); step data ``(S, N)``; returns
        ``(S, N, K)``.
        """
        tab = self.tableau
        if isinstance(tab, RosenbrockTableau):
            return _rosenbrock.dense(theta, y0, y1, ks[: len(tab.H)])
        th = theta[None]
        y0, y1, k0, k1 = (a[..., None] for a in (y0, y1, k0, k1))
        ks = [a[..., None] for a in ks]
        hc = h[None, :, None]
        dy = y1 - y0
        r3 = hc * k0 - dy
        r4 = dy - hc * k1 - r3
        if tab.dense is not None:
            r5 = 0.0
            for di, ki in zip(tab.dense, ks):
                if di != 0.0:
                    r5 = r5 + jnp.asarray(di, y0.dtype) * ki
            r5 = hc * r5
        else:
            r5 = 0.0
        return y0 + th * (dy + (1 - th) * (r3 + th * (r4 + (1 - th) * r5)))

    def _initial_step(self, f, t0, t1, y0, f0, args):
        if self.dt is not None:
            return jnp.minimum(jnp.full_like(t0, self.dt), jnp.maximum(t1 - t0, 0.0))
        sc = _tmap(lambda y: self.atol + self.rtol * jnp.abs(y), y0)
        d0 = _rms(_tmap(jnp.divide, y0, sc))
        d1 = _rms(_tmap(jnp.divide, f0, sc))
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.where(d1 > 0, d1, 1.0))
        hc = _col(h0, y0)
        f1 = f(t0 + h0, _tmap(lambda y, k: y + hc * k, y0, f0), args)
        d2 = _rms(_tmap(lambda a, b, c: (a - b) / c, f1, f0, sc)) / h0
        dm = jnp.maximum(d1, d2)
        order = self.tableau.order
        h1 = jnp.where(
            dm <= 1e-15,
            jnp.maximum(1e-6, h0 * 1e-3),
            jnp.power(0.01 / jnp.where(dm > 0, dm, 1.0), 1.0 / (order + 1)),
        )
        h = jnp.minimum(100 * h0, h1)
        return jnp.minimum(h, jnp.maximum(t1 - t0, 0.0))

    def _rows(self, S):
        """Whether the step loop runs on a tuple of rows (see ``ROWS_MAX`` and
        ``ROWS_ADAPTIVE``)."""
        if S > ROWS_MAX or isinstance(self.tableau, RosenbrockTableau):
            return False
        return self.tableau.b_err is None or ROWS_ADAPTIVE

    def block_size(self, n, S=None):
        """Patients per block for a batch of ``n`` (None: the whole batch); ``S``, the
        number of states where known."""
        if self.block is not None:
            return self.block or None
        if jax.default_backend() != "cpu":
            return None
        if S is not None and self.tableau.b_err is None and self._rows(S):
            # The lean fixed-step loop: a handful of fused loops per step over about
            # a dozen (N,) rows per state (the state, the stages, the parameters).
            # Blocks of LEAN_BLOCK_ROWS / S patients keep them in a core's L2 (1 MiB
            # here). Lorenz RK4 (S = 3) through twinjax.simulate, N = 65,536, CPU-ns
            # per trajectory-step on the loaded 2-core machine (one save at t = 1,
            # best of 3): blocks of 1,024: 6.7, 2,048: 6.2, 4,096: 5.9-6.3, 8,192:
            # 10.5, unblocked: 7.4.
            b = max(LEAN_BLOCK_ROWS // S, 256)
            return 1 << (b.bit_length() - 1)  # a power of two
        return CPU_BLOCK

    def integrate(self, f, t0, t1, y0, ts, args, model, *, forward=False):
        if self.method == "auto":
            return self.for_model(model).integrate(f, t0, t1, y0, ts, args, model)
        del model, forward  # forward mode works through the loop as it is
        n = y0.shape[0]
        block = self.block_size(n, y0.shape[1])
        batched = all(getattr(a, "ndim", 0) >= 1 and a.shape[0] == n for a in jax.tree.leaves(args))
        if ts is None and block is not None and block < n and batched:
            from ._engine import blocked

            def one(t0, t1, y0, args):
                _, y1, status = self._run(f, t0, t1, y0, args, None)
                return y1, status

            y1, status = blocked(one, n, block, (t0, t1, y0, args))
            return None, y1, status
        if ts is None:
            _, y1, status = self._run(f, t0, t1, y0, args, None)
            return None, y1, status
        n, S = y0.shape
        lo = jnp.sum(ts < t0[:, None], axis=-1).astype(jnp.int32)
        hi = jnp.sum(ts <= t1[:, None], axis=-1).astype(jnp.int32)
        out = jnp.zeros((n, ts.shape[-1], S), y0.dtype)
        return self._run(f, t0, t1, y0, args, (ts, out, lo, hi))

    def init_carry(self, n, dtype):
        # each patient's last step (none known yet), and whether it failed before
        return jnp.full((n,), jnp.nan, dtype), jnp.zeros((n,), bool)

    def integrate_segment(self, f, t0, t1, y0, ts, out, lo, hi, args, model, carry):
        """Integrate and write the saves of indices ``[lo, hi)`` straight into ``out``.

        The carry is each patient's last proposed step: a new segment starts from it
        (the controller shrinks it if the event made the dynamics faster) instead of
        re-estimating an initial step. A patient that failed in an earlier segment
        is not integrated again: its first failure's code is the one reported.
        """
        if self.method == "auto":
            return self.for_model(model).integrate_segment(
                f, t0, t1, y0, ts, out, lo, hi, args, model, carry
            )
        del model
        h_prev, failed = carry
        out, y1, status, h = self._run(f, t0, t1, y0, args, (ts, out, lo, hi), h_prev, failed)
        return out, y1, status, (h, failed | (status != Status.OK))

    def _run(self, f, t0, t1, y0, args, save, h_prev=None, skip=None):
        # Internally state-major: ``Y[S, N]``, one contiguous row per state, so that
        # every stage is a handful of fused, vectorised loops over the patients.
        n, S = y0.shape
        f = _state_major(f)
        y0 = y0.T
        if self._rows(S):
            f = _on_rows(f, S)
            y0 = tuple(y0[i] for i in range(S))
        adaptive = self.tableau.b_err is not None
        # fixed step on rows: the lean loop (see ``lean_body``)
        lean = not adaptive and isinstance(y0, tuple)
        f0 = f(t0, y0, args)
        if h_prev is None or not adaptive:
            h0 = self._initial_step(f, t0, t1, y0, f0, args)
        else:
            h0 = jnp.where(
                jnp.isfinite(h_prev),
                jnp.minimum(h_prev, jnp.maximum(t1 - t0, 0.0)),
                self._initial_step(f, t0, t1, y0, f0, args),
            )
        if adaptive:  # a chosen step, not a function of the parameters (see body)
            h0 = jax.lax.stop_gradient(h0)
        dtype = _stacked(y0).dtype
        inf = jnp.asarray(jnp.inf, dtype)
        K = SAVES_PER_PASS
        offs = jnp.arange(K, dtype=jnp.int32)
        ts = out = idx = hi = None
        if save is not None:
            ts, out, idx, hi = save

        def savers(rows_out, hi, ts):
            """Save-time lookup and writer for patients ``rows_out`` of ``out``."""
            T = ts.shape[-1]
            local = jnp.arange(rows_out.shape[0])

            def lookup(j):  # save times at indices j (clamped), (M,) or (M, K)
                j = jnp.clip(j, 0, T - 1)
                if ts.shape[0] == 1:  # the same times for everyone: a 1-D lookup
                    return ts[0].at[j].get(mode="promise_in_bounds")
                r = local if j.ndim == 1 else local[:, None]
                return ts.at[r, j].get(mode="promise_in_bounds")

            def next_time(i):
                return jnp.where(i < hi, lookup(i), inf)

            def save_pass(o, i, t_right, values):
                """Write up to K saves per patient falling at or before ``t_right``."""
                j = i[:, None] + offs[None, :]  # (M, K) candidate save indices
                tj = jnp.where(j < hi[:, None], lookup(j), inf)
                ok = tj <= t_right[:, None]  # save times are sorted: a prefix of the K
                val = values(tj)  # (S, M, K)
                dest = jnp.where(ok, j, T)  # out of range: dropped
                o = o.at[rows_out[:, None], dest].set(jnp.moveaxis(val, 0, -1), mode="drop")
                return o, i + jnp.sum(ok, axis=1, dtype=jnp.int32)

            return next_time, save_pass

        def make_loop(rows_out, t1, args, hi, ts, min_active):
            """``(cond, body)`` of the step loop over patients ``rows_out``; the loop
            also stops once no more than ``min_active`` of them are still running."""
            if ts is not None:
                next_time, save_pass = savers(rows_out, hi, ts)

            def cond(c):
                active, it = c[4], c[6]
                if min_active > 0:  # (implies that some are running: one reduction)
                    return (jnp.sum(active, dtype=jnp.int32) > min_active) & (it < self.max_steps)
                return jnp.any(active) & (it < self.max_steps)

            def body(c):
                if lean:
                    return lean_body(c)
                t, y, k, h, active, status, it, out, idx, gate = c
                h_eff = jnp.where(active, jnp.minimum(h, t1 - t), 0.0)
                last = h_eff >= t1 - t
                # the stages that the dense output needs (DOPRI5's, Rodas5P's)
                tab = self.tableau
                keep_ks = out is not None and (
                    isinstance(tab, RosenbrockTableau) or tab.dense is not None
                )

                def trial(_):
                    """The trial step and what the controller needs of it."""
                    y1, k_end, err, ks = self._step(f, t, y, k, h_eff, args)
                    if k_end is None:
                        k_end = f(t + h_eff, y1, args)
                    finite = _all_finite(y1, k_end)
                    en = None
                    if adaptive:
                        en = _rms(
                            _tmap(
                                lambda e, a, b: (
                                    e
                                    / (self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))
                                ),
                                err,
                                y,
                                y1,
                            )
                        )
                    return y1, k_end, finite, en, (ks if keep_ks else [])

                if isinstance(y, tuple) and jax.default_backend() == "cpu":
                    # XLA:CPU fuses an elementwise producer into every consumer, so a
                    # step consumed by the nine parts of the carry (t, rows of y and
                    # k, h, active, status) was computed nine times over. The branch
                    # of a conditional is its own computation whose results are
                    # materialised: the step is computed once, the bookkeeping reads
                    # it (Lorenz RK4, N = 65,536: 44 -> 17 ns per trajectory-step).
                    # The predicate is always true but unknown to XLA.
                    y1, k_end, finite, en, ks = jax.lax.cond(it >= 0, trial, trial, None)
                else:
                    y1, k_end, finite, en, ks = trial(None)
                if adaptive:
                    finite = finite & jnp.isfinite(en)
                    en = jnp.where(finite, en, jnp.inf)
                    accept = active & (en <= 1.0)
                    # The step factor needs no more than float32: XLA:CPU vectorises
                    # the float32 power; the float64 one is a scalar call per patient.
                    en32 = jnp.maximum(en, 1e-10).astype(jnp.float32)
                    fac = self.safety * jnp.power(en32, -1.0 / self.tableau.order)
                    fac = jnp.clip(
                        fac.astype(en.dtype),
                        self.factormin,
                        jnp.where(accept, self.factormax, 1.0),
                    )
                    # The controller's choice of step carries no derivative (as in
                    # diffrax): differentiating it gives the derivative of the step
                    # pattern, which jumps between accepted/rejected patterns and made
                    # Gauss-Newton Jacobians wrong by orders of magnitude.
                    h_new = jax.lax.stop_gradient(jnp.where(active, h_eff * fac, h))
                    # keep the step as proposed when it was only clipped to hit t1
                    h_new = jnp.where(accept & last, jnp.maximum(h_new, h), h_new)
                else:
                    accept = active & finite
                    h_new = h
                t_new = jnp.where(accept, jnp.where(last, t1, t + h_eff), t)
                if out is not None:
                    safe_h = jnp.where(h_eff > 0, h_eff, 1.0)
                    k_all = ks + [k_end]
                    t_right = jnp.where(accept, t_new, -inf)

                    def values(tj):
                        theta = jnp.clip((tj - t[:, None]) / safe_h[:, None], 0.0, 1.0)
                        theta = jnp.where(h_eff[:, None] > 0, theta, 1.0)
                        return self._dense(
                            theta,
                            _stacked(y),
                            _stacked(y1),
                            _stacked(k),
                            _stacked(k_end),
                            h_eff,
                            [_stacked(a) for a in k_all],
                        )

                    out, idx = jax.lax.while_loop(
                        lambda c: jnp.any(next_time(c[1]) <= t_right),
                        lambda c: save_pass(c[0], c[1], t_right, values),
                        (out, idx),
                    )
                y_next = _tmap(lambda a, b: jnp.where(_col(accept, y), a, b), y1, y)
                k_next = _tmap(lambda a, b: jnp.where(_col(accept, y), a, b), k_end, k)
                bad = active & ~finite
                tiny = active & ~accept & (h_new < self.hmin * jnp.maximum(jnp.abs(t), 1.0))
                if adaptive:
                    # A NaN or infinite trial step is rejected and the step shrunk (as
                    # diffrax does); while running, status says whether the last step
                    # tried was non-finite: that is the cause if the patient fails.
                    status = jnp.where(active, jnp.where(bad, Status.NONFINITE, 0), status)
                    status = jnp.where(tiny & ~bad, Status.STEP_TOO_SMALL, status)
                    still = active & ~tiny & ~(accept & last)
                else:  # a fixed step cannot shrink: a non-finite step is a failure
                    status = jnp.where(bad, Status.NONFINITE, status)
                    still = active & ~bad & ~(accept & last)
                return (t_new, y_next, k_next, h_new, still, status, it + 1, out, idx, gate)

            def lean_body(c):
                """The fixed step on rows: what the hand-written loop does, plus the
                per-patient end time. A patient that is not running has ``t = t1``
                (set so before the loop), so its step is ``h = 0``, which leaves its
                state as it is: nothing is selected per step. The derivative at the
                start of the step is evaluated in the step (XLA fuses it into the
                stages) rather than carried; a non-finite state stays non-finite, so
                it is found once after the loop (``_run``).

                Saves: the per-patient look-up of the next save time (a pass over
                the batch, and the step's results materialised for it) is gated by
                two scalars carried in ``gate``: an upper bound of every patient's
                time (it grows by ``dt`` a step, rounded up) and the earliest save
                still to write. Until the bound reaches that save no patient can
                have one in its step, so the step is the bare arithmetic; saves at
                a segment's end are looked up in its last step only."""
                t, y, k, h, active, status, it, out, idx, gate = c

                def advance(t, y):
                    # = min(h0, t1 - t) of the general loop: h0 = min(dt, t1 - t0), t >= t0
                    h_eff = jnp.minimum(jnp.asarray(self.dt, t.dtype), t1 - t)
                    last = h_eff >= t1 - t
                    k0 = f(t, y, args)
                    y1 = self._step(f, t, y, k0, h_eff, args)[0]
                    return h_eff, k0, y1, jnp.where(last, t1, t + h_eff)

                _, _, y1, t_new = advance(t, y)
                if out is not None:

                    def saves(oi):
                        # The step again (only in steps that may save): the branch then
                        # reads nothing but the loop's carry, so XLA does not
                        # materialise (or recompute) the step's results for it in
                        # every step. The same operations: the same values.
                        h_eff, k0, y1, t_new = advance(t, y)
                        safe_h = jnp.where(h_eff > 0, h_eff, 1.0)
                        t_right = jnp.where(t < t1, t_new, -inf)

                        def values(tj):
                            theta = jnp.clip((tj - t[:, None]) / safe_h[:, None], 0.0, 1.0)
                            theta = jnp.where(h_eff[:, None] > 0, theta, 1.0)
                            k1 = f(t + h_eff, y1, args)
                            Y0, Y1 = _stacked(y), _stacked(y1)
                            K0, K1 = _stacked(k0), _stacked(k1)
                            return self._dense(theta, Y0, Y1, K0, K1, h_eff, [K0, K1])

                        o, i = jax.lax.while_loop(
                            lambda c: jnp.any(next_time(c[1]) <= t_right),
                            lambda c: save_pass(c[0], c[1], t_right, values),
                            oi,
                        )
                        return o, i, jnp.min(next_time(i))

                    bound, t_save = gate
                    # every t_new <= bound + dt; rounded up (4 eps relative), so that
                    # a save is never missed whatever the rounding of t + h
                    s = bound + jnp.asarray(self.dt, bound.dtype)
                    bound = s + 4 * jnp.finfo(s.dtype).eps * jnp.abs(s) + jnp.finfo(s.dtype).tiny
                    out, idx, t_save = jax.lax.cond(
                        t_save <= bound, saves, lambda oi: (*oi, t_save), (out, idx)
                    )
                    gate = (bound, t_save)
                return (t_new, y1, k, h, t_new < t1, status, it + 1, out, idx, gate)

            def gate0(t, idx):
                """The lean loop's save gate at its start (see ``lean_body``)."""
                if not lean or ts is None:
                    return None
                # a NaN start time (its patient saves nothing) must not hide the others'
                lowest = jnp.finfo(t.dtype).min
                tmax = jnp.max(jnp.where(jnp.isnan(t), lowest, t))
                return jax.lax.stop_gradient((tmax, jnp.min(next_time(idx))))

            return cond, body, gate0

        rows = jnp.arange(n)
        if save is not None:
            # saves at the segment's start take the state after its events
            next_time, save_pass = savers(rows, hi, ts)
            y0_saves = jnp.broadcast_to(_stacked(y0)[..., None], (S, n, K))
            out, idx = jax.lax.while_loop(
                lambda c: jnp.any(next_time(c[1]) <= t0),
                lambda c: save_pass(c[0], c[1], t0, lambda tj: y0_saves),
                (out, idx),
            )
        # A start from a non-finite state or derivative is not integrated: NONFINITE.
        # A patient that failed before (skip) is not integrated and reports OK.
        start_ok = _all_finite(y0, f0)
        run = start_ok if skip is None else start_ok & ~skip
        active0 = (t0 < t1) & run
        status0 = jnp.where(start_ok, 0, Status.NONFINITE)
        if skip is not None:
            status0 = jnp.where(skip, 0, status0)
        status0 = status0.astype(jnp.int32)
        # the lean loop steps a patient that is not running by t1 - t = 0
        t_start = jnp.where(active0, t0, t1) if lean else t0
        carry = (t_start, y0, f0, h0, active0, status0, jnp.zeros((), jnp.int32), out, idx, None)
        # Compaction: patients finish a segment after different numbers of steps, and
        # a lock-step loop pays for all of them until the last one is done. Once no
        # more than m are running, the running ones are gathered into a batch of m
        # and finish there; results are per patient, so bitwise the same.
        m = int(n * self.compact) if self.compact else 0
        batched = all(getattr(a, "ndim", 0) >= 1 and a.shape[0] == n for a in jax.tree.leaves(args))
        if m < COMPACT_MIN or not batched:
            m = 0
        cond, body, gate0 = make_loop(rows, t1, args, hi, ts, m)
        carry = (*carry[:-1], gate0(t_start, idx))
        carry = jax.lax.while_loop(cond, body, carry)
        if m:
            t, y, k, h, active, status, it, out, idx, _ = carry
            # the running patients; the rest of the m slots repeat a finished one,
            # which the loop leaves as it is
            sel = jnp.nonzero(active, size=m, fill_value=jnp.argmin(active))[0]
            sub = (
                t[sel],
                _tmap(lambda a: a[..., sel], y),
                _tmap(lambda a: a[..., sel], k),
                h[sel],
                active[sel],
                status[sel],
                it,
                out,
            )
            sub = sub + (None if idx is None else idx[sel],)
            args_c = jax.tree.map(lambda a: a[sel], args)
            ts_c = None if ts is None else (ts if ts.shape[0] == 1 else ts[sel])
            hi_c = None if hi is None else hi[sel]
            cond_c, body_c, gate0_c = make_loop(sel, t1[sel], args_c, hi_c, ts_c, 0)
            sub = sub + (gate0_c(sub[0], sub[8]),)
            tc, yc, kc, hc, ac, sc, it, out, ic, _ = jax.lax.while_loop(cond_c, body_c, sub)
            carry = (
                t.at[sel].set(tc),
                _tmap(lambda a, b: a.at[..., sel].set(b), y, yc),
                _tmap(lambda a, b: a.at[..., sel].set(b), k, kc),
                h.at[sel].set(hc),
                active.at[sel].set(ac),
                status.at[sel].set(sc),
                it,
                out,
                None if idx is None else idx.at[sel].set(ic),
            )
        y, h, active, status, out = _stacked(carry[1]).T, carry[3], carry[4], carry[5], carry[7]
        # still running: out of steps, unless the last step tried was non-finite
        status = jnp.where(active & (status != Status.NONFINITE), Status.MAX_STEPS, status)
        if lean:
            # the lean loop does not look for non-finite steps: a patient that ran
            # and ends non-finite (its state, or its derivative there) failed
            t_end, y_end = carry[0], carry[1]
            ok = _all_finite(y_end, f(t_end, y_end, args))
            status = jnp.where(active0 & ~ok, Status.NONFINITE, status)
        status = status.astype(jnp.int32)
        if h_prev is None:
            return out, y, status
        h_keep = jnp.where(t1 > t0, h, h_prev)  # a zero-length segment keeps the old step
        return out, y, status, h_keep
