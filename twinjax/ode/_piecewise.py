"""Parameters that change with time: piecewise constant between change times.

Real data have covariates that change during a study (body weight, creatinine
clearance) and trials have parameters that change between visits (inter-occasion
variability). A :class:`Piecewise` value given for a parameter makes the engine hold it
constant between its times and switch at each of them, inside one simulation.

Two conventions decide which value holds between two record times:

- ``"nocb"`` (next observation carried backward, NONMEM's): the record that ends an
  interval supplies its value. At a record time the parameter has that record's
  value; just after it, the next record's. A dose or an observation at a record time
  sees that record's value, as NONMEM's PK and ERROR blocks called with that record do.
- ``"locf"`` (last observation carried forward, rxode2's and mrgsolve's default, and
  the natural choice for occasions): a value holds from its time until the next one.

Before the first time a ``"locf"`` parameter has the first value; after the last time a
``"nocb"`` parameter keeps the last value.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

INTERPOLATIONS = ("nocb", "locf")


def _concrete(x) -> bool:
    try:
        np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False
    return not isinstance(x, jax.core.Tracer)


class Piecewise(eqx.Module):
    """A parameter value that is piecewise constant in time.

    Arguments:
        times: change times, ``(C,)`` for everyone or ``(N, C)`` per patient,
            non-decreasing, >= 0, in the model's time unit. Per-patient rows may be
            padded by repeating the last time.
        values: the value at each time, ``(C,)`` or ``(N, C)``.
        interpolation: ``"nocb"`` (NONMEM's convention, the default) or ``"locf"``;
            see the module documentation.

    Example:
        ```python
        # weight 70 kg until day 7, then 75 kg, for a model whose CL depends on WT
        tj.simulate(model, {"WT": tj.Piecewise([0, 168], [70, 75], "locf")}, regimen, ts)
        ```

    The values are differentiable (gradients flow to them); the times are not.
    """

    times: Any
    values: Any
    interpolation: str = eqx.field(static=True, default="nocb")

    def __check_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Piecewise: interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}"
            )

    def validate(self, name: str) -> None:
        """Raise a ValueError naming ``name`` for malformed times or values."""
        t, v = self.times, self.values
        tshape, vshape = np.shape(t), np.shape(v)
        where = f"parameter {name!r} (Piecewise)"
        if len(tshape) not in (1, 2) or tshape[-1] == 0:
            raise ValueError(
                f"{where}: times must be a non-empty (C,) or (N, C) array, got {tshape}"
            )
        if len(vshape) not in (1, 2) or vshape[-1] != tshape[-1]:
            raise ValueError(
                f"{where}: values have shape {vshape}; expected one value per time, "
                f"(C,) or (N, C) with C = {tshape[-1]}"
            )
        if len(tshape) == 2 and len(vshape) == 2 and tshape[0] != vshape[0]:
            raise ValueError(f"{where}: times have {tshape[0]} patients, values {vshape[0]}")
        if _concrete(t):
            a = np.asarray(t, float)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{where}: times must be finite")
            if np.any(a < 0):
                raise ValueError(f"{where}: times must be >= 0; min is {a.min()}")
            if np.any(np.diff(a, axis=-1) < 0):
                raise ValueError(f"{where}: times must be non-decreasing")

    # numpy defers ``array * piecewise`` to __rmul__ instead of looping over elements
    __array_ufunc__ = None

    def _binary(self, other, op) -> Piecewise:
        """``op`` of two values that are piecewise constant in time (or constant).

        A constant is a scalar or ``(N,)`` (one value per patient). Two Piecewise values
        on the same change times combine value by value; on different ones, on the
        union of their change times (each read with its own convention there, which is
        exact: both are constant between consecutive times of the union).
        """
        if isinstance(other, Piecewise):
            if other.interpolation != self.interpolation:
                raise ValueError(
                    "Piecewise: cannot combine a 'nocb' and a 'locf' value; give both the "
                    "same interpolation"
                )
            if other.times is self.times or _same(self.times, other.times):
                return Piecewise(self.times, op(self.values, other.values), self.interpolation)
            n = max(self.n or 1, other.n or 1)
            t1, v1 = self.arrays(n, _dtype(self, other))
            t2, v2 = other.arrays(n, _dtype(self, other))
            t = jnp.sort(jnp.concatenate([t1, t2], -1), -1)
            a = value_at(t1, v1, self.interpolation, t)
            b = value_at(t2, v2, self.interpolation, t)
            return Piecewise(t, op(a, b), self.interpolation)
        x = jnp.asarray(other)
        v = jnp.asarray(self.values)
        if x.ndim == 0:
            return Piecewise(self.times, op(v, x), self.interpolation)
        if x.ndim != 1:
            raise ValueError(
                f"Piecewise: can combine with a scalar or one value per patient (N,), got "
                f"shape {x.shape}"
            )
        if self.n is not None and self.n != x.shape[0]:
            raise ValueError(f"Piecewise: {self.n} patients, the other value has {x.shape[0]}")
        t, v = self.arrays(x.shape[0], jnp.result_type(v, x))
        return Piecewise(t, op(v, x[:, None]), self.interpolation)

    def __mul__(self, other) -> Piecewise:
        return self._binary(other, lambda a, b: a * b)

    def __rmul__(self, other) -> Piecewise:
        return self._binary(other, lambda a, b: b * a)

    def __truediv__(self, other) -> Piecewise:
        return self._binary(other, lambda a, b: a / b)

    def map(self, fn) -> Piecewise:
        """The same change times and convention with values ``fn(values)`` (a
        covariate model applied to a time-varying covariate, elementwise)."""
        return Piecewise(self.times, fn(jnp.asarray(self.values)), self.interpolation)

    @property
    def n(self) -> int | None:
        """The number of patients (``None``: the same for everyone)."""
        for a in (self.times, self.values):
            if np.ndim(a) == 2:
                return int(np.shape(a)[0])
        return None

    def arrays(self, n: int, dtype) -> tuple[jax.Array, jax.Array]:
        """``(N, C)`` times and values."""
        C = np.shape(self.times)[-1]
        t = jnp.broadcast_to(jnp.asarray(self.times, dtype), (n, C))
        v = jnp.broadcast_to(jnp.asarray(self.values, dtype), (n, C))
        return t, v

    def __repr__(self) -> str:
        return (
            f"Piecewise(times={np.asarray(self.times).tolist()}, values=<{np.shape(self.values)}>, "
            f"interpolation={self.interpolation!r})"
        )


def _same(a, b) -> bool:
    """Whether two change-time tables are concretely equal (False when traced)."""
    if not (_concrete(a) and _concrete(b)):
        return False
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _dtype(*pws):
    return jnp.result_type(*[jnp.asarray(p.values) for p in pws])


def value_at(times, values, interpolation: str, t, *, after: bool = False):
    """The value at times ``t`` (``(N, M)``) of ``(N, C)`` change tables.

    ``after=False``: the value at ``t`` itself (what a dose or an observation at ``t``
    sees); ``after=True``: on the open interval just after ``t`` (what the dynamics
    integrate with). The two differ only for ``"nocb"`` at a change time.
    """
    C = times.shape[-1]
    tt = t[..., :, None]  # (N, M, 1)
    tc = times[..., None, :]  # (N, 1, C)
    if interpolation == "locf":
        idx = jnp.sum(tc <= tt, -1) - 1
    elif after:
        idx = jnp.sum(tc <= tt, -1)
    else:
        idx = jnp.sum(tc < tt, -1)
    idx = jnp.clip(idx, 0, C - 1)
    return jnp.take_along_axis(values, idx, axis=-1)


class Schedule(eqx.Module):
    """The engine's form of a model's piecewise parameters for a batch of patients.

    ``tables``: ``{name: ((N, C) times, (N, C) values)}``; ``interp``: the convention of
    each; ``change``: ``(N, U)`` the union of every change time (and 0), at which the
    engine re-reads the parameters.
    """

    tables: dict
    interp: dict = eqx.field(static=True)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tables)

    def change_times(self):
        n = next(iter(self.tables.values()))[0].shape[0]
        dtype = next(iter(self.tables.values()))[0].dtype
        parts = [jnp.zeros((n, 1), dtype)] + [t for t, _ in self.tables.values()]
        return jnp.concatenate(parts, -1)

    def at(self, t, *, after: bool = False) -> dict:
        """``{name: value}`` at times ``t`` ``(N, M)``, each ``(N, M)``."""
        return {
            k: value_at(tv[0], tv[1], self.interp[k], t, after=after)
            for k, tv in self.tables.items()
        }


def split_params(params) -> tuple[dict, dict]:
    """``(constant params, {name: Piecewise})`` from a user's parameter mapping."""
    params = dict(params or {})
    pw = {k: v for k, v in params.items() if isinstance(v, Piecewise)}
    rest = {k: v for k, v in params.items() if k not in pw}
    return rest, pw


def initial_values(pw: dict) -> dict:
    """The value of each piecewise parameter at time 0: scalars or ``(N,)``."""
    out = {}
    for k, v in pw.items():
        t = jnp.atleast_2d(jnp.asarray(v.times))
        vals = jnp.atleast_2d(jnp.asarray(v.values))
        n = max(t.shape[0], vals.shape[0])
        t = jnp.broadcast_to(t, (n, t.shape[-1]))
        vals = jnp.broadcast_to(vals, (n, vals.shape[-1]))
        x = value_at(t, vals, v.interpolation, jnp.zeros((n, 1), t.dtype))[:, 0]
        out[k] = x if v.n is not None else x[0]
    return out


def schedule(pw: dict, n: int, dtype) -> Schedule | None:
    if not pw:
        return None
    return Schedule(
        tables={k: v.arrays(n, dtype) for k, v in pw.items()},
        interp={k: v.interpolation for k, v in pw.items()},
    )
