"""Global variance-based (Sobol') sensitivity: Saltelli sampling, the Saltelli 2010
first-order and Jansen total-effect estimators, bootstrap confidence intervals.

References:
    - Saltelli A, Annoni P, Azzini I, Campolongo F, Ratto M, Tarantola S. Variance
      based sensitivity analysis of model output. Design and estimator for the total
      sensitivity index. Comput Phys Commun 181:259-270, 2010 (the A, B, AB_i design;
      first-order estimator, their Table 2 (b); total effect, Table 2 (f)).
    - Jansen MJW. Analysis of variance designs for model output. Comput Phys Commun
      117:35-43, 1999 (the total-effect estimator).
    - Sobol' IM. Global sensitivity indices for nonlinear mathematical models and
      their Monte Carlo estimates. Math Comput Simul 55:271-280, 2001.
    - Ishigami T, Homma T. An importance quantification technique in uncertainty
      analysis for computer models. ISUMA 1990 (the test function).
"""

from __future__ import annotations

import dataclasses
import math
import time as _time
import warnings

import jax.numpy as jnp
import numpy as np
from scipy.stats import norm, qmc

from ..ode._model import default_float
from ..solve._simulate import simulate
from ._quantity import (
    check_bounds,
    check_target,
    endpoint_values,
    is_model,
    is_power_of_two,
    model_outputs,
    params_dict,
    quantity_spec,
)


def saltelli_sample(bounds, n: int, *, seed: int = 0, scramble: bool = True) -> np.ndarray:
    """The Saltelli design of ``n`` base samples for ``k = len(bounds)`` parameters.

    A scrambled Sobol' sequence of dimension ``2k`` (``scipy.stats.qmc.Sobol``) gives
    ``n`` points; its first ``k`` columns are matrix ``A``, the last ``k`` matrix
    ``B``, and ``AB_i`` is ``A`` with column ``i`` taken from ``B``. Each column is
    scaled to its ``(lower, upper)`` (uniform distributions).

    Returns:
        ``(n (k + 2), k)`` samples in block order ``[A; AB_1; ...; AB_k; B]`` (row
        ``j n + i`` is base sample ``i`` of block ``j``), columns in the order of
        ``bounds``. SALib's ``sobol.sample(..., calc_second_order=False)`` draws the
        same points with the same seed, interleaved by base sample instead
        (``A_i, AB_1i, ..., AB_ki, B_i``).
    """
    b = check_bounds(bounds, None, "saltelli_sample")
    if not is_power_of_two(n) or n < 2:
        raise ValueError(
            f"saltelli_sample: n = {n!r} base samples; it must be a power of two >= 2 (the "
            "balance properties of Sobol' points need it), e.g. "
            f"{_next_pow2(n) if isinstance(n, int) and n > 0 else 1024}"
        )
    k = len(b)
    base = qmc.Sobol(d=2 * k, scramble=scramble, rng=seed).random(n)
    A, B = base[:, :k], base[:, k:]
    blocks = [A]
    for i in range(k):
        ab = A.copy()
        ab[:, i] = B[:, i]
        blocks.append(ab)
    blocks.append(B)
    X = np.concatenate(blocks, axis=0)
    lo = np.array([v[0] for v in b.values()])
    hi = np.array([v[1] for v in b.values()])
    return lo + X * (hi - lo)


def _next_pow2(n: int) -> int:
    return 1 << max(1, math.ceil(math.log2(n)))


def _estimate(A, AB, B):
    """First-order (Saltelli 2010) and total (Jansen 1999) indices.

    ``A, B``: ``(n, ...)``; ``AB``: ``(k, n, ...)``; the variance is that of the
    ``2n`` outputs of ``A`` and ``B`` (population variance, as SALib)."""
    var = np.var(np.concatenate([A, B], axis=0), axis=0)
    s1 = np.mean(B[None] * (AB - A[None]), axis=1) / var
    st = 0.5 * np.mean((A[None] - AB) ** 2, axis=1) / var
    return s1, st


