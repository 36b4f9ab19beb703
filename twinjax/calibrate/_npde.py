"""Normalised prediction distribution errors (NPDE).

For every observation ``y_ij`` the fitted model's predictive distribution is simulated
(``K`` replicates of the whole dataset in one batched simulation: new etas, same design,
residual error). Then, per subject ``i`` (Brendel et al. 2006; Comets et al. 2008):

- ``E_i`` and ``V_i``: the empirical mean and covariance of the simulated observations
  of subject ``i`` over the ``K`` replicates;
- decorrelation with the Cholesky factor ``V_i = L L'``: ``y*_i = L^-1 (y_i - E_i)`` and
  the same for every simulated vector;
- ``pde_ij = (1/K) #{k: y*_sim_ijk < y*_ij}``, with 0 replaced by ``1/(2K)`` and 1 by
  ``1 - 1/(2K)`` (the npde package's rule), and ``npde_ij = Phi^-1(pde_ij)``.

Under the model the npde are independent ``N(0, 1)``; the test of that is the npde
package's: Wilcoxon signed-rank (mean 0), Fisher's variance test (variance 1),
Shapiro-Wilk (normality), and a global p-value, Bonferroni over the three.

``pd`` (prediction discrepancies) are the same without decorrelation.

Censored records (BLQ): ``censored="omit"`` (default) leaves them out (NaN, and out of
the decorrelation); ``censored="cdf"`` imputes them as the npde package does (Nguyen,
Comets, Mentre 2012): ``pd_LOQ = P(y_sim < LLOQ)`` from the simulations, a ``pd`` drawn
uniformly in ``(0, pd_LOQ)``, and the observation replaced by the simulated
distribution's quantile at that ``pd``; the simulated values below the LLOQ are imputed
the same way (so that observations and simulations share the imputation's correlation
structure), then both are decorrelated.

References:
    - Brendel K, Comets E, Laffont C, Laveille C, Mentre F. Metrics for external model
      evaluation with an application to the population pharmacokinetics of
      gliclazide. Pharm Res 23:2036-2049, 2006.
    - Comets E, Brendel K, Mentre F. Computing normalised prediction distribution errors
      to evaluate nonlinear mixed-effect models: the npde add-on package for R. Comput
      Methods Programs Biomed 90:154-166, 2008.
    - Nguyen THT, Comets E, Mentre F. Extension of NPDE for evaluation of nonlinear
      mixed effect models in presence of data below the quantification limit with
      applications to HIV dynamic model. J Pharmacokinet Pharmacodyn 39:499-518, 2012.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["NpdeResult", "npde", "npde_from_simulations", "npde_test"]

CENSORED_METHODS = ("omit", "cdf")


@dataclasses.dataclass(eq=False)
class NpdeResult:
    """NPDE of a dataset under a fitted model.

    Attributes:
        npde: ``(N, T)`` normalised prediction distribution errors (NaN where there is
            no observation, a censored record under ``"omit"``, or a subject whose
            simulated covariance is singular).
        pde: ``(N, T)`` the prediction distribution errors (in ``(0, 1)``).
        pd: ``(N, T)`` prediction discrepancies (no decorrelation).
        times, dv, mask, pred: ``(N, T)`` the observations (``dv`` imputed on censored
            records under ``"cdf"``) and population predictions, for plots.
        ids: subject IDs.
        n_sim: number of simulated replicates.
        censored: ``"omit"`` or ``"cdf"``; n_censored: censored records.
        test: :func:`npde_test` of the finite npde.
    """

    npde: np.ndarray
    pde: np.ndarray
    pd: np.ndarray
    times: np.ndarray
    dv: np.ndarray
    mask: np.ndarray
    pred: np.ndarray | None
    ids: list
    n_sim: int
    censored: str
    n_censored: int
    test: dict

    def to_dataframe(self):
        """A long table: ID, TIME, DV, PD, PDE, NPDE for every used record."""
        import pandas as pd

        rows = np.nonzero(self.mask)
        return pd.DataFrame(
            dict(
                ID=np.asarray(self.ids, dtype=object)[rows[0]],
                TIME=self.times[rows],
                DV=self.dv[rows],
                PD=self.pd[rows],
                PDE=self.pde[rows],
                NPDE=self.npde[rows],
            )
        )


def _edges(p: np.ndarray, K: int) -> np.ndarray:
    """The npde package's rule: 0 -> 1/(2K), 1 -> 1 - 1/(2K)."""
    return np.clip(p, 1.0 / (2 * K), 1.0 - 1.0 / (2 * K))


