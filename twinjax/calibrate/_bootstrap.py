"""Nonparametric bootstrap of FOCE-I population fits, the resamples fitted together.

A bootstrap resample draws ``N`` subjects with replacement; subject ``i`` enters it
``w_bi`` times, so its FOCE-I objective is the weighted sum ``sum_i w_bi OFV_i(phi_b)``
(the subjects' terms are independent given ``phi``). All ``B`` resamples are refitted
together: every objective evaluation computes the modes and per-subject terms and exact
gradients of all ``N`` subjects at all ``B`` outer vectors in one compiled call
(``vmap`` over the resamples of the batched inner fit and of the forward-mode gradient,
in chunks of ``batch`` resamples), and a vectorised optimiser on the host moves the
``B`` vectors at once:

1. BFGS, one inverse-Hessian approximation per resample, started from the original
   estimates with the original fit's inverse Hessian (``R^-1``), with a per-resample
   Armijo backtracking line search (each trial step of all resamples is one batched
   evaluation);
2. Newton polishing as in ``fit_population``: the finite-difference Hessian of the
   batched exact gradients (``2P`` batched evaluations) gives each resample's Newton
   decrement ``g' H^-1 g``; a resample has converged when it is below ``tol``, and
   those that have not take Newton steps (at most ``max_newton`` Hessians).

The optimiser's loop is Python on the host (a few dozen iterations); the work, the
ODE solves and AD passes of all ``B x N`` subject fits, is in the compiled calls.
Percentile CIs and the bootstrap SE are over the converged resamples; failed
(non-finite) and non-converged resamples are counted and left out.

A fit with inter-occasion variability: a subject is resampled with all its occasions
(its weight multiplies its whole FOCE-I term, the kappas of every occasion integrated
out with its etas), and ``OMEGA_IOV(P)`` is re-estimated in each resample.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from ._covstep import Problem

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BootstrapResult", "bootstrap", "resample_counts"]


def resample_counts(n_subjects: int, n: int, seed: int = 0) -> np.ndarray:
    """``(n, n_subjects)`` counts ``w_bi``: how often subject ``i`` is in resample ``b``
    (each row a draw of ``n_subjects`` subjects with replacement; NumPy
    ``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_subjects, size=(n, n_subjects))
    W = np.zeros((n, n_subjects), np.int64)
    for b in range(n):
        W[b] = np.bincount(idx[b], minlength=n_subjects)
    return W


@dataclasses.dataclass(eq=False)
class BootstrapResult:
    """A nonparametric bootstrap of a FOCE-I fit.

    Attributes:
        table: DataFrame indexed by parameter: ``estimate`` (the original fit),
            ``boot_median``, ``boot_se`` (SD over the converged resamples), ``ci_lo``,
            ``ci_hi`` (percentile interval at ``level``), and the original ``se``
            (``MATRIX=R``).
        estimates: ``(B, P)`` natural-scale estimates of every resample (NaN where failed).
        phi: ``(B, P)`` their outer vectors; ofv: ``(B,)`` their objectives.
        counts: ``(B, N)`` how often each subject is in each resample.
        converged: ``(B,)`` Newton decrement below ``tol``; failed: ``(B,)`` non-finite.
        newton_decrement: ``(B,)``.
        n_failed, n_not_converged: counts; level: the CI level; seed.
        n_calls: batched objective evaluations (compiled calls per chunk);
        n_iter: BFGS iterations; wall_s: time.
    """

    table: pd.DataFrame
    estimates: np.ndarray
    phi: np.ndarray
    ofv: np.ndarray
    counts: np.ndarray
    converged: np.ndarray
    failed: np.ndarray
    newton_decrement: np.ndarray
    n_failed: int
    n_not_converged: int
    level: float
    seed: int
    n_calls: int
    n_iter: int
    wall_s: float
    labels: list

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])

    def summary(self) -> str:
        return (
            f"bootstrap: {self.n} resamples, {int(self.converged.sum())} converged, "
            f"{self.n_not_converged} not converged, {self.n_failed} failed; "
            f"{self.n_calls} batched evaluations, {self.wall_s:.1f} s\n" + self.table.to_string()
        )

    def __repr__(self) -> str:
        return f"BootstrapResult(B={self.n}, converged={int(self.converged.sum())})"


