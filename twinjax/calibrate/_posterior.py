"""Individual full-Bayesian posteriors by NUTS, batched over subjects.

The target is the posterior of :func:`~twinjax.calibrate.fit_individual`: for subject
``i`` the random effects ``eta_i`` (the unconstrained coordinates of the parameters
with IIV, ``p_i = g^-1(g(TV_i) + eta_i)``) have the density

```
log p(eta | y_i) = -O_i(eta) / 2 + const
```

with ``O_i`` the MAP objective (``-2 log`` likelihood of the data, censored records
included, plus ``eta' Omega^-1 eta``; :func:`~twinjax.calibrate._terms.posterior_terms`).
The prior is Gaussian in ``eta`` itself, so no change-of-variables term enters: the
sampler works in the fit's own unconstrained coordinates, and natural-scale draws
respect every parameter's bounds. The gradient is the objective's exact gradient,
computed as the fit computes it (one forward-mode pass of the simulation with ``k``
tangents), and handed to the sampler as the gradient of the log density, so the
ODE solver is never differentiated in reverse mode.

Sampler: the No-U-Turn Sampler (Hoffman & Gelman 2014) with multinomial trajectory
sampling, as implemented by BlackJAX (``blackjax.nuts``), with Stan's windowed warmup
(``blackjax.window_adaptation``: dual-averaging step size, diagonal inverse mass matrix
from the slow windows). Every chain of every subject adapts its own step size and mass
matrix. The whole run (warmup and sampling of every chain of every subject) is one
compiled program: NUTS vmapped over chains and over subjects.

Diagnostics per subject and parameter (:func:`split_rhat`, :func:`ess_bulk`,
:func:`ess_tail`) follow Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021),
"Rank-normalization, folding, and localization: an improved R-hat for assessing
convergence of MCMC", Bayesian Analysis 16:667-718: rank-normalised split-R-hat (the
larger of the bulk and the folded R-hat), bulk ESS from the rank-normalised split
chains with Geyer's initial monotone sequence, tail ESS from the 5 % and 95 % quantile
indicators.

References:
    - Hoffman MD, Gelman A. The No-U-Turn Sampler. JMLR 15:1593-1623, 2014.
    - Cabezas A, Corenflos A, Lao J, Louf R et al. BlackJAX: composable Bayesian
      inference in JAX. arXiv:2402.10797, 2024.
    - Vehtari A, Gelman A, Simpson D, Carpenter B, Buerkner P-C. Bayesian Analysis
      16:667-718, 2021.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

from ..dosing import Dose, Regimen
from ..dosing._regimen import NOOP, compile_regimens
from ..model import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ..solve._ensemble import Ensemble
from ..solve._simulate import simulate, simulate_core
from ._data import prepare_data, resolve_outputs
from ._forecast import TARGETS, Forecast
from ._forecast import DoseKwargs as _DoseKwargs
from ._map import FitResult, fit_censoring
from ._residual import ErrorModel
from ._terms import (
    Spec,
    as_population,
    baseline,
    individual_params,
    make_spec,
    posterior_terms,
    typical_values,
)

__all__ = [
    "PosteriorResult",
    "PosteriorDose",
    "ess_bulk",
    "ess_tail",
    "forecast_posterior",
    "optimise_dose_posterior",
    "sample_posterior",
    "split_rhat",
]

RHAT_MAX = 1.01  # Vehtari et al. 2021: R-hat above this flags a subject


# ============================================================================ diagnostics
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


# ============================================================================ result
@dataclasses.dataclass(eq=False)
class PosteriorResult:
    """NUTS draws of every subject's posterior (:func:`sample_posterior`).

    Attributes:
        ids: subject IDs.
        names: the sampled parameters (those with IIV), in order.
        etas: ``(N, chains, draws, k)`` draws of the random effects (the fit's
            unconstrained coordinates).
        samples: ``(N, chains * draws, k)`` the same draws on the natural scale
            (time-varying typical values: at time 0, as ``FitResult.params``).
        rhat: ``(N, k)`` rank-normalised split-R-hat.
        ess_bulk, ess_tail: ``(N, k)`` bulk and tail effective sample sizes.
        divergences: ``(N,)`` divergent transitions after warmup (all chains).
        step_size: ``(N, chains)`` adapted step sizes.
        accept_rate: ``(N, chains)`` mean acceptance statistic after warmup.
        n_leapfrog: ``(N, chains)`` mean leapfrog steps per draw.
        flagged: ``(N,)`` bool: R-hat above ``RHAT_MAX`` (1.01) for some parameter,
            a divergence, or no finite draws.
        seconds: wall time of the sampling run (compilation included).
    """

    ids: list
    names: tuple
    etas: np.ndarray
    samples: np.ndarray
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    divergences: np.ndarray
    step_size: np.ndarray
    accept_rate: np.ndarray
    n_leapfrog: np.ndarray
    flagged: np.ndarray
    seconds: float
    model: Model
    population: Population
    error: ErrorModel
    errors: dict
    solver: AbstractSolver
    output: str
    typical: dict
    n_warmup: int

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_chains(self) -> int:
        return int(self.etas.shape[1])

    @property
    def n_draws(self) -> int:
        return int(self.etas.shape[2])

    def index(self, subject=None) -> int:
        """The position of ``subject`` (an ID; default: the only subject)."""
        if subject is None:
            if self.n != 1:
                raise ValueError(f"this posterior has {self.n} subjects: name one with subject=ID")
            return 0
        if subject in self.ids:
            return self.ids.index(subject)
        raise KeyError(f"no subject {subject!r}; IDs are {self.ids}")

    def quantile(self, q) -> np.ndarray:
        """Natural-scale posterior quantile(s): ``(N, k)`` (``(len(q), N, k)``)."""
        return np.quantile(self.samples, q, axis=1)

    @property
    def mean(self) -> np.ndarray:
        """``(N, k)`` natural-scale posterior means."""
        return np.mean(self.samples, axis=1)

    @property
    def median(self) -> np.ndarray:
        """``(N, k)`` natural-scale posterior medians."""
        return np.median(self.samples, axis=1)

    @property
    def sd(self) -> np.ndarray:
        """``(N, k)`` natural-scale posterior standard deviations."""
        return np.std(self.samples, axis=1, ddof=1)

    def mcse_mean(self) -> np.ndarray:
        """``(N, k)`` Monte-Carlo standard error of the posterior mean, ``sd /
        sqrt(ESS_bulk)``."""
        return self.sd / np.sqrt(self.ess_bulk)

    def params(self, subject=None) -> dict:
        """``{name: (chains * draws,)}`` every model parameter for one subject's draws
        (the typical value where a parameter has no IIV)."""
        i = self.index(subject)
        etas = self.etas[i].reshape(-1, len(self.names))
        return _draw_params(self, i, jnp.asarray(etas))

    def to_dataframe(self):
        """One row per subject and parameter: mean, sd, 5 / 50 / 95 % quantiles,
        R-hat, bulk and tail ESS, divergences (of the subject) and the flag."""
        import pandas as pd

        q = self.quantile([0.05, 0.5, 0.95])
        rows = []
        for i, sid in enumerate(self.ids):
            for j, k in enumerate(self.names):
                rows.append(
                    dict(
                        ID=sid,
                        parameter=k,
                        mean=self.mean[i, j],
                        sd=self.sd[i, j],
                        q05=q[0, i, j],
                        median=q[1, i, j],
                        q95=q[2, i, j],
                        rhat=self.rhat[i, j],
                        ess_bulk=self.ess_bulk[i, j],
                        ess_tail=self.ess_tail[i, j],
                        divergences=int(self.divergences[i]),
                        flagged=bool(self.flagged[i]),
                    )
                )
        return pd.DataFrame(rows)

    def forecast(self, regimen, times, *, subject=None, n_samples=None, key=None, level=0.9):
        """Forecast a regimen over the posterior draws; see :func:`forecast_posterior`."""
        return forecast_posterior(
            self, regimen, times, subject=subject, n_samples=n_samples, key=key, level=level
        )

    def __repr__(self) -> str:
        return (
            f"PosteriorResult(n={self.n}, params={list(self.names)}, chains={self.n_chains}, "
            f"draws={self.n_draws}, flagged={int(np.sum(self.flagged))}/{self.n}, "
            f"max R-hat={np.nanmax(self.rhat):.4f}, min bulk ESS={np.nanmin(self.ess_bulk):.0f})"
        )


def _draw_params(post: PosteriorResult, i: int, etas) -> dict:
    """Every model parameter for subject ``i`` at ``etas`` ``(S, k)``."""
    S = etas.shape[0]
    spec = Spec(post.model, post.solver, post.output, post.names, post.error)

    def rows(a):
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[i], (S,) + a.shape[1:])

    tv = {kk: jax.tree.map(rows, v) for kk, v in post.typical.items()}
    return individual_params(spec, tv, etas)


# ============================================================================ sampler
def _logdensity(spec: Spec, sigma, omega_inv, data, eta):
    """``-O(eta)/2`` for one subject, whose gradient is ``-G/2`` from the fit's own
    forward-mode gradient (the solver is never reverse-differentiated): the value is
    computed at ``stop_gradient(eta)`` and the linear term ``-G/2 . (eta - eta)``
    (zero) carries the gradient. ``-inf`` (zero gradient) where the simulation fails."""
    tv, ev, ts, y, mask = jax.tree.map(lambda a: a[None], data)
    e = jax.lax.stop_gradient(eta)
    O, G, _, _, _, ok = posterior_terms(spec, tv, e[None], ev, ts, y, mask, sigma, omega_inv)
    ok = ok[0] & jnp.isfinite(O[0]) & jnp.all(jnp.isfinite(G[0]))
    O = jnp.where(ok, O[0], jnp.inf)
    G = jax.lax.stop_gradient(jnp.where(ok, G[0], 0.0))
    return -0.5 * O - 0.5 * jnp.dot(G, eta - e)


@eqx.filter_jit
def _nuts_batched(
    spec: Spec,
    data,
    sigma,
    omega_inv,
    eta_start,
    keys,
    n_warmup: int,
    n_draws: int,
    target_accept,
    max_doublings: int,
):
    """NUTS for every chain of every subject: ``eta_start`` ``(N, C, k)``, ``keys``
    ``(N, C)``; ``data`` has leading axis ``N``."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    def chain(data, eta0, key):
        def logdensity(eta):
            return _logdensity(spec, sigma, omega_inv, data, eta)

        # a start where the model cannot be simulated falls back to the typical values
        eta0 = jnp.where(jnp.isfinite(logdensity(eta0)), eta0, jnp.zeros_like(eta0))
        k_warm, k_draw = jax.random.split(key)
        warmup = blackjax.window_adaptation(
            blackjax.nuts,
            logdensity,
            target_acceptance_rate=target_accept,
            adaptation_info_fn=get_filter_adapt_info_fn(),
            max_num_doublings=max_doublings,
        )
        (state, params), _ = warmup.run(k_warm, eta0, num_steps=n_warmup)
        kernel = blackjax.nuts(logdensity, **params)

        def step(state, k):
            state, info = kernel.step(k, state)
            return state, (
                state.position,
                info.is_divergent,
                info.acceptance_rate,
                info.num_integration_steps,
            )

        _, (pos, div, acc, nlf) = jax.lax.scan(step, state, jax.random.split(k_draw, n_draws))
        return pos, div, acc, nlf, params["step_size"]

    per_subject = jax.vmap(chain, in_axes=(None, 0, 0))
    return jax.vmap(per_subject, in_axes=(0, 0, 0))(data, eta_start, keys)


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return int(value)


