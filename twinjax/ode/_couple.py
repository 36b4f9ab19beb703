"""Composition of models: namespaced states and parameters joined by links."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from fractions import Fraction

import equinox as eqx

from ._link_kinds import Direct, LinkKind, link_kind
from ._model import TIME_UNITS, Model, dose_table
from ._param import Param, State


@dataclasses.dataclass(frozen=True)
class Link:
    """An output of one model driving a parameter of another.

    Arguments:
        source: ``"model.output"``, an output of a sub-model (e.g. ``"pk.C"``).
        target: ``"model.param"``, the parameter it modifies (e.g. ``"circ.R_sys"``).
        kind: how the source value ``C`` modifies the target's base value ``P``: a
            :class:`~twinjax.ode.LinkKind` (``twinjax.ode``), or its string name:

            - ``Direct()``, ``"direct"``: ``P_eff = C`` (drives a PD model's
              concentration input);
            - ``Linear()``, ``"linear"``: ``P_eff = P * (1 + slope * C)``;
            - ``Emax()``, ``"emax"``: ``P_eff = P * (1 + Emax * C / (EC50 + C))``;
            - ``Sigmoid()``, ``"sigmoid"``: ``P_eff = P * (1 + Emax * C^g / (EC50^g + C^g))``;
            - ``UserLink(fn)``, ``"user"`` with ``fn=``: ``P_eff = fn(C, P, q)`` with
              ``q`` the link's own parameters;
            - any other subclass of :class:`~twinjax.ode.LinkKind`.

            A name is converted to its class once, at construction: ``link.kind`` is
            always a ``LinkKind`` (``link.kind.name`` is the name).
        params: values (or full :class:`Param` entries) for the link's parameters;
            for ``"user"`` every parameter must be given as a :class:`Param`.
        fn: the user function for ``kind="user"`` (with ``UserLink(fn)`` it is not
            needed; ``link.fn`` is the user kind's function, else ``None``).
        name: namespace of the link's parameters in the coupled model (default
            ``"link{i}"``).

    Example:
        ```python
        Link("pk.C", "circ.R_AR_SYS", Emax(), {"Emax": -0.3, "EC50": 0.05})
        ```
    """

    source: str
    target: str
    kind: LinkKind | str = Direct()
    params: Mapping[str, float | Param] = dataclasses.field(default_factory=dict)
    fn: Callable | None = None
    name: str | None = None

    def __post_init__(self):
        kind = link_kind(self.kind, self.fn)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "fn", getattr(kind, "fn", None))
        for attr in ("source", "target"):
            v = getattr(self, attr)
            if not isinstance(v, str) or v.count(".") < 1:
                raise ValueError(f"Link {attr} must be 'model.name', got {v!r}")
        object.__setattr__(self, "params", dict(self.params))
        # hashability for use as static structure
        object.__setattr__(self, "_key", tuple(sorted(self.params.items(), key=lambda kv: kv[0])))

    def __hash__(self):
        return hash((self.source, self.target, self.kind, self._key, self.name))

    def param_table(self) -> tuple[Param, ...]:
        """The link's parameters (its kind's table with this link's values)."""
        assert isinstance(self.kind, LinkKind)  # converted in __post_init__
        return self.kind.param_table(self.params, self.source, self.target)

    def apply(self, c, base, q: Mapping):
        """The target's effective value (see :meth:`LinkKind.apply`)."""
        assert isinstance(self.kind, LinkKind)  # converted in __post_init__
        return self.kind.apply(c, base, q)


def _time_units(models: Mapping[str, Model], time_unit: str | None):
    """The coupled time unit and, per model, ``k = d t_model / d t_coupled``.

    Without ``time_unit``: every declared unit must be the same (that is the coupled
    unit, ``None`` if no model declares one) and nothing is rescaled. With it: every
    declared unit is converted to it exactly; undeclared models run unchanged.
    """
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit {time_unit!r} is not one of {list(TIME_UNITS)}")
    declared = [(n, m.time_unit) for n, m in models.items() if m.time_unit is not None]
    if time_unit is None:
        for n, u in declared[1:]:
            n0, u0 = declared[0]
            if u != u0:
                raise ValueError(
                    f"cannot couple {n0} (time unit {u0}) with {n} (time unit {u}): the "
                    f"coupled equations share one time axis, so one model's {u0} would be read "
                    f"as the other's {u}; pass time_unit= to couple() (one of "
                    f"{list(TIME_UNITS)}) to convert every model exactly to that unit"
                )
        unit = declared[0][1] if declared else None
        return unit, tuple(1.0 for _ in models)
    scales = tuple(
        1.0
        if m.time_unit is None
        else float(Fraction(TIME_UNITS[time_unit], TIME_UNITS[m.time_unit]))
        for m in models.values()
    )
    return time_unit, scales


