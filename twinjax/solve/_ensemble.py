"""``solvers.Ensemble``: twinjax's batched Runge-Kutta and Rosenbrock over a whole cohort.

One ``lax.while_loop`` advances every patient at once. State is held as
structure-of-arrays inside the loop: for explicit methods on models of up to
``ROWS_MAX`` states a tuple of ``(N,)`` rows, one per state, else state-major
``(S, N)`` (one contiguous row of patients per state); the model's ``rhs`` sees one
``(N,)`` array per state and broadcasts. Each patient has its own adaptive step,
error control, step counter and status. The fixed step (``"rk4"``) runs a lean
loop: no carried derivative, no per-step selects or finiteness checks (a finished
patient steps by 0; a non-finite end state is flagged after the loop; save
times are looked up only in steps that may hold one, see ``_ensemble_lean.py``). On the
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
arrays stay in cache (2048+ patients in one loop ran 1.6x slower per patient), with
saves or without. Saves cost only in the steps that hold one: each patient's next save
time is carried, and the dense output and the writes run in a ``lax.cond`` taken when
some patient's save falls in its step (``_ensemble_loop.step_body``), so an
integration whose save times lie past a patient's end costs about what one without
saves does (the circulation's beat, 2 twins: 1.2x, was 1.8x; 64 twins: 1.02x).

Differentiation: forward mode (``jax.jvp``, ``jax.jacfwd``), through the loop.
Reverse mode is not supported (a ``while_loop``); use ``solvers.Diffrax`` for it.

This module holds the solver (its options, the method and layout choice, blocking,
the solver interface); the loop is in ``_ensemble_run.py`` (the driver of a segment:
start, compaction, end status; its ``drive`` is the loop, which Rush-Larsen of
``_rush_larsen.py`` runs too, with its condition and end status),
``_ensemble_loop.py`` (the general body, with an optional per-step reduction of
``_reductions.py``), ``_ensemble_lean.py`` (the lean fixed-step body),
``_ensemble_step.py`` (one step, its dense output, the starting step),
``_ensemble_saves.py`` (the saves written from the dense output) and
``_ensemble_layout.py`` (the rows and stacked layouts).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ._base import AbstractSolver
from ._ensemble_run import run
from ._ensemble_step import step
from ._reductions import StepReduction
from ._status import Status
from ._tableaus import ROSENBROCK, TABLEAUS, RosenbrockTableau, Tableau

METHODS = (*TABLEAUS, *ROSENBROCK, "auto")

CPU_BLOCK = 1024  # patients per block on CPU (see ``Ensemble.block``)
LEAN_BLOCK_ROWS = 12_288  # (patients x states) per block of the lean fixed-step loop

# -- the two layouts of the step loop (``_ensemble_layout.py``) -------------------
# Explicit methods on models of up to ROWS_MAX states run on a tuple of S rows
# ``(N,)``; larger models and Rosenbrock on a stacked ``(S, N)`` array.
ROWS_MAX = 16
# Adaptive methods on rows too: no gain in CPU time (Lorenz Tsit5, N = 65,536: 5.2 vs
# 4.75 CPU-ns per trajectory-step), while compiling them took more: a MAP fit of the 12
# theophylline subjects (Tsit5) compiled in 15.3 CPU-s on rows vs 10.9 stacked. Off:
# only the fixed-step methods use rows (their lean loop is where the gain is).
ROWS_ADAPTIVE = False


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

    skips_saves_past_end: ClassVar[bool] = True  # the save gate: saves only where due
    step_reductions: ClassVar[bool] = True  # integrate(..., reduce=StepReduction)
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

    # -- one step for the whole batch (``_ensemble_step.py``) ------------------------
    def _step(self, f, t, y, k1, h, args):
        """One step for the whole batch: ``y``, ``k1`` stacked ``(S, N)`` (or tuples of
        ``S`` rows, see ``_rows``), ``h`` ``(N,)``; returns ``(y1, k_end, err, ks)``
        (``k_end`` None when the method is not FSAL, ``err`` None for a fixed step)."""
        return step(self.tableau, f, t, y, k1, h, args)

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

    def integrate(self, f, t0, t1, y0, ts, args, model, *, forward=False, reduce=None):
        """The solver interface's ``integrate``; ``reduce``: None, or a
        :class:`~twinjax.solve.StepReduction` folded into accumulators at every step
        (then a fourth result, the accumulators ``(N, A)``; a fixed step then runs
        the general body, not the lean one)."""
        if self.method == "auto":
            return self.for_model(model).integrate(f, t0, t1, y0, ts, args, model, reduce=reduce)
        del model, forward  # forward mode works through the loop as it is
        n = y0.shape[0]
        block = self.block_size(n, y0.shape[1])
        batched = all(getattr(a, "ndim", 0) >= 1 and a.shape[0] == n for a in jax.tree.leaves(args))
        # the reduction's accumulators are per patient: blocked with the patients
        red = () if reduce is None else (reduce.acc0,)

        def reduction(red):
            return None if reduce is None else StepReduction(red[0], reduce.update)

        if ts is None and block is not None and block < n and batched:
            from ._engine import blocked

            def one(t0, t1, y0, args, red):
                return self._run(f, t0, t1, y0, args, None, reduce=reduction(red))[1:]

            return (None, *blocked(one, n, block, (t0, t1, y0, args, red)))
        if ts is None:
            return (None, *self._run(f, t0, t1, y0, args, None, reduce=reduce)[1:])
        n, S = y0.shape
        lo = jnp.sum(ts < t0[:, None], axis=-1).astype(jnp.int32)
        hi = jnp.sum(ts <= t1[:, None], axis=-1).astype(jnp.int32)

        def saved(t0, t1, y0, args, red, lo, hi, ts):
            out = jnp.zeros((t0.shape[0], ts.shape[-1], S), y0.dtype)
            return self._run(f, t0, t1, y0, args, (ts, out, lo, hi), reduce=reduction(red))

        if block is not None and block < n and batched:  # in blocks, as without saves
            from ._engine import blocked

            if ts.shape[0] == 1:  # shared save times: whole to every block
                return blocked(saved, n, block, (t0, t1, y0, args, red, lo, hi), (ts,))
            return blocked(saved, n, block, (t0, t1, y0, args, red, lo, hi, ts))
        return saved(t0, t1, y0, args, red, lo, hi, ts)

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

    def _run(self, f, t0, t1, y0, args, save, h_prev=None, skip=None, reduce=None):
        # Internally state-major: ``Y[S, N]``, one contiguous row per state, so that
        # every stage is a handful of fused, vectorised loops over the patients.
        rows = self._rows(y0.shape[1])
        return run(self, f, t0, t1, y0, args, save, h_prev, skip, rows=rows, reduce=reduce)
