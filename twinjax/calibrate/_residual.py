"""Residual (intra-individual) error models: additive, proportional, combined, log.

An observation ``y`` given the model prediction ``f`` is

- ``"additive"``:      ``y = f + a * eps``                        (``sd = a``)
- ``"proportional"``:  ``y = f * (1 + b * eps)``                  (``sd = b |f|``)
- ``"combined"``:      ``y = f + sqrt(a**2 + b**2 f**2) * eps``    (NONMEM's combined
  error with additive variances, nlmixr2's ``add + prop`` "combined2")
- ``"log"``:           ``log y = log f + a * eps``                (log-transform both sides,
  an exponential error; observations ``y <= 0`` are left out of the fit)

with ``eps ~ N(0, 1)``. The standard deviations ``a`` and ``b`` are the error model's
parameters ``sigma``; they are kept on the natural scale (SDs, not NONMEM's
``SIGMA`` variances).

References:
    - Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ. NONMEM 7 Users Guides (residual
      error models, ``Y = F + F*EPS(1) + EPS(2)``).
    - Proost JH. Combined proportional and additive residual error models in
      population pharmacokinetic modelling. Eur J Pharm Sci 109:S78-S82, 2017.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = ["ErrorModel"]

KINDS = ("additive", "proportional", "combined", "log")
_SD_FLOOR = 1e-8  # keeps a proportional SD positive where the prediction is 0
_LOG_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True)
class ErrorModel:
    """A residual error model.

    Arguments:
        kind: ``"additive"``, ``"proportional"``, ``"combined"`` or ``"log"``.
        add: the additive SD ``a`` (concentration units; on the log scale for
            ``"log"``). Used by additive, combined and log.
        prop: the proportional SD ``b`` (a fraction: 0.1 for 10 %). Used by
            proportional and combined.

    Raises:
        ValueError: an unknown kind, or a needed SD that is not positive.
    """

    kind: str = "additive"
    add: float = 1.0
    prop: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ErrorModel kind {self.kind!r} unknown; use one of {list(KINDS)}")
        for name in self.names:
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"ErrorModel({self.kind!r}): {name} must be > 0, got {v}")

    # ------------------------------------------------------------------ parameters
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the SDs this kind uses, in the order of :meth:`sigma`."""
        return {
            "additive": ("add",),
            "proportional": ("prop",),
            "combined": ("add", "prop"),
            "log": ("add",),
        }[self.kind]

    def sigma(self) -> jax.Array:
        """The SDs as a vector (order of :attr:`names`)."""
        return jnp.asarray([float(getattr(self, n)) for n in self.names])

    def replace(self, sigma) -> ErrorModel:
        """A copy with the SDs ``sigma`` (a vector in the order of :attr:`names`)."""
        vals = {n: float(s) for n, s in zip(self.names, list(sigma))}
        return dataclasses.replace(
            self, add=vals.get("add", self.add), prop=vals.get("prop", self.prop)
        )

    # ------------------------------------------------------------------ the model
    def observed(self, y):
        """The observation on the scale the error is Gaussian (log for ``"log"``)."""
        if self.kind == "log":
            return jnp.log(jnp.maximum(y, _LOG_FLOOR))
        return y

    def usable(self, y):
        """Observations the model can use (positive ones for ``"log"``)."""
        if self.kind == "log":
            return y > 0
        return jnp.isfinite(y) | jnp.isnan(y)  # NaN is kept: a broken subject is flagged

    def moments(self, f, sigma):
        """Mean and SD of the (transformed) observation given the prediction ``f``.

        Arguments:
            f: predictions (any shape).
            sigma: the SDs, a vector in the order of :attr:`names` (may be traced).

        Returns:
            ``(mean, sd)`` arrays of the shape of ``f``.
        """
        if self.kind == "additive":
            return f, jnp.broadcast_to(sigma[0], jnp.shape(f))
        if self.kind == "proportional":
            return f, jnp.sqrt((sigma[0] * f) ** 2 + _SD_FLOOR**2)
        if self.kind == "combined":
            return f, jnp.sqrt(sigma[0] ** 2 + (sigma[1] * f) ** 2)
        return jnp.log(jnp.maximum(f, _LOG_FLOOR)), jnp.broadcast_to(sigma[0], jnp.shape(f))

    def moments_and_slopes(self, f, sigma):
        """``(mean, sd, dmean/df, dsd/df)``, elementwise (forward mode)."""
        (m, s), (dm, ds) = jax.jvp(lambda x: self.moments(x, sigma), (f,), (jnp.ones_like(f),))
        return m, s, dm, ds

    def sample(self, key, f, sigma=None):
        """Observations drawn around predictions ``f`` (natural scale).

        Arguments:
            key: a JAX PRNG key.
            f: predictions.
            sigma: SDs (default: this model's).

        Returns:
            Noisy observations of the shape of ``f``.
        """
        sigma = self.sigma() if sigma is None else sigma
        m, s = self.moments(f, sigma)
        z = m + s * jax.random.normal(key, jnp.shape(f), jnp.result_type(f))
        return jnp.exp(z) if self.kind == "log" else z

    def __repr__(self) -> str:
        vals = ", ".join(f"{n}={getattr(self, n):.4g}" for n in self.names)
        return f"ErrorModel({self.kind!r}, {vals})"