def _subject_keys(key, n: int):
    if key is None:
        key = jax.random.key(0)
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(
            "key must be a typed JAX PRNG key (jax.random.key(seed)) or an array of "
            f"{n} such keys, one per subject"
        )
    if key.ndim == 0:
        return jax.random.split(key, n)
    if key.shape != (n,):
        raise ValueError(
            f"key must be one key or {n} keys (one per subject), got shape {key.shape}"
        )
    return key


def sample_posterior(
    model: Model,
    data,
    prior,
    error: ErrorModel | Mapping[str, ErrorModel] | None = None,
    *,
    output: str | None = None,
    solver: AbstractSolver | None = None,
    n_chains: int = 4,
    n_warmup: int = 1000,
    n_draws: int = 1000,
    key=None,
    init: FitResult | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
    warn: bool = True,
) -> PosteriorResult:
    """NUTS draws of every subject's full posterior, all subjects in one compiled run.

    The model, data, prior, residual error(s), censoring and output tags are those of
    :func:`~twinjax.calibrate.fit_individual`, and the target is the posterior whose
    mode that fit finds (``exp(-O/2)``, see the module docs); the residual SDs and
    Omega are fixed at the given values.

    Arguments:
        model, data, prior, error, output, solver, censoring, lloq, dvid,
            output_column: as for :func:`~twinjax.calibrate.fit_individual`
            (``solver``: forward-mode differentiable, default ``solvers.Ensemble()``).
        n_chains: chains per subject (each with its own warmup).
        n_warmup: warmup (adaptation) iterations per chain, Stan's windowed schedule.
        n_draws: draws kept per chain.
        key: a JAX PRNG key (split into one per subject), or an array of ``N`` keys,
            one per subject: a subject's draws depend only on its key and its data.
        init: a :class:`FitResult` of the same data: chains start at the MAP plus a
            draw from twice the Laplace covariance (overdispersed); default: starts
            drawn from the prior ``N(0, Omega)``.
        target_accept: the step-size adaptation's target acceptance statistic.
        max_tree_depth: NUTS's maximum number of trajectory doublings.
        warn: emit a ``UserWarning`` naming the flagged subjects (R-hat > 1.01, a
            divergence, or no finite draws).

    Returns:
        A :class:`PosteriorResult`.

    Raises:
        ValueError, TypeError: bad arguments (named), before anything is compiled.
    """
    n_chains = _check_int("n_chains", n_chains, 1)
    n_warmup = _check_int("n_warmup", n_warmup, 20)
    n_draws = _check_int("n_draws", n_draws, 4)
    max_tree_depth = _check_int("max_tree_depth", max_tree_depth, 1, 15)
    if n_chains * n_draws < 8:
        raise ValueError(
            f"n_chains * n_draws = {n_chains * n_draws}: the diagnostics need at least 8 draws"
        )
    if isinstance(target_accept, bool) or not (
        isinstance(target_accept, (int, float)) and 0 < target_accept < 1
    ):
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    pop = as_population(model, prior)
    if pop.n_iiv == 0:
        raise ValueError("the prior has no IIV: there is no individual posterior to sample")
    outputs, errors = resolve_outputs(model, error, output)
    solver = solver or Ensemble()
    fd = prepare_data(
        model,
        data,
        error,
        output=output,
        lloq=lloq,
        censoring=censoring,
        dvid=dvid,
        output_column=output_column,
    )
    N, k = fd.n, pop.n_iiv
    if init is not None:
        if not isinstance(init, FitResult):
            raise TypeError(f"init must be a FitResult (a MAP fit) or None, got {type(init)}")
        if list(init.ids) != list(fd.ids) or tuple(init.names) != tuple(pop.iiv):
            raise ValueError(
                "init must be a fit of the same subjects and parameters: its IDs "
                f"{list(init.ids)[:5]}... / parameters {list(init.names)} vs the data's "
                f"{list(fd.ids)[:5]}... / the prior's {list(pop.iiv)}"
            )
    keys = _subject_keys(key, N)
    cmode = fit_censoring(fd, censoring)
    spec = make_spec(model, solver, pop.iiv, errors, outputs, cmode)
    tv = typical_values(pop, fd.covariates, N, fd.varying)
    omega = jnp.asarray(pop.omega)
    omega_inv = jnp.linalg.inv(omega)
    sigma = jnp.concatenate([e.sigma() for e in errors])
    ts = jnp.asarray(fd.t_eval)
    y = fd.obs()
    mask = jnp.asarray(fd.mask)

    # starting points (per subject and chain) and the chains' keys
    split = jax.vmap(lambda kk: jax.random.split(kk, n_chains + 1))(keys)  # (N, C+1)
    k_start, k_chain = split[:, 0], split[:, 1:]
    z = jax.vmap(lambda kk: jax.random.normal(kk, (n_chains, k)))(k_start)
    if init is None:
        L = jnp.linalg.cholesky(omega + 1e-12 * jnp.eye(k))
        start = z @ L.T
    else:
        eta_hat = np.nan_to_num(np.asarray(init.etas))
        cov = np.asarray(init.cov_eta)
        good = np.all(np.isfinite(cov), axis=(1, 2))
        cov = np.where(good[:, None, None], cov, np.asarray(omega)[None])
        L = jnp.linalg.cholesky(2.0 * jnp.asarray(cov) + 1e-12 * jnp.eye(k)[None])
        start = jnp.asarray(eta_hat)[:, None, :] + jnp.einsum("nck,nlk->ncl", z, L)

    start = jnp.asarray(start, ts.dtype)
    t0 = time.perf_counter()
    pos, div, acc, nlf, step = _nuts_batched(
        spec,
        (tv, fd.ev, ts, y, mask),
        sigma,
        omega_inv,
        start,
        k_chain,
        n_warmup,
        n_draws,
        float(target_accept),
        max_tree_depth,
    )
    etas = np.asarray(pos)  # (N, C, D, k)
    seconds = time.perf_counter() - t0
    div = np.asarray(div)
    rhat = np.full((N, k), np.nan)
    eb = np.full((N, k), np.nan)
    et = np.full((N, k), np.nan)
    finite = np.all(np.isfinite(etas), axis=(1, 2, 3))
    for i in range(N):
        if not finite[i]:
            continue
        for j in range(k):
            x = etas[i, :, :, j]
            rhat[i, j] = split_rhat(x)
            eb[i, j] = ess_bulk(x)
            et[i, j] = ess_tail(x)
    n_div = div.sum(axis=(1, 2)).astype(int)
    flagged = ~finite | (n_div > 0) | ~np.all(rhat <= RHAT_MAX, axis=1)
    tv0 = baseline(tv)
    z_tv = np.asarray(model.pack(tv0, pop.iiv))  # (N, k)
    flat = etas.reshape(N, n_chains * n_draws, k)
    nat = model.unpack(jnp.asarray(z_tv[:, None, :] + flat), pop.iiv)
    samples = np.stack([np.asarray(nat[kk]) for kk in pop.iiv], axis=-1)
    result = PosteriorResult(
        ids=list(fd.ids),
        names=tuple(pop.iiv),
        etas=etas,
        samples=samples,
        rhat=rhat,
        ess_bulk=eb,
        ess_tail=et,
        divergences=n_div,
        step_size=np.asarray(step),
        accept_rate=np.asarray(acc).mean(axis=2),
        n_leapfrog=np.asarray(nlf).mean(axis=2),
        flagged=flagged,
        seconds=seconds,
        model=model,
        population=pop,
        error=errors[0],
        errors=dict(zip(outputs, errors)),
        solver=solver,
        output=outputs[0],
        typical={kk: jax.tree.map(np.asarray, v) for kk, v in tv.items()},
        n_warmup=n_warmup,
    )
    if warn and flagged.any():
        bad = [
            f"{fd.ids[i]} (max R-hat {np.nanmax(rhat[i]) if finite[i] else float('nan'):.3f}, "
            f"{n_div[i]} divergences)"
            for i in np.nonzero(flagged)[0]
        ]
        warnings.warn(
            f"NUTS: {len(bad)} of {N} subject(s) flagged (R-hat > {RHAT_MAX} or "
            f"divergences): {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; "
            "run longer (n_warmup, n_draws) or raise target_accept",
            UserWarning,
            stacklevel=2,
        )
    return result


