"""The fitting problem's numerics shared by MAP, FOCE-I and SAEM: priors and
covariate-adjusted typical values, the problem description (:class:`Spec`), individual
parameters, predictions and their Jacobians, and the terms of the objective."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ..ode import Model
from ..ode._piecewise import Piecewise, initial_values, schedule, split_params
from ..population import Population
from ..population._population import shift_unconstrained
from ..solve._base import AbstractSolver
from ..solve._simulate import simulate_core
from ._censoring import censored_nll
from ._data import Obs, as_obs
from ._residual import ErrorModel


# ============================================================================ priors
def as_population(model: Model, prior) -> Population:
    """A :class:`Population` from a Population or ``{"typical", "omega", "iiv"}``.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(prior, Population):
        if prior.model is not model and prior.model != model:
            raise ValueError("the population's model is not the model being fitted")
        return prior
    if isinstance(prior, Mapping):
        return Population(
            model,
            typical=prior.get("typical"),
            covariates=prior.get("covariates", ()),
            omega=prior.get("omega"),
            iiv=prior.get("iiv"),
        )
    raise TypeError("prior must be a twinjax Population or a dict(typical=, omega=, iiv=)")


def refuse_time_varying(pop: Population, covariates, varying=None) -> None:
    """Raise if a covariate effect of ``pop`` uses a covariate that changes within a
    subject and ``varying`` (``FitData.varying``) has no table of its values: a
    changing covariate must never be silently reduced to its first value."""
    tv = set(getattr(covariates, "attrs", {}).get("time_varying", [])) - set(varying or {})
    used = [c.covariate for c in pop.covariates if c.covariate in tv]
    if used:
        raise ValueError(
            f"covariate(s) {sorted(set(used))} change within subjects (time-varying); "
            "this call has no table of their values over time (a data mapping gives one "
            "value per subject). Give the data as a Dataset (fits then use every record's "
            "value), or use a baseline column of your own"
        )


def covariate_columns(covariates, varying=None) -> dict:
    """``{column: (N,) array}`` of the baseline table, with each time-varying
    covariate of ``varying`` as its :class:`~twinjax.Piecewise` instead."""
    cols: dict = {c: np.asarray(covariates[c], dtype=float) for c in covariates.columns}
    cols.update(varying or {})
    return cols


def typical_values(pop: Population, covariates, n: int, varying=None) -> dict:
    """Covariate-adjusted typical values ``{name: (n,) or Piecewise}`` of every model
    parameter; a parameter with an effect of a time-varying covariate (in ``varying``)
    is a :class:`~twinjax.Piecewise` on that covariate's change times."""
    refuse_time_varying(pop, covariates, varying)
    return pop.typical_values(covariate_columns(covariates, varying), n)


def baseline(tv: dict) -> dict:
    """``tv`` with every :class:`~twinjax.Piecewise` entry replaced by its value at
    time 0 (the subject's first record under NONMEM's convention)."""
    if not any(isinstance(v, Piecewise) for v in tv.values()):
        return tv
    rest, pw = split_params(tv)
    return {**rest, **initial_values(pw)}


