"""Individual fits: maximum a posteriori (MAP) estimation, batched over subjects.

For subject ``i`` with random effects ``eta_i`` (unconstrained coordinates of the
parameters with IIV, ``p_i = g^-1(g(TV_i) + eta_i)``) the objective is the negative
twice log posterior without constants (NONMEM's ``$ESTIMATION POSTHOC`` objective):

```
O_i(eta) = sum_j [ ((y_ij - m_ij) / s_ij)**2 + log s_ij**2 ] + eta' Omega^-1 eta
```

with ``m, s`` the mean and SD of the (transformed) observation from the residual
error model at the prediction ``f_ij(eta)``. It is minimised for all subjects at once
by a batched Levenberg-Marquardt / Fisher-scoring iteration: one forward-mode pass of
the batched simulation gives every subject's prediction and Jacobian ``df/deta``
(``k`` tangent directions for ``k`` random effects), each subject has its own damping,
step acceptance and convergence flag, and a subject whose simulation fails or whose
objective is not finite is flagged, never raised.

The curvature used is the expected (Fisher) information of the Gaussian likelihood,
``H = 2 [sum_j J_j' (dm_j**2 + 2 ds_j**2) / s_j**2 J_j + Omega^-1]``; at the mode
``(H / 2)^-1`` is the Laplace approximation of the posterior covariance of ``eta``
(Almquist et al. 2015). Standard errors on the natural scale follow by the delta method;
95 % intervals are the transformed intervals of the unconstrained coordinates.

References:
    - Sheiner LB, Beal SL. Bayesian individualization of pharmacokinetics: simple
      implementation and comparison with non-Bayesian methods. J Pharm Sci
      71:1344-1348, 1982.
    - Almquist J, Leander J, Jirstrand M. Using sensitivity equations for computing
      gradients of the FOCE and FOCEI approximations to the population likelihood.
      J Pharmacokinet Pharmacodyn 42:191-209, 2015.
    - Savic RM, Karlsson MO. Importance of shrinkage in empirical Bayes estimates for
      diagnostics. AAPS J 11:558-569, 2009.

The optimisers are in :mod:`._map_optimisers`, the result class in :mod:`._fit_result`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _executables
from ..ode import Model
from ..ode._piecewise import Piecewise
from ..solve._base import AbstractSolver
from ..solve._ensemble import Ensemble
from ._data import PRE_DOSE_EPS as PRE_DOSE_EPS
from ._data import FitData as FitData
from ._data import Obs as Obs
from ._data import as_obs as as_obs
from ._data import fit_buckets as fit_buckets
from ._data import pad_axis as pad_axis
from ._data import pad_fit_batch as pad_fit_batch
from ._data import prepare_data as prepare_data
from ._data import resolve_outputs as resolve_outputs
from ._data import shape_bucket as shape_bucket
from ._fit_result import FitResult as FitResult
from ._iov import check_iov, iov_precision, kappa_frame, refuse_varying_iov, with_occasions
from ._map_optimisers import adam_batched, lm_batched, optx_batched
from ._residual import ErrorModel
from ._terms import Spec as Spec
from ._terms import as_population as as_population
from ._terms import baseline as baseline
from ._terms import covariate_columns as covariate_columns
from ._terms import extra_nll as extra_nll
from ._terms import f_and_jac as f_and_jac
from ._terms import individual_params as individual_params
from ._terms import make_spec as make_spec
from ._terms import obs_moments as obs_moments
from ._terms import obs_transform as obs_transform
from ._terms import posterior_terms as posterior_terms
from ._terms import predict as predict
from ._terms import refuse_time_varying as refuse_time_varying
from ._terms import subject_terms as subject_terms
from ._terms import typical_values as typical_values

__all__ = ["FitResult", "fit_individual", "prepare_data"]


def _pad_rows(tree, n_to):
    """Pad every leaf's leading axis to ``n_to`` with copies of row 0."""

    def pad(a):
        n = a.shape[0]
        if n == n_to:
            return a
        return jnp.concatenate([a, jnp.broadcast_to(a[:1], (n_to - n,) + a.shape[1:])], axis=0)

    return jax.tree.map(pad, tree)