class Coupled(Model):
    """Several models joined into one ODE system (see :func:`couple`).

    States are ``"name.state"``, parameters ``"name.param"`` plus each link's own
    parameters ``"linkname.param"``, outputs ``"name.output"``.

    Time: the coupled model's :attr:`time_unit` is the one its models share, or the
    ``time_unit`` asked for; a model declared in another unit is then run on the
    coupled time axis by the exact change of variable ``t_model = k * t``:
    ``dy/dt = k * rhs(k * t, y, p, u / k)``, ``observe(k * t, ...)``. Its
    parameters stay in its own units, except a dose lag-time parameter (read by the
    dosing engine on the coupled axis): that one is in the coupled unit.
    """

    models: tuple[tuple[str, Model], ...]
    links: tuple[Link, ...]
    _states: tuple[State, ...]
    _params: tuple[Param, ...]
    _time_unit: str | None = eqx.field(static=True)
    _scales: tuple[float, ...] = eqx.field(static=True)  # d t_model / d t, per model
    _lags: tuple[tuple[str, ...], ...] = eqx.field(static=True)  # rescaled lag params

    def __init__(self, models: Mapping[str, Model], links=(), time_unit: str | None = None):
        if not models:
            raise ValueError("couple() needs at least one model")
        for name in models:
            if "." in name or not name:
                raise ValueError(f"Model name {name!r} must be non-empty and contain no '.'")
        self._time_unit, self._scales = _time_units(models, time_unit)
        # time-valued dose parameters (lag times, modelled durations) are in the coupled
        # unit; modelled rates (amount per time) too (see _lag_param)
        self._lags = tuple(
            tuple(
                q for qs in dose_table(m).values() for q in (qs[1], qs[2], qs[3]) if q is not None
            )
            if k != 1.0
            else ()
            for m, k in zip(models.values(), self._scales)
        )
        self.models = tuple(models.items())
        links = tuple(links)
        named = []
        for i, ln in enumerate(links):
            named.append(ln if ln.name else dataclasses.replace(ln, name=f"link{i}"))
        self.links = tuple(named)
        self._states = tuple(
            State(f"{n}.{s.name}", s.unit, s.doc, s.cumulative)
            for n, m in self.models
            for s in m.states
        )
        ps = [
            _lag_param(q, n, k, self._time_unit, rate=q.name in _rate_names(m))
            if q.name in lags
            else q.replace(name=f"{n}.{q.name}")
            for (n, m), k, lags in zip(self.models, self._scales, self._lags)
            for q in m.params
        ]
        for ln in self.links:
            if ln.name in models:
                raise ValueError(f"Link name {ln.name!r} clashes with a model name")
            ps += [q.replace(name=f"{ln.name}.{q.name}") for q in ln.param_table()]
        self._params = tuple(ps)
        self._check_links()

    @property
    def states(self):
        return self._states

    @property
    def params(self):
        return self._params

    @property
    def stiff(self):  # type: ignore[override]
        return any(m.stiff for _, m in self.models)

    @property
    def time_unit(self):  # type: ignore[override]
        """The unit of the coupled time axis (``None``: no model declares one)."""
        return self._time_unit

    @property
    def time_scales(self) -> dict[str, float]:
        """``{model: k}`` with ``t_model = k * t``; 1 for a model in the coupled unit."""
        return {n: k for (n, _), k in zip(self.models, self._scales)}

    def _check_links(self):
        mods = dict(self.models)
        for ln in self.links:
            sm, so = ln.source.split(".", 1)
            tm, tp = ln.target.split(".", 1)
            if sm not in mods:
                raise ValueError(f"Link source {ln.source!r}: no model {sm!r}; have {list(mods)}")
            if so not in mods[sm].output_names:
                raise ValueError(
                    f"Link source {ln.source!r}: model {sm!r} has no output {so!r}; outputs are "
                    f"{list(mods[sm].output_names)}"
                )
            if tm not in mods:
                raise ValueError(f"Link target {ln.target!r}: no model {tm!r}; have {list(mods)}")
            if tp not in mods[tm].param_names:
                raise ValueError(
                    f"Link target {ln.target!r}: model {tm!r} has no parameter {tp!r}; "
                    f"parameters are {list(mods[tm].param_names)}"
                )

    def dose_parameters(self):
        out = {}
        for n, m in self.models:
            for cmt, qs in dose_table(m).items():
                out[f"{n}.{cmt}"] = tuple(None if q is None else f"{n}.{q}" for q in qs)
        return out

    # -- helpers ---------------------------------------------------------------
    def _split(self, d: Mapping, name: str) -> dict:
        pre = name + "."
        return {k[len(pre) :]: v for k, v in d.items() if k.startswith(pre)}

    def _sub_params(self, p: Mapping) -> dict:
        """Each model's own parameters, lag times back in its own unit."""
        sub = {n: self._split(p, n) for n, _ in self.models}
        for (n, m), k, lags in zip(self.models, self._scales, self._lags):
            rates = _rate_names(m)
            for lag in lags:
                sub[n][lag] = sub[n][lag] / k if lag in rates else sub[n][lag] * k
        return sub

    def _effective(self, t, y: Mapping, p: Mapping):
        """Sub-model parameter dicts after applying every link in order."""
        sub = self._sub_params(p)
        mods = dict(self.models)
        ks = self.time_scales
        for ln in self.links:
            sm, so = ln.source.split(".", 1)
            tm, tp = ln.target.split(".", 1)
            c = mods[sm].observe(_at(t, ks[sm]), self._split(y, sm), sub[sm])[so]
            assert ln.name is not None  # every link is named in __init__
            q = self._split(p, ln.name)
            sub[tm] = dict(sub[tm])
            sub[tm][tp] = ln.apply(c, sub[tm][tp], q)
        return sub

    def rhs(self, t, y, p, u):
        sub = self._effective(t, y, p)
        out = {}
        for (n, m), k in zip(self.models, self._scales):
            un = self._split(u, n)
            if k == 1.0:
                d = m.rhs(t, self._split(y, n), sub[n], un)
            else:  # d y / d t = k * (d y / d t_model), inputs per t_model = per t / k
                un = {s: v / k for s, v in un.items()}
                d = {s: k * v for s, v in m.rhs(k * t, self._split(y, n), sub[n], un).items()}
            out.update({f"{n}.{s}": v for s, v in d.items()})
        return out

    def init(self, p):
        base = self._sub_params(p)
        y = {}
        for n, m in self.models:
            y.update({f"{n}.{k}": v for k, v in m.init(base[n]).items()})
        if self.links:
            sub = self._effective(0.0, y, p)
            y = {}
            for n, m in self.models:
                y.update({f"{n}.{k}": v for k, v in m.init(sub[n]).items()})
        return y

    def observe(self, t, y, p):
        sub = self._effective(t, y, p)
        out = {}
        for (n, m), k in zip(self.models, self._scales):
            o = m.observe(_at(t, k), self._split(y, n), sub[n])
            out.update({f"{n}.{k}": v for k, v in o.items()})
        return out