# ============================================================================ numerics
class Spec(eqx.Module):
    """The static description of a fitting problem (model, solver, outputs, etas).

    ``output`` / ``error``: the (first) fitted output and its error model; with several
    outputs ``outputs`` and ``errors`` list them all (the residual SDs ``sigma`` are
    then the error models' SDs one after the other). ``censoring``: ``"none"`` (no
    censored records: the plain Gaussian objective), ``"m3"`` or ``"m4"``.
    """

    model: Model
    solver: AbstractSolver
    output: str = eqx.field(static=True)
    names: tuple = eqx.field(static=True)
    error: ErrorModel = eqx.field(static=True)
    outputs: tuple = eqx.field(static=True, default=())
    errors: tuple = eqx.field(static=True, default=())
    censoring: str = eqx.field(static=True, default="none")
    # inter-occasion variability: the parameters with IOV and the number of occasions
    # per subject K; the random effects are then ``[eta (IIV, names) | kappa]`` with
    # ``kappa`` of IOV parameter ``a`` on occasion ``o`` at column ``len(names) + a K + o``
    iov: tuple = eqx.field(static=True, default=())
    n_occ: int = eqx.field(static=True, default=0)
    # with censoring "m3": None (the M3 objective), or a 0-d bool array, a traced switch
    # between the M3 objective (True) and the plain one (False: data without censored
    # records, e.g. ``censoring="drop"``), so that such fits run one compiled program
    m3_on: Any = None

    @property
    def reported_censoring(self) -> str:
        """The objective's censoring mode as a fit reports it: ``"none"``, ``"m3"`` or
        ``"m4"`` (a concrete :attr:`m3_on` resolved)."""
        if self.m3_on is None:
            return self.censoring
        return "m3" if bool(self.m3_on) else "none"

    @property
    def n_random(self) -> int:
        """The number of random effects per subject (etas and kappas)."""
        return len(self.names) + len(self.iov) * self.n_occ

    def all_outputs(self) -> tuple:
        return self.outputs or (self.output,)

    def all_errors(self) -> tuple:
        return self.errors or (self.error,)

    def sigma_parts(self, sigma) -> list:
        """``sigma`` split into one vector per error model."""
        parts, off = [], 0
        for e in self.all_errors():
            parts.append(sigma[off : off + len(e.names)])
            off += len(e.names)
        return parts


def make_spec(
    model, solver, names, errors, outputs, censoring="none", iov=(), n_occ=0, m3_on=None
) -> Spec:
    """A :class:`Spec` (error models with default SDs: the SDs are arguments);
    ``iov``/``n_occ``: parameters with inter-occasion variability and occasions per
    subject; ``m3_on``: see :attr:`Spec.m3_on` (with ``censoring="m3"`` only)."""
    if m3_on is not None and censoring != "m3":
        raise ValueError(f"m3_on switches an 'm3' objective, not {censoring!r}")
    errs = tuple(ErrorModel(e.kind) for e in errors)
    multi = len(outputs) > 1  # one output: outputs/errors stay empty (Spec's defaults)
    return Spec(
        model,
        solver,
        outputs[0],
        tuple(names),
        errs[0],
        tuple(outputs) if multi else (),
        errs if multi else (),
        censoring,
        iov=tuple(iov),
        n_occ=int(n_occ) if iov else 0,
        m3_on=None if m3_on is None else np.asarray(m3_on, bool),
    )


def _select(out, values: list):
    """Per record the value of its output: ``values[out]`` (a list of arrays)."""
    if len(values) == 1:
        return values[0]
    acc = values[0]
    for j in range(1, len(values)):
        acc = jnp.where(out == j, values[j], acc)
    return acc


def obs_moments(spec: Spec, f, sigma, out, slopes: bool = False):
    """Mean and SD (and with ``slopes`` their derivatives in ``f``) of each record's
    (transformed) observation, from its own output's error model."""
    parts = spec.sigma_parts(sigma)
    vals = [
        (e.moments_and_slopes(f, sg) if slopes else e.moments(f, sg))
        for e, sg in zip(spec.all_errors(), parts)
    ]
    return tuple(_select(out, [v[i] for v in vals]) for i in range(len(vals[0])))


def obs_transform(spec: Spec, y, out):
    """Each record's observation on the scale its error model is Gaussian."""
    return _select(out, [e.observed(y) for e in spec.all_errors()])


def _is_log(spec: Spec, out):
    kinds = [e.kind == "log" for e in spec.all_errors()]
    return _select(out, [jnp.asarray(k) for k in kinds]) & jnp.ones(out.shape, bool)


def extra_nll(spec: Spec, f, sigma, obs: Obs):
    """Per record (``(N, T)``): the censored records' ``-2 log P(interval)`` and, for M4,
    the ``+2 log Phi(m/s)`` conditioning of every record on a positive value (0 for a
    log error model, whose values are positive anyway). Elementwise in ``f``."""
    m, s = obs_moments(spec, f, sigma, obs.out)
    is_log = _is_log(spec, obs.out)
    m4 = spec.censoring == "m4"
    bound = obs_transform(spec, obs.dv, obs.out)
    lim = obs.limit
    lim_ok = jnp.isfinite(lim) & ~(is_log & (lim <= 0))
    lim_t = jnp.where(lim_ok, obs_transform(spec, jnp.where(lim_ok, lim, 1.0), obs.out), 0.0)
    left = obs.cens == 1
    lo = jnp.where(lim_ok, lim_t, -jnp.inf)
    if m4:  # the value is positive: the interval starts at 0 at most
        lo = jnp.where(is_log, lo, jnp.maximum(lo, 0.0))
    lo = jnp.where(left, lo, bound)
    hi = jnp.where(left, bound, jnp.where(lim_ok, lim_t, jnp.inf))
    cens = jnp.where(obs.cens != 0, censored_nll(m, s, lo, hi), 0.0)
    if m4:
        cond = jnp.where(is_log, 0.0, 2.0 * log_ndtr(m / s))
        cens = cens + cond
    return cens