class _Batched:
    """Weighted objectives of ``B`` resamples, evaluated in chunks of ``batch``."""

    def __init__(self, prob: Problem, W: np.ndarray, batch: int):
        self.prob, self.W, self.batch = prob, W.astype(float), batch
        self.calls = 0

    def __call__(self, X, eta):
        """``(f (B,), G (B, P), eta (B, N, k))`` at ``X``; non-finite where failed."""
        B = X.shape[0]
        f = np.empty(B)
        G = np.empty(X.shape)
        etas = []
        for a in range(0, B, self.batch):
            b = min(B, a + self.batch)
            m = b - a
            Xc, ec = X[a:b], eta[a:b]
            if m < self.batch:  # pad with copies of the first row: one compiled shape
                pad = self.batch - m
                Xc = np.concatenate([Xc, np.repeat(Xc[:1], pad, 0)])
                ec = jnp.concatenate([ec, jnp.repeat(ec[:1], pad, 0)])
            v, g, e = self.prob.batched_terms(Xc, ec)
            self.calls += 1
            w = self.W[a:b]
            used = w > 0
            v, g = v[:m], g[:m]
            f[a:b] = np.sum(np.where(used, w * np.where(used, v, 0.0), 0.0), 1)
            f[a:b] = np.where(np.all(np.isfinite(v) | ~used, 1), f[a:b], np.inf)
            G[a:b] = np.einsum("bn,bnp->bp", w, np.where(used[..., None], g, 0.0))
            etas.append(e[:m])
        return f, G, jnp.concatenate(etas)


