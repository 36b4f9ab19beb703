"""The abstract model: named states, a parameter table, and the equations."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._param import Param, State

_LOGIT_EPS = 1e-12

#: The time units a model may declare, with their length in milliseconds (exact ratios).
TIME_UNITS: dict[str, int] = {"ms": 1, "s": 1_000, "min": 60_000, "h": 3_600_000}


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Model(eqx.Module):
    """Abstract base of every twinjax model (an ODE system with named states).

    A model holds *structure only*; parameter values live in a flat dict
    ``{name: array}`` whose entries are scalars (one patient) or ``(N,)`` arrays (a
    cohort). Equations are written once and broadcast over the patient axis:

    ```python
    def rhs(self, t, y, p, u):
        return {"central": -p["CL"] / p["V"] * y["central"]}
    ```

    Final subclasses provide:

    - ``states``: a tuple of :class:`State` (name, unit).
    - ``params``: a tuple of :class:`Param` (the validated parameter table).
    - ``rhs(t, y, p, u)``: time derivatives, one entry per state. ``u`` holds the
      current zero-order input rates per state (infusions); the engine already adds
      them to the derivatives, so most models ignore ``u``.
    - ``init(p)``: the initial (baseline, pre-dose) state.
    - ``observe(t, y, p)``: derived outputs (concentrations, effects), a dict.

    Class attributes a subclass may set:

    - ``stiff``: if True the default Diffrax solver is Kvaerno5 instead of Tsit5.
    - ``dose_parameters``: ``{compartment: (F_param or None, lag_param or None)}``,
      naming the bioavailability and lag-time parameters of dosed compartments.
    - ``reference``: the source paper of the model.
    - ``time_unit``: the unit of ``t`` in the equations, one of ``"h"``, ``"min"``,
      ``"s"``, ``"ms"`` (the unit every rate parameter is per). Every shipped model
      declares it; the default ``None`` means *undeclared* (a user model that does
      not say): :func:`~twinjax.couple` refuses to join two declared units that
      differ (unless asked to convert), and an undeclared model takes the unit of
      the models it is coupled with.
    """

    stiff: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    time_unit: ClassVar[str | None] = None

    # ---- structure and equations (abstract) -------------------------------------
    @property
    @abc.abstractmethod
    def states(self) -> tuple[State, ...]:
        """The state variables, in order."""

    @property
    @abc.abstractmethod
    def params(self) -> tuple[Param, ...]:
        """The parameter table."""

    @abc.abstractmethod
    def rhs(self, t, y: dict, p: dict, u: dict) -> dict:
        """Time derivative of every state."""

    @abc.abstractmethod
    def init(self, p: dict) -> dict:
        """Initial state given parameters."""

    @abc.abstractmethod
    def observe(self, t, y: dict, p: dict) -> dict:
        """Derived outputs given time, state and parameters."""

    def dose_parameters(self) -> dict[str, tuple[str | None, str | None]]:
        """``{compartment: (bioavailability param, lag-time param)}``; empty by default."""
        return {}

    # ---- tables -----------------------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.params)

    def param(self, name: str) -> Param:
        for q in self.params:
            if q.name == name:
                return q
        raise KeyError(
            f"{type(self).__name__} has no parameter {name!r}; valid: {list(self.param_names)}"
        )

    def state(self, name: str) -> State:
        for s in self.states:
            if s.name == name:
                return s
        raise KeyError(
            f"{type(self).__name__} has no state {name!r}; valid: {list(self.state_names)}"
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs of :meth:`observe`, found by abstract evaluation."""
        y = {s: jax.ShapeDtypeStruct((), jnp.float32) for s in self.state_names}
        p = {q: jax.ShapeDtypeStruct((), jnp.float32) for q in self.param_names}
        out = jax.eval_shape(lambda y, p: self.observe(0.0, y, p), y, p)
        return tuple(out.keys())

    def defaults(self, dtype=None) -> dict[str, jax.Array]:
        """The default (typical) parameter values as scalar arrays."""
        dtype = dtype or _default_float()
        return {q.name: jnp.asarray(q.value, dtype) for q in self.params}

    def param_table(self):
        """The parameter table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(
            [
                dict(
                    name=q.name,
                    value=q.value,
                    unit=q.unit,
                    lower=q.lower,
                    upper=q.upper,
                    transform=q.transform,
                    source=q.source,
                    doc=q.doc,
                )
                for q in self.params
            ]
        ).set_index("name")

    def __check_init__(self):
        if self.time_unit is not None and self.time_unit not in TIME_UNITS:
            raise ValueError(
                f"{type(self).__name__}: time_unit {self.time_unit!r} is not one of "
                f"{list(TIME_UNITS)} (or None: undeclared)"
            )
        names = [s.name for s in self.states]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: duplicated state names {names}")
        pnames = [q.name for q in self.params]
        if len(set(pnames)) != len(pnames):
            raise ValueError(f"{type(self).__name__}: duplicated parameter names {pnames}")
        for cmt, (f, lag) in self.dose_parameters().items():
            if cmt not in names:
                raise ValueError(
                    f"{type(self).__name__}: dose_parameters names unknown state {cmt!r}"
                )
            for q in (f, lag):
                if q is not None and q not in pnames:
                    raise ValueError(
                        f"{type(self).__name__}: dose_parameters names unknown parameter {q!r}"
                    )

    # ---- values -----------------------------------------------------------------
    def complete(self, p: Mapping[str, Any] | None = None, *, dtype=None, check: bool = True):
        """Fill missing parameters with defaults, cast to arrays, and validate.

        Arguments:
            p: a partial ``{name: value}``; values are scalars or ``(N,)`` arrays.
            dtype: floating dtype (default: float64 if x64 is enabled, else float32).
            check: validate names and bounds (concrete values only).

        Returns:
            ``(params, n)``: the full dict and the batch size ``n`` (``None`` for one
            patient).

        Raises:
            ValueError: unknown parameter names, inconsistent batch sizes, or a value
                outside its bounds (naming the parameter, the patient and the bounds).
        """
        dtype = dtype or _default_float()
        p = dict(p or {})
        unknown = [k for k in p if k not in self.param_names]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown parameter(s) {unknown}; valid parameters are "
                f"{list(self.param_names)}"
            )
        out = {}
        n = None
        for q in self.params:
            v = p.get(q.name, q.value)
            v = jnp.asarray(v, dtype)
            if v.ndim > 1:
                raise ValueError(
                    f"Parameter {q.name!r} has shape {v.shape}; expected a scalar or (N,) array"
                )
            if v.ndim == 1:
                if n is None:
                    n = v.shape[0]
                elif v.shape[0] != n:
                    raise ValueError(
                        f"Parameter {q.name!r} has {v.shape[0]} patients but another "
                        f"parameter has {n}"
                    )
            out[q.name] = v
        if check:
            self.check_bounds(out)
        return out, n

    def check_bounds(self, p: Mapping[str, Any]) -> None:
        """Raise a ValueError naming the first parameter outside its bounds."""
        for q in self.params:
            if q.name not in p or not _is_concrete(p[q.name]):
                continue
            v = np.asarray(p[q.name])
            bad = ~((v >= q.lower) & (v <= q.upper))
            if np.any(bad):
                idx = np.argwhere(np.atleast_1d(bad))[0][0]
                val = np.atleast_1d(v)[idx]
                where = f" (patient {idx})" if v.ndim else ""
                raise ValueError(
                    f"{type(self).__name__}: parameter {q.name!r} = {val}{where} "
                    f"{q.bound_error(val)}"
                )

    # ---- unconstrained coordinates ----------------------------------------------
    def to_unconstrained(self, p: Mapping[str, Any], names=None) -> dict:
        """Map parameters to unconstrained coordinates (log / logit / identity)."""
        names = self.param_names if names is None else names
        return {k: _forward(self.param(k), jnp.asarray(p[k])) for k in names}

    def from_unconstrained(self, z: Mapping[str, Any]) -> dict:
        """Inverse of :meth:`to_unconstrained`."""
        return {k: _inverse(self.param(k), jnp.asarray(v)) for k, v in z.items()}

    def pack(self, p: Mapping[str, Any], names=None) -> jax.Array:
        """Stack the unconstrained coordinates of ``names`` into a vector (last axis)."""
        names = self.param_names if names is None else tuple(names)
        z = self.to_unconstrained(p, names)
        return jnp.stack([z[k] for k in names], axis=-1)

    def unpack(self, vec, names=None) -> dict:
        """Inverse of :meth:`pack`: a vector (last axis) to constrained parameters."""
        names = self.param_names if names is None else tuple(names)
        return self.from_unconstrained({k: vec[..., i] for i, k in enumerate(names)})


def _forward(q: Param, x):
    if q.transform == "log":
        return jnp.log(x - q.lower)
    if q.transform == "logit":
        s = (x - q.lower) / (q.upper - q.lower)
        s = jnp.clip(s, _LOGIT_EPS, 1 - _LOGIT_EPS)
        return jnp.log(s) - jnp.log1p(-s)
    return x


def _inverse(q: Param, z):
    if q.transform == "log":
        return q.lower + jnp.exp(z)
    if q.transform == "logit":
        return q.lower + (q.upper - q.lower) * jax.nn.sigmoid(z)
    return z


def _default_float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
