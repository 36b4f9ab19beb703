"""Plausibility constraints and virtual-population (VPop) selection.

A *plausible population* is a set of virtual patients whose outputs lie inside
physiological bounds (:func:`plausible`). A *virtual population* is a subset of it whose
output distribution matches observed data (:func:`select_vpop`), chosen by the
acceptance-rejection method of Allen, Rieger & Musante (2016).

References:
    - Allen RJ, Rieger TR, Musante CJ. Efficient generation and selection of virtual
      populations in quantitative systems pharmacology models. CPT Pharmacometrics Syst
      Pharmacol 5:140-146, 2016.
    - Scott DW. Multivariate Density Estimation. Wiley, 1992 (Gaussian KDE bandwidth).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ._demographics import float64_draws

__all__ = ["VPopResult", "plausible", "select_vpop"]


def plausible(values: Mapping[str, object], bounds: Mapping[str, tuple]) -> np.ndarray:
    """Boolean mask of the patients whose values all lie inside closed bounds.

    Arguments:
        values: ``{name: (N,) array}`` (parameters or simulated outputs) or a DataFrame.
        bounds: ``{name: (low, high)}``; ``None`` (or an infinite value) for an open
            side. Non-finite values (NaN, inf from a failed simulation) are implausible.

    Returns:
        An ``(N,)`` numpy boolean array, True where the patient is plausible.

    Raises:
        KeyError: if a bounded name is not in ``values``.
        ValueError: for ``low > high``, bounds that are not pairs, or arrays of
            different lengths.
    """
    if not bounds:
        raise ValueError("plausible: no bounds given")
    mask = None
    for name, b in bounds.items():
        if name not in values:
            raise KeyError(f"plausible: no values for {name!r}; available: {list(values.keys())}")
        try:
            lo, hi = b
        except (TypeError, ValueError):
            raise ValueError(
                f"plausible: bounds of {name!r} must be (low, high), got {b!r}"
            ) from None
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        if lo > hi:
            raise ValueError(f"plausible: bounds of {name!r} are empty: low {lo} > high {hi}")
        v = np.asarray(values[name], dtype=np.float64)
        if v.ndim != 1:
            raise ValueError(f"plausible: {name!r} has shape {v.shape}; need (N,)")
        ok = np.isfinite(v) & (v >= lo) & (v <= hi)
        if mask is not None and ok.shape != mask.shape:
            raise ValueError(f"plausible: {name!r} has {v.shape[0]} values, others {mask.shape[0]}")
        mask = ok if mask is None else mask & ok
    assert mask is not None  # bounds is non-empty
    return mask


@dataclasses.dataclass(frozen=True)
class VPopResult:
    """The result of :func:`select_vpop`.

    Attributes:
        indices: positions (into the arrays given to :func:`select_vpop`) of the selected
            virtual patients, ascending.
        ks: ``{output: Kolmogorov-Smirnov statistic}`` of the selected VPop against the
            target.
        pvalues: ``{output: KS p-value}`` of the selected VPop.
        ks_plausible: ``{output: KS statistic}`` of the whole (plausible) population, for
            comparison.
        scale: the scaling factor ``sf`` of the inclusion probability
            ``min(1, sf * target_pdf / plausible_pdf)``.
        probability: ``(N,)`` inclusion probabilities at that scale (0 outside ``mask``).
        n_plausible: the number of candidates (plausible patients).
    """

    indices: np.ndarray
    ks: dict
    pvalues: dict
    ks_plausible: dict
    scale: float
    probability: np.ndarray
    n_plausible: int

    @property
    def n_selected(self) -> int:
        return int(self.indices.size)

    @property
    def mask(self) -> np.ndarray:
        """Boolean ``(N,)`` mask of the selected patients."""
        m = np.zeros(self.probability.shape, bool)
        m[self.indices] = True
        return m

    def summary(self):
        """A pandas DataFrame: per output, KS statistic and p-value of the VPop and the
        KS statistic of the plausible population."""
        import pandas as pd

        return pd.DataFrame(
            {
                "ks": self.ks,
                "pvalue": self.pvalues,
                "ks_plausible": self.ks_plausible,
            }
        ).rename_axis("output")

    def __repr__(self) -> str:
        ks = ", ".join(f"{k}={v:.3f}" for k, v in self.ks.items())
        return (
            f"VPopResult(n_selected={self.n_selected} of {self.n_plausible}, "
            f"scale={self.scale:.4g}, ks: {ks})"
        )


class _Target:
    """A marginal target: a frozen scipy distribution or an empirical sample."""

    def __init__(self, name, spec):
        self.name = name
        if hasattr(spec, "cdf") and hasattr(spec, "logpdf"):
            self.dist = spec
            self.sample = None
        else:
            x = np.asarray(spec, dtype=np.float64)
            if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)):
                raise ValueError(
                    f"select_vpop: target of {name!r} must be a frozen scipy distribution or "
                    "a 1-D sample of finite values (at least 2)"
                )
            self.dist = None
            self.sample = x

    def ks(self, x):
        from scipy import stats

        if self.dist is not None:
            r = stats.kstest(x, self.dist.cdf)
        else:
            r = stats.ks_2samp(x, self.sample)
        return float(r.statistic), float(r.pvalue)

    def ks_fast(self, x_sorted, cdf):
        """``(KS statistic, p-value)`` for the scale search; ``cdf`` = target CDF at
        ``x_sorted`` (distributions) or None (samples). p-values: exact one-sample
        (``kstwo``), asymptotic two-sample (``kstwobign``)."""
        from scipy import stats

        n = x_sorted.size
        if self.dist is not None:
            i = np.arange(1, n + 1)
            d = float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))
            return d, float(stats.kstwo.sf(d, n))
        s = self.sample_sorted
        grid = np.concatenate([x_sorted, s])
        cdf_x = np.searchsorted(x_sorted, grid, side="right") / n
        cdf_s = np.searchsorted(s, grid, side="right") / s.size
        d = float(np.max(np.abs(cdf_x - cdf_s)))
        en = math.sqrt(n * s.size / (n + s.size))
        return d, float(stats.kstwobign.sf(d * en))

    @property
    def sample_sorted(self):
        if not hasattr(self, "_sorted"):
            self._sorted = np.sort(self.sample)
        return self._sorted

    def logpdf(self, x):
        if self.dist is not None:
            return np.asarray(self.dist.logpdf(x), np.float64)
        from scipy import stats

        return np.asarray(stats.gaussian_kde(self.sample).logpdf(x), np.float64)


def select_vpop(
    key,
    outputs: Mapping[str, object],
    target,
    n_select: int | None = None,
    *,
    mask=None,
    density: str = "kde",
    kde_points: int = 5000,
    min_select: int = 30,
    n_grid: int = 64,
    alpha: float = 0.05,
) -> VPopResult:
    """Select a virtual population matching target distributions (Allen et al. 2016).

    Each candidate (plausible) patient ``i`` with outputs ``x_i`` is included with
    probability ``p_i = min(1, sf * f_target(x_i) / f_plausible(x_i))``, where
    ``f_plausible`` is the density of the plausible population (a Gaussian KDE, Scott's
    bandwidth, or a multivariate normal fit) and ``f_target`` the target (data)
    density. A patient is included when its uniform draw ``u_i < p_i``, that is when
    ``sf >= u_i * f_plausible(x_i) / f_target(x_i) =: t_i``: the VPop of size ``k`` is
    the ``k`` smallest thresholds ``t_i`` and ``sf = t_(k)``. The scale factor is then

    - with ``n_select``: the one that gives exactly ``n_select`` patients;
    - otherwise: a 1-D search over ``n_grid`` VPop sizes (thresholds), spaced
      geometrically from ``min_select`` to the number of candidates: among the sizes
      whose KS test against the target passes at level ``alpha`` for every output, the
      one with the smallest mean KS statistic (if none passes, the one with the largest
      smallest p-value). Small VPops are noisy, large ones drift back to the plausible
      distribution once ``p_i`` saturates at 1 or the density estimate's errors add
      up; this keeps the largest-accuracy VPop that the data cannot tell from the
      target. (Allen et al. 2016 likewise choose ``sf`` to optimise the goodness of
      fit; the exact criterion here is twinjax's.)

    Arguments:
        key: a JAX PRNG key (for the uniform draws; the same key gives the same VPop).
        outputs: ``{name: (N,) array}`` or a DataFrame of the candidates' outputs.
        target: the target distribution: a dict ``{name: spec}`` with, per output, a
            frozen scipy distribution (``scipy.stats.norm(10, 2)``) or a 1-D sample of
            observations (empirical, KDE density); the joint target density is the
            product of the marginals. Or a DataFrame of joint observations (columns =
            outputs): the joint density is then a multivariate normal fit of the data,
            as in Allen et al. (2016), which keeps the correlations.
        n_select: the number of virtual patients wanted (``None``: optimise the fit).
        mask: optional ``(N,)`` boolean mask of the candidates (e.g. :func:`plausible`);
            the returned indices still refer to the full arrays.
        density: ``"kde"`` or ``"normal"``, the estimate of the plausible density.
        kde_points: at most this many candidates (a random subset) build the KDE.
        min_select: the smallest VPop the search considers.
        n_grid: number of VPop sizes tried by the search.
        alpha: the KS significance level the search requires of every output.

    Returns:
        A :class:`VPopResult` with the selected indices, KS statistics and p-values per
        output, the KS statistics of the unselected candidates, and the scale factor.

    Raises:
        ValueError: unknown outputs in the target, arrays of different lengths,
            non-finite outputs among the candidates, too few candidates, an
            ``n_select`` larger than the candidates, or a degenerate (zero-variance)
            output.
    """
    import pandas as pd
    from scipy import stats

    if density not in ("kde", "normal"):
        raise ValueError(f"select_vpop: density must be 'kde' or 'normal', got {density!r}")
    joint = isinstance(target, pd.DataFrame)
    names = list(target.columns) if joint else list(target)
    if not names:
        raise ValueError("select_vpop: empty target")
    missing = [k for k in names if k not in outputs]
    if missing:
        raise ValueError(
            f"select_vpop: target names {missing} are not outputs; available: "
            f"{list(outputs.keys())}"
        )
    cols = [np.asarray(outputs[k], np.float64) for k in names]
    n_all = cols[0].shape[0]
    for k, c in zip(names, cols, strict=True):
        if c.shape != (n_all,):
            raise ValueError(f"select_vpop: output {k!r} has shape {c.shape}, need ({n_all},)")
    X_all = np.stack(cols, axis=1)
    cand = np.ones(n_all, bool) if mask is None else np.asarray(mask, bool)
    if cand.shape != (n_all,):
        raise ValueError(f"select_vpop: mask has shape {cand.shape}, need ({n_all},)")
    pos = np.flatnonzero(cand)
    X = X_all[pos]
    n = X.shape[0]
    d = X.shape[1]
    if not np.all(np.isfinite(X)):
        bad = [names[j] for j in range(d) if not np.all(np.isfinite(X[:, j]))]
        raise ValueError(
            f"select_vpop: non-finite candidate outputs {bad}; filter them with plausible()"
        )
    if n < max(2 * d + 2, 10):
        raise ValueError(f"select_vpop: only {n} candidates; need at least {max(2 * d + 2, 10)}")
    if n_select is not None and not 1 <= int(n_select) <= n:
        raise ValueError(f"select_vpop: n_select = {n_select} must lie in [1, {n}] (candidates)")
    sd = X.std(axis=0)
    if np.any(sd == 0):
        raise ValueError(
            f"select_vpop: outputs {[names[j] for j in np.flatnonzero(sd == 0)]} are constant "
            "among the candidates; their density cannot be estimated"
        )

    k_u, k_sub = jax.random.split(key)

    # ---- target log density and marginal targets
    if joint:
        data = target[names].to_numpy(np.float64)
        if data.shape[0] < d + 2 or not np.all(np.isfinite(data)):
            raise ValueError("select_vpop: joint target needs > n_outputs + 1 finite rows")
        mvn = stats.multivariate_normal(
            data.mean(axis=0), np.cov(data, rowvar=False), allow_singular=True
        )
        log_t = np.atleast_1d(mvn.logpdf(X))
        marg = [_Target(k, data[:, j]) for j, k in enumerate(names)]
    else:
        marg = [_Target(k, target[k]) for k in names]
        log_t = np.zeros(n)
        for j, t in enumerate(marg):
            log_t = log_t + t.logpdf(X[:, j])

    # ---- plausible-population log density
    if density == "kde":
        if n > kde_points:
            with float64_draws():  # the same subset in float32 and float64 programs
                sub = np.asarray(jax.random.choice(k_sub, n, (kde_points,), replace=False))
            fit = X[np.sort(sub)]
        else:
            fit = X
        log_p = np.asarray(stats.gaussian_kde(fit.T).logpdf(X.T), np.float64)
    else:
        mvn_p = stats.multivariate_normal(
            X.mean(axis=0), np.cov(X, rowvar=False), allow_singular=True
        )
        log_p = np.atleast_1d(mvn_p.logpdf(X))

    # ---- thresholds: i is selected at scale sf iff sf >= t_i = u_i * f_p / f_t
    with float64_draws():  # the same draws in float32 and float64 programs
        u = np.asarray(jax.random.uniform(k_u, (n_all,), jnp.float64))[pos]
    u = np.clip(u.astype(np.float64), np.finfo(np.float64).tiny, None)
    log_ratio = log_t - log_p
    log_ratio = np.where(np.isfinite(log_ratio), log_ratio, -np.inf)
    with np.errstate(divide="ignore"):
        log_thr = np.log(u) - log_ratio  # +inf where the target density is 0
    order = np.argsort(log_thr, kind="stable")
    n_finite = int(np.sum(np.isfinite(log_thr)))
    if n_finite == 0:
        raise ValueError("select_vpop: the target density is 0 at every candidate")

    # ---- choose the VPop size
    if n_select is not None:
        k_best = int(n_select)
        if k_best > n_finite:
            raise ValueError(
                f"select_vpop: only {n_finite} candidates have a positive target density; "
                f"cannot select {k_best}"
            )
    else:
        lo = min(max(int(min_select), 2), n_finite)
        sizes = np.unique(np.geomspace(lo, n_finite, num=max(int(n_grid), 2)).astype(int))
        scores = []
        for k in sizes:
            sel = order[:k]
            ds, ps = [], []
            for j, t in enumerate(marg):
                xs = np.sort(X[sel, j])
                dj, pj = t.ks_fast(xs, t.dist.cdf(xs) if t.dist is not None else None)
                ds.append(dj)
                ps.append(pj)
            scores.append((float(np.mean(ds)), min(ps), int(k)))
        ok = [sc for sc in scores if sc[1] >= alpha]
        if ok:
            k_best = min(ok, key=lambda sc: (sc[0], -sc[2]))[2]
        else:
            k_best = max(scores, key=lambda sc: (sc[1], sc[2]))[2]

    sel = np.sort(order[:k_best])
    log_sf = float(log_thr[order[k_best - 1]])
    prob_c = np.exp(np.minimum(0.0, log_sf + log_ratio))
    prob = np.zeros(n_all)
    prob[pos] = prob_c

    ks, pv, ks0 = {}, {}, {}
    for j, t in enumerate(marg):
        ks[t.name], pv[t.name] = t.ks(X[sel, j])
        ks0[t.name] = t.ks(X[:, j])[0]
    return VPopResult(
        indices=pos[sel],
        ks=ks,
        pvalues=pv,
        ks_plausible=ks0,
        scale=float(np.exp(log_sf)),
        probability=prob,
        n_plausible=n,
    )
