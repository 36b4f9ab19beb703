"""Covariate effects on typical values (part of :mod:`._population`): the abstract
:class:`Covariate` (fixed or estimated coefficients, bounds, labels) and its forms
:class:`Power`, :class:`Linear`, :class:`Exponential` and :class:`Categorical`, and the
shift of a value by an eta on its parameter's unconstrained scale.

References:
    - Holford NHG. A size standard for pharmacokinetics. Clin Pharmacokinet
      30:329-332, 1996 (allometric scaling ``(WT/70)**0.75`` for clearances).
    - Mould DR, Upton RN. Basic concepts in population modeling, simulation, and
      model-based drug development - part 2. CPT Pharmacometrics Syst Pharmacol
      2:e38, 2013 (covariate model forms).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping
from typing import Self

import jax.numpy as jnp

from ..ode import Model, Piecewise

# ============================================================================ covariates
_INF = math.inf


def _fmt_level(v) -> str:
    """A category value as text (``1`` for ``1.0``)."""
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def shift_unconstrained(model: Model, name: str, value, eta):
    """``g^-1(g(value) + eta)`` for parameter ``name`` (``g``: its log / logit /
    identity transform); ``value`` ``(N,)`` or a :class:`~twinjax.Piecewise` (then the
    same ``eta`` shifts every one of its values)."""

    def shift(v):
        e = eta[..., None] if jnp.ndim(v) > jnp.ndim(eta) else eta
        z = model.to_unconstrained({name: v}, (name,))[name]
        return model.from_unconstrained({name: z + e})[name]

    return value.map(shift) if isinstance(value, Piecewise) else shift(value)


@dataclasses.dataclass(frozen=True)
class Covariate(abc.ABC):
    """A multiplicative covariate effect on one parameter's typical value.

    ``TV_i = TV * factor(covariates_i[covariate])``; several effects on one parameter
    multiply. Subclasses: :class:`Power`, :class:`Linear`, :class:`Exponential`,
    :class:`Categorical`.

    The coefficient(s) (``theta``, or a categorical's ``factors``) are fixed unless
    ``estimate=True``: then a population fit (:func:`twinjax.calibrate.fit_population`)
    estimates them with the typical values, Omega and the residual error, starting
    from the given values, inside ``bounds``; the fit reports them as
    ``"<param>~<covariate>"`` (or ``name``). Simulation, sampling and MAP fits always
    use the current values.

    Arguments:
        param: the parameter name (``"CL"``).
        covariate: the covariate column (``"WT"``).
        estimate: keyword only; estimate the coefficient(s) in population fits.
        bounds: keyword only; ``(lower, upper)`` of each estimated coefficient on its
            natural scale (``-inf`` / ``inf`` for none; default: none, except
            :class:`Categorical` factors, which are positive). The starting value
            must lie strictly inside.
        name: keyword only; the label of the estimated coefficient (default
            ``"<param>~<covariate>"``; a categorical with several ``factors`` adds
            ``"[<category>]"``).

    Raises:
        ValueError: for bounds that are not an increasing pair, or a starting value
            outside them.
    """

    param: str
    covariate: str
    estimate: bool = dataclasses.field(default=False, kw_only=True)
    bounds: tuple[float, float] | None = dataclasses.field(default=None, kw_only=True)
    name: str | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        if not isinstance(self.estimate, bool):
            raise ValueError(
                f"{self.describe()}: estimate must be True or False, got {self.estimate!r}"
            )
        if self.name is not None and not (isinstance(self.name, str) and self.name.strip()):
            raise ValueError(f"{self.describe()}: name must be a non-empty string")
        if self.bounds is not None:
            b = tuple(self.bounds)
            if len(b) != 2 or not all(isinstance(v, (int, float)) for v in b):
                raise ValueError(
                    f"{self.describe()}: bounds must be a pair (lower, upper) of numbers "
                    f"(-inf / inf for none), got {self.bounds!r}"
                )
            lo, hi = float(b[0]), float(b[1])
            if math.isnan(lo) or math.isnan(hi) or not lo < hi:
                raise ValueError(
                    f"{self.describe()}: bounds must satisfy lower < upper, got {self.bounds!r}"
                )
            object.__setattr__(self, "bounds", (lo, hi))
        lo, hi = self.coefficient_bounds()
        for label, v in self.coefficients().items():
            if not (math.isfinite(v) and lo < v < hi):
                raise ValueError(
                    f"{self.describe()}: coefficient {label} = {v} must be finite and "
                    f"strictly inside the bounds ({lo}, {hi})"
                )

    # ---------------------------------------------------------------- coefficients
    @abc.abstractmethod
    def coefficients(self) -> dict[str, float]:
        """``{label: value}`` of the coefficient(s), in the order ``factor_from`` takes."""

    @abc.abstractmethod
    def factor_from(self, x, coefs):
        """The factor for covariate values ``x`` with coefficient values ``coefs`` (a
        sequence, possibly of traced JAX scalars, in the order of
        :meth:`coefficients`): pure JAX, differentiable in ``coefs``."""

    @abc.abstractmethod
    def with_coefficients(self, values) -> Covariate:
        """A copy with the coefficient(s) replaced by ``values`` (same order)."""

    def default_bounds(self) -> tuple[float, float]:
        return (-_INF, _INF)

    def coefficient_bounds(self) -> tuple[float, float]:
        """``(lower, upper)`` of each coefficient (natural scale)."""
        return self.bounds if self.bounds is not None else self.default_bounds()

    def label(self) -> str:
        """The base label of the coefficient(s): ``name`` or ``"<param>~<covariate>"``."""
        return self.name or f"{self.param}~{self.covariate}"

    def factor(self, x):
        """The multiplicative factor for covariate values ``x`` (array in, array out)."""
        return self.factor_from(x, list(self.coefficients().values()))

    def describe(self) -> str:
        return f"{type(self).__name__}({self.param} ~ {self.covariate})"


@dataclasses.dataclass(frozen=True)
class _OneTheta(Covariate):
    """A covariate effect with one coefficient, ``theta`` (power, linear, exponential)."""

    theta: float

    def coefficients(self) -> dict[str, float]:
        return {self.label(): float(self.theta)}

    def with_coefficients(self, values) -> Self:
        return dataclasses.replace(self, theta=float(values[0]))


@dataclasses.dataclass(frozen=True)
class Power(_OneTheta):
    """Power (allometric) effect: ``(x / ref) ** theta``.

    Example: ``Power("CL", "WT", 0.75, ref=70.0)`` for allometric clearance and
    ``Power("V", "WT", 1.0)`` for volumes (Holford 1996); ``Power("CL", "WT", 0.75,
    ref=70.0, estimate=True)`` estimates the exponent in a population fit.

    Arguments:
        param, covariate: see :class:`Covariate` (also ``estimate``, ``bounds``,
            ``name``).
        theta: the exponent.
        ref: the reference value (the typical value applies at ``x = ref``).

    Raises:
        ValueError: for a non-positive reference.
    """

    theta: float = 0.75
    ref: float = 70.0

    def __post_init__(self):
        if not self.ref > 0:
            raise ValueError(f"Power covariate on {self.param!r}: ref must be > 0, got {self.ref}")
        super().__post_init__()

    def factor_from(self, x, coefs):
        return (x / self.ref) ** coefs[0]


@dataclasses.dataclass(frozen=True)
class Linear(_OneTheta):
    """Linear effect: ``1 + theta * (x - ref)``.

    Arguments:
        param, covariate: see :class:`Covariate` (also ``estimate``, ``bounds``,
            ``name``).
        theta: the fractional change per unit of the covariate (the slope).
        ref: the reference value.
    """

    theta: float = 0.0
    ref: float = 40.0

    def factor_from(self, x, coefs):
        return 1.0 + coefs[0] * (x - self.ref)


@dataclasses.dataclass(frozen=True)
class Exponential(_OneTheta):
    """Exponential effect: ``exp(theta * (x - ref))``.

    Arguments:
        param, covariate: see :class:`Covariate` (also ``estimate``, ``bounds``,
            ``name``).
        theta: the log-change per unit of the covariate.
        ref: the reference value.
    """

    theta: float = 0.0
    ref: float = 40.0

    def factor_from(self, x, coefs):
        return jnp.exp(coefs[0] * (x - self.ref))


@dataclasses.dataclass(frozen=True)
class Categorical(Covariate):
    """Categorical effect: a multiplicative factor per category.

    Either ``theta`` (the NONMEM form ``theta ** (x == level)``, e.g. ``SEX == 1``) or
    ``factors`` (``{category value: factor}``; categories not listed get 1, the
    reference). ``level`` may be a tuple of categories sharing ``theta``: e.g.
    ``Categorical("V", "APGAR", theta=1.16, level=(1, 2, 3, 4))`` is NONMEM's
    ``IF (APGR.LT.5) TVV = TVV*(1+THETA(3))`` with ``theta = 1 + THETA(3)``.

    With ``estimate=True`` the factor(s) are estimated (default bounds ``(0, inf)``):
    one coefficient for ``theta`` (label ``"<param>~<covariate>"``), one per listed
    category for ``factors`` (``"<param>~<covariate>[<category>]"``; leave the
    reference category out).

    Arguments:
        param, covariate: see :class:`Covariate` (also ``estimate``, ``bounds``,
            ``name``).
        theta: the factor of category ``level`` (shorthand).
        level: the category (or tuple of categories) ``theta`` applies to (default 1,
            e.g. female).
        factors: ``{category: factor}`` for several categories.

    Raises:
        ValueError: if both or neither of ``theta`` and ``factors`` are given, a factor
            is not positive, or ``level`` is an empty tuple.
    """

    theta: float | None = None
    level: float | tuple = 1
    factors: Mapping[float, float] | None = None

    def __post_init__(self):
        if (self.theta is None) == (self.factors is None):
            raise ValueError(
                f"Categorical covariate on {self.param!r}: give exactly one of theta or factors"
            )
        if isinstance(self.level, (tuple, list)):
            if not self.level:
                raise ValueError(
                    f"Categorical covariate on {self.param!r}: level is an empty tuple"
                )
            object.__setattr__(self, "level", tuple(float(v) for v in self.level))
        fs = self.table()
        bad = {k: v for k, v in fs.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(
                f"Categorical covariate on {self.param!r}: factors must be positive, got {bad}"
            )
        super().__post_init__()

    def levels(self) -> tuple:
        """The categories ``theta`` applies to."""
        return self.level if isinstance(self.level, tuple) else (self.level,)

    def table(self) -> dict[float, float]:
        """``{category: factor}``."""
        if self.theta is not None:
            return {lv: float(self.theta) for lv in self.levels()}
        assert self.factors is not None  # exactly one of theta, factors: __post_init__
        return {k: float(v) for k, v in dict(self.factors).items()}

    def default_bounds(self) -> tuple[float, float]:
        return (0.0, _INF)

    def coefficients(self) -> dict[str, float]:
        if self.theta is not None:
            return {self.label(): float(self.theta)}
        assert self.factors is not None
        return {f"{self.label()}[{_fmt_level(k)}]": float(v) for k, v in dict(self.factors).items()}

    def groups(self) -> list[tuple]:
        """The categories of each coefficient, in the order of :meth:`coefficients`."""
        if self.theta is not None:
            return [self.levels()]
        assert self.factors is not None
        return [(k,) for k in dict(self.factors)]

    def factor_from(self, x, coefs):
        x = jnp.asarray(x)
        out = jnp.ones(x.shape, jnp.result_type(float))
        for grp, f in zip(self.groups(), coefs):
            hit = jnp.zeros(x.shape, bool)
            for lv in grp:
                hit = hit | (x == lv)
            out = jnp.where(hit, f, out)
        return out

    def with_coefficients(self, values) -> Categorical:
        if self.theta is not None:
            return dataclasses.replace(self, theta=float(values[0]))
        assert self.factors is not None
        return dataclasses.replace(
            self, factors={k: float(v) for k, v in zip(dict(self.factors), values)}
        )

    def __hash__(self):
        return hash(
            (
                self.param,
                self.covariate,
                tuple(sorted(self.table().items())),
                self.estimate,
                self.bounds,
                self.name,
            )
        )