# ============================================================================ program
@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # tests count traces
def map_program(
    spec: Spec,
    batch: tuple[Any, Any, Any, Any, Any, Any],
    sigma,
    omega_inv,
    max_iter,
    tol,
    *,
    block: int | None = None,
    devices: int = 1,
):
    """One compiled program for :func:`fit_individual`: the batched LM
    (:func:`lm_batched` on ``batch = (tv, eta0, ev, ts, y, mask)`` and the other
    arguments), then each subject's prediction at its typical values (``pred``) and the
    standardised residuals at the estimate (``iwres``, before masking: ``(obs - m) / s``
    with ``m, s`` the moments at the prediction, or at 0 where the subject's fit
    failed)."""
    out = lm_batched(spec, *batch, sigma, omega_inv, max_iter, tol, block=block, devices=devices)
    tv, eta0, ev, ts, y, _ = batch
    obs = as_obs(y)
    pred, _ = predict(spec, individual_params(spec, tv, jnp.zeros_like(eta0)), ev, ts, obs.out)
    f = jnp.where(out["ok"][:, None], out["f"], 0.0)
    f = jnp.where(jnp.isfinite(f), f, 0.0)
    m, s = obs_moments(spec, f, sigma, obs.out)
    yt = obs_transform(spec, obs.dv, obs.out)
    return dict(out, pred=pred, iwres=(yt - m) / s)


@eqx.filter_jit
def natural_program(model: Model, names: tuple, tv0: dict, eta, sd):
    """Natural-scale estimates, their slopes in the unconstrained coordinates and the
    95 % interval ends: ``z = pack(tv0) + eta``, ``unpack(z)``, ``d unpack / dz`` and
    ``unpack(z -/+ 1.96 sd)`` (one program for the batch; see :func:`_natural`)."""
    z = model.pack(tv0, names) + eta
    val, slope = jax.jvp(lambda u: model.unpack(u, names), (z,), (jnp.ones_like(z),))
    lo = model.unpack(z - 1.959963984540054 * sd, names)
    hi = model.unpack(z + 1.959963984540054 * sd, names)
    return val, slope, lo, hi


# ============================================================================ driver
def _natural(model, names, tv0, eta, cov):
    """Natural-scale estimates, delta-method SEs, 95 % intervals, correlations.

    The batch runs padded to its subject bucket (:func:`natural_program`), so a new
    number of subjects reuses the compiled program."""
    sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=-2, axis2=-1), 0.0))
    n = eta.shape[0]
    nb = shape_bucket(n)
    rows = lambda a: pad_axis(np.asarray(a), nb, 0)  # noqa: E731
    val, slope, lo, hi = _executables.call(
        natural_program,
        model,
        tuple(names),
        {k: rows(v) for k, v in tv0.items()},
        rows(eta),
        rows(sd),
    )
    cut = lambda a: np.asarray(a)[:n]  # noqa: E731
    se = {k: np.abs(cut(slope[k])) * sd[:, i] for i, k in enumerate(names)}
    ci = {k: (cut(lo[k]), cut(hi[k])) for k in names}
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / (sd[:, :, None] * sd[:, None, :])
    return {k: cut(v) for k, v in val.items()}, se, ci, corr


