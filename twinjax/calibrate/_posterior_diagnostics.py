"""Convergence diagnostics of MCMC draws: rank-normalised split-R-hat, bulk and tail
effective sample sizes (used by :func:`~twinjax.calibrate.sample_posterior`).

Diagnostics per subject and parameter (:func:`split_rhat`, :func:`ess_bulk`,
:func:`ess_tail`) follow Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021),
"Rank-normalization, folding, and localization: an improved R-hat for assessing
convergence of MCMC", Bayesian Analysis 16:667-718: rank-normalised split-R-hat (the
larger of the bulk and the folded R-hat), bulk ESS from the rank-normalised split
chains with Geyer's initial monotone sequence, tail ESS from the 5 % and 95 % quantile
indicators.

References:
    - Vehtari A, Gelman A, Simpson D, Carpenter B, Buerkner P-C. Bayesian Analysis
      16:667-718, 2021.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

RHAT_MAX = 1.01  # Vehtari et al. 2021: R-hat above this flags a subject


def _as_chains(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"draws must be (chains, draws), got shape {x.shape}")
    if x.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {x.shape[1]}")
    return x


def _split(x: np.ndarray) -> np.ndarray:
    """Each chain cut into its first and second half (the middle draw of an odd
    length left out): ``(2M, n // 2)``."""
    n = x.shape[1] // 2
    return np.concatenate([x[:, :n], x[:, x.shape[1] - n :]], axis=0)


def _rank_normalise(x: np.ndarray) -> np.ndarray:
    """``Phi^-1((r - 3/8) / (S + 1/4))`` of the pooled ranks ``r`` (ties averaged),
    Vehtari et al. 2021 eq. (14) (Blom's offsets)."""
    from scipy.stats import rankdata

    r = rankdata(x, method="average").reshape(x.shape)
    return ndtri((r - 0.375) / (x.size + 0.25))


def _rhat_plain(x: np.ndarray) -> float:
    """Gelman-Rubin R-hat of ``(M, n)`` chains: ``sqrt(var+ / W)``,
    ``var+ = (n - 1)/n W + B/n``."""
    n = x.shape[1]
    means = x.mean(axis=1)
    W = x.var(axis=1, ddof=1).mean()
    B = n * means.var(ddof=1)
    var_plus = (n - 1) / n * W + B / n
    if not W > 0:
        return float("nan") if not np.isfinite(W) else (1.0 if B == 0 else float("inf"))
    return float(np.sqrt(var_plus / W))


def split_rhat(x) -> float:
    """Rank-normalised split-R-hat of one quantity (Vehtari et al. 2021, sec. 4.1):
    the larger of the R-hat of the rank-normalised split chains (bulk) and of the
    rank-normalised ``|x - median(x)|`` (folded, tails).

    Arguments:
        x: ``(chains, draws)``, at least 4 draws per chain.
    """
    x = _split(_as_chains(x))
    if not np.all(np.isfinite(x)):
        return float("nan")
    bulk = _rhat_plain(_rank_normalise(x))
    folded = _rhat_plain(_rank_normalise(np.abs(x - np.median(x))))
    return max(bulk, folded)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Biased autocovariances ``(1/n) sum_t (x_t - xbar)(x_{t+l} - xbar)`` of each
    chain of ``(M, n)``, lags ``0..n-1``, by FFT."""
    n = x.shape[1]
    y = x - x.mean(axis=1, keepdims=True)
    m = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(y, n=m, axis=1)
    return np.fft.irfft(f * np.conj(f), n=m, axis=1)[:, :n] / n


def _ess_plain(x: np.ndarray) -> float:
    """ESS of ``(M, n)`` chains (Vehtari et al. 2021 sec. 3.2, eqs. 10-13, as the Stan
    reference manual computes it): combined autocorrelations
    ``rho_t = 1 - (W - mean_m acov_m(t)) / var+`` (biased autocovariances ``acov``,
    ``W`` the mean within-chain variance), Geyer's initial positive sequence of pair
    sums ``rho_2t + rho_2t+1`` (with the last positive even lag added once), made
    monotone, ``tau = -1 + 2 sum rho_t``, ``ESS = M n / tau`` with ``tau`` at least
    ``1 / log10(M n)``."""
    M, n = x.shape
    acov = _autocov(x)
    W = float(np.mean(acov[:, 0])) * n / (n - 1)
    var_plus = W * (n - 1) / n
    if M > 1:
        var_plus += float(np.var(x.mean(axis=1), ddof=1))
    if not (np.isfinite(var_plus) and var_plus > 0):
        return float("nan")
    rho_all = 1.0 - (W - acov.mean(axis=0)) / var_plus
    rho = np.zeros(n)
    rho[0] = 1.0
    even, odd = 1.0, float(rho_all[1])
    rho[1] = odd
    t = 1
    while t < n - 3 and even + odd > 0.0:  # initial positive sequence
        even, odd = float(rho_all[t + 1]), float(rho_all[t + 2])
        if even + odd >= 0.0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:  # the last even lag, when positive, enters once
        rho[max_t + 1] = even
    t = 1
    while t <= max_t - 2:  # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    S = M * n
    tau = -1.0 + 2.0 * float(np.sum(rho[: max_t + 1])) + float(np.sum(rho[max_t + 1 : max_t + 2]))
    tau = max(tau, 1.0 / np.log10(S))
    return float(S / tau)


def ess_bulk(x) -> float:
    """Bulk effective sample size of one quantity: the ESS of the rank-normalised split
    chains (Vehtari et al. 2021, sec. 4.3).

    Arguments:
        x: ``(chains, draws)``, at least 4 draws per chain.
    """
    x = _split(_as_chains(x))
    if not np.all(np.isfinite(x)):
        return float("nan")
    return _ess_plain(_rank_normalise(x))


def ess_tail(x) -> float:
    """Tail effective sample size: the smaller of the split-chain ESS of the indicators
    ``x <= q05`` and ``x <= q95`` (Vehtari et al. 2021, sec. 4.3; the quantiles of all
    draws, before splitting).

    Arguments:
        x: ``(chains, draws)``, at least 4 draws per chain.
    """
    x = _as_chains(x)
    if not np.all(np.isfinite(x)):
        return float("nan")
    out = []
    for q in (0.05, 0.95):  # quantiles of all draws, indicators split
        ind = (x <= np.quantile(x, q)).astype(float)
        out.append(_ess_plain(_split(ind)))
    return float(min(out))