def individual_params(spec: Spec, tv: dict, eta) -> dict:
    """``p = g^-1(g(TV) + eta)`` for the IIV parameters, ``TV`` for the others (a
    time-varying ``TV``, a :class:`~twinjax.Piecewise`, is shifted at every time).

    With inter-occasion variability (``spec.iov``) ``eta`` is ``[eta | kappa]`` and an
    IOV parameter's ``TV`` is a LOCF Piecewise ``(N, K)`` on the occasion starts
    (:func:`~twinjax.calibrate._iov.with_occasions`): on occasion ``o`` it becomes
    ``g^-1(g(TV) + eta_P + kappa_Po)`` (``eta_P`` 0 without IIV)."""
    if spec.iov:
        return _iov_params(spec, tv, eta)
    p = dict(tv)
    steady = [k for k in spec.names if not isinstance(tv[k], Piecewise)]
    if len(steady) == len(spec.names):
        z = spec.model.pack(tv, spec.names)
        p.update(spec.model.unpack(z + eta, spec.names))
        return p
    for j, k in enumerate(spec.names):
        p[k] = shift_unconstrained(spec.model, k, tv[k], eta[..., j])
    return p


def _iov_params(spec: Spec, tv: dict, eta) -> dict:
    k, K = len(spec.names), spec.n_occ
    p = dict(tv)
    for j, q in enumerate(spec.names):
        if q not in spec.iov:
            p[q] = shift_unconstrained(spec.model, q, tv[q], eta[..., j])
    for a, q in enumerate(spec.iov):
        e = eta[..., k + a * K : k + (a + 1) * K]
        if q in spec.names:
            e = e + eta[..., spec.names.index(q)][..., None]
        p[q] = shift_unconstrained(spec.model, q, tv[q], e)
    return p


def predict(spec: Spec, p: dict, ev, ts, out=None):
    """``(f, status)``: each record's fitted output at ``ts`` (N, T) and per-subject
    status; ``out`` (N, T) selects the output of each record (default: the first).
    Parameters may be :class:`~twinjax.Piecewise` ``(N, C)`` (time-varying)."""
    p, pw = split_params(p)
    sched = None
    if pw:
        p = {**p, **initial_values(pw)}
        sched = schedule(pw, ev.kind.shape[0], ts.dtype)
    _, outputs, status = simulate_core(spec.model, spec.solver, p, ev, ts, sched=sched)
    names = spec.all_outputs()
    if out is None or len(names) == 1:
        return outputs[names[0]], status
    return _select(out, [outputs[o] for o in names]), status


def f_and_jac(spec: Spec, tv: dict, eta, ev, ts, out=None):
    """Predictions ``(N, T)``, Jacobians ``df/deta`` ``(N, T, k)`` and status (N,)."""
    k = eta.shape[-1]

    def f(e):
        return predict(spec, individual_params(spec, tv, e), ev, ts, out)

    def one(v):
        return jax.jvp(f, (eta,), (jnp.broadcast_to(v, eta.shape),), has_aux=True)

    if k == 0:
        fv, st = f(eta)
        return fv, jnp.zeros(fv.shape + (0,), fv.dtype), st
    fv, J, st = jax.vmap(one, out_axes=(0, -1, 0))(jnp.eye(k, dtype=eta.dtype))
    return fv[0], J, st[0]