# ============================================================================ using it
def _thin(post: PosteriorResult, i: int, n_samples, key):
    etas = post.etas[i].reshape(-1, len(post.names))
    if n_samples is None or n_samples >= etas.shape[0]:
        return jnp.asarray(etas)
    n = _check_int("n_samples", n_samples, 1)
    idx = jax.random.choice(key, etas.shape[0], (n,), replace=False)
    return jnp.asarray(etas)[idx]


def forecast_posterior(
    post: PosteriorResult,
    regimen: Regimen,
    times,
    *,
    subject=None,
    n_samples: int | None = None,
    key=None,
    level: float = 0.9,
) -> Forecast:
    """Forecast a regimen for one subject over its NUTS posterior draws.

    The forecast of :func:`~twinjax.calibrate.forecast` with the Laplace draws replaced
    by the posterior draws: every draw (or ``n_samples`` of them, drawn without
    replacement) is simulated under ``regimen`` in one batch; ``lower``/``upper``
    are the ``level`` interval of the prediction, ``pi_lower``/``pi_upper`` add the
    residual error (of the first output). ``map`` is the prediction at the
    posterior median of the random effects (a NUTS run has no MAP).

    Raises:
        ValueError: a bad level, or a subject without finite draws.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    i = post.index(subject)
    if not np.all(np.isfinite(post.etas[i])):
        raise ValueError(f"subject {post.ids[i]!r} has no finite posterior draws")
    key = jax.random.key(0) if key is None else key
    k0, k1 = jax.random.split(key)
    etas = _thin(post, i, n_samples, k0)
    med = jnp.median(etas, axis=0, keepdims=True)
    params = _draw_params(post, i, jnp.concatenate([med, etas], axis=0))
    res = simulate(post.model, params, regimen, times, solver=post.solver, check=False)
    f_all = np.asarray(res[post.output])
    f = f_all[1:]
    y = np.asarray(post.error.sample(k1, jnp.asarray(f)))
    return Forecast.from_draws(times, f_all[0], f, y, level)


@dataclasses.dataclass(eq=False)
class PosteriorDose:
    """The outcome of :func:`optimise_dose_posterior`.

    Attributes:
        dose: the dose with the highest probability of target attainment (PTA).
        interval: the dosing interval.
        pta: its PTA: the fraction of posterior draws whose target lies in the
            window (time in range: whose fraction of time in range reaches
            ``min_fraction``).
        doses: ``(G,)`` the candidate doses; pta_curve: ``(G,)`` their PTAs.
        median_value: the target's posterior median at ``dose``.
        regimen: the chosen :class:`~twinjax.Regimen`.
        n_samples: the draws used.
    """

    dose: float
    interval: float
    pta: float
    doses: np.ndarray
    pta_curve: np.ndarray
    median_value: float
    regimen: Regimen
    n_samples: int


def optimise_dose_posterior(
    post: PosteriorResult,
    *,
    target: str,
    window: tuple[float, float],
    cmt: str,
    dose_range: tuple[float, float],
    n_doses: int = 10,
    interval: float = 12.0,
    subject=None,
    n_candidates: int = 41,
    n_samples: int | None = 1000,
    key=None,
    grid: int = 49,
    infusion_duration: float | None = None,
    min_fraction: float = 0.8,
) -> PosteriorDose:
    """The dose that maximises the probability of target attainment over the draws.

    The regimen and targets are those of :func:`~twinjax.calibrate.optimise_dose`
    (``n_doses`` doses every ``interval`` into ``cmt``; the target over the last
    interval: ``"trough"``, ``"auc"``, ``"cmax"`` or ``"time_in_range"``). For each
    of ``n_candidates`` doses log-spaced over ``dose_range`` the target is computed
    for every posterior draw (all draws x doses in one batched simulation), and the
    PTA is the fraction of draws in the window. The dose with the highest PTA is
    chosen (ties: the one whose posterior median target is closest to the window's
    geometric centre).

    Raises:
        ValueError: unknown target, a bad window or dose range.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    lo, hi = float(window[0]), float(window[1])
    if not 0 < lo < hi:
        raise ValueError(f"window must be 0 < low < high, got {window}")
    d_lo, d_hi = float(dose_range[0]), float(dose_range[1])
    if not 0 < d_lo < d_hi:
        raise ValueError(f"dose_range must be 0 < low < high, got {dose_range}")
    G = _check_int("n_candidates", n_candidates, 2)
    n_doses = _check_int("n_doses", n_doses, 1)
    if not interval > 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    i = post.index(subject)
    if not np.all(np.isfinite(post.etas[i])):
        raise ValueError(f"subject {post.ids[i]!r} has no finite posterior draws")
    key = jax.random.key(0) if key is None else key
    etas = _thin(post, i, n_samples, key)
    S = etas.shape[0]
    params = _draw_params(post, i, etas)
    doses = np.geomspace(d_lo, d_hi, G)
    model = post.model
    dose_kw: _DoseKwargs = {} if infusion_duration is None else {"dur": float(infusion_duration)}
    base = Regimen(
        [Dose(amt=1.0, cmt=cmt, time=0.0, ii=float(interval), addl=n_doses - 1, **dose_kw)]
    )
    B = S * G
    ev = compile_regimens([base] * B, model)
    amt = jnp.repeat(jnp.asarray(doses), S)  # dose-major: row g*S + s
    ev = eqx.tree_at(lambda e: e.amt, ev, jnp.where(ev.kind != NOOP, ev.amt * amt[:, None], ev.amt))
    p = {kk: jnp.tile(jnp.asarray(v), (G,) + (1,) * (jnp.ndim(v) - 1)) for kk, v in params.items()}
    ts = (n_doses - 1) * float(interval) + np.linspace(0.0, float(interval), grid)
    ts2 = jnp.broadcast_to(jnp.asarray(ts), (B, grid))
    _, out, status = eqx.filter_jit(simulate_core)(model, post.solver, p, ev, ts2)
    c = np.asarray(out[post.output]).reshape(G, S, grid)
    if target == "trough":
        v = c[..., -1]
    elif target == "auc":
        v = np.trapezoid(c, ts, axis=-1)
    elif target == "cmax":
        v = c.max(axis=-1)
    else:
        v = np.mean((c >= lo) & (c <= hi), axis=-1)
    ok = np.asarray(status).reshape(G, S) == 0
    hit = (v >= min_fraction) if target == "time_in_range" else ((v >= lo) & (v <= hi))
    pta = np.mean(hit & ok, axis=1)
    med = np.median(np.where(ok, v, np.nan), axis=1)
    if target == "time_in_range":
        dist = -med
    else:
        dist = np.abs(np.log(np.maximum(med, 1e-300)) - 0.5 * np.log(lo * hi))
    best = np.lexsort((dist, -pta))[0]
    dose = float(doses[best])
    reg = Regimen(
        [Dose(amt=dose, cmt=cmt, time=0.0, ii=float(interval), addl=n_doses - 1, **dose_kw)]
    )
    return PosteriorDose(
        dose=dose,
        interval=float(interval),
        pta=float(pta[best]),
        doses=doses,
        pta_curve=pta,
        median_value=float(med[best]),
        regimen=reg,
        n_samples=int(S),
    )
