"""SAEM's problem (part of :mod:`._saem`): the data and fixed quantities of a fit, the
data likelihood ``-2 log p(y | z)`` (with inter-occasion variability ``-2 log p(y | z,
kappa)``) of the latent coordinates and the batched simulation that evaluates it,
shared by the SAEM iterations, Louis' information and the importance-sampling
objective."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Piecewise
from ..population._population import shift_unconstrained
from ..solve._ensemble import Ensemble
from ._iov import refuse_varying_iov, with_occasions
from ._map import (
    Obs,
    Spec,
    as_population,
    baseline,
    extra_nll,
    fit_censoring,
    make_spec,
    obs_moments,
    obs_transform,
    predict,
    prepare_data,
    resolve_outputs,
    typical_values,
)

LOG_2PI = float(np.log(2 * np.pi))


# ============================================================================ problem
class ProblemStatic(eqx.Module):
    """What the compiled functions need besides arrays: the spec, the IIV names and,
    with inter-occasion variability, the IOV names and the occasions per subject."""

    spec: Spec
    iiv: tuple = eqx.field(static=True)
    n: int = eqx.field(static=True)
    iov: tuple = eqx.field(static=True, default=())
    n_occ: int = eqx.field(static=True, default=0)


@dataclasses.dataclass(frozen=True, eq=False)
class SAEMProblem:
    """Data and fixed quantities of a fit (host side)."""

    st: ProblemStatic
    # {name: (N,)} covariate-adjusted typical values (non-IIV params used); an IIV param
    # with a time-varying covariate: its Piecewise course relative to its time-0 value;
    # an IOV param: a LOCF Piecewise (N, K) on the occasion starts (``with_occasions``)
    tv: dict
    off: jax.Array  # (N, k) covariate offsets of the IIV params (unconstrained)
    ev: object
    ts: jax.Array
    obs: Obs
    mask: jax.Array
    n: int


def saem_problem(model, pop, fd, spec, iov: tuple = ()) -> SAEMProblem:
    """The problem of ``pop`` on ``fd``; ``iov``: the parameters with inter-occasion
    variability (``fd`` then has its occasions)."""
    iiv = tuple(pop.iiv)
    N = fd.n
    tvN = {
        k: jax.tree.map(jnp.asarray, v)
        for k, v in typical_values(pop, fd.covariates, N, fd.varying).items()
    }
    tv0 = baseline(tvN)
    if iiv:
        z_i = np.asarray(model.pack(tv0, iiv))
        z_0 = np.asarray(model.pack({k: jnp.asarray(pop.typical[k]) for k in iiv}, iiv))
        off = z_i - z_0[None]
    else:
        off = np.zeros((N, 0))
    for j, q in enumerate(iiv):
        if model.param(q).transform != "log" and np.max(np.abs(off[:, j])) > 1e-12:
            raise ValueError(
                f"saem: the covariate effect on {q!r} (transform "
                f"{model.param(q).transform!r}) is not mu-referenced: SAEM supports "
                "covariate factors on log-transformed parameters only"
            )
        if isinstance(tvN[q], Piecewise):  # time-varying: its course relative to time 0
            if model.param(q).transform != "log":
                raise ValueError(
                    f"saem: {q!r} changes with a time-varying covariate but its transform "
                    f"is {model.param(q).transform!r}; SAEM supports covariate factors on "
                    "log-transformed parameters only"
                )
            tvN[q] = tvN[q] / tv0[q]
    n_occ = 0
    if iov:
        refuse_varying_iov(pop, iov, fd.varying)
        tvN = with_occasions(tvN, iov, fd.occasions.times)
        n_occ = fd.occasions.k
    return SAEMProblem(
        st=ProblemStatic(spec, iiv, N, tuple(iov), n_occ),
        tv=tvN,
        off=jnp.asarray(off),
        ev=fd.ev,
        ts=jnp.asarray(fd.t_eval),
        obs=fd.obs(),
        mask=jnp.asarray(fd.mask),
        n=N,
    )


def tile_rows(tree, r: int):
    """Every leaf's leading axis repeated ``r`` times (copies one after the other)."""
    if r == 1:
        return tree

    def rep(a):
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[None], (r,) + a.shape).reshape((r * a.shape[0],) + a.shape[1:])

    return jax.tree.map(rep, tree)


