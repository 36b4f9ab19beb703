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


def is_concrete(x) -> bool:
    """Whether ``x`` is a concrete value (not a tracer inside ``jit``/``grad``)."""
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
    - ``dose_parameters``: ``{compartment: (F, lag[, R[, D]])}`` naming, per dosed
      compartment, its bioavailability, lag-time, modelled-rate and modelled-duration
      parameters (``None`` where it has none; a shorter tuple means the rest are
      ``None``). :meth:`with_dose_modifiers` adds them to any model under NONMEM's
      names (``F2``, ``ALAG2``, ``R2``, ``D2`` for the second state).
    - ``reference``: the source paper of the model.
    - ``time_unit``: the unit of ``t`` in the equations, one of ``"h"``, ``"min"``,
      ``"s"``, ``"ms"`` (the unit every rate parameter is per). Every shipped model
      declares it; the default ``None`` means *undeclared* (a user model that does
      not say): :func:`~twinjax.couple` refuses to join two declared units that
      differ (unless asked to convert), and an undeclared model takes the unit of
      the models it is coupled with.
    - ``runs_own_trials`` with :meth:`trial_simulate`, :attr:`trial_output_names`,
      :attr:`default_trial_outputs`, :attr:`beat_output_names`, :attr:`output_units`
      and :meth:`varies_in_time`: what a virtual trial may ask of the model (the
      defaults describe an ODE model simulated by ``simulate_cohort``).
    """

    stiff: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    time_unit: ClassVar[str | None] = None

    # ---- what a virtual trial may ask of the model (declared capabilities) ------
    # A model with its own way of running a trial arm (an organ solved to periodic
    # steady states at beat times: ``models._multiscale.QuasiStaticTwin``) overrides
    # these; ``trial/`` reads them instead of probing the object for attributes.

    #: True: a trial runs an arm with :meth:`trial_simulate`; False (the default): with
    #: ``simulate_cohort``, and the model is an ODE system open to sensitivity analysis.
    runs_own_trials: ClassVar[bool] = False

    @property
    def trial_output_names(self) -> tuple[str, ...]:
        """What a trial's endpoints and outputs may read: the outputs, then the states."""
        return tuple(self.output_names) + tuple(self.state_names)

    @property
    def default_trial_outputs(self) -> tuple[str, ...]:
        """What a trial keeps (with its endpoints' outputs) when not told: the outputs."""
        return tuple(self.output_names)

    @property
    def beat_output_names(self) -> tuple[str, ...]:
        """Outputs computed per beat, at a trial's ``beat_times`` only (default none)."""
        return ()

    @property
    def output_units(self) -> dict[str, str]:
        """Units of outputs the model declares itself (default none; reports derive
        the others from the states and parameters)."""
        return {}

    def varies_in_time(self, name: str) -> bool:
        """Whether parameter ``name`` may change during a simulation (a
        :class:`~twinjax.Piecewise`, inter-occasion variability): for an ODE model,
        every parameter may."""
        return True

    def trial_simulate(self, params, regimen, times, *, beat_times, solver=None, outputs=(),
                       progress=True, store=None, verify=False):  # fmt: skip
        """Simulate a trial arm: ``({output: (N, T)}, status (N,))``, for a model that
        declares :attr:`runs_own_trials`; the others are simulated by the trial."""
        raise NotImplementedError(
            f"{type(self).__name__} does not run trial arms itself (runs_own_trials is "
            "False): trials simulate it with simulate_cohort"
        )

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

    def dose_parameters(self) -> dict[str, tuple[str | None, ...]]:
        """``{compartment: (F, lag[, R[, D]])}`` parameter names; empty by default.

        ``F``: bioavailability (the amount given is ``F * AMT``); ``lag``: the lag time
        (NONMEM ALAG); ``R``: the infusion rate of a ``rate=-1`` record (NONMEM RATE -1);
        ``D``: the infusion duration of a ``rate=-2`` record (NONMEM RATE -2). Use
        :func:`dose_table` to read it with every entry padded to four names.
        """
        return {}

    def with_dose_modifiers(
        self,
        modifiers: Mapping[str | int, Any] | None = None,
        /,
        *,
        F_upper: float | Mapping[str, float] = 1.0,
        **by_name: Any,
    ) -> Model:
        """This model with per-compartment dose modifiers F, ALAG, R, D (NONMEM names).

        Arguments:
            modifiers: ``{compartment: kinds}``, a compartment given by its state name or
                its NONMEM number (1-based position in :attr:`state_names`, as
                ``read_nonmem(compartments=model)`` numbers them), ``kinds`` a subset of
                ``("F", "ALAG", "R", "D")``.
            F_upper: upper bound of the bioavailability parameters (default 1; give a
                larger one where relative bioavailability above 1 is real), one number
                for all or ``{compartment: upper}``.
            **by_name: the same as ``modifiers`` for state names that are Python
                identifiers, e.g. ``central=("F", "ALAG", "R", "D")``.

        Returns:
            A model (:class:`DoseModified`) with the same states and equations whose
            parameters add, for compartment number ``n``: ``Fn`` (bioavailability,
            default 1, in ``[0, F_upper]``, logit transform), ``ALAGn`` (lag time,
            default 0, ``>= 0``), ``Rn`` (the rate of a ``rate=-1`` / RATE -1 record),
            ``Dn`` (the duration of a ``rate=-2`` / RATE -2 record). ``Rn`` and ``Dn``
            default to 0, "not set": a patient with a record that uses one of them at
            a value ``<= 0`` is flagged (status NONFINITE). All are ordinary
            parameters: they vary per patient, take covariate models and IIV, and are
            differentiable.

        Raises:
            ValueError: an unknown compartment or kind, a compartment that already
                has that modifier (e.g. the PK models' depot ``F``/``TLAG``), a name
                that clashes with an existing parameter, or ``F_upper < 1``.

        Example:
            ```python
            m = pk.one_compartment("first_order").with_dose_modifiers(
                central=("F", "ALAG", "R", "D"), F_upper=2.0
            )
            m.dose_parameters()["central"]  # ('F2', 'ALAG2', 'R2', 'D2')
            ```
        """
        return DoseModified.build(self, dict(modifiers or {}), by_name, F_upper)

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
        dtype = dtype or default_float()
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
        for cmt, qs in dose_table(self).items():
            if cmt not in names:
                raise ValueError(
                    f"{type(self).__name__}: dose_parameters names unknown state {cmt!r}"
                )
            for q in qs:
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
        dtype = dtype or default_float()
        p = dict(p or {})
        unknown = [k for k in p if k not in self.param_names]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown parameter(s) {unknown}; valid parameters are "
                f"{list(self.param_names)}{_dose_modifier_hint(self, unknown)}"
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

    def complete_batch(
        self, p: Mapping[str, Any] | None = None, *, dtype=None, check: bool = True
    ) -> tuple[dict, int | None]:
        """:meth:`complete`, with every parameter broadcast to ``(max(n, 1),)``: the
        entry step of the batched solvers (one patient is a batch of one).

        Returns:
            ``(params, n)``: ``{name: (n or 1,)}`` and ``n`` (``None`` for one patient,
            whose results are unbatched again by the caller).
        """
        out, n = self.complete(p, dtype=dtype, check=check)
        nb = n or 1
        return {k: jnp.broadcast_to(v, (nb,)) for k, v in out.items()}, n

    def check_bounds(self, p: Mapping[str, Any]) -> None:
        """Raise a ValueError naming the first parameter outside its bounds."""
        for q in self.params:
            if q.name not in p or not is_concrete(p[q.name]):
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


