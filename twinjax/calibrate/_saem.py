"""Population fits by SAEM (stochastic approximation EM), batched over subjects, with an
importance-sampling objective comparable to FOCE-I's.

Model (mu-referenced): for subject ``i`` the unconstrained coordinates of the
parameters with IIV are ``phi_i = g(TV_i) + eta_i = mu + c_i + eta_i`` with
``eta_i ~ N(0, Omega)``, ``g`` the parameter's transform (log for the usual log-normal
parameters), ``mu = g(TV)`` the estimated typical values and ``c_i`` the fixed
covariate offsets (``log`` of the covariate factors). The latent variable of the EM is
``z_i = mu + eta_i`` (``phi_i`` without the covariate offset), so the complete-data
likelihood ``p(y, z)`` belongs to the exponential family with sufficient statistics
``S1 = sum_i z_i``, ``S2 = sum_i z_i z_i'`` for ``(mu, Omega)``, and the residual SDs
have a closed-form (additive / proportional / log error) or low-dimensional (combined
error, censored records) M-step.

Estimated covariate coefficients (``estimate=True`` on a :class:`Power`,
:class:`Exponential` or :class:`Categorical` effect on a log-normal parameter with
IIV) are mu-referenced as in Monolix and saemix: ``log TV_i = mu + C_i beta`` with
``C_i`` the subject's covariate design (``log(x / ref)``, ``x - ref``, category
indicators; ``beta`` a power's or exponential's theta, a categorical's log factor). The
latent variable is then ``z_i = mu + C_i beta + eta_i``, the sufficient statistics are
per subject (``s1_i ~ E[z_i]``) plus ``S2``, and the M-step for ``(mu, beta)`` is the
generalised least-squares regression of ``s1_i`` on ``X_i = [I, C_i]`` with weight
``Omega^-1`` (the previous iteration's; with a diagonal Omega one ordinary least
squares per parameter), then ``Omega = S2/N - mean_i (s1_i m_i' + m_i s1_i' - m_i
m_i')``, ``m_i = X_i (mu, beta)``. A coefficient beyond its bounds is clipped onto
them (the others re-solved). Linear effects (``log(1 + theta (x - ref))``, not linear in
theta) and estimated effects of time-varying covariates are refused.

Each iteration ``k`` (Kuhn & Lavielle 2005; settings of nlmixr2's ``saemControl()``,
itself following saemix and Monolix):

1. **Simulation (E) step**: Metropolis-Hastings kernels for every subject and chain at
   once (``n_chains`` chains per subject, 3 by default; each kernel evaluation is ONE
   batched simulation of the whole dataset times the chains):

   - kernel 1 (``kernels[0]`` = 2 times): independent proposal from the population
     distribution ``N(mu, Omega)``; accepted with ``exp(-(L' - L)/2)``, ``L`` the
     data's ``-2 log p(y | z)``;
   - kernel 2 (``kernels[1]`` = 2 times): random walk on all components,
     ``z' = z + d2 * e``; accepted on the posterior ``L + (z - mu)' Omega^-1 (z - mu)``;
   - kernel 3 (``kernels[2]`` = 2 times): random walk on one component at a time.

   The random-walk scales start at ``0.5 sqrt(Omega_jj)`` (saemix ``rw.init``,
   nlmixr2 ``rmcmc``) and adapt by ``d *= 1 + 0.4 (acceptance - target)`` (clamped
   to ``[0.5, 2]`` per iteration), targets 0.234 (all components) and 0.44 (one
   component) (nlmixr2 ``iaccept`` / ``iacceptSingle``; Roberts & Rosenthal 2009).
2. **Stochastic approximation**: ``s <- s + gamma_k (S(z) - s)`` with ``gamma_k = 1``
   during the ``n_burn`` exploratory iterations and ``1 / (k - n_burn + 1)`` after
   (nlmixr2 ``nBurn = 200``, ``nEm = 300``).
3. **Maximisation**: ``mu = s1`` (estimated components; a typical value with bounds,
   ``bounds=``, clipped onto them), ``Omega = s2 - s1 mu' - mu s1' + mu mu'`` (diagonal
   part for ``omega="diagonal"``); residual variances: the
   current sample's optimum, stochastically averaged. During the first
   ``0.75 n_burn`` iterations simulated annealing keeps every variance at least
   ``0.95`` times its previous value (nlmixr2 ``coefSa``, ``perSa``).

Inter-occasion variability (``iov=``, Monolix's model ``h(mu + eta_i + kappa_ik)``): the
kappas are extra latent variables, sampled after the eta kernels by MH kernels per
occasion block on all subjects and chains at once, with the sufficient statistic ``sum
kappa^2 / (subject-occasions)`` for ``omega_iov^2`` (:mod:`._saem_iov`).

Standard errors: the observed Fisher information by Louis' missing-information
principle, ``I = sum_i (-E[d2 log p(y_i, z_i)] - Cov[d log p(y_i, z_i)])`` (posterior
expectations over ``n_fim`` further MCMC iterations at the estimates; the derivatives
of the complete-data log-likelihood in ``(mu, beta, chol Omega, log sigma)`` are exact by
AD).

Objective: **importance sampling** of each subject's marginal likelihood
``p(y_i) = E_q[p(y_i | eta) p(eta) / q(eta)]`` with ``q`` a multivariate t (5 degrees
of freedom) centred at the conditional mode with the Laplace covariance (the post-hoc
MAP fit), ``n_is`` draws per subject, all subjects and draws in batched simulations.
The OFV follows twinjax's FOCE-I convention (NONMEM's: ``-2 log L`` without
``n_obs log 2 pi``; censored records contribute ``-2 log P``), so that the two are
comparable, and carries its Monte-Carlo standard error (delta method per subject).

References:
    - Kuhn E, Lavielle M. Maximum likelihood estimation in nonlinear mixed effects
      models. Comput Stat Data Anal 49:1020-1038, 2005.
    - Delyon B, Lavielle M, Moulines E. Convergence of a stochastic approximation
      version of the EM algorithm. Ann Stat 27:94-128, 1999.
    - Louis TA. Finding the observed information matrix when using the EM algorithm.
      J R Stat Soc B 44:226-233, 1982.
    - nlmixr2est ``saemControl()`` defaults (seed 99, nBurn 200, nEm 300, nmc 3,
      nu c(2, 2, 2), rmcmc 0.5, stepsizeRw 0.4, coefSa 0.95, perSa 0.75).
    - Monolix documentation, "Log-likelihood estimation by importance sampling" (a t
      proposal around the conditional distribution's mean and variance).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ._iov import check_iov
from ._map import as_population, fit_individual
from ._nlme import PopulationFitResult
from ._nlme_outer import at_bound as near_bound
from ._nlme_outer import check_bounds
from ._residual import ErrorModel
from ._saem_covariates import CoefficientDesign as _Design  # noqa: F401  (tests reach it)
from ._saem_covariates import coefficient_design, prior_mean
from ._saem_covariates import gls as _gls  # noqa: F401  (tests reach it)
from ._saem_iov import is_proposal
from ._saem_is import ImportanceSamplingOFV as ImportanceSamplingOFV
from ._saem_is import importance_sampling_ofv as importance_sampling_ofv
from ._saem_is import is_ofv
from ._saem_kernels import (
    Carry,
    Settings,
    louis_terms,
    pack_phi,
    progress_line,
    run_chunk,
    trace_rows,
    unpack_phi,
)
from ._saem_problem import LOG_2PI, prepare, saem_problem, simulate_jit, tile_rows
from ._saem_problem import saem_problem as _problem  # noqa: F401  (tests reach it)
from ._saem_problem import simulate_z as _simulate  # noqa: F401  (tests reach it)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ImportanceSamplingOFV", "SAEMResult", "importance_sampling_ofv", "saem"]

_CHUNK = 20  # SAEM iterations per compiled call (progress is printed between calls)


# ============================================================================ result
@dataclasses.dataclass(eq=False)
class SAEMResult(PopulationFitResult):
    """A SAEM population fit (a :class:`PopulationFitResult`; ``ofv`` is the
    importance-sampling objective).

    Extra attributes:
        ofv_se: Monte-Carlo SE of ``ofv``; importance: the
            :class:`ImportanceSamplingOFV`.
        history: a DataFrame of the iterations (typical values, Omega diagonal,
            residual SDs, random-walk acceptance rates, complete-data ``-2 log L``).
        n_burn, n_em, n_chains, seed: the settings.
    """

    ofv_se: float = float("nan")
    importance: ImportanceSamplingOFV | None = None
    history: pd.DataFrame | None = None
    n_burn: int = 0
    n_em: int = 0
    n_chains: int = 0
    seed: int = 0

    def summary(self) -> str:
        return (
            f"SAEM fit: {self.n_subjects} subjects, {self.n_obs} observations"
            + (f", {self.n_censored} censored ({self.censoring})" if self.n_censored else "")
            + f"; {self.n_burn} + {self.n_em} iterations, {self.n_chains} chains\n"
            f"OFV (importance sampling, NONMEM convention) = {self.ofv:.3f} "
            f"+- {self.ofv_se:.3f}; -2LL = {self.minus2ll:.3f}; AIC = {self.aic:.3f}\n"
            + self.estimates.to_string()
        )

    def __repr__(self) -> str:
        th = ", ".join(f"{k}={v:.4g}" for k, v in self.theta.items())
        return f"SAEMResult({th}; OFV={self.ofv:.3f} +- {self.ofv_se:.3f})"


def saem(
    model: Model,
    data,
    population: Population | dict,
    error: ErrorModel | Mapping[str, ErrorModel],
    *,
    estimate: Sequence[str] | None = None,
    omega: str = "diagonal",
    n_burn: int = 200,
    n_em: int = 300,
    n_chains: int = 3,
    kernels: Sequence[int] = (2, 2, 2),
    seed: int = 99,
    anneal: float = 0.75,
    coef_sa: float = 0.95,
    n_fim: int = 100,
    n_is: int = 5000,
    is_df: float = 5.0,
    output: str | None = None,
    solver: AbstractSolver | None = None,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
    iov: Mapping[str, float] | None = None,
    occasion_column: str = "OCC",
    iov_kernels: Sequence[int] = (1, 2),
    bounds: Mapping[str, tuple[float, float]] | None = None,
    verbose: bool = False,
) -> SAEMResult:
    """Population fit by SAEM (Kuhn & Lavielle 2005), batched over subjects.

    See the module docstring and ``docs/calibration.md`` for the algorithm. The
    parameters with IIV are mu-referenced (``g(p_i) = g(TV) + log(covariate factors) +
    eta_i``); their typical values (those in ``estimate``), Omega, the residual SDs and
    the coefficients of covariate effects made with ``estimate=True`` (power,
    exponential and categorical effects on log-normal IIV parameters; reported in
    ``estimates`` and ``covariate_effects`` as ``fit_population`` labels them, and put
    into ``population``) are estimated. After the iterations: standard errors (Louis'
    observed information over ``n_fim`` MCMC iterations at the estimates; 0 skips
    them), the post-hoc MAP fit, and the importance-sampling OFV (``n_is`` t draws per
    subject; 0 skips it).

    Arguments:
        model, data, population, error: as for :func:`fit_population` (the population
            and error SDs are the starting values).
        estimate: typical values to estimate (default: all parameters with IIV); each
            must have IIV.
        omega: ``"diagonal"`` or ``"full"``.
        n_burn: exploratory iterations (step size 1); n_em: smoothing iterations (step
            size ``1/k``); n_chains: MCMC chains per subject.
        kernels: MH iterations per SAEM iteration of the three kernels (population
            proposal, random walk on all components, random walk per component).
        seed: random seed (a fixed seed gives the same fit).
        anneal, coef_sa: simulated annealing over the first ``anneal * n_burn``
            iterations: variances shrink by at most ``coef_sa`` per iteration.
        verbose: print the iterations (typical values, Omega, sigma, acceptance).
        output, solver, censoring, lloq, dvid, output_column: as for
            :func:`fit_population` (M3/M4 censored records enter the likelihood).
        iov, occasion_column: inter-occasion variability ``{parameter: initial
            omega_iov^2}`` and the occasion column, as for :func:`fit_population`
            (same data convention and checks). The kappas are latent variables of the
            EM (:mod:`._saem_iov`); ``omega_iov`` and the ``OMEGA_IOV(P)`` rows of
            ``estimates`` (Louis SEs) are reported as FOCE-I reports them, the post-hoc
            kappas per subject and occasion in ``individual.kappas`` and
            ``individual.occasions``, and the importance-sampling OFV integrates over
            the etas and kappas jointly.
        iov_kernels: the kappa kernels' sweeps over the occasions per iteration
            (proposals from ``N(0, omega_iov^2)``, random walks).
        bounds: ``{name: (lower, upper)}`` for estimated typical values (natural
            scale, ``-inf`` / ``inf`` for none; checked as :func:`fit_population`
            checks them: the initial value strictly inside). The M-step holds each
            bounded typical value inside: the regression's value is clipped onto the
            bound (the exact constrained M-step for a diagonal Omega without
            estimated covariate coefficients; with them the other components are
            re-solved given it; with a full Omega and none, the other typical values
            are not adjusted, an approximation). An estimate that ends within 0.1 %
            of a bound is named in ``message`` and ``at_bounds``; its SE is then not
            meaningful.

    Returns:
        A :class:`SAEMResult`.

    Raises:
        ValueError: bad settings, unknown names, an estimated parameter without IIV,
            what :func:`fit_population` refuses with ``iov`` (naming the key or line),
            a covariate effect on a non-log-transformed IIV parameter; an estimated
            covariate coefficient that SAEM cannot regress on (a :class:`Linear`
            effect, a time-varying covariate, a parameter without IIV) or that the
            data cannot inform (the checks of :func:`fit_population`), naming the
            effect.
    """
    import pandas as pd

    t_start = time.perf_counter()
    if omega not in ("diagonal", "full"):
        raise ValueError(f"omega must be 'diagonal' or 'full', got {omega!r}")
    kernels, iov_kernels = (tuple(int(x) for x in ks) for ks in (kernels, iov_kernels))
    for name, ks, n, what in (
        ("kernels", kernels, 3, "population, all-component, per-component MH iterations"),
        ("iov_kernels", iov_kernels, 2, "prior proposals, random walks per occasion"),
    ):
        if len(ks) != n or min(ks) < 0 or sum(ks) == 0:
            raise ValueError(
                f"{name} must be {'three' if n == 3 else 'two'} non-negative counts ({what}), "
                f"not all 0; got {ks}"
            )
    for name, v, lo in (
        ("n_burn", n_burn, 0),
        ("n_em", n_em, 1),
        ("n_chains", n_chains, 1),
        ("n_fim", n_fim, 0),
        ("n_is", n_is, 0),
    ):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
    if not (0.0 <= anneal <= 1.0) or not (0.0 < coef_sa <= 1.0):
        raise ValueError(f"anneal must be in [0, 1] and coef_sa in (0, 1]; got {anneal}, {coef_sa}")
    if n_is == 1:
        raise ValueError("n_is must be 0 (no objective) or at least 2")
    iov_var = check_iov(model, iov)
    iov_names = tuple(iov_var)
    pop0 = as_population(model, population)
    if not pop0.iiv:
        raise ValueError("saem needs a population with IIV (an omega over some parameters)")
    estimate = tuple(estimate) if estimate is not None else tuple(pop0.iiv)
    unknown = [k for k in estimate if k not in model.param_names]
    if unknown:
        raise ValueError(f"estimate names unknown parameters {unknown}")
    no_iiv = [k for k in estimate if k not in pop0.iiv]
    if no_iiv:
        raise ValueError(
            f"saem estimates typical values of parameters with IIV only (mu-referenced); "
            f"{no_iiv} have none: give them IIV in the population or leave them out of "
            f"estimate (IIV parameters: {list(pop0.iiv)})"
        )
    theta_bounds = check_bounds(model, bounds, estimate, pop0.typical)
    est_cov = [c for c in pop0.covariates if c.estimate]
    # the estimated effects leave the fixed offsets: their factors are mu + C_i beta
    pop_fix = pop0
    if est_cov:
        pop_fix = Population(
            model,
            typical=pop0.typical,
            covariates=[c for c in pop0.covariates if not c.estimate],
            omega=pop0.omega,
            iiv=list(pop0.iiv),
        )
    pop, outputs, errors, solver, fd, cmode, spec, P = prepare(
        model,
        data,
        pop_fix,
        error,
        output,
        solver,
        censoring,
        lloq,
        dvid,
        output_column,
        iov_names,
        occasion_column,
    )
    N, k = fd.n, len(pop.iiv)
    iiv = tuple(pop.iiv)
    D, coef_labels, coef_log, beta0 = coefficient_design(model, pop0, fd, iiv, estimate)
    if theta_bounds:  # on the transformed scale of mu (the model's monotone transform)
        mu_lo, mu_hi = np.full(len(iiv), -np.inf), np.full(len(iiv), np.inf)
        for q, lo_q, hi_q in theta_bounds:
            j = iiv.index(q)
            # the model's transform of the bounds (log 0 = -inf: no lower bound)
            mu_lo[j] = float(model.pack({q: jnp.asarray(lo_q)}, (q,))[0])
            mu_hi[j] = float(model.pack({q: jnp.asarray(hi_q)}, (q,))[0])
        D = _Design(D.C, D.lo, D.hi, jnp.asarray(mu_lo), jnp.asarray(mu_hi))
    nb = len(coef_labels)
    est_mask = np.asarray([q in estimate for q in iiv])
    est_idx = np.flatnonzero(est_mask)
    diagonal = omega == "diagonal"
    closed = cmode == "none" and all(len(e.names) == 1 for e in errors)
    S = Settings(
        n_burn=int(n_burn),
        n_total=int(n_burn + n_em),
        n_sa=int(round(anneal * n_burn)),
        coef_sa=float(coef_sa),
        kernels=kernels,
        diagonal=diagonal,
        closed_form=closed,
        n_rep=int(n_chains),
        rate=0.4,
        iov_kernels=iov_kernels,
    )
    R = int(n_chains)
    data_r = tile_rows((P.tv, P.off, P.ev, P.ts, P.obs, P.mask), R)
    mu0 = np.asarray(model.pack({q: jnp.asarray(pop.typical[q]) for q in iiv}, iiv))
    om0 = np.asarray(pop.omega, float)
    if diagonal:
        om0 = np.diag(np.diag(om0))
    sig0 = np.concatenate([np.asarray(e.sigma()) for e in errors])
    z0 = jnp.broadcast_to(jnp.asarray(mu0)[None], (R * N, k))
    if nb:  # every chain starts at its subject's prior mean
        z0 = prior_mean(jnp.asarray(mu0), jnp.asarray(beta0), D, R)
    tv_r, off_r, ev_r, ts_r, obs_r, mask_r = data_r
    m_iov, K = len(iov_names), P.st.n_occ
    w0 = np.asarray(list(iov_var.values()), float)
    kap0 = jnp.zeros((R * N, m_iov, K), z0.dtype)
    L0, f0 = simulate_jit(P.st, z0, tv_r, off_r, ev_r, ts_r, obs_r, mask_r, jnp.asarray(sig0), kap0)
    if not np.all(np.isfinite(np.asarray(L0))):
        bad = sorted({fd.ids[i % N] for i in np.flatnonzero(~np.isfinite(np.asarray(L0)))})
        raise ValueError(
            f"saem: the simulation at the starting typical values fails (or its "
            f"likelihood is not finite) for subject(s) {bad[:10]}; change the start"
        )
    sd0 = np.sqrt(np.diag(om0))
    s1_0, s2_0 = mu0, om0 + np.outer(mu0, mu0)
    if nb:  # subject-specific prior means mu + C_i beta
        m0 = mu0[None] + np.einsum("nkl,l->nk", np.asarray(D.C), beta0)
        s1_0, s2_0 = m0, om0 + m0.T @ m0 / N
    carry = Carry(
        z=z0,
        L=L0,
        f=f0,
        mu=jnp.asarray(mu0),
        omega=jnp.asarray(om0),
        sigma=jnp.asarray(sig0),
        s1=jnp.asarray(s1_0),
        s2=jnp.asarray(s2_0),
        s3=jnp.asarray(sig0**2),
        d2=jnp.asarray(0.5 * sd0),
        d3=jnp.asarray(0.5 * sd0),
        beta=jnp.asarray(beta0),
        kappa=kap0,
        w_iov=jnp.asarray(w0),
        s4=jnp.asarray(w0),
        d4=jnp.asarray(0.5 * np.sqrt(w0)),
    )
    key = jax.random.PRNGKey(seed)
    k_iter, k_fim, k_is = jax.random.split(key, 3)
    est_j = jnp.asarray(est_mask)
    mu_fixed = jnp.asarray(mu0)
    rows = []
    n_total = S.n_total
    sig_names = [
        (f"SIGMA_{n}" if len(outputs) == 1 else f"SIGMA_{o}_{n}")
        for o, e in zip(outputs, errors)
        for n in e.names
    ]
    if verbose:
        print(
            f"SAEM: {N} subjects x {R} chains, {k} random effects, {n_burn} exploratory + "
            f"{n_em} smoothing iterations, kernels {kernels}"
        )
    names = (iiv, coef_labels, iov_names, sig_names)
    t_iter = time.perf_counter()
    for it0 in range(0, n_total, _CHUNK):
        carry, tr = run_chunk(
            P.st, S, est_j, mu_fixed, D, data_r, carry, jnp.asarray(it0), k_iter, _CHUNK
        )
        tr = jax.tree.map(np.asarray, tr)
        th_chunk = {q: np.asarray(v) for q, v in model.unpack(jnp.asarray(tr["mu"]), iiv).items()}
        tr["theta"] = np.stack([th_chunk[q] for q in iiv], -1)
        tr["coef"] = np.where(coef_log[None], np.exp(tr["beta"]), tr["beta"])
        rows += trace_rows(tr, it0, min(_CHUNK, n_total - it0), n_burn, names)
        if verbose:
            print(progress_line(rows[-1], names, n_total, time.perf_counter() - t_iter))
    history = pd.DataFrame(rows).set_index("iteration")
    mu = np.asarray(carry.mu)
    om = np.asarray(carry.omega)
    sig = np.asarray(carry.sigma)
    beta = np.asarray(carry.beta)
    w_iov = np.asarray(carry.w_iov)
    if not all(np.all(np.isfinite(a)) for a in (mu, om, sig, beta, w_iov)):
        raise FloatingPointError("saem: the iterations diverged (non-finite estimates)")
    lo_b, hi_b = np.asarray(D.lo), np.asarray(D.hi)
    tol_b = 1e-8 * np.maximum(1.0, np.abs(beta))
    at_bound = [
        lb
        for lb, b, lo_, hi_, t in zip(coef_labels, beta, lo_b, hi_b, tol_b)
        if b <= lo_ + t or b >= hi_ - t
    ]

    # --------------------------------------------------------------- standard errors
    phi = pack_phi(mu, om, sig, est_idx, diagonal, beta, w_iov)
    Pn = phi.shape[0]
    cov_phi = np.full((Pn, Pn), np.nan)
    if n_fim:
        if verbose:
            print(f"  standard errors: Louis' information over {n_fim} MCMC iterations")
        _, gbar, hbar = louis_terms(
            P.st,
            S,
            jnp.asarray(est_idx),
            mu_fixed,
            D,
            data_r,
            carry,
            jnp.asarray(phi),
            k_fim,
            n_fim,
        )
        gbar = np.asarray(gbar).reshape(R, N, Pn).mean(axis=0)
        hbar = np.asarray(hbar).reshape(R, N, Pn, Pn).mean(axis=0)
        # I = sum_i -E[H_i + g_i g_i'] + E[g_i] E[g_i]'
        info = -np.sum(hbar, axis=0) + np.einsum("ni,nj->ij", gbar, gbar)
        info = 0.5 * (info + info.T)
        try:
            cov_phi = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            pass

    theta_all = model.unpack(jnp.asarray(mu), iiv)
    theta = {q: float(theta_all[q]) for q in estimate}
    at_bounds = [q for q, lo_q, hi_q in theta_bounds if near_bound(theta[q], lo_q, hi_q)]
    rows_t, cols_t = np.tril_indices(k) if not diagonal else (np.arange(k), np.arange(k))

    def natural(p):
        m_, o_, s_, b_, w_ = unpack_phi(
            p, k, len(est_idx), jnp.asarray(est_idx), mu_fixed, diagonal, nb, m_iov
        )
        th_ = model.unpack(m_, iiv)
        th_v = [th_[iiv[j]] for j in est_idx]
        th_s = jnp.stack(th_v) if th_v else jnp.zeros((0,), p.dtype)
        cf = jnp.where(jnp.asarray(coef_log), jnp.exp(b_), b_)
        return jnp.concatenate([th_s, cf, o_[rows_t, cols_t], w_, s_])

    nat = np.asarray(natural(jnp.asarray(phi)))
    Jn = np.asarray(jax.jacfwd(natural)(jnp.asarray(phi)))
    cov_nat = Jn @ cov_phi @ Jn.T
    se = np.sqrt(np.where(np.diag(cov_nat) >= 0, np.diag(cov_nat), np.nan))
    labels = (
        [iiv[j] for j in est_idx]
        + list(coef_labels)
        + [f"OMEGA({iiv[a]},{iiv[b]})" for a, b in zip(rows_t, cols_t)]
        + [f"OMEGA_IOV({q})" for q in iov_names]
        + sig_names
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        rse = 100 * se / np.abs(nat)
    table = pd.DataFrame(dict(parameter=labels, estimate=nat, se=se, rse_pct=rse))
    table = table.set_index("parameter")

    errs_fit, off = {}, 0
    for o, e in zip(outputs, errors):
        errs_fit[o] = e.replace(sig[off : off + len(e.names)])
        off += len(e.names)
    err_fit = errs_fit[outputs[0]]
    coefs = nat[len(est_idx) : len(est_idx) + nb]
    cov_est = {lb: float(v) for lb, v in zip(coef_labels, coefs)}
    fitted_covs, o_ = [], 0
    for c in pop0.covariates:
        if c.estimate:
            m_ = len(c.coefficients())
            c = c.with_coefficients([float(v) for v in coefs[o_ : o_ + m_]])
            o_ += m_
        fitted_covs.append(c)
    fitted = Population(
        model,
        typical={**pop.typical, **theta},
        covariates=fitted_covs,
        omega=om,
        iiv=list(iiv),
    )
    iov_fit = {q: float(v) for q, v in zip(iov_names, w_iov)}
    if verbose:
        print("  post-hoc individual (MAP) fits")
    ind = fit_individual(
        model,
        fd,
        fitted,
        err_fit if len(outputs) == 1 else errs_fit,
        output=outputs[0] if len(outputs) == 1 else None,
        solver=solver,
        censoring=censoring,
        iov=iov_fit or None,
        occasion_column=occasion_column,
    )
    from ._diagnostics import cwres as _cwres

    cw = _cwres(ind)
    n_cens = int(np.sum(fd.censored))
    n_obs = int(np.sum(fd.mask)) - n_cens
    isr = None
    ofv = ofv_se = float("nan")
    if n_is:
        if verbose:
            print(f"  importance sampling: {n_is} t({is_df:g}) draws per subject")
        # the fitted coefficients join the fixed covariate offsets
        P_is = saem_problem(model, fitted, fd, spec, iov_names) if nb else P
        center, cov, iv = is_proposal(model, fitted, fd, spec, sig, iov_fit, ind)
        isr = is_ofv(
            P_is,
            (P_is.tv, P_is.off, P_is.ev, P_is.ts, P_is.obs, P_is.mask),
            mu,
            om,
            sig,
            center,
            cov,
            int(n_is),
            is_df,
            k_is,
            n_obs,
            iv,
        )
        ofv, ofv_se = isr.ofv, isr.se
    m2ll = ofv + n_obs * LOG_2PI
    n_par = Pn
    wall = time.perf_counter() - t_start
    if verbose:
        print(f"  done in {wall:.1f} s: OFV {ofv:.3f} +- {ofv_se:.3f}")
    return SAEMResult(
        theta=theta,
        omega=om,
        error=err_fit,
        population=fitted,
        ofv=ofv,
        minus2ll=m2ll,
        aic=m2ll + 2 * n_par,
        bic=m2ll + n_par * math.log(max(n_obs, 1)),
        n_obs=n_obs,
        n_subjects=N,
        n_params=n_par,
        estimates=table,
        cov_phi=cov_phi,
        individual=ind,
        cwres=cw,
        converged=bool(np.all(np.isfinite(nat))),
        n_outer=n_total,
        wall_s=wall,
        message=(
            f"SAEM: {n_burn} exploratory + {n_em} smoothing iterations, {R} chains, "
            f"kernels {kernels}, seed {seed}; iterations {time.perf_counter() - t_iter:.1f} s"
            + (
                f"; covariate coefficient(s) {at_bound} at their bounds (clipped in the "
                "M-step; their SEs are not meaningful)"
                if at_bound
                else ""
            )
            + (
                f"; estimate(s) at a bound: {', '.join(at_bounds)} (held in the M-step; "
                "SE not meaningful)"
                if at_bounds
                else ""
            )
        ),
        bounds={q: (lo_q, hi_q) for q, lo_q, hi_q in theta_bounds},
        at_bounds=at_bounds,
        errors=errs_fit,
        censoring=cmode,
        n_censored=n_cens,
        covariate_effects=cov_est,
        omega_iov=iov_fit,
        ofv_se=ofv_se,
        importance=isr,
        history=history,
        n_burn=int(n_burn),
        n_em=int(n_em),
        n_chains=R,
        seed=int(seed),
    )