def npde_from_simulations(
    obs,
    sims,
    mask,
    *,
    censored=None,
    method: str = "omit",
    lloq=None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NPDE from observations and simulated replicates (numpy; no model needed).

    Arguments:
        obs: ``(N, T)`` observations (for a censored record: its LLOQ).
        sims: ``(K, N, T)`` simulated observations of the same records under the model.
        mask: ``(N, T)`` bool, the records to evaluate.
        censored: ``(N, T)`` bool, records below their LLOQ (``obs``) (default none).
        method: ``"omit"`` or ``"cdf"`` for censored records (see the module doc).
        lloq: ``(N, T)`` (or a scalar) LLOQ of every record, NaN where none, used by
            ``"cdf"`` to impute the simulated values below it as well (the npde
            package's rule, which keeps observations and simulations alike); default:
            the censored records' ``obs``.
        seed: seed of the uniform draws of ``"cdf"``.

    Returns:
        ``(npde, pde, pd, dv)``, each ``(N, T)`` (NaN outside ``mask``); ``dv`` is
        ``obs`` with censored records imputed under ``"cdf"``.

    Raises:
        ValueError: shapes that do not match, fewer than 2 replicates, an unknown
            method.
    """
    obs = np.asarray(obs, float)
    sims = np.asarray(sims, float)
    mask = np.asarray(mask, bool)
    if method not in CENSORED_METHODS:
        raise ValueError(f"censored method {method!r} unknown; use one of {CENSORED_METHODS}")
    if sims.ndim != 3 or sims.shape[1:] != obs.shape or mask.shape != obs.shape:
        raise ValueError(
            f"sims must be (K, N, T) with obs and mask (N, T): got sims {sims.shape}, "
            f"obs {obs.shape}, mask {mask.shape}"
        )
    K = sims.shape[0]
    if K < 2:
        raise ValueError(f"need at least 2 simulated replicates, got {K}")
    cens = np.zeros(obs.shape, bool) if censored is None else np.asarray(censored, bool) & mask
    if lloq is None:
        lq = np.where(cens, obs, np.nan)
    else:
        lq = np.broadcast_to(np.asarray(lloq, float), obs.shape)
        lq = np.where(cens, obs, lq)
    rng = np.random.default_rng(seed)
    N = obs.shape[0]
    out_npde = np.full(obs.shape, np.nan)
    out_pde = np.full(obs.shape, np.nan)
    out_pd = np.full(obs.shape, np.nan)
    dv = np.where(mask, obs, np.nan)
    for i in range(N):
        use = mask[i] & (~cens[i] if method == "omit" else True)
        if not use.any():
            continue
        y = obs[i, use].copy()
        S = sims[:, i, use]  # (K, n)
        S = S[np.all(np.isfinite(S), axis=1)]  # replicates whose simulation failed: out
        k = S.shape[0]
        if k < 2:
            continue
        pd_i = np.mean(S < y, axis=0)
        c = cens[i, use]
        if method == "cdf":  # impute below the LLOQ: the observations and the simulations
            lim = lq[i, use]
            has = np.isfinite(lim)
            S = S.copy()
            srt = np.sort(S, axis=0)
            ploq = np.where(has, np.mean(S < np.where(has, lim, -np.inf), axis=0), 0.0)
            for j in np.nonzero(c)[0]:
                pd_i[j] = rng.uniform(0.0, ploq[j])
                y[j] = srt[min(int(pd_i[j] * k), k - 1), j]
            for j in np.nonzero(has)[0]:
                below = S[:, j] < lim[j]
                if below.any():
                    u = rng.uniform(0.0, ploq[j], below.sum())
                    S[below, j] = srt[np.minimum((u * k).astype(int), k - 1), j]
        dv[i, use] = y
        out_pd[i, use] = _edges(pd_i, k)
        E = S.mean(axis=0)
        V = np.atleast_2d(np.cov(S, rowvar=False))
        try:
            L = np.linalg.cholesky(V)
        except np.linalg.LinAlgError:
            continue
        ys = np.linalg.solve(L, y - E)
        Ss = np.linalg.solve(L, (S - E).T).T
        pde = _edges(np.mean(Ss < ys, axis=0), k)
        out_pde[i, use] = pde
    from scipy.stats import norm

    out_npde = norm.ppf(out_pde)
    return out_npde, out_pde, out_pd, dv


def npde_test(values) -> dict:
    """The npde package's test of ``N(0, 1)`` on the finite values.

    Returns:
        ``dict(n, mean, variance, skewness, kurtosis, p_mean, p_variance, p_normality,
        p_global)``: Wilcoxon signed-rank test of mean 0, Fisher's test of variance 1
        (``(n-1) s^2 ~ chi2(n-1)``, two-sided), Shapiro-Wilk test of normality (the
        Kolmogorov-Smirnov test against ``N(0, 1)`` is ``p_ks``), and the global
        p-value ``min(1, 3 min(p))`` (Bonferroni). ``kurtosis`` is the excess kurtosis.
    """
    from scipy import stats

    x = np.asarray(values, float).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n < 3:
        raise ValueError(f"need at least 3 finite npde to test, got {n}")
    var = float(np.var(x, ddof=1))
    chi = (n - 1) * var
    p_var = float(2 * min(stats.chi2.cdf(chi, n - 1), stats.chi2.sf(chi, n - 1)))
    p_mean = float(stats.wilcoxon(x).pvalue)
    p_norm = float(stats.shapiro(x).pvalue)
    p_ks = float(stats.kstest(x, "norm").pvalue)
    return dict(
        n=int(n),
        mean=float(np.mean(x)),
        variance=var,
        skewness=float(stats.skew(x)),
        kurtosis=float(stats.kurtosis(x)),
        p_mean=p_mean,
        p_variance=min(1.0, p_var),
        p_normality=p_norm,
        p_ks=p_ks,
        p_global=min(1.0, 3 * min(p_mean, p_var, p_norm)),
    )


def npde(
    fit,
    n_sim: int = 1000,
    key=None,
    *,
    censored: str = "omit",
    dv=None,
) -> NpdeResult:
    """NPDE of a fitted dataset: ``n_sim`` replicates simulated in one batched call.

    Arguments:
        fit: a ``PopulationFitResult`` or a :class:`FitResult` whose ``population`` and
            error model are the model to evaluate (the design, covariates and sampling
            times are the fit's).
        n_sim: number of simulated replicates ``K`` (the npde package recommends at
            least 1000).
        key: a JAX PRNG key (default ``jax.random.key(0)``).
        censored: ``"omit"`` or ``"cdf"`` (BLQ records; see the module doc).
        dv: ``(N, T)`` observations to evaluate instead of the fit's own (e.g. a
            simulated dataset of the same design).

    Returns:
        An :class:`NpdeResult`.

    Raises:
        ValueError: ``n_sim < 2``, an unknown ``censored`` method, or ``dv`` of the
            wrong shape (before anything is simulated).
    """
    import jax

    from ._diagnostics import simulate_replicates

    ind = getattr(fit, "individual", fit)
    if censored not in CENSORED_METHODS:
        raise ValueError(
            f"censored={censored!r} unknown; use one of {CENSORED_METHODS} (npde package: "
            "omit or cdf)"
        )
    if int(n_sim) < 2:
        raise ValueError(f"n_sim must be at least 2, got {n_sim}")
    obs = np.asarray(ind.dv if dv is None else dv, float)
    if obs.shape != ind.dv.shape:
        raise ValueError(f"dv must have the fit's shape {ind.dv.shape}, got {obs.shape}")
    key = jax.random.key(0) if key is None else key
    sims = simulate_replicates(ind, int(n_sim), key)
    cens = np.asarray(ind.censored)
    z, pde, pd, dvi = npde_from_simulations(
        obs, sims, ind.mask, censored=cens, method=censored, seed=0
    )
    used = ind.mask & (~cens if censored == "omit" else True)
    finite = z[used & np.isfinite(z)]
    return NpdeResult(
        npde=z,
        pde=pde,
        pd=pd,
        times=np.asarray(ind.times),
        dv=dvi,
        mask=used,
        pred=np.asarray(ind.pred),
        ids=list(ind.ids),
        n_sim=int(n_sim),
        censored=censored,
        n_censored=int(cens.sum()),
        test=npde_test(finite) if finite.size >= 3 else {},
    )