def bootstrap(
    fit,
    data=None,
    *,
    n: int = 200,
    seed: int = 0,
    level: float = 0.95,
    batch: int | None = None,
    max_iter: int = 60,
    tol: float = 1e-3,
    max_newton: int = 3,
    progress: bool = False,
    counts=None,
    censoring=None,
    lloq=None,
    dvid=None,
    output_column: str = "DVID",
    occasion_column: str | None = None,
) -> BootstrapResult:
    """Nonparametric (case) bootstrap of a FOCE-I fit, all resamples refitted together.

    Arguments:
        fit: a :class:`~twinjax.calibrate.PopulationFitResult`.
        data: the fit's data (``None``: the prepared data the fit keeps).
        n: number of resamples ``B``; seed: NumPy seed of the resampling.
        level: level of the percentile intervals.
        batch: resamples per compiled call (default: all ``n``; smaller bounds memory).
        max_iter: BFGS iterations; tol: Newton-decrement tolerance (OFV units, as
            ``fit_population``'s ``outer_tol``); max_newton: polishing Hessians.
        progress: show a rich progress bar.
        counts: ``(B, N)`` resample counts to use instead of drawing them (e.g.
            :func:`resample_counts`); each row must sum to ``N``.
        censoring, lloq, dvid, output_column: as given to ``fit_population``.
        occasion_column: a fit with inter-occasion variability: the data's occasion
            column (default: the one the fit read).

    Returns:
        A :class:`BootstrapResult`.

    Raises:
        ValueError: ``n < 2``, a level outside (0, 1), a batch size below 1, or counts of
            the wrong shape, negative or not summing to ``N``, before anything compiles.
    """
    import pandas as pd

    t0 = time.perf_counter()
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if counts is None and (int(n) != n or n < 2):
        raise ValueError(f"n must be an integer >= 2 (resamples), got {n!r}")
    if batch is not None and (int(batch) != batch or batch < 1):
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    N = int(fit.n_subjects)
    if counts is not None:
        W = np.asarray(counts)
        if W.ndim != 2 or W.shape[1] != N or W.shape[0] < 2:
            raise ValueError(f"counts must have shape (B >= 2, {N}), got {W.shape}")
        if np.any(W < 0) or np.any(W != np.round(W)):
            raise ValueError("counts must be non-negative integers")
        rows = np.flatnonzero(W.sum(1) != N)
        if rows.size:
            raise ValueError(f"counts row {int(rows[0])} sums to {W[rows[0]].sum()}, not N = {N}")
        W = W.astype(np.int64)
    else:
        W = resample_counts(N, int(n), seed)
    B = W.shape[0]
    prob = Problem.from_fit(
        fit,
        data,
        censoring=censoring,
        lloq=lloq,
        dvid=dvid,
        output_column=output_column,
        occasion_column=occasion_column,
    )
    P = prob.size
    evaluate = _Batched(prob, W, int(batch or B))

    cov_phi = np.asarray(fit.cov_phi, float)
    if cov_phi.shape == (P, P) and np.all(np.isfinite(cov_phi)):
        Hinv0 = 0.5 * cov_phi  # (OFV Hessian)^-1
    else:
        Hinv0 = np.linalg.inv(prob.hessian(prob.phi_hat))
    Hinv0 = 0.5 * (Hinv0 + Hinv0.T)
    X = np.repeat(prob.phi_hat[None], B, 0)
    eta = jnp.repeat(prob.eta_hat[None], B, 0)
    Hinv = np.repeat(Hinv0[None], B, 0)

    bar = task = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"bootstrap, {B} resamples", total=max_iter + max_newton + 1)

    def tick(note):
        if bar is not None:
            bar.update(task, advance=1, description=f"bootstrap, {B} resamples: {note}")

    try:
        f, G, eta = evaluate(X, eta)
        failed = ~np.isfinite(f)
        stalled = np.zeros(B, bool)
        n_iter = 0
        for _ in range(max_iter):
            dec = np.einsum("bp,bpq,bq->b", G, Hinv, G)
            active = ~failed & ~stalled & ~(dec < tol)
            if not active.any():
                break
            n_iter += 1
            step = -np.einsum("bpq,bq->bp", Hinv, G) * active[:, None]
            slope = np.einsum("bp,bp->b", G, step)
            t = np.ones(B)
            pending = active.copy()
            Xn, fn, Gn, etan = X.copy(), f.copy(), G.copy(), eta
            for _ls in range(10):
                trial = np.where(pending[:, None], X + t[:, None] * step, X)
                ft, Gt, et = evaluate(trial, eta)
                ok = (
                    pending
                    & np.isfinite(ft)
                    & np.all(np.isfinite(Gt), 1)
                    & (ft <= f + 1e-4 * t * slope)
                )
                Xn[ok], fn[ok], Gn[ok] = trial[ok], ft[ok], Gt[ok]
                etan = jnp.where(jnp.asarray(ok)[:, None, None], et, etan)
                pending &= ~ok
                if not pending.any():
                    break
                t = np.where(pending, 0.5 * t, t)
            stalled |= pending  # no decrease along the step: leave it to the Newton check
            s, yv = Xn - X, Gn - G
            sy = np.einsum("bp,bp->b", s, yv)
            upd = (sy > 1e-12) & ~pending & active
            for r in np.flatnonzero(upd):
                rho = 1.0 / sy[r]
                V = np.eye(P) - rho * np.outer(s[r], yv[r])
                Hinv[r] = V @ Hinv[r] @ V.T + rho * np.outer(s[r], s[r])
            X, f, G, eta = Xn, fn, Gn, etan
            tick(f"iteration {n_iter}, {int(active.sum())} active")

        # Newton polishing with the finite-difference Hessian of the exact gradients
        h = 1e-4
        dec = np.full(B, np.inf)
        for it in range(max_newton + 1):
            H = np.zeros((B, P, P))
            for j in range(P):
                e = np.zeros(P)
                e[j] = h
                gp = evaluate(X + e, eta)[1]
                gm = evaluate(X - e, eta)[1]
                H[:, :, j] = (gp - gm) / (2 * h)
            H = 0.5 * (H + np.swapaxes(H, 1, 2))
            step = np.zeros((B, P))
            dec = np.full(B, np.inf)
            for b in range(B):
                if failed[b] or not np.all(np.isfinite(H[b])):
                    continue
                try:
                    step[b] = -np.linalg.solve(H[b], G[b])
                except np.linalg.LinAlgError:
                    continue
                d = float(-G[b] @ step[b])
                dec[b] = d if d >= 0 else np.inf
            todo = ~failed & np.isfinite(dec) & (dec >= tol)
            tick(f"Newton check, {int(todo.sum())} to polish")
            if not todo.any() or it == max_newton:
                break
            slope = np.einsum("bp,bp->b", G, step)
            t = np.ones(B)
            pending = todo.copy()
            for _ls in range(4):
                trial = np.where(pending[:, None], X + t[:, None] * step, X)
                ft, Gt, et = evaluate(trial, eta)
                ok = pending & np.isfinite(ft) & (ft <= f + 1e-4 * t * slope)
                X[ok], f[ok], G[ok] = trial[ok], ft[ok], Gt[ok]
                eta = jnp.where(jnp.asarray(ok)[:, None, None], et, eta)
                pending &= ~ok
                if not pending.any():
                    break
                t = np.where(pending, 0.5 * t, t)
    finally:
        if bar is not None:
            bar.stop()

    failed = failed | ~np.isfinite(f)
    converged = ~failed & (dec < tol)
    nat = np.full((B, P), np.nan)
    for r in np.flatnonzero(~failed):
        nat[r] = prob.natural(X[r])
    good = nat[converged]
    a = (1 - level) / 2
    if good.shape[0] >= 2:
        q = np.quantile(good, [a, 0.5, 1 - a], axis=0)
        bse = np.std(good, axis=0, ddof=1)
    else:
        q = np.full((3, P), np.nan)
        bse = np.full(P, np.nan)
    est = prob.natural(prob.phi_hat)
    table = pd.DataFrame(
        dict(
            parameter=prob.labels,
            estimate=est,
            se=np.asarray(fit.estimates["se"], float),
            boot_median=q[1],
            boot_se=bse,
            ci_lo=q[0],
            ci_hi=q[2],
        )
    ).set_index("parameter")
    return BootstrapResult(
        table=table,
        estimates=nat,
        phi=np.where(failed[:, None], np.nan, X),
        ofv=np.where(failed, np.nan, f),
        counts=W,
        converged=converged,
        failed=failed,
        newton_decrement=dec,
        n_failed=int(failed.sum()),
        n_not_converged=int((~failed & ~converged).sum()),
        level=level,
        seed=seed,
        n_calls=evaluate.calls,
        n_iter=n_iter,
        wall_s=time.perf_counter() - t0,
        labels=prob.labels,
    )