def sobol_indices(
    y,
    k: int,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """First-order and total Sobol' indices from outputs on a Saltelli design.

    Arguments:
        y: ``(n (k + 2),)`` outputs in the block order of :func:`saltelli_sample`.
        k: the number of parameters.
        n_bootstrap: bootstrap resamples of the ``n`` base samples (0: none).
        confidence: level of the intervals.
        seed: seed of the bootstrap's ``numpy.random.default_rng(seed)``.

    Returns:
        ``{"S1", "ST": (k,), "S1_conf", "ST_conf": (k,) half-widths z * bootstrap SD,
        "S1_ci", "ST_ci": (k, 2) percentile bootstrap intervals}``.

    The outputs are centred on their mean first (the estimators are exact in
    expectation either way; centring lowers their variance), as SALib does. The
    resampling indices are ``default_rng(seed).integers(n, size=(n, n_bootstrap))``,
    the same draw as SALib's ``sobol.analyze(..., seed=seed)``.
    """
    y = np.asarray(y, np.float64)
    if y.ndim != 1 or k < 1 or y.shape[0] % (k + 2):
        raise ValueError(f"sobol_indices: y must be (n (k + 2),) for k = {k}; got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("sobol_indices: y has non-finite values; drop their base samples first")
    if not (isinstance(n_bootstrap, (int, np.integer)) and n_bootstrap >= 0):
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = y.shape[0] // (k + 2)
    Y = (y - y.mean()).reshape(k + 2, n)
    A, AB, B = Y[0], Y[1 : k + 1], Y[k + 1]
    if np.ptp(np.concatenate([A, B])) == 0.0:
        raise ValueError(
            "sobol_indices: the output does not vary over the samples (zero variance); "
            "Sobol' indices are undefined"
        )
    s1, st = _estimate(A, AB, B)
    out = {"S1": s1, "ST": st}
    nanpair = np.full((k, 2), np.nan)
    if n_bootstrap == 0:
        out.update(S1_conf=np.full(k, np.nan), ST_conf=np.full(k, np.nan))
        out.update(S1_ci=nanpair, ST_ci=nanpair.copy())
        return out
    idx = np.random.default_rng(seed).integers(n, size=(n, n_bootstrap))
    bs1 = np.empty((n_bootstrap, k))
    bst = np.empty((n_bootstrap, k))
    step = max(1, int(2**22 // max(n * (k + 2), 1)))  # bounded memory per block
    for c0 in range(0, n_bootstrap, step):
        r = idx[:, c0 : c0 + step]  # (n, m)
        s1b, stb = _estimate(A[r], AB[:, r], B[r])  # (k, m)
        bs1[c0 : c0 + r.shape[1]] = s1b.T
        bst[c0 : c0 + r.shape[1]] = stb.T
    z = norm.ppf(0.5 + confidence / 2)
    a = 100 * (1 - confidence) / 2
    out["S1_conf"] = z * bs1.std(axis=0, ddof=1) if n_bootstrap > 1 else np.full(k, np.nan)
    out["ST_conf"] = z * bst.std(axis=0, ddof=1) if n_bootstrap > 1 else np.full(k, np.nan)
    out["S1_ci"] = np.percentile(bs1, [a, 100 - a], axis=0).T
    out["ST_ci"] = np.percentile(bst, [a, 100 - a], axis=0).T
    return out


@dataclasses.dataclass(frozen=True)
class SobolResult:
    """First-order and total Sobol' indices of one quantity.

    Attributes:
        quantity: the endpoint or function analysed.
        parameters: the parameter names (in the order of ``bounds``).
        bounds: ``{name: (lower, upper)}`` of the uniform distributions sampled.
        n: base samples; the model ran on ``n (k + 2)`` samples.
        S1, ST: ``(k,)`` first-order (Saltelli 2010) and total (Jansen 1999) indices.
        S1_conf, ST_conf: ``(k,)`` half-widths ``z * bootstrap SD`` (as SALib's).
        S1_ci, ST_ci: ``(k, 2)`` percentile bootstrap intervals.
        confidence, n_bootstrap, seed: of the sampling and the bootstrap.
        samples: ``(n (k + 2), k)`` the design (block order, see
            :func:`saltelli_sample`); y: ``(n (k + 2),)`` the quantity on it (NaN
            where a simulation failed).
        n_dropped: base samples left out because one of their ``k + 2`` runs failed.
        seconds: ``{"sample", "evaluate", "analyse"}`` wall times (``evaluate``
            includes compilation).
    """

    quantity: str
    parameters: tuple[str, ...]
    bounds: dict
    n: int
    S1: np.ndarray
    ST: np.ndarray
    S1_conf: np.ndarray
    ST_conf: np.ndarray
    S1_ci: np.ndarray
    ST_ci: np.ndarray
    confidence: float
    n_bootstrap: int
    seed: int
    samples: np.ndarray
    y: np.ndarray
    n_dropped: int
    seconds: dict

    def to_frame(self):
        """One row per parameter: ``S1, S1_conf, S1_low, S1_high, ST, ST_conf,
        ST_low, ST_high``."""
        import pandas as pd

        return pd.DataFrame(
            {
                "S1": self.S1,
                "S1_conf": self.S1_conf,
                "S1_low": self.S1_ci[:, 0],
                "S1_high": self.S1_ci[:, 1],
                "ST": self.ST,
                "ST_conf": self.ST_conf,
                "ST_low": self.ST_ci[:, 0],
                "ST_high": self.ST_ci[:, 1],
            },
            index=pd.Index(self.parameters, name="parameter"),
        )

    def salib_order(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` in the row order of SALib's ``sobol.sample(...,
        calc_second_order=False)``, for ``SALib.analyze.sobol.analyze(problem, y,
        calc_second_order=False)`` (failed runs included as NaN)."""
        k = len(self.parameters)
        X = self.samples.reshape(k + 2, self.n, k).transpose(1, 0, 2).reshape(-1, k)
        y = self.y.reshape(k + 2, self.n).T.reshape(-1)
        return X, y

    def plot(self, ax=None):
        """Bars of the first-order and total indices per parameter with their
        percentile bootstrap intervals. Returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        k = len(self.parameters)
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.9 * k + 2), 3.5))
        x = np.arange(k)
        w = 0.38
        for off, s, ci, label, colour in (
            (-w / 2, self.S1, self.S1_ci, "first order $S_1$", "tab:blue"),
            (w / 2, self.ST, self.ST_ci, "total $S_T$", "tab:orange"),
        ):
            err = None
            if np.all(np.isfinite(ci)):
                err = np.abs(np.stack([s - ci[:, 0], ci[:, 1] - s]))
            ax.bar(x + off, s, w, yerr=err, capsize=3, label=label, color=colour)
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xticks(x, list(self.parameters))
        ax.set_ylabel("Sobol' index")
        pct = f"{100 * self.confidence:g} % bootstrap CI" if self.n_bootstrap else "no CI"
        ax.set_title(
            f"Sobol' indices of {self.quantity} (N = {self.n} x {k + 2} runs; {pct})",
            fontsize=10,
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return ax


def sobol(
    model,
    bounds,
    params=None,
    regimen=None,
    times=None,
    *,
    endpoint=None,
    n: int = 1024,
    seed: int = 0,
    scramble: bool = True,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    solver=None,
    dtype=None,
) -> SobolResult:
    """Global Sobol' sensitivity indices of an endpoint, the model run as one cohort.

    The ``n (k + 2)`` samples of the Saltelli design (:func:`saltelli_sample`) are
    simulated in one batched :func:`twinjax.simulate` call (one compiled program),
    the endpoint is computed per sample, and :func:`sobol_indices` gives the
    first-order (Saltelli et al. 2010) and total (Jansen 1999) indices with
    bootstrap intervals.

    Arguments:
        model: a twinjax ``Model``, or a vectorised function ``f(params) -> (M,)`` of
            a dict of ``(M,)`` parameter arrays (e.g. a test function).
        bounds: ``{name: (lower, upper)}``: the parameters varied, each uniform on
            its interval (inside the parameter's admissible range for a Model).
        params: fixed values (scalars) of other parameters (defaults otherwise).
        regimen, times: as for :func:`twinjax.simulate` (a Model only).
        endpoint: a :class:`twinjax.trial.Endpoint` (any kind; computed as the trial
            computes it) or ``fn(times, outputs) -> (M,)``: one number per sample.
        n: base samples, a power of two (>= 2).
        seed: seed of the Sobol' scrambling and of the bootstrap.
        scramble: scramble the Sobol' sequence (recommended).
        n_bootstrap, confidence: bootstrap resamples and interval level.
        solver, dtype: as for :func:`twinjax.simulate` (default ``solvers.Diffrax()``;
            for large designs of a non-stiff model ``solvers.Ensemble()`` is much
            faster on CPU, see ``docs/sensitivity.md``).

    Returns:
        A :class:`SobolResult` (``.to_frame()``, ``.plot()``).

    Raises:
        ValueError: before any simulation, for unknown parameter names, bounds with
            lower >= upper or outside the parameter's range, ``n`` not a power of two,
            a missing or unknown endpoint, or batched ``params``.

    A sample whose simulation fails (non-zero status, NaN endpoint) takes its whole
    base sample (its ``k + 2`` runs) out of the estimate, with a warning.
    """
    where = "sensitivity.sobol"
    check_target(model, where)
    b = check_bounds(bounds, model, where)
    if not is_power_of_two(n) or n < 2:
        hint = _next_pow2(n) if isinstance(n, (int, np.integer)) and n > 0 else 1024
        raise ValueError(
            f"{where}: n = {n!r} base samples; it must be a power of two >= 2 (the balance "
            f"properties of Sobol' points need it), e.g. {hint}"
        )
    if not (isinstance(n_bootstrap, (int, np.integer)) and n_bootstrap >= 0):
        raise ValueError(f"{where}: n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{where}: confidence must be in (0, 1), got {confidence!r}")
    p = params_dict(params)
    overlap = [k for k in p if k in b]
    if overlap:
        raise ValueError(f"{where}: {overlap} are both in bounds (varied) and in params (fixed)")
    if is_model(model) and endpoint is None:
        raise ValueError(
            f"{where}: say what to analyse: endpoint= (a twinjax.trial.Endpoint, e.g. "
            "Endpoint('auc', 'auc', output='C'), or fn(times, outputs) -> (M,)); Sobol' "
            "indices are of one number per sample"
        )
    name, ts, ep, _ = quantity_spec(model, times, None, endpoint, where, differentiable=False)
    dtype = dtype or default_float()
    if is_model(model):
        full, nfix = model.complete(p, dtype=dtype, check=True)
        if nfix is not None:
            raise ValueError(
                f"{where}: params must be scalars (the values held fixed); the samples of the "
                "Sobol' design are the cohort"
            )
    else:
        full = {k: jnp.asarray(v, dtype) for k, v in p.items()}
        bad = [k for k, v in full.items() if v.ndim]
        if bad:
            raise ValueError(f"{where}: params {bad} must be scalars (the values held fixed)")

    names = tuple(b)
    k = len(names)
    t0 = _time.perf_counter()
    X = saltelli_sample(b, n, seed=seed, scramble=scramble)
    t1 = _time.perf_counter()
    M = X.shape[0]
    q = {key: jnp.broadcast_to(v, (M,)) for key, v in full.items()}
    for j, key in enumerate(names):
        q[key] = jnp.asarray(X[:, j], dtype)
    if is_model(model):
        r = simulate(model, q, regimen, times, solver=solver, dtype=dtype)
        outs = {key: np.asarray(v) for key, v in model_outputs(r).items()}
        status = np.asarray(r.status)
        y = np.asarray(endpoint_values(ep, ts, outs, xp=np), np.float64)
    else:
        y = np.asarray(model(q), np.float64)
        status = np.zeros(M, np.int32)
    t2 = _time.perf_counter()
    if y.shape != (M,):
        raise ValueError(f"{where}: {name} gave shape {y.shape}; need one number per sample ({M},)")
    y = np.where(status == 0, y, np.nan)
    good = np.all(np.isfinite(y.reshape(k + 2, n)), axis=0)  # (n,) base samples kept
    n_dropped = int(n - good.sum())
    if good.sum() < 2:
        raise RuntimeError(
            f"{where}: only {int(good.sum())} of {n} base samples ran without failure; "
            "no estimate is possible"
        )
    if n_dropped:
        warnings.warn(
            f"{where}: {n_dropped} of {n} base samples had a failed run (status or non-finite "
            f"{name}) and were left out of the estimate",
            RuntimeWarning,
            stacklevel=2,
        )
    yk = y.reshape(k + 2, n)[:, good].reshape(-1)
    est = sobol_indices(yk, k, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    t3 = _time.perf_counter()
    return SobolResult(
        quantity=name,
        parameters=names,
        bounds=b,
        n=n,
        S1=est["S1"],
        ST=est["ST"],
        S1_conf=est["S1_conf"],
        ST_conf=est["ST_conf"],
        S1_ci=est["S1_ci"],
        ST_ci=est["ST_ci"],
        confidence=confidence,
        n_bootstrap=int(n_bootstrap),
        seed=seed,
        samples=X,
        y=y,
        n_dropped=n_dropped,
        seconds={"sample": t1 - t0, "evaluate": t2 - t1, "analyse": t3 - t2},
    )