# ============================================================================ likelihood
def data_nll(spec, f, sigma, obs: Obs, mask):
    """Per subject ``-2 log p(y | f)`` without the ``log 2 pi`` constants (B,).

    Observed records: ``((y - m)/s)^2 + log s^2``; censored records (and M4's
    conditioning): ``-2 log P`` as in the FOCE-I/MAP objective (``extra_nll``).
    """
    m, s = obs_moments(spec, f, sigma, obs.out)
    yt = obs_transform(spec, obs.dv, obs.out)
    censored = spec.censoring != "none"
    g = (mask & (obs.cens == 0)) if censored else mask
    r = jnp.where(g, (yt - m) / s, 0.0)
    terms = r**2 + jnp.where(g, 2.0 * jnp.log(s), 0.0)
    if censored:
        terms = terms + jnp.where(mask, extra_nll(spec, f, sigma, obs), 0.0)
    return jnp.sum(terms, axis=-1)


def simulate_z(P: ProblemStatic, z, tv, off, ev, ts, obs, mask, sigma, kappa=None):
    """``(L, f)``: ``-2 log p(y | z)`` (inf where the simulation fails) and predictions.

    With inter-occasion variability (``P.iov``), ``kappa`` ``(B, m, K)``: an IOV
    parameter is ``g^-1(z + off + kappa_o)`` on occasion ``o`` (``g(TV) + kappa_o``
    without IIV), a LOCF Piecewise on the occasion starts (``tv[q].times``)."""
    spec = P.spec
    p = dict(tv)
    if P.iiv:
        p.update(spec.model.unpack(z + off, P.iiv))
        for q in P.iiv:  # a time-varying covariate factor relative to time 0
            if isinstance(tv[q], Piecewise) and q not in P.iov:
                p[q] = tv[q] * p[q]
    for a, q in enumerate(P.iov):
        base = p[q] if q in P.iiv else tv[q].values[:, 0]
        times = tv[q].times
        pw = Piecewise(times, jnp.broadcast_to(base[:, None], times.shape), "locf")
        p[q] = shift_unconstrained(spec.model, q, pw, kappa[:, a, :])
    f, st = predict(spec, p, ev, ts, obs.out)
    L = data_nll(spec, f, sigma, obs, mask)
    ok = (st == 0) & jnp.isfinite(L)
    return jnp.where(ok, L, jnp.inf), f


def quad(z, mu, oinv):
    """``(z - mu)' Omega^-1 (z - mu)`` per row; ``mu`` ``(k,)`` or per row ``(B, k)``."""
    d = z - jnp.broadcast_to(mu, z.shape)
    return jnp.einsum("bk,kl,bl->b", d, oinv, d)


@eqx.filter_jit
def simulate_jit(P: ProblemStatic, z, tv, off, ev, ts, obs, mask, sigma, kappa=None):
    return simulate_z(P, z, tv, off, ev, ts, obs, mask, sigma, kappa)


def prepare(
    model, data, population, error, output, solver, censoring, lloq, dvid, oc, iov=(), occ="OCC"
):
    """Everything a fit needs before it compiles; ``iov``: the (checked) names of the
    parameters with inter-occasion variability, ``occ`` the occasion column."""
    pop = as_population(model, population)
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
        output_column=oc,
        occasion_column=occ if iov else None,
    )
    cmode = fit_censoring(fd, censoring)
    spec = make_spec(model, solver, pop.iiv, errors, outputs, cmode)
    P = saem_problem(model, pop, fd, spec, tuple(iov))
    return pop, outputs, errors, solver, fd, cmode, spec, P
