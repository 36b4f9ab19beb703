"""Populations: typical values, covariate models, inter-individual variability (IIV).

An individual's parameter follows the usual NONMEM-style model:

```
TV_i  = TV * prod_k f_k(covariates_i)            (covariate effects on the typical value)
p_i   = g^-1( g(TV_i) + eta_i ),  eta ~ N(0, Omega)
```

where ``g`` is the parameter's own unconstrained transform (:meth:`Model.to_unconstrained`):
``log`` (log-normal IIV, ``p_i = TV_i * exp(eta_i)`` for a lower bound of 0), ``logit``
(logit-normal, stays inside the bounds) or ``identity`` (normal, additive). The median of
``p_i`` given the covariates is ``TV_i`` for every transform.

References:
    - Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ. NONMEM 7 Users Guides. ICON
      Development Solutions, 1989-2018 (THETA/ETA/OMEGA parameterisation).
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
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..model import Model, Piecewise
from ._demographics import Demographics, concat_columns, float64_draws, key_blocks

__all__ = [
    "Categorical",
    "Cohort",
    "Covariate",
    "Exponential",
    "Linear",
    "Population",
    "Power",
]


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
class Power(Covariate):
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

    def coefficients(self) -> dict[str, float]:
        return {self.label(): float(self.theta)}

    def factor_from(self, x, coefs):
        return (x / self.ref) ** coefs[0]

    def with_coefficients(self, values) -> Power:
        return dataclasses.replace(self, theta=float(values[0]))


@dataclasses.dataclass(frozen=True)
class Linear(Covariate):
    """Linear effect: ``1 + theta * (x - ref)``.

    Arguments:
        param, covariate: see :class:`Covariate` (also ``estimate``, ``bounds``,
            ``name``).
        theta: the fractional change per unit of the covariate (the slope).
        ref: the reference value.
    """

    theta: float = 0.0
    ref: float = 40.0

    def coefficients(self) -> dict[str, float]:
        return {self.label(): float(self.theta)}

    def factor_from(self, x, coefs):
        return 1.0 + coefs[0] * (x - self.ref)

    def with_coefficients(self, values) -> Linear:
        return dataclasses.replace(self, theta=float(values[0]))


@dataclasses.dataclass(frozen=True)
class Exponential(Covariate):
    """Exponential effect: ``exp(theta * (x - ref))``.

    Arguments:
        param, covariate: see :class:`Covariate` (also ``estimate``, ``bounds``,
            ``name``).
        theta: the log-change per unit of the covariate.
        ref: the reference value.
    """

    theta: float = 0.0
    ref: float = 40.0

    def coefficients(self) -> dict[str, float]:
        return {self.label(): float(self.theta)}

    def factor_from(self, x, coefs):
        return jnp.exp(coefs[0] * (x - self.ref))

    def with_coefficients(self, values) -> Exponential:
        return dataclasses.replace(self, theta=float(values[0]))


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


# ============================================================================ cohort
@dataclasses.dataclass(frozen=True, eq=False)
class Cohort:
    """A sampled virtual cohort: one parameter set and one covariate row per patient.

    Arguments:
        params: ``{name: (N,) array}`` with every model parameter, ready for
            ``twinjax.simulate(model, cohort.params, ...)``.
        covariates: a pandas DataFrame with ``N`` rows, indexed by the global patient
            index (``ID``).
        etas: ``(N, n_iiv)`` random effects, in the order of ``iiv``.
        iiv: the names of the parameters with IIV.
        typical: ``{name: (N,) array}``, the covariate-adjusted typical values.
        index: ``(N,)`` global patient indices (equal to ``covariates.index``).
    """

    params: dict
    covariates: Any
    etas: jax.Array
    iiv: tuple[str, ...] = ()
    typical: dict = dataclasses.field(default_factory=dict)
    index: np.ndarray | None = None

    def __post_init__(self):
        n = int(self.etas.shape[0])
        for k, v in self.params.items():
            if jnp.shape(v) != (n,):
                raise ValueError(f"Cohort: parameter {k!r} has shape {jnp.shape(v)}, need ({n},)")
        if len(self.covariates) != n:
            raise ValueError(f"Cohort: covariate table has {len(self.covariates)} rows, need {n}")
        if self.etas.ndim != 2 or self.etas.shape[1] != len(self.iiv):
            raise ValueError(
                f"Cohort: etas have shape {self.etas.shape}, need ({n}, {len(self.iiv)})"
            )
        if self.index is None:
            object.__setattr__(self, "index", np.asarray(self.covariates.index))

    @property
    def n(self) -> int:
        """The number of patients."""
        return int(self.etas.shape[0])

    def __len__(self) -> int:
        return self.n

    def subset(self, idx) -> Cohort:
        """The cohort restricted to ``idx`` (positions, a slice, or a boolean mask).

        Arguments:
            idx: integer positions (0-based, within this cohort), a slice, or a boolean
                mask of length ``n``.

        Returns:
            A new :class:`Cohort`; global patient indices are kept.

        Raises:
            IndexError: for a mask of the wrong length or positions out of range.
        """
        if isinstance(idx, slice):
            pos = np.arange(self.n)[idx]
        else:
            arr = np.asarray(idx)
            if arr.dtype == bool:
                if arr.shape != (self.n,):
                    raise IndexError(f"boolean mask has shape {arr.shape}, need ({self.n},)")
                pos = np.flatnonzero(arr)
            else:
                pos = np.atleast_1d(arr).astype(np.int64)
                if pos.size and (pos.min() < -self.n or pos.max() >= self.n):
                    raise IndexError(f"cohort positions out of range for {self.n} patients")
                pos = np.where(pos < 0, pos + self.n, pos)
        take = lambda v: jnp.asarray(np.asarray(v)[pos])  # host gather: no recompilation
        assert self.index is not None  # set in __post_init__
        return Cohort(
            params={k: take(v) for k, v in self.params.items()},
            covariates=self.covariates.iloc[pos],
            etas=take(self.etas),
            iiv=self.iiv,
            typical={k: take(v) for k, v in self.typical.items()},
            index=self.index[pos],
        )

    def __getitem__(self, idx) -> Cohort:
        """``cohort[idx]`` is :meth:`subset` (an integer gives a one-patient cohort)."""
        return self.subset(idx)

    def chunk(self, start: int, stop: int) -> Cohort:
        """Patients at positions ``[start, stop)`` of this cohort."""
        return self.subset(slice(start, stop))

    def to_dataframe(self):
        """One row per patient: covariates, parameters, and etas (``ETA_<name>``).

        Returns:
            A pandas DataFrame indexed by the global patient index ``ID``.
        """
        import pandas as pd

        df = self.covariates.copy()
        for k, v in self.params.items():
            df[k] = np.asarray(v)
        e = np.asarray(self.etas)
        for i, k in enumerate(self.iiv):
            df[f"ETA_{k}"] = e[:, i]
        df.index = pd.Index(self.index, name="ID")
        return df

    def __repr__(self) -> str:
        return f"Cohort(n={self.n}, params={list(self.params)}, iiv={list(self.iiv)})"


# ============================================================================ population
class Population:
    """A population model: typical values, covariate effects and IIV with a full Omega.

    ``TV_i = TV * prod(covariate factors)``; ``p_i = g^-1(g(TV_i) + eta_i)`` with ``g``
    the parameter's transform (log, logit, identity) and ``eta ~ N(0, Omega)``.

    Arguments:
        model: the :class:`~twinjax.Model`.
        typical: ``{name: value}`` overriding the model's default typical values.
        covariates: a sequence of :class:`Covariate` effects.
        omega: the IIV covariance of the etas, in the unconstrained coordinates of the
            model. One of

            - ``None``: no IIV;
            - an ``(n_iiv, n_iiv)`` array in the order of ``iiv`` (full block);
            - a dict ``{name: variance}`` (diagonal), optionally with covariances
              ``{(a, b): cov}``; ``iiv`` defaults to the names in order of appearance.

            For log-transformed parameters the variance is that of ``log(p)``, i.e.
            ``omega = log(1 + CV**2)``; see :meth:`from_cv` for CVs and correlations.
        iiv: names of the parameters with IIV (required with an array ``omega``).
        demographics: a :class:`Demographics` generator of the covariates, or ``None``
            (then covariates, if any effect uses them, are passed to :meth:`sample`).

    Raises:
        ValueError: unknown parameters, typical values outside their bounds, duplicated
            IIV names, or an Omega that is not square of the right size, not finite, not
            symmetric or not positive semi-definite (naming the problem).
    """

    def __init__(
        self,
        model: Model,
        typical: Mapping[str, float] | None = None,
        covariates: Sequence[Covariate] = (),
        omega=None,
        iiv: Sequence[str] | None = None,
        demographics: Demographics | None = None,
    ):
        self.model = model
        names = model.param_names
        typical = dict(typical or {})
        unknown = [k for k in typical if k not in names]
        if unknown:
            raise ValueError(
                f"Population: unknown parameter(s) {unknown} in typical; valid: {list(names)}"
            )
        for k, v in typical.items():
            if np.ndim(v) != 0:
                raise ValueError(f"Population: typical value of {k!r} must be a scalar")
        full = {q.name: float(typical.get(q.name, q.value)) for q in model.params}
        model.check_bounds(full)
        self.typical: dict[str, float] = full

        covariates = tuple(covariates)
        for c in covariates:
            if not isinstance(c, Covariate):
                raise TypeError(f"Population: covariates must be Covariate effects, got {c!r}")
            if c.param not in names:
                raise ValueError(
                    f"Population: covariate effect {c.describe()} names unknown parameter "
                    f"{c.param!r}; valid: {list(names)}"
                )
        self.covariates: tuple[Covariate, ...] = covariates

        self.iiv, self.omega = _parse_omega(omega, iiv, names)
        self._factor = _omega_factor(self.omega)

        if demographics is not None and not isinstance(demographics, Demographics):
            raise TypeError(f"demographics must be a Demographics or None, got {demographics!r}")
        self.demographics = demographics
        self._core_fn = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_cv(
        cls,
        model: Model,
        cv: Mapping[str, float],
        corr=None,
        **kwargs,
    ) -> Population:
        """A population with IIV given as coefficients of variation and correlations.

        The eta SD of each parameter is: ``sqrt(log(1 + CV**2))`` for ``log`` transforms
        (exact: the CV of a log-normal ``p - lower``); ``CV * |TV|`` for ``identity``
        (the SD is ``CV`` times the typical value); and the first-order (delta-method)
        ``CV * TV / ((upper - lower) * s * (1 - s))``, ``s = (TV - lower) / (upper -
        lower)``, for ``logit``.

        Arguments:
            model: the model.
            cv: ``{name: CV}`` (fractions, 0.3 for 30 %); the order gives ``iiv``.
            corr: correlations of the etas: ``None`` (independent), an
                ``(n_iiv, n_iiv)`` correlation matrix in the order of ``cv``, or a dict
                ``{(a, b): rho}``.
            **kwargs: ``typical``, ``covariates``, ``demographics`` for the constructor.

        Returns:
            A :class:`Population`.

        Raises:
            ValueError: negative CVs, correlations outside [-1, 1], a correlation matrix
                with a non-unit diagonal, or as in the constructor.
        """
        names = tuple(cv)
        typical = dict(kwargs.get("typical") or {})
        sd = []
        for k in names:
            c = float(cv[k])
            if not (math.isfinite(c) and c >= 0):
                raise ValueError(f"Population.from_cv: CV of {k!r} must be >= 0, got {c}")
            q = model.param(k)
            tv = float(typical.get(k, q.value))
            if q.transform == "log":
                sd.append(math.sqrt(math.log1p(c * c)))
            elif q.transform == "logit":
                s = (tv - q.lower) / (q.upper - q.lower)
                if not 0 < s < 1:
                    raise ValueError(
                        f"Population.from_cv: {k!r} has typical value {tv} on its bound "
                        f"[{q.lower}, {q.upper}]; a logit CV is undefined there"
                    )
                sd.append(c * abs(tv) / ((q.upper - q.lower) * s * (1 - s)))
            else:
                sd.append(c * abs(tv))
        r = _parse_corr(corr, names)
        sdv = np.asarray(sd, np.float64)
        omega = r * sdv[:, None] * sdv[None, :]
        return cls(model, omega=omega, iiv=names, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def n_iiv(self) -> int:
        return len(self.iiv)

    @property
    def omega_sd(self) -> dict[str, float]:
        """SD of each eta."""
        return {k: float(math.sqrt(self.omega[i, i])) for i, k in enumerate(self.iiv)}

    @property
    def omega_corr(self) -> np.ndarray:
        """The correlation matrix of the etas (0 where a variance is 0)."""
        d = np.sqrt(np.diag(self.omega))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.omega / (d[:, None] * d[None, :])
        r = np.where(np.isfinite(r), r, 0.0)
        np.fill_diagonal(r, 1.0)
        return r

    def __repr__(self) -> str:
        return (
            f"Population({type(self.model).__name__}, iiv={list(self.iiv)}, "
            f"covariates={[c.describe() for c in self.covariates]}, "
            f"demographics={'yes' if self.demographics is not None else 'no'})"
        )

    # ------------------------------------------------------------------ pure maps
    def typical_values(self, covariates: Mapping[str, Any], n: int | None = None) -> dict:
        """Covariate-adjusted typical values ``TV_i`` (pure JAX, differentiable).

        Arguments:
            covariates: a DataFrame or ``{column: (N,) array}`` with every covariate the
                effects use. A covariate that changes in time may be a
                :class:`~twinjax.Piecewise` (e.g. ``Dataset.piecewise("WT")``): the
                parameters it acts on are then Piecewise too, with its change times.
            n: number of patients (default: from the covariates).

        Returns:
            ``{name: (N,) array or Piecewise}`` for every model parameter.

        Raises:
            KeyError: if a covariate column is missing.
        """
        dtype = _float()
        cols: dict[str, Any] = {}
        for c in self.covariates:
            if c.covariate not in cols:
                try:
                    x = covariates[c.covariate]
                    if isinstance(x, Piecewise):
                        x.validate(c.covariate)
                        cols[c.covariate] = x.map(lambda v: jnp.asarray(v, dtype))
                        continue
                    if not isinstance(x, jax.Array):
                        x = np.asarray(x, np.float64)
                    cols[c.covariate] = jnp.asarray(x, dtype)
                except KeyError:
                    raise KeyError(
                        f"Population: covariate {c.covariate!r} (used by {c.describe()}) is "
                        f"not in the covariate table; available: {list(covariates.keys())}"
                    ) from None
        if n is None:
            sizes = [(x.n if isinstance(x, Piecewise) else int(x.shape[0])) for x in cols.values()]
            sizes = [m for m in sizes if m is not None]
            n = sizes[0] if sizes else len(covariates)
        tv: dict[str, Any] = {k: jnp.full((n,), v, dtype) for k, v in self.typical.items()}
        for c in self.covariates:
            x = cols[c.covariate]
            if isinstance(x, Piecewise):
                if x.n not in (None, n):
                    raise ValueError(f"covariate {c.covariate!r} has {x.n} patients, need {n}")
                tv[c.param] = tv[c.param] * x.map(c.factor)
                continue
            if x.shape != (n,):
                raise ValueError(f"covariate {c.covariate!r} has shape {x.shape}, need ({n},)")
            tv[c.param] = tv[c.param] * jnp.asarray(c.factor(x), dtype)
        return tv

    def individual(self, typical: Mapping[str, Any], etas) -> dict:
        """Individual parameters from typical values and etas (pure JAX, differentiable).

        Arguments:
            typical: ``{name: (N,) array}`` (from :meth:`typical_values`).
            etas: ``(N, n_iiv)`` random effects in the order of ``iiv``.

        Returns:
            ``{name: (N,) array}``: ``g^-1(g(TV) + eta)`` for IIV parameters, ``TV`` for
            the others.
        """
        out = dict(typical)
        for i, k in enumerate(self.iiv):
            out[k] = shift_unconstrained(self.model, k, typical[k], etas[..., i])
        return out

    # ------------------------------------------------------------------ sampling
    def sample_etas(self, key, n: int, start: int = 0) -> jax.Array:
        """Random effects of patients ``start, ..., start + n - 1``.

        Arguments:
            key: a JAX PRNG key (the same key as :meth:`sample`).
            n: number of patients.
            start: global index of the first patient.

        Returns:
            ``(n, n_iiv)`` etas ``~ N(0, Omega)``, identical to ``sample(key, ...).etas``
            (drawn in float64 and cast to the working dtype, as there).
        """
        dtype = _float()
        parts = []
        with float64_draws():
            for keys, m in key_blocks(key, n, start):
                _, k_eta = _subkeys(keys)
                parts.append(np.asarray(self._etas(k_eta))[:m])
        return jnp.asarray(np.concatenate(parts).astype(dtype))

    def _etas(self, keys):
        dtype = _float()
        if self.n_iiv == 0:
            return jnp.zeros((keys.shape[0], 0), dtype)
        return _etas(keys, jnp.asarray(self._factor, dtype))

    def sample(self, key, n: int, start: int = 0, covariates=None) -> Cohort:
        """Sample a cohort of ``n`` patients with global indices ``start .. start+n-1``.

        Patient ``i`` gets the key ``fold_in(key, i)``, split into a demographics key
        and an eta key: drawing patients ``[a, b)`` alone gives exactly the patients
        ``[a, b)`` of drawing ``[0, b)`` (chunk invariance). Batches are padded to a
        few bucket sizes internally, so chunks of varying size reuse compiled code.

        Random numbers are drawn, and the patients computed, in float64 whatever
        ``jax_enable_x64`` says (with x64 off, in a local x64 context: see
        :func:`~twinjax.population._demographics.float64_draws`); the parameters are
        cast to the working dtype at the end. So one key gives the same cohort in
        float32 and float64 programs, to float32 rounding.

        Arguments:
            key: a JAX PRNG key.
            n: number of patients.
            start: global index of the first patient (for chunked sampling).
            covariates: a DataFrame (or dict of columns) with ``n`` rows used instead of
                the demographics generator (e.g. real patients' covariates).

        Returns:
            A :class:`Cohort`.

        Raises:
            ValueError: if covariate effects need covariates and neither a demographics
                generator nor a table is given, if the table has the wrong length, or if
                a covariate-adjusted typical value leaves its parameter's bounds (naming
                the parameter and the patient).
        """
        dtype = _float()
        with float64_draws():
            cov, etas, tv, params, index = self._sample(key, n, start, covariates, dtype)
        # jax arrays made outside the float64 context: in the working dtype
        return Cohort(
            params={k: jnp.asarray(v) for k, v in params.items()},
            covariates=cov,
            etas=jnp.asarray(etas),
            iiv=self.iiv,
            typical={k: jnp.asarray(v) for k, v in tv.items()},
            index=index,
        )

    def _sample(self, key, n, start, covariates, dtype):
        """``sample`` in float64: NumPy ``(covariates, etas, TV, params, index)`` with
        the arrays cast to ``dtype``."""
        import pandas as pd

        n, start = int(n), int(start)
        blocks = [(*_subkeys(keys), m) for keys, m in key_blocks(key, n, start)]
        index = np.arange(start, start + n)
        if covariates is not None:
            cov = pd.DataFrame(covariates).copy()
            if len(cov) != n:
                raise ValueError(f"covariate table has {len(cov)} rows but n = {n}")
            cov.index = pd.Index(index, name="ID")
        elif self.demographics is not None:
            d = self.demographics
            cov = d._frame(concat_columns([d._columns(k, m) for k, _, m in blocks]), index)
        elif self.covariates:
            raise ValueError(
                "Population.sample: the covariate effects "
                f"{[c.describe() for c in self.covariates]} need covariates: give "
                "demographics=Demographics(...) to the Population or covariates= to sample"
            )
        else:
            cov = pd.DataFrame(index=pd.Index(index, name="ID"))

        cols = {}
        for c in self.covariates:
            if c.covariate in cols:
                continue
            if c.covariate not in cov:
                raise KeyError(
                    f"Population: covariate {c.covariate!r} (used by {c.describe()}) is not "
                    f"in the covariate table; available: {list(cov.columns)}"
                )
            cols[c.covariate] = np.asarray(cov[c.covariate], np.float64)

        out = []  # NumPy, float64: jax arrays made here may be float64 (see float64_draws)
        at = 0
        for _, k_eta, m in blocks:
            size = int(k_eta.shape[0])
            block = {}
            for name, x in cols.items():
                x = x[at : at + m]
                block[name] = np.pad(x, (0, size - m), mode="edge") if m else np.ones(size)
            tv, params, etas = self._core(block, k_eta)
            out.append(jax.tree.map(lambda v, m=m: np.asarray(v)[:m], (tv, params, etas)))
            at += m
        tv = {k: np.concatenate([o[0][k] for o in out]).astype(dtype) for k in out[0][0]}
        params = {
            k: np.concatenate([o[1][k] for o in out]).astype(dtype) for k in self.model.param_names
        }
        etas = np.concatenate([o[2] for o in out]).astype(dtype)
        self._check_typical(tv, index)
        return cov, etas, tv, params, index

    @property
    def _core(self):
        """The jitted ``(covariate columns, eta keys) -> (TV, params, etas)``."""
        if self._core_fn is None:

            def core(cols, k_eta):
                n_pad = k_eta.shape[0]
                tv = self.typical_values(cols, n_pad)
                etas = self._etas(k_eta)
                return tv, self.individual(tv, etas), etas

            self._core_fn = jax.jit(core)
        return self._core_fn

    def _check_typical(self, tv, index):
        for q in self.model.params:
            v = np.asarray(tv[q.name])
            bad = ~((v >= q.lower) & (v <= q.upper))
            if q.transform == "log":
                bad |= v <= q.lower
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"Population: covariate-adjusted typical value of {q.name!r} = {v[i]} for "
                    f"patient {index[i]} is outside its bounds [{q.lower}, {q.upper}] "
                    f"{q.unit}; check the covariate effects "
                    f"{[c.describe() for c in self.covariates if c.param == q.name]}"
                )


# ============================================================================ helpers
def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


@jax.jit
def _subkeys(keys):
    """Per-patient keys for the demographics (``fold_in(k, 0)``) and the etas (1)."""
    return (
        jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys),
        jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
    )


@jax.jit
def _etas(keys, factor):
    """``eta_i = L z_i`` with ``z_i ~ N(0, I)`` drawn from patient ``i``'s key."""
    m = factor.shape[0]
    z = jax.vmap(lambda k: jax.random.normal(k, (m,), factor.dtype))(keys)
    # explicit elementwise sum (not a matmul): the same rounding whatever the batch size
    eta = z[:, 0:1] * factor[None, :, 0]
    for j in range(1, m):
        eta = eta + z[:, j : j + 1] * factor[None, :, j]
    return eta


