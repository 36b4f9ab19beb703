"""The outer vector ``phi`` of a FOCE-I population fit (:mod:`._nlme`): where each
population parameter lives in it (:class:`Layout`), the estimated covariate
coefficients' bounds (:class:`Coef`), and packing / unpacking on the unconstrained
scale (typical values, Cholesky factor of Omega, log IOV SDs, log residual SDs).

A typical value is held in its model parameter's unconstrained coordinate (``log`` for
a positive parameter, ``logit`` for a bounded one, ...), or, when the fit has bounds
``(lower, upper)`` for it (``fit_population(bounds=)``, ``[parameters.X] lower/upper``
of ``twinjax fit``), in :class:`Coef`'s transform of those bounds, as NONMEM keeps a
THETA inside ``(low, up)``: the optimiser moves an unconstrained number and the typical
value cannot leave the bounds (it approaches a bound only as that number goes to
infinity)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model


@dataclasses.dataclass(frozen=True)
class Coef:
    """One estimated covariate coefficient: its label and natural-scale bounds.

    The outer vector holds it unconstrained: ``x = z`` (no bounds), ``lower + e^z``,
    ``upper - e^z``, or ``lower + (upper - lower) sigmoid(z)`` (both bounds), as NONMEM
    transforms bounded THETAs.
    """

    label: str
    lower: float = -np.inf
    upper: float = np.inf

    def to_z(self, x: float) -> float:
        lo, hi = self.lower, self.upper
        if np.isfinite(lo) and np.isfinite(hi):
            u = (x - lo) / (hi - lo)
            return float(np.log(u) - np.log1p(-u))
        if np.isfinite(lo):
            return float(np.log(x - lo))
        if np.isfinite(hi):
            return float(np.log(hi - x))
        return float(x)

    def from_z(self, z):
        lo, hi = self.lower, self.upper
        if np.isfinite(lo) and np.isfinite(hi):
            return lo + (hi - lo) * jax.nn.sigmoid(z)
        if np.isfinite(lo):
            return lo + jnp.exp(z)
        if np.isfinite(hi):
            return hi - jnp.exp(z)
        return z


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each population parameter lives in the outer vector ``phi``:
    ``[theta | covariate coefficients | Omega (Cholesky) | log omega_iov (SDs) | log
    sigma]``."""

    theta: tuple  # names of estimated typical values
    iiv: tuple
    full_omega: bool
    n_sigma: int
    cov: tuple = ()  # estimated covariate coefficients (Coef), in the order of CovariateFactors
    iov: tuple = ()  # parameters with inter-occasion variability (one variance each)
    n_occ: int = 0  # occasions per subject (padded)
    bounds: tuple = ()  # ((name, lower, upper), ...): typical values held inside bounds

    def theta_coef(self, name: str) -> Coef | None:
        """The bounded transform of typical value ``name`` (None: the model's own)."""
        for q, lo, hi in self.bounds:
            if q == name:
                return Coef(q, float(lo), float(hi))
        return None

    @property
    def n_omega(self) -> int:
        k = len(self.iiv)
        return k * (k + 1) // 2 if self.full_omega else k

    @property
    def size(self) -> int:
        return len(self.theta) + len(self.cov) + self.n_omega + len(self.iov) + self.n_sigma

    def tril(self):
        k = len(self.iiv)
        return np.tril_indices(k) if self.full_omega else (np.arange(k), np.arange(k))


def check_bounds(model: Model, bounds, estimate, typical) -> tuple:
    """``((name, lower, upper), ...)`` from ``fit_population``'s ``bounds``, checked
    (before anything compiles); bounds equal to the parameter's own admissible range on
    both sides give no entry (the model's transform already holds it inside).

    Raises:
        TypeError: ``bounds`` is not a mapping.
        ValueError: an unknown or not estimated parameter, bounds that are not two
            numbers ``lower < upper``, reach outside the parameter's admissible range,
            or do not contain its initial typical value strictly.
    """
    if not bounds:
        return ()
    if not hasattr(bounds, "items"):
        raise TypeError(f"bounds must be a mapping {{name: (lower, upper)}}, got {bounds!r}")
    out = []
    for name, b in bounds.items():
        where = f"bounds[{name!r}]"
        if name not in model.param_names:
            raise ValueError(f"{where}: unknown parameter; the model's are {model.param_names}")
        if name not in estimate:
            raise ValueError(
                f"{where}: {name} is not estimated (estimate={list(estimate)}): bounds apply "
                "to estimated typical values"
            )
        try:
            if isinstance(b, str | bytes):
                raise TypeError
            lo, hi = (float(x) for x in b)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected (lower, upper), got {b!r}") from None
        q = model.param(name)
        if np.isnan(lo) or np.isnan(hi) or not lo < hi:
            raise ValueError(f"{where}: lower must be below upper, got ({lo:g}, {hi:g})")
        if lo < q.lower or hi > q.upper:
            raise ValueError(
                f"{where}: ({lo:g}, {hi:g}) reaches outside the parameter's admissible "
                f"range [{q.lower:g}, {q.upper:g}]"
            )
        v = float(typical[name])
        if not lo < v < hi:
            raise ValueError(
                f"{where}: the initial typical value {v:g} is not strictly inside ({lo:g}, {hi:g})"
            )
        if lo == q.lower and hi == q.upper:
            continue  # the model's own transform already keeps it inside
        out.append((name, lo, hi))
    return tuple(out)