def subject_terms(spec: Spec, f, J, y, mask, sigma):
    """Data part of the objective, its gradient and curvature, per subject.

    Uncensored records: ``((y - m)/s)^2 + log s^2`` with the expected (Fisher)
    curvature ``2 (m'^2 + 2 s'^2) / s^2 J J'``. Censored records (and M4's conditioning
    on positive values): ``-2 log P`` (:func:`extra_nll`), with the exact gradient and,
    as curvature, the exact second derivative in the prediction ``f`` times ``J J'``
    (the second derivative of ``f`` in eta neglected, as FOCE does); a record's total
    curvature coefficient is floored at 0 so the curvature stays positive semidefinite.

    Arguments:
        y: ``(N, T)`` observations or an :class:`Obs` (censoring flags, outputs).

    Returns:
        ``(O, G, H, m, s)``: ``(N,)``, ``(N, k)``, ``(N, k, k)`` and the ``(N, T)``
        mean and SD of the transformed observations.
    """
    obs = as_obs(y)
    m, s, dm, ds = obs_moments(spec, f, sigma, obs.out, slopes=True)
    yt = obs_transform(spec, obs.dv, obs.out)
    censored = spec.censoring != "none"
    gmask = (mask & (obs.cens == 0)) if censored else mask
    w = gmask.astype(f.dtype)
    r = jnp.where(gmask, (yt - m) / s, 0.0)
    logs2 = jnp.where(gmask, 2.0 * jnp.log(s), 0.0)
    O = jnp.sum(r**2 + logs2, axis=-1)
    Jm = dm[..., None] * J
    Js = ds[..., None] * J
    coef_m = jnp.where(gmask, -2.0 * r / s, 0.0)
    coef_s = jnp.where(gmask, (2.0 - 2.0 * r**2) / s, 0.0)
    G = jnp.einsum("nt,ntk->nk", coef_m, Jm) + jnp.einsum("nt,ntk->nk", coef_s, Js)
    inv_s2 = jnp.where(gmask, 1.0 / s**2, 0.0) * w
    if not censored or spec.m3_on is not None:
        H_plain = 2.0 * (
            jnp.einsum("nt,ntk,ntl->nkl", inv_s2, Jm, Jm)
            + 2.0 * jnp.einsum("nt,ntk,ntl->nkl", inv_s2, Js, Js)
        )
        if not censored:
            return O, G, H_plain, m, s
    ones = jnp.ones_like(f)

    def ell(ff):
        return extra_nll(spec, ff, sigma, obs)

    def d1(ff):
        return jax.jvp(ell, (ff,), (ones,))

    (l0, l1), (_, l2) = jax.jvp(d1, (f,), (ones,))
    l0 = jnp.where(mask, l0, 0.0)
    l1 = jnp.where(mask, l1, 0.0)
    c = jnp.where(mask, 2.0 * inv_s2 * (dm**2 + 2.0 * ds**2) + l2, 0.0)
    O = O + jnp.sum(l0, axis=-1)
    G = G + jnp.einsum("nt,ntk->nk", l1, J)
    H = jnp.einsum("nt,ntk,ntl->nkl", jnp.maximum(c, 0.0), J, J)
    if spec.m3_on is not None:
        # the switch off: no record is censored, so the extra terms above are zeros
        # (O and G unchanged) and the curvature is the plain one, as without censoring
        H = jnp.where(spec.m3_on, H, H_plain)
    return O, G, H, m, s


def posterior_terms(spec: Spec, tv, eta, ev, ts, y, mask, sigma, omega_inv):
    """Objective, gradient and curvature of ``-2 log posterior`` (no constants).

    Returns:
        ``(O, G, H, f, status, ok)``; ``O`` is ``inf`` where ``ok`` is False (failed
        simulation or non-finite values).
    """
    f, J, st = f_and_jac(spec, tv, eta, ev, ts, as_obs(y).out)
    O, G, H, _, _ = subject_terms(spec, f, J, y, mask, sigma)
    Oi = omega_inv
    O = O + jnp.einsum("nk,kl,nl->n", eta, Oi, eta)
    G = G + 2.0 * eta @ Oi
    H = H + 2.0 * Oi[None]
    ok = (st == 0) & jnp.isfinite(O) & jnp.all(jnp.isfinite(G), -1)
    ok = ok & jnp.all(jnp.isfinite(H), (-1, -2))
    O = jnp.where(ok, O, jnp.inf)
    return O, G, H, f, st, ok