def _parse_omega(omega, iiv, names) -> tuple[tuple[str, ...], np.ndarray]:
    """Validate Omega; return ``(iiv names, (n, n) float64 matrix)``."""
    if omega is None:
        if iiv:
            raise ValueError(f"Population: iiv={list(iiv)} given without omega")
        return (), np.zeros((0, 0))
    if isinstance(omega, Mapping):
        keys_s = [k for k in omega if isinstance(k, str)]
        keys_t = [k for k in omega if isinstance(k, tuple)]
        other = [k for k in omega if not isinstance(k, (str, tuple))]
        if other:
            raise ValueError(f"omega dict keys must be names or (name, name) pairs, got {other}")
        order = tuple(iiv) if iiv is not None else tuple(keys_s)
        _check_names(order, names)
        missing = [k for k in order if k not in keys_s]
        if missing:
            raise ValueError(f"omega: no variance given for {missing}")
        extra = [k for k in keys_s if k not in order]
        if extra:
            raise ValueError(f"omega: variances for {extra} which are not in iiv={list(order)}")
        pos = {k: i for i, k in enumerate(order)}
        m = np.zeros((len(order), len(order)))
        for k in keys_s:
            m[pos[k], pos[k]] = float(omega[k])
        for pair in keys_t:
            if len(pair) != 2 or any(p not in pos for p in pair):
                raise ValueError(
                    f"omega: covariance key {pair!r} must be a pair of iiv names {list(order)}"
                )
            a, b = pos[pair[0]], pos[pair[1]]
            if a == b:
                raise ValueError(f"omega: covariance key {pair!r} repeats one name")
            m[a, b] = m[b, a] = float(omega[pair])
    else:
        if iiv is None:
            raise ValueError("Population: an omega matrix needs iiv=[names] in its order")
        order = tuple(iiv)
        _check_names(order, names)
        m = np.asarray(omega, dtype=np.float64)
        if m.ndim == 1:
            raise ValueError(
                f"omega has shape {m.shape}: give a full ({len(order)}, {len(order)}) "
                "covariance matrix, or a dict {name: variance} for a diagonal Omega"
            )
    _check_omega(m, order)
    return order, m