#: The per-compartment dose modifiers, in the order of a ``dose_parameters`` tuple.
DOSE_MODIFIERS = ("F", "ALAG", "R", "D")
_MODIFIER_DOC = {
    "F": "bioavailability (the amount given is F * AMT)",
    "ALAG": "lag time of the doses",
    "R": "infusion rate of rate=-1 (NONMEM RATE -1) records",
    "D": "infusion duration of rate=-2 (NONMEM RATE -2) records",
}


_MODIFIER_NAME = {
    "F": "bioavailability",
    "ALAG": "lag time",
    "R": "modelled infusion rate (RATE -1)",
    "D": "modelled infusion duration (RATE -2)",
}


def dose_table(model) -> dict[str, tuple[str | None, str | None, str | None, str | None]]:
    """``model.dose_parameters()`` with every entry padded to ``(F, lag, R, D)``."""
    out = {}
    for cmt, qs in model.dose_parameters().items():
        qs = tuple(qs)
        if not 1 <= len(qs) <= 4:
            raise ValueError(
                f"{type(model).__name__}.dose_parameters()[{cmt!r}] = {qs!r}; expected a "
                "tuple (F, lag[, R[, D]]) of parameter names or None"
            )
        out[cmt] = qs + (None,) * (4 - len(qs))  # type: ignore[assignment]
    return out  # type: ignore[return-value]


def _dose_modifier_hint(model, unknown) -> str:
    """How to declare a NONMEM dose modifier (F2, ALAG1, ...) that ``model`` lacks."""
    import re

    hints = []
    states = list(model.state_names)
    for k in unknown:
        m = re.fullmatch(r"(F|ALAG|R|D)(\d+)", str(k))
        if not m:
            continue
        kind, num = m.group(1), int(m.group(2))
        if not 1 <= num <= len(states):
            hints.append(
                f"{k} would be the {kind} of compartment {num}, but "
                f"{type(model).__name__} has {len(states)} states {states}"
            )
            continue
        cmt = states[num - 1]
        hints.append(
            f"{k} is NONMEM's {_MODIFIER_NAME[kind]} of compartment {num} ({cmt!r}); "
            f"declare it with model.with_dose_modifiers({{{cmt!r}: ({kind!r},)}})"
        )
    return ("; " + "; ".join(hints)) if hints else ""


