"""Composition of models: namespaced states and parameters joined by links."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax.numpy as jnp

from ._model import Model
from ._param import Param, State

LINK_KINDS = ("direct", "linear", "emax", "sigmoid", "user")

_EMAX = (
    Param(
        "Emax",
        0.0,
        "1",
        -1.0,
        math.inf,
        "identity",
        doc="maximal fractional change of the target (negative: inhibition)",
    ),
    Param(
        "EC50",
        1.0,
        "conc",
        0.0,
        math.inf,
        "log",
        doc="source value giving half the maximal change",
    ),
)

_LINK_PARAMS: dict[str, tuple[Param, ...]] = {
    "direct": (),
    "linear": (
        Param(
            "slope",
            0.0,
            "1/conc",
            -math.inf,
            math.inf,
            "identity",
            doc="fractional change of the target per unit of the source",
        ),
    ),
    "emax": _EMAX,
    "sigmoid": _EMAX + (Param("gamma", 1.0, "1", 0.0, 100.0, "log", doc="Hill coefficient"),),
}


@dataclasses.dataclass(frozen=True)
class Link:
    """An output of one model driving a parameter of another.

    Arguments:
        source: ``"model.output"``, an output of a sub-model (e.g. ``"pk.C"``).
        target: ``"model.param"``, the parameter it modifies (e.g. ``"circ.R_sys"``).
        kind: how the source value ``C`` modifies the target's base value ``P``:

            - ``"direct"``: ``P_eff = C`` (drives a PD model's concentration input);
            - ``"linear"``: ``P_eff = P * (1 + slope * C)``;
            - ``"emax"``: ``P_eff = P * (1 + Emax * C / (EC50 + C))``;
            - ``"sigmoid"``: ``P_eff = P * (1 + Emax * C^g / (EC50^g + C^g))``;
            - ``"user"``: ``P_eff = fn(C, P, q)`` with ``q`` the link's own parameters.
        params: values (or full :class:`Param` entries) for the link's parameters;
            for ``"user"`` every parameter must be given as a :class:`Param`.
        fn: the user function for ``kind="user"``.
        name: namespace of the link's parameters in the coupled model (default
            ``"link{i}"``).
    """

    source: str
    target: str
    kind: str = "direct"
    params: Mapping[str, float | Param] = dataclasses.field(default_factory=dict)
    fn: Callable | None = None
    name: str | None = None

    def __post_init__(self):
        if self.kind not in LINK_KINDS:
            raise ValueError(f"Link kind {self.kind!r} is not one of {LINK_KINDS}")
        for attr in ("source", "target"):
            v = getattr(self, attr)
            if not isinstance(v, str) or v.count(".") < 1:
                raise ValueError(f"Link {attr} must be 'model.name', got {v!r}")
        if self.kind == "user" and self.fn is None:
            raise ValueError("Link kind 'user' needs fn(C, P, q)")
        object.__setattr__(self, "params", dict(self.params))
        # hashability for use as static structure
        object.__setattr__(self, "_key", tuple(sorted(self.params.items(), key=lambda kv: kv[0])))

    def __hash__(self):
        return hash((self.source, self.target, self.kind, self._key, self.fn, self.name))

    def param_table(self) -> tuple[Param, ...]:
        if self.kind == "user":
            out = []
            for k, v in self.params.items():
                if not isinstance(v, Param):
                    raise ValueError(
                        f"Link {self.source}->{self.target}: user link parameter {k!r} must be "
                        "a Param (value, unit, bounds)"
                    )
                out.append(v.replace(name=k))
            return tuple(out)
        base = {q.name: q for q in _LINK_PARAMS[self.kind]}
        unknown = [k for k in self.params if k not in base]
        if unknown:
            raise ValueError(
                f"Link {self.source}->{self.target} ({self.kind}): unknown parameter(s) "
                f"{unknown}; valid: {list(base)}"
            )
        out = []
        for k, q in base.items():
            v = self.params.get(k, q.value)
            out.append(v.replace(name=k) if isinstance(v, Param) else q.replace(value=float(v)))
        return tuple(out)

    def apply(self, c, base, q: Mapping):
        if self.kind == "direct":
            return c + 0.0 * base
        if self.kind == "linear":
            return base * (1.0 + q["slope"] * c)
        if self.kind == "emax":
            return base * (1.0 + q["Emax"] * c / (q["EC50"] + c))
        if self.kind == "sigmoid":
            cg = jnp.power(jnp.maximum(c, 0.0), q["gamma"])
            return base * (1.0 + q["Emax"] * cg / (jnp.power(q["EC50"], q["gamma"]) + cg))
        assert self.fn is not None  # kind "user": checked in __post_init__
        return self.fn(c, base, q)


class Coupled(Model):
    """Several models joined into one ODE system (see :func:`couple`).

    States are ``"name.state"``, parameters ``"name.param"`` plus each link's own
    parameters ``"linkname.param"``, outputs ``"name.output"``.
    """

    models: tuple[tuple[str, Model], ...]
    links: tuple[Link, ...]
    _states: tuple[State, ...]
    _params: tuple[Param, ...]

    def __init__(self, models: Mapping[str, Model], links=()):
        if not models:
            raise ValueError("couple() needs at least one model")
        for name in models:
            if "." in name or not name:
                raise ValueError(f"Model name {name!r} must be non-empty and contain no '.'")
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
        ps = [q.replace(name=f"{n}.{q.name}") for n, m in self.models for q in m.params]
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
            for cmt, (f, lag) in m.dose_parameters().items():
                out[f"{n}.{cmt}"] = (
                    None if f is None else f"{n}.{f}",
                    None if lag is None else f"{n}.{lag}",
                )
        return out

    # -- helpers ---------------------------------------------------------------
    def _split(self, d: Mapping, name: str) -> dict:
        pre = name + "."
        return {k[len(pre) :]: v for k, v in d.items() if k.startswith(pre)}

    def _effective(self, t, y: Mapping, p: Mapping):
        """Sub-model parameter dicts after applying every link in order."""
        sub = {n: self._split(p, n) for n, _ in self.models}
        mods = dict(self.models)
        for ln in self.links:
            sm, so = ln.source.split(".", 1)
            tm, tp = ln.target.split(".", 1)
            c = mods[sm].observe(t, self._split(y, sm), sub[sm])[so]
            assert ln.name is not None  # every link is named in __init__
            q = self._split(p, ln.name)
            sub[tm] = dict(sub[tm])
            sub[tm][tp] = ln.apply(c, sub[tm][tp], q)
        return sub

    def rhs(self, t, y, p, u):
        sub = self._effective(t, y, p)
        out = {}
        for n, m in self.models:
            d = m.rhs(t, self._split(y, n), sub[n], self._split(u, n))
            out.update({f"{n}.{k}": v for k, v in d.items()})
        return out

    def init(self, p):
        base = {n: self._split(p, n) for n, _ in self.models}
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
        for n, m in self.models:
            o = m.observe(t, self._split(y, n), sub[n])
            out.update({f"{n}.{k}": v for k, v in o.items()})
        return out


def couple(models: Mapping[str, Model], links=()) -> Coupled:
    """Join models into one :class:`~twinjax.Model` with namespaced names.

    Arguments:
        models: ``{"pk": pk_model, "pd": pd_model}``; names must not contain ``"."``.
        links: :class:`Link` objects, applied in order (a later link sees parameters
            modified by an earlier one).

    Returns:
        A :class:`Coupled` model whose states, parameters and outputs are
        ``"name.item"``; doses go to ``"pk.depot"`` and so on.

    Example:
        ```python
        m = couple({"pk": pk.one_compartment(absorption="oral"), "pd": pd.IndirectResponse(1)},
                   [Link("pk.C", "pd.C", "direct")])
        ```
    """
    return Coupled(models, links)