def at_bound(x: float, lo: float, hi: float, rel: float = 1e-3) -> bool:
    """Whether ``x`` is within ``rel`` (relative to ``|x|``) of ``lo`` or ``hi``."""
    return bool(min(abs(x - lo), abs(hi - x)) <= rel * max(abs(x), 1e-12))


def unpack_outer(model: Model, lay: Layout, phi):
    """``phi`` -> (theta natural dict, Omega, sigma); see :func:`outer_coefs` for the
    covariate coefficients."""
    nt, nc, no = len(lay.theta), len(lay.cov), lay.n_omega
    z = phi[:nt]
    free = {k: z[i] for i, k in enumerate(lay.theta) if lay.theta_coef(k) is None}
    theta = model.from_unconstrained(free) if free else {}
    for i, k in enumerate(lay.theta):
        c = lay.theta_coef(k)
        if c is not None:
            theta[k] = c.from_z(z[i])
    theta = {k: theta[k] for k in lay.theta}
    k = len(lay.iiv)
    w = phi[nt + nc : nt + nc + no]
    rows, cols = lay.tril()
    diag = rows == cols
    vals = jnp.where(jnp.asarray(diag), jnp.exp(w), w)
    L = jnp.zeros((k, k), phi.dtype).at[rows, cols].set(vals)
    omega = L @ L.T
    sigma = jnp.exp(phi[nt + nc + no + len(lay.iov) :])
    return theta, omega, sigma


def iov_variances(lay: Layout, phi):
    """``(m,)`` the IOV variances ``omega_iov^2`` (the outer vector holds log SDs)."""
    off = len(lay.theta) + len(lay.cov) + lay.n_omega
    return jnp.exp(2.0 * phi[off : off + len(lay.iov)])


def prior_inverse(lay: Layout, phi, omega):
    """``(Omega_aug^-1, log det Omega_aug)`` of all random effects of a subject: the
    IIV ``Omega`` and, with IOV, ``omega_iov^2`` for each of the ``K`` kappas of every
    IOV parameter (block diagonal; padding occasions included, see ``_iov``)."""
    oinv = jnp.linalg.inv(omega)
    _, ld = jnp.linalg.slogdet(omega)
    if not lay.iov:
        return oinv, ld
    v = iov_variances(lay, phi)
    d = jnp.repeat(1.0 / v, lay.n_occ)
    k, m = omega.shape[0], d.shape[0]
    full = jnp.zeros((k + m, k + m), phi.dtype).at[:k, :k].set(oinv)
    full = full.at[k:, k:].set(jnp.diag(d))
    return full, ld + lay.n_occ * jnp.sum(jnp.log(v))


def outer_coefs(lay: Layout, phi):
    """The estimated covariate coefficients ``(n_cov,)`` on their natural scale."""
    nt = len(lay.theta)
    if not lay.cov:
        return jnp.zeros((0,), phi.dtype)
    return jnp.stack([c.from_z(phi[nt + i]) for i, c in enumerate(lay.cov)])


def pack_outer(
    model: Model, lay: Layout, theta: dict, omega, sigma, coefs=(), iov=()
) -> np.ndarray:
    """The outer vector; ``iov``: the IOV variances in the order of ``lay.iov``."""
    free = tuple(k for k in lay.theta if lay.theta_coef(k) is None)
    z = model.to_unconstrained({k: jnp.asarray(theta[k]) for k in free}, free) if free else {}
    z = dict(z)
    for k in lay.theta:
        c = lay.theta_coef(k)
        if c is not None:
            z[k] = c.to_z(float(theta[k]))
    L = np.linalg.cholesky(np.asarray(omega) + 1e-12 * np.eye(len(lay.iiv)))
    rows, cols = lay.tril()
    w = L[rows, cols]
    w = np.where(rows == cols, np.log(np.maximum(w, 1e-12)), w)
    zc = np.asarray([c.to_z(float(v)) for c, v in zip(lay.cov, coefs)], float)
    wi = 0.5 * np.log(np.asarray(iov, float).reshape(len(lay.iov)))
    return np.concatenate(
        [np.asarray([z[k] for k in lay.theta]), zc, w, wi, np.log(np.asarray(sigma))]
    )
