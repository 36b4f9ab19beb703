"""How a link's source value modifies its target parameter: one class per kind.

A kind is a small frozen (hashable) object: it names its parameters with their
defaults (:meth:`LinkKind.param_table`) and maps the source value ``C``, the target's
base value ``P`` and the link's parameters ``q`` to the target's effective value
(:meth:`LinkKind.apply`). A new kind is a subclass; the string names (``"emax"``)
are only what TOML specifications and reports call the built-in kinds.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import jax.numpy as jnp

from ._param import Param


@dataclasses.dataclass(frozen=True)
class LinkKind(abc.ABC):
    """The base of every link kind.

    A subclass sets ``name`` (its string name in specifications and reports) and
    ``defaults`` (its parameters, values being the defaults) and writes
    :meth:`apply`; one with fields of its own is a frozen dataclass too, so that it
    stays hashable (a :class:`~twinjax.ode.Link` is static structure of a model).

    Example:
        ```python
        class LogLinear(LinkKind):
            name = "loglinear"
            defaults = (Param("slope", 0.0, "1", -10.0, 10.0, "identity"),)

            def apply(self, c, base, q):
                return base * (1.0 + q["slope"] * jnp.log1p(c))
        ```
    """

    name: ClassVar[str]
    defaults: ClassVar[tuple[Param, ...]] = ()

    def __post_init__(self):
        if not isinstance(getattr(type(self), "name", None), str) or not type(self).name:
            raise TypeError(f"link kind {type(self).__qualname__} needs a class attribute name")

    def param_table(self, params: Mapping, source: str, target: str) -> tuple[Param, ...]:
        """The link's parameters: :attr:`defaults` with the given values or
        :class:`Param` entries in place.

        Raises:
            ValueError: a parameter the kind does not have.
        """
        base = {q.name: q for q in self.defaults}
        unknown = [k for k in params if k not in base]
        if unknown:
            raise ValueError(
                f"Link {source}->{target} ({self.name}): unknown parameter(s) "
                f"{unknown}; valid: {list(base)}"
            )
        out = []
        for k, q in base.items():
            v = params.get(k, q.value)
            out.append(v.replace(name=k) if isinstance(v, Param) else q.replace(value=float(v)))
        return tuple(out)

    @abc.abstractmethod
    def apply(self, c, base, q: Mapping):
        """The target's effective value from the source value ``c``, the target's
        base value ``base`` and the link's parameters ``q`` (``{name: value}``)."""


@dataclasses.dataclass(frozen=True)
class Direct(LinkKind):
    """``P_eff = C`` (drives a PD model's concentration input)."""

    name: ClassVar[str] = "direct"

    def apply(self, c, base, q):
        return c + 0.0 * base


@dataclasses.dataclass(frozen=True)
class Linear(LinkKind):
    """``P_eff = P * (1 + slope * C)``."""

    name: ClassVar[str] = "linear"
    defaults: ClassVar[tuple[Param, ...]] = (
        Param(
            "slope",
            0.0,
            "1/conc",
            -math.inf,
            math.inf,
            "identity",
            doc="fractional change of the target per unit of the source",
        ),
    )

    def apply(self, c, base, q):
        return base * (1.0 + q["slope"] * c)


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


@dataclasses.dataclass(frozen=True)
class Emax(LinkKind):
    """``P_eff = P * (1 + Emax * C / (EC50 + C))``."""

    name: ClassVar[str] = "emax"
    defaults: ClassVar[tuple[Param, ...]] = _EMAX

    def apply(self, c, base, q):
        return base * (1.0 + q["Emax"] * c / (q["EC50"] + c))


@dataclasses.dataclass(frozen=True)
class Sigmoid(LinkKind):
    """``P_eff = P * (1 + Emax * C^g / (EC50^g + C^g))`` (``C`` clipped at 0)."""

    name: ClassVar[str] = "sigmoid"
    defaults: ClassVar[tuple[Param, ...]] = _EMAX + (
        Param("gamma", 1.0, "1", 0.0, 100.0, "log", doc="Hill coefficient"),
    )

    def apply(self, c, base, q):
        cg = jnp.power(jnp.maximum(c, 0.0), q["gamma"])
        return base * (1.0 + q["Emax"] * cg / (jnp.power(q["EC50"], q["gamma"]) + cg))


@dataclasses.dataclass(frozen=True)
class UserLink(LinkKind):
    """``P_eff = fn(C, P, q)`` with ``q`` the link's own parameters, each of which
    must be given as a full :class:`Param` (value, unit, bounds)."""

    name: ClassVar[str] = "user"
    fn: Callable

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fn):
            raise ValueError("Link kind 'user' needs fn(C, P, q)")

    def param_table(self, params: Mapping, source: str, target: str) -> tuple[Param, ...]:
        out = []
        for k, v in params.items():
            if not isinstance(v, Param):
                raise ValueError(
                    f"Link {source}->{target}: user link parameter {k!r} must be "
                    "a Param (value, unit, bounds)"
                )
            out.append(v.replace(name=k))
        return tuple(out)

    def apply(self, c, base, q):
        return self.fn(c, base, q)


KINDS: dict[str, type[LinkKind]] = {
    cls.name: cls for cls in (Direct, Linear, Emax, Sigmoid, UserLink)
}
"""The built-in kinds by their string name."""

LINK_KINDS = tuple(KINDS)
"""The string names of the built-in kinds."""


def link_kind(x, fn: Callable | None = None) -> LinkKind:
    """A :class:`LinkKind` from an instance, a subclass or a built-in kind's name.

    Arguments:
        x: ``Emax()``, ``Emax`` or ``"emax"``.
        fn: the function of a ``"user"`` kind (``UserLink(fn)``), given by name or
            class; with an instance it must be that instance's own function.

    Raises:
        ValueError: an unknown name (the message lists the built-in ones), a user
            kind without ``fn``, or ``fn`` given to another kind.
    """
    if isinstance(x, LinkKind):
        kind = x
    else:
        if isinstance(x, type) and issubclass(x, LinkKind):
            cls = x
        elif isinstance(x, str) and x in KINDS:
            cls = KINDS[x]
        else:
            raise ValueError(f"Link kind {x!r} is not one of {LINK_KINDS}")
        if issubclass(cls, UserLink):
            if fn is None:
                raise ValueError(f"Link kind {cls.name!r} needs fn(C, P, q)")
            return cls(fn)
        kind = cls()
    if fn is not None and getattr(kind, "fn", None) is not fn:
        raise ValueError(
            f"Link kind {kind.name!r}: fn is only for kind 'user' (UserLink(fn)), and then "
            "must be the kind's own function"
        )
    return kind
