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

Diagnostics per subject and parameter (rank-normalised split-R-hat, bulk and tail
ESS, Vehtari et al. 2021) are in :mod:`twinjax.calibrate._posterior_diagnostics`; the
result, its forecasts and dose optimisation in ``_posterior_result`` and
``_posterior_dosing``.

References:
    - Hoffman MD, Gelman A. The No-U-Turn Sampler. JMLR 15:1593-1623, 2014.
    - Cabezas A, Corenflos A, Lao J, Louf R et al. BlackJAX: composable Bayesian
      inference in JAX. arXiv:2402.10797, 2024.
    - Vehtari A, Gelman A, Simpson D, Carpenter B, Buerkner P-C. Bayesian Analysis
      16:667-718, 2021.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model
from ..solve._base import AbstractSolver
from ..solve._ensemble import Ensemble
from ._data import prepare_data, resolve_outputs
from ._map import FitResult, fit_censoring
from ._posterior_diagnostics import RHAT_MAX, ess_bulk, ess_tail, split_rhat
from ._posterior_result import PosteriorResult, check_int
from ._residual import ErrorModel
from ._terms import (
    Spec,
    as_population,
    baseline,
    make_spec,
    posterior_terms,
    typical_values,
)

__all__ = ["sample_posterior"]


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
    n_chains = check_int("n_chains", n_chains, 1)
    n_warmup = check_int("n_warmup", n_warmup, 20)
    n_draws = check_int("n_draws", n_draws, 4)
    max_tree_depth = check_int("max_tree_depth", max_tree_depth, 1, 15)
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