class DoseModified(Model):
    """A model with per-compartment dose modifiers (see :meth:`Model.with_dose_modifiers`).

    The states, equations and outputs are those of ``base``; the parameters are the
    base model's followed by the added ``Fn``, ``ALAGn``, ``Rn``, ``Dn``.
    """

    base: Model
    added: tuple[Param, ...] = eqx.field(static=True)
    table: tuple[tuple[str, tuple[str | None, str | None, str | None, str | None]], ...] = (
        eqx.field(static=True)
    )

    @classmethod
    def build(cls, base: Model, modifiers: dict, by_name: dict, F_upper) -> DoseModified:
        from ._param import fraction, real

        where = f"{type(base).__name__}.with_dose_modifiers"
        states = list(base.state_names)
        spec: dict[str, tuple[str, ...]] = {}
        for key, kinds in list(modifiers.items()) + list(by_name.items()):
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                if not 1 <= int(key) <= len(states):
                    raise ValueError(
                        f"{where}: compartment number {key} is not one of 1..{len(states)} "
                        f"(the states {states}, numbered from 1 as NONMEM numbers them)"
                    )
                cmt = states[int(key) - 1]
            elif isinstance(key, str) and key in states:
                cmt = key
            else:
                raise ValueError(
                    f"{where}: unknown compartment {key!r}; give a state name of {states} or "
                    "its number (1-based)"
                )
            if isinstance(kinds, str):
                kinds = (kinds,)
            kinds = tuple(kinds)
            bad = [k for k in kinds if k not in DOSE_MODIFIERS]
            if bad or not kinds:
                raise ValueError(
                    f"{where}: compartment {cmt!r}: modifiers {list(kinds)}; each must be one "
                    f"of {list(DOSE_MODIFIERS)} (at least one)"
                )
            if cmt in spec:
                raise ValueError(f"{where}: compartment {cmt!r} is given twice")
            spec[cmt] = kinds
        if not spec:
            raise ValueError(
                f"{where}: no compartment given; e.g. "
                f"with_dose_modifiers({{{states[0]!r}: ('F', 'ALAG', 'R', 'D')}})"
            )
        if isinstance(F_upper, Mapping):
            unknown = [c for c in F_upper if c not in spec or "F" not in spec[c]]
            if unknown:
                raise ValueError(
                    f"{where}: F_upper names {unknown}, which get no F here; compartments "
                    f"with F: {[c for c in spec if 'F' in spec[c]]}"
                )
            uppers = {c: float(F_upper.get(c, 1.0)) for c in spec}
        else:
            uppers = {c: float(F_upper) for c in spec}
        for c, u in uppers.items():
            if not (np.isfinite(u) and u >= 1.0):
                raise ValueError(
                    f"{where}: F_upper = {u} for {c!r}; it must be a finite number >= 1 "
                    "(F defaults to 1)"
                )
        table = dose_table(base)
        have = set(base.param_names)
        tu = base.time_unit or "time unit"
        added: list[Param] = []
        for cmt, kinds in spec.items():
            num = states.index(cmt) + 1
            row = list(table.get(cmt, (None, None, None, None)))
            unit = base.state(cmt).unit
            for kind in kinds:
                slot = DOSE_MODIFIERS.index(kind)
                if row[slot] is not None:
                    raise ValueError(
                        f"{where}: compartment {cmt!r} already has a {kind} parameter "
                        f"{row[slot]!r}; use it (or a model without one)"
                    )
                name = f"{kind}{num}"
                if name in have:
                    raise ValueError(
                        f"{where}: {type(base).__name__} already has a parameter {name!r}"
                    )
                doc = f"{_MODIFIER_DOC[kind]}, compartment {num} ({cmt})"
                if kind == "F":
                    q = fraction(name, 1.0, upper=uppers[cmt], doc=doc)
                elif kind == "ALAG":
                    q = real(name, 0.0, tu, lower=0.0, doc=doc)
                elif kind == "R":
                    q = real(name, 0.0, f"{unit}/{tu}", lower=0.0, doc=doc + "; 0: not set")
                else:
                    q = real(name, 0.0, tu, lower=0.0, doc=doc + "; 0: not set")
                added.append(q)
                have.add(name)
                row[slot] = name
            table[cmt] = tuple(row)  # type: ignore[assignment]
        return cls(base, tuple(added), tuple(table.items()))

    @property
    def states(self):
        return self.base.states

    @property
    def params(self):
        return tuple(self.base.params) + self.added

    @property
    def stiff(self):  # type: ignore[override]
        return self.base.stiff

    @property
    def time_unit(self):  # type: ignore[override]
        return self.base.time_unit

    @property
    def reference(self):  # type: ignore[override]
        return self.base.reference

    def dose_parameters(self):
        return dict(self.table)

    def rhs(self, t, y, p, u):
        return self.base.rhs(t, y, p, u)

    def init(self, p):
        return self.base.init(p)

    def observe(self, t, y, p):
        return self.base.observe(t, y, p)


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


def default_float():
    """The default floating dtype: float64 with ``jax_enable_x64`` on, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