def _check_names(order, names):
    if len(order) == 0:
        raise ValueError("Population: iiv is empty; use omega=None for no IIV")
    unknown = [k for k in order if k not in names]
    if unknown:
        raise ValueError(
            f"Population: iiv names unknown parameter(s) {unknown}; valid: {list(names)}"
        )
    dup = sorted({k for k in order if order.count(k) > 1})
    if dup:
        raise ValueError(f"Population: iiv repeats {dup}")


def _check_omega(m: np.ndarray, order) -> None:
    k = len(order)
    if m.shape != (k, k):
        raise ValueError(
            f"omega has shape {m.shape} but iiv has {k} names {list(order)}: Omega must be "
            f"({k}, {k})"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("omega has non-finite entries")
    scale = max(1.0, float(np.max(np.abs(m))))
    asym = float(np.max(np.abs(m - m.T)))
    if asym > 1e-10 * scale:
        i, j = np.unravel_index(np.argmax(np.abs(m - m.T)), m.shape)
        raise ValueError(
            f"omega is not symmetric: Omega[{order[i]}, {order[j]}] = {m[i, j]} but "
            f"Omega[{order[j]}, {order[i]}] = {m[j, i]}"
        )
    neg = [order[i] for i in range(k) if m[i, i] < 0]
    if neg:
        raise ValueError(f"omega has negative variances for {neg}")
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    if w.min() < -1e-10 * scale:
        raise ValueError(
            f"omega is not positive semi-definite (smallest eigenvalue {w.min():.4g}): the "
            "covariances imply correlations that cannot coexist (|rho| > 1 or inconsistent)"
        )


def _omega_factor(m: np.ndarray) -> np.ndarray:
    """``L`` with ``L @ L.T == Omega`` (Cholesky, or eigen-factor if singular)."""
    if m.size == 0:
        return m
    try:
        return np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(0.5 * (m + m.T))
        return v * np.sqrt(np.clip(w, 0.0, None))[None, :]


def _parse_corr(corr, names) -> np.ndarray:
    k = len(names)
    if corr is None:
        return np.eye(k)
    if isinstance(corr, Mapping):
        r = np.eye(k)
        pos = {n: i for i, n in enumerate(names)}
        for pair, rho in corr.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(p in pos for p in pair)):
                raise ValueError(f"corr key {pair!r} must be a pair of names from {list(names)}")
            a, b = pos[pair[0]], pos[pair[1]]
            if a == b:
                raise ValueError(f"corr key {pair!r} repeats one name")
            if not -1.0 <= float(rho) <= 1.0:
                raise ValueError(f"correlation {pair} = {rho} outside [-1, 1]")
            r[a, b] = r[b, a] = float(rho)
        return r
    r = np.asarray(corr, dtype=np.float64)
    if r.shape != (k, k):
        raise ValueError(f"corr has shape {r.shape}, need ({k}, {k}) for {list(names)}")
    if not np.allclose(np.diag(r), 1.0):
        raise ValueError(f"corr must have a unit diagonal, got {np.diag(r)}")
    if np.any(np.abs(r) > 1.0):
        raise ValueError("corr has entries outside [-1, 1]")
    return r
