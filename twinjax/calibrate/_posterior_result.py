"""The NUTS posterior of :func:`~twinjax.calibrate.sample_posterior`:
:class:`PosteriorResult` (draws, diagnostics, summaries), the model parameters of its
draws, and forecasts over them (:func:`forecast_posterior`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..dosing import Regimen
from ..ode import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ..solve._simulate import simulate
from ._forecast import Forecast
from ._residual import ErrorModel
from ._terms import Spec, individual_params


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
        return draw_params(self, i, jnp.asarray(etas))

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


def draw_params(post: PosteriorResult, i: int, etas) -> dict:
    """Every model parameter for subject ``i`` at ``etas`` ``(S, k)``."""
    S = etas.shape[0]
    spec = Spec(post.model, post.solver, post.output, post.names, post.error)

    def rows(a):
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[i], (S,) + a.shape[1:])

    tv = {kk: jax.tree.map(rows, v) for kk, v in post.typical.items()}
    return individual_params(spec, tv, etas)


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """The integer argument ``name``, at least ``low`` (and at most ``high``); a
    ``TypeError`` / ``ValueError`` naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return int(value)


def thin(post: PosteriorResult, i: int, n_samples, key):
    """Subject ``i``'s draws ``(S, k)``: all of them, or ``n_samples`` chosen without
    replacement."""
    etas = post.etas[i].reshape(-1, len(post.names))
    if n_samples is None or n_samples >= etas.shape[0]:
        return jnp.asarray(etas)
    n = check_int("n_samples", n_samples, 1)
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
    etas = thin(post, i, n_samples, k0)
    med = jnp.median(etas, axis=0, keepdims=True)
    params = draw_params(post, i, jnp.concatenate([med, etas], axis=0))
    res = simulate(post.model, params, regimen, times, solver=post.solver, check=False)
    f_all = np.asarray(res[post.output])
    f = f_all[1:]
    y = np.asarray(post.error.sample(k1, jnp.asarray(f)))
    return Forecast.from_draws(times, f_all[0], f, y, level)