def fit_individual(
    model: Model,
    data,
    prior,
    error: ErrorModel | Mapping[str, ErrorModel] | None = None,
    *,
    output: str | None = None,
    solver: AbstractSolver | None = None,
    method: str = "lm",
    n_starts: int = 1,
    key=None,
    max_iter: int = 100,
    tol: float = 1e-8,
    adam_steps: int = 2000,
    adam_lr: float = 0.02,
    devices: int | None = None,
    block: int | None = None,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
    buckets: bool = True,
    iov: Mapping[str, float] | None = None,
    occasion_column: str = "OCC",
) -> FitResult:
    """MAP fits of every subject of a dataset in one compiled, batched run.

    Arguments:
        model: the model.
        data: a :class:`~twinjax.data.Dataset` or a mapping (see :func:`prepare_data`).
        prior: a :class:`~twinjax.Population` (typical values, covariate effects and
            Omega of the parameters with IIV, which are the fitted ones) or a dict
            ``{"typical": {...}, "omega": ..., "iiv": [...]}``.
        error: the residual error model (default additive with SD 1), or one per
            output, ``{output: ErrorModel}``: several outputs fitted jointly (e.g.
            ``{"pk.C": ErrorModel("proportional"), "pd.E": ErrorModel("additive")}``),
            each record compared with the output its ``DVID`` (or ``output_column``)
            names.
        output: the model output compared with DV (default: the first output; not
            with a mapping ``error``).
        solver: a forward-mode differentiable solver: ``solvers.Ensemble()`` (default)
            or ``solvers.Diffrax(adjoint="forward")``.
        method: ``"lm"`` (batched Levenberg-Marquardt / Fisher scoring on the exact MAP
            objective; default), ``"optimistix"`` (``optx.least_squares`` with
            ``optx.LevenbergMarquardt`` on stacked residuals, vmapped over subjects) or
            ``"adam"`` (optax Adam on the exact objective, ``adam_steps`` steps). Every
            method ends with LM polishing iterations, which also give the flags and
            the Laplace covariance.
        n_starts: number of starts per subject (the first at eta = 0, the others drawn
            from N(0, Omega)); the best converged one is kept.
        key: PRNG key for the extra starts (default ``jax.random.key(0)``).
        max_iter: LM iteration cap; tol: convergence tolerance on the Newton decrement
            ``G' H^-1 G`` of the objective.
        adam_steps, adam_lr: Adam settings.
        devices: split the subjects of the LM over the first ``devices`` JAX devices
            (default: all of ``jax.devices()``; one on a plain CPU setup, see
            ``XLA_FLAGS=--xla_force_host_platform_device_count``); each device fits
            its own subjects. The estimates do not depend on it.
        block: subjects per block of the LM (default ``LM_BLOCK`` = 256 on CPU, one
            batch on accelerators; ``0``: one batch). The estimates do not depend on it.
        censoring: how censored records (``CENS``/``BLQ``/``LLOQ`` columns, or
            ``lloq``) enter: ``"m3"`` (default: ``-2 log P(Y < LLOQ)``), ``"m4"`` (M3
            with every record conditioned on a positive value), ``"drop"`` (left out;
            biased, for comparison).
        lloq: a constant LLOQ: observations below it are censored at it.
        dvid: ``{tag: output}`` mapping of the records' output tags (default: 1, 2,
            ... name the outputs in the order of ``error``; an output name names
            itself).
        output_column: the column tagging records with outputs: ``"DVID"`` or
            ``"CMT"``.
        buckets: pad the number of subjects (times ``n_starts``), of observation
            records and of dose-event rows up to shape buckets (powers of two; see
            :func:`~twinjax.calibrate._data.shape_bucket`), with the padding masked
            out, so that a new patient or batch size within a bucket runs the program
            compiled before (in this process, or from the persistent cache of
            :func:`twinjax.enable_compilation_cache`). The estimates do not depend on
            it.

    Returns:
        A :class:`FitResult`; subjects that cannot be fitted are flagged
        (``converged`` False, NaN estimates where nothing finite was found), never
        raised.

    Raises:
        ValueError: bad arguments (unknown output or method, a prior without IIV, a
            record tagged with no fitted output), before anything is compiled.
    """
    pop = as_population(model, prior)
    iov_var = check_iov(model, iov)
    if pop.n_iiv == 0 and not iov_var:
        raise ValueError("the prior has no IIV: nothing to fit individually")
    outputs, errors = resolve_outputs(model, error, output)
    if method not in ("lm", "optimistix", "adam"):
        raise ValueError(f"method must be 'lm', 'optimistix' or 'adam', got {method!r}")
    if iov_var and method != "lm":
        raise ValueError(f"iov needs method='lm', got method={method!r}")
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
        occasion_column=occasion_column if iov_var else None,
    )
    cmode = fit_censoring(fd, censoring)
    if method == "optimistix" and cmode != "none":
        raise ValueError(
            "method='optimistix' fits stacked Gaussian residuals, which censored records "
            f"({int(fd.censored.sum())} here) do not have; use method='lm' or 'adam'"
        )
    iov_names = tuple(iov_var)
    if iov_var:
        refuse_varying_iov(pop, iov_names, fd.varying)
    n_occ = fd.occasions.k if iov_var else 0
    spec = make_spec(
        model, solver, pop.iiv, errors, outputs, iov=iov_names, n_occ=n_occ,
        **spec_censoring(fd, censoring),
    )  # fmt: skip
    N, k = fd.n, spec.n_random
    tv_plain = typical_values(pop, fd.covariates, N, fd.varying)
    tv = with_occasions(tv_plain, iov_names, fd.occasions.times) if iov_var else tv_plain
    omega = np.asarray(pop.omega if pop.n_iiv else np.zeros((0, 0)), float)
    if iov_var:
        prec = iov_precision(iov_var, iov_names, n_occ)
        omega = _block_diag(omega, np.diag(1.0 / prec))
    omega_inv = np.linalg.inv(omega)
    # host arrays (numpy): an eager device operation would be one more program for a
    # fresh process to build; the fit's program takes them as they are
    sigma = np.asarray([float(getattr(e, q)) for e in errors for q in e.names])
    ts = np.asarray(fd.t_eval)
    y = fd.obs()
    mask = np.asarray(fd.mask)
    S = max(int(n_starts), 1)

    def tile(a):
        return a if S == 1 else jnp.concatenate([a] * S, axis=0)

    eta0 = jnp.zeros((N, k)) if S > 1 else np.zeros((N, k), np.asarray(ts).dtype)
    if S > 1:
        key = jax.random.key(0) if key is None else key
        L = jnp.linalg.cholesky(omega + 1e-12 * jnp.eye(k))
        draws = jax.random.normal(key, (S - 1, N, k)) @ L.T
        eta0 = jnp.concatenate([eta0, draws.reshape((S - 1) * N, k)], axis=0)
    tvS = jax.tree.map(tile, tv)
    evS = jax.tree.map(tile, fd.ev)
    tsS, yS, maskS = tile(ts), jax.tree.map(tile, y), tile(mask)
    if method == "adam":
        eta0 = adam_batched(
            spec, tvS, eta0, evS, tsS, yS, maskS, sigma, omega_inv, int(adam_steps), float(adam_lr)
        )
        eta0 = jnp.where(jnp.isfinite(eta0), eta0, 0.0)
    elif method == "optimistix":
        eta0 = optx_batched(
            spec, tvS, eta0, evS, tsS, yS, maskS, sigma, omega_inv, int(max_iter) * 4, 1e-10
        )
        eta0 = jnp.where(jnp.isfinite(eta0), eta0, 0.0)
    n_dev = len(jax.devices())
    n_dev = n_dev if devices is None else max(min(int(devices), n_dev), 1)
    n_all = eta0.shape[0]
    n_dev = min(n_dev, n_all)
    T = ts.shape[1]
    batch = (tvS, eta0, evS, tsS, yS, maskS)
    if buckets:  # pad to shape buckets: new sizes within a bucket reuse the program
        n_to, t_to, e_to = fit_buckets(n_all, T, fd.ev.time.shape[-1], n_dev)
        batch = pad_fit_batch(batch, n_to, t_to, e_to)
    elif n_dev > 1:  # pad to a multiple of the device count with copies of subject 0
        batch = _pad_rows(batch, -(-n_all // n_dev) * n_dev)
    out = _executables.call(
        map_program,
        spec,
        batch,
        sigma,
        omega_inv,
        jax.device_put(max_iter),  # as jnp.asarray, with no program of its own
        tol,
        block=block,
        devices=n_dev,
    )
    out = {k_: np.asarray(v)[:n_all] for k_, v in out.items()}
    for k_ in ("f", "pred", "iwres"):
        out[k_] = out[k_][:, :T]
    if S > 1:
        # ranked in float64 whatever the fit's dtype (1e300 overflows float32): converged
        # starts first, then finished but unconverged ones
        O64 = out["O"].astype(np.float64)
        Os = np.where(out["converged"], O64, np.inf).reshape(S, N)
        Os = np.where(np.isfinite(Os), Os, np.where(out["ok"], O64, np.inf).reshape(S, N) + 1e300)
        best = np.argmin(np.where(np.isnan(Os), np.inf, Os), axis=0)
        pick = best * N + np.arange(N)
        out = {k_: v[pick] for k_, v in out.items()}
    return _finish(spec, pop, fd, tv, out, omega, dict(zip(outputs, errors)), tv_plain, iov_var)


def _block_diag(a, b):
    """The block-diagonal matrix of ``a`` and ``b``."""
    n, m = a.shape[0], b.shape[0]
    out = np.zeros((n + m, n + m))
    out[:n, :n] = a
    out[n:, n:] = b
    return out


def fit_censoring(fd: FitData, censoring: str | None) -> str:
    """The objective's censoring mode: ``"none"`` without censored records (and not
    M4), else ``"m3"`` (default) or ``"m4"``."""
    if censoring == "m4":
        return "m4"
    if censoring == "drop" or not fd.censored.any():
        return "none"
    return "m3"


def spec_censoring(fd: FitData, censoring: str | None) -> dict:
    """``make_spec``'s censoring arguments for the mode :func:`fit_censoring` gives.

    A fit with censored records (M3), or one that names its handling of them
    (``censoring="drop"`` or ``"m3"``), gets the M3 program with its traced switch
    (:attr:`Spec.m3_on`) set to whether the M3 objective applies, so an M3 fit and the
    fits of the same data that drop or ignore the censored records share one compiled
    program (the switch off gives the plain objective: bitwise the same results). M4,
    and a fit without censored records and without ``censoring=``, compile their own."""
    cmode = fit_censoring(fd, censoring)
    if cmode == "m4" or (cmode == "none" and censoring is None):
        return dict(censoring=cmode)
    return dict(censoring="m3", m3_on=cmode == "m3")


def _finish(spec, pop, fd, tv, out, omega, errors, tv_plain=None, iov_var=None) -> FitResult:
    if isinstance(errors, ErrorModel):
        errors = {spec.output: errors}
    error = next(iter(errors.values()))
    model, names = spec.model, spec.names
    k = spec.n_random
    ok = out["ok"]
    eta = np.where(ok[:, None], out["eta"], np.nan)
    H = out["H"]
    Hs = np.where(ok[:, None, None], H, np.eye(k))
    try:
        cov = 2.0 * np.linalg.inv(Hs)
    except np.linalg.LinAlgError:  # a singular curvature flags its subject, never raises
        cov = np.full_like(Hs, np.nan)
        ok = ok.copy()
        for i in range(Hs.shape[0]):
            try:
                cov[i] = 2.0 * np.linalg.inv(Hs[i])
            except np.linalg.LinAlgError:
                ok[i] = False
    out = dict(out, converged=out["converged"] & ok, ok=ok)
    eta = np.where(ok[:, None], eta, np.nan)
    cov = np.where(ok[:, None, None], cov, np.nan)
    eta_all, cov_all = eta, cov
    ki = len(names)
    eta, cov = eta_all[:, :ki], cov_all[:, :ki, :ki]  # the IIV part (marginal)
    tv_rep = tv if tv_plain is None else tv_plain
    tv0 = baseline(tv_rep)  # time-varying typical values: estimates reported at time 0
    params_fit, se, ci, corr = _natural(model, names, tv0, eta, cov)
    params = {kk: np.asarray(v) for kk, v in tv0.items()}
    params.update(params_fit)
    varying = {}
    if any(isinstance(v, Piecewise) for v in tv.values()):
        varying = {
            kk: jax.tree.map(np.asarray, v)
            for kk, v in individual_params(spec, tv, jnp.asarray(np.nan_to_num(eta_all))).items()
            if isinstance(v, Piecewise)
        }
    kappas = cov_kappa = cov_eta_kappa = occ_frame = None
    if spec.iov:
        m, K = len(spec.iov), spec.n_occ
        kappas = eta_all[:, ki:].reshape(-1, m, K)
        cov_kappa = cov_all[:, ki:, ki:]
        cov_eta_kappa = cov_all[:, :ki, ki:]
        occ_vals = {q: np.asarray(varying[q].values) for q in spec.iov}
        occ_frame = kappa_frame(fd, spec, spec.iov, kappas, occ_vals)
    # PRED and the residuals come from the fit's program (``map_program``)
    pred = out["pred"]
    ipred = np.where(ok[:, None], out["f"], np.nan)
    used = fd.mask & ~fd.censored & ok[:, None]
    iwres = np.where(used, out["iwres"], np.nan)
    omega_sd = np.sqrt(np.diag(np.asarray(omega)))
    good = out["converged"]
    shrink = {}
    for i, kk in enumerate(names[:ki]):
        e = eta[good, i]
        shrink[kk] = float(1.0 - np.std(e, ddof=1) / omega_sd[i]) if e.size > 1 else float("nan")
    return FitResult(
        ids=list(fd.ids),
        names=tuple(names),
        params=params,
        etas=eta,
        cov_eta=cov,
        se=se,
        ci95=ci,
        corr=corr,
        objective=np.where(ok, out["O"], np.nan),
        converged=np.asarray(out["converged"], bool),
        status=np.asarray(out["status"]),
        n_iter=np.asarray(out["n_iter"]),
        times=fd.times,
        dv=np.where(fd.mask, fd.dv, np.nan),
        mask=fd.mask,
        pred=np.asarray(pred),
        ipred=ipred,
        iwres=iwres,
        shrinkage=shrink,
        model=model,
        population=pop,
        error=error,
        solver=spec.solver,
        output=spec.output,
        data=fd,
        typical={kk: jax.tree.map(np.asarray, v) for kk, v in tv_rep.items()},
        varying=varying,
        outputs=tuple(spec.all_outputs()),
        errors=dict(errors),
        censoring=spec.reported_censoring,
        iov=dict(iov_var or {}),
        kappas=kappas,
        cov_kappa=cov_kappa,
        cov_eta_kappa=cov_eta_kappa,
        occasions=occ_frame,
    )