def _at(t, k: float):
    return t if k == 1.0 else k * t


def _rate_names(m: Model) -> set[str]:
    """The modelled-rate (R) dose parameters of ``m``."""
    return {qs[2] for qs in dose_table(m).values() if qs[2] is not None}


def _lag_param(q: Param, name: str, k: float, unit: str | None, rate: bool = False) -> Param:
    """A lag-time or modelled-duration parameter of a model run at ``t_model = k * t``,
    in the coupled unit; ``rate``: a modelled rate (amount per time unit), scaled by
    ``k`` instead of ``1 / k``."""
    s = k if rate else 1.0 / k
    if rate:
        per = q.unit.rsplit("/", 1)[0] if "/" in q.unit else q.unit
        new_unit = f"{per}/{unit}"
    else:
        new_unit = str(unit)
    return q.replace(
        name=f"{name}.{q.name}",
        value=q.value * s,
        lower=q.lower * s,
        upper=q.upper * s,
        unit=new_unit,
        doc=f"{q.doc} (in the coupled time unit {unit})".strip(),
    )


def couple(models: Mapping[str, Model], links=(), *, time_unit: str | None = None) -> Coupled:
    """Join models into one :class:`~twinjax.Model` with namespaced names.

    Arguments:
        models: ``{"pk": pk_model, "pd": pd_model}``; names must not contain ``"."``.
        links: :class:`Link` objects, applied in order (a later link sees parameters
            modified by an earlier one).
        time_unit: the unit of the coupled time axis (``"h"``, ``"min"``, ``"s"``,
            ``"ms"``). By default the models must share their declared
            :attr:`~twinjax.Model.time_unit` (undeclared ones take it), and coupling
            two different units is refused. Given, each declared model is converted
            exactly: a model in hours coupled at ``time_unit="min"`` has its
            derivatives divided by 60 and sees ``t / 60``; its parameters stay in
            hours (``CL`` in L/h), except a dose lag time, which is then in minutes.
            Dose times, durations, rates and save times are in ``time_unit``.

    Returns:
        A :class:`Coupled` model whose states, parameters and outputs are
        ``"name.item"``; doses go to ``"pk.depot"`` and so on.

    Raises:
        ValueError: two models declare different time units and no ``time_unit`` is
            given (the message names both), or an unknown ``time_unit``.

    Example:
        ```python
        m = couple({"pk": pk.one_compartment(absorption="oral"), "pd": pd.IndirectResponse(1)},
                   [Link("pk.C", "pd.C", "direct")])
        ```
    """
    return Coupled(models, links, time_unit)
