"""Local sensitivities by forward-mode automatic differentiation over a cohort."""

from __future__ import annotations

import dataclasses
import time as _time

import jax
import jax.numpy as jnp
import numpy as np

from ..ode._model import default_float
from ..solve._batch import broadcast_batch
from ..solve._diffrax import Diffrax
from ..solve._simulate import simulate
from ._quantity import (
    check_names,
    check_target,
    endpoint_values,
    is_model,
    model_outputs,
    params_dict,
    quantity_spec,
)


@dataclasses.dataclass(frozen=True)
class LocalResult:
    """Local sensitivities of one quantity to parameters, per patient.

    Attributes:
        quantity: the output, endpoint or function analysed.
        parameters: the parameter names, in the order of the last axis.
        values: ``(N, k)`` parameter values at which the derivatives are taken.
        y: the quantity, ``(N,)`` (an endpoint or a function) or ``(N, T)`` (an output
            over time).
        absolute: ``dy/dtheta``, shape ``y.shape + (k,)``.
        normalised: ``(theta / y) dy/dtheta = d log y / d log theta`` (NaN where
            ``y == 0``), same shape.
        times: ``(T,)`` save times for an output over time, else None.
        status: ``(N,)`` solver status codes (0 = OK; a failed patient's numbers are
            NaN).
        seconds: wall time of the compiled call (compilation included).
    """

    quantity: str
    parameters: tuple[str, ...]
    values: np.ndarray
    y: np.ndarray
    absolute: np.ndarray
    normalised: np.ndarray
    times: np.ndarray | None
    status: np.ndarray
    seconds: float

    @property
    def n_patients(self) -> int:
        return int(self.values.shape[0])

    def to_frame(self):
        """A long table: one row per patient (and time) and parameter, with columns
        ``patient, [time,] parameter, value, y, absolute, normalised, status``."""
        import pandas as pd

        n, k = self.values.shape
        if self.times is None:
            return pd.DataFrame(
                {
                    "patient": np.repeat(np.arange(n), k),
                    "parameter": np.tile(np.array(self.parameters, dtype=object), n),
                    "value": self.values.reshape(-1),
                    "y": np.repeat(self.y, k),
                    "absolute": self.absolute.reshape(-1),
                    "normalised": self.normalised.reshape(-1),
                    "status": np.repeat(self.status, k),
                }
            )
        T = self.times.shape[0]
        return pd.DataFrame(
            {
                "patient": np.repeat(np.arange(n), T * k),
                "time": np.tile(np.repeat(self.times, k), n),
                "parameter": np.tile(np.array(self.parameters, dtype=object), n * T),
                "value": np.repeat(self.values[:, None, :], T, axis=1).reshape(-1),
                "y": np.repeat(self.y.reshape(-1), k),
                "absolute": self.absolute.reshape(-1),
                "normalised": self.normalised.reshape(-1),
                "status": np.repeat(self.status, T * k),
            }
        )

    def summary(self, time: float | None = None, *, normalised: bool = True):
        """Per parameter over the patients that succeeded: ``median``, ``q05``,
        ``q25``, ``q75``, ``q95``, sorted by ``|median|`` (largest first).

        For an output over time, ``time`` picks the save time (the nearest one)."""
        import pandas as pd

        s = self._at(time, normalised)
        ok = (self.status == 0) & np.all(np.isfinite(s), axis=1)
        s = s[ok]
        if s.shape[0] == 0:
            raise ValueError("no patient has finite sensitivities to summarise")
        q = np.percentile(s, [5, 25, 50, 75, 95], axis=0)
        df = pd.DataFrame(
            {"median": q[2], "q05": q[0], "q25": q[1], "q75": q[3], "q95": q[4]},
            index=pd.Index(self.parameters, name="parameter"),
        )
        return df.iloc[np.argsort(-np.abs(df["median"].to_numpy()), kind="stable")]

    def _at(self, time, normalised):
        s = self.normalised if normalised else self.absolute
        if self.times is None:
            if time is not None:
                raise ValueError(f"{self.quantity!r} is one number per patient; time= is not used")
            return s
        if time is None:
            raise ValueError(
                f"{self.quantity!r} is an output over time: pass time= (one of the save times "
                f"{self.times[0]}..{self.times[-1]})"
            )
        i = int(np.argmin(np.abs(self.times - time)))
        return s[:, i, :]

    def plot(self, ax=None, *, time: float | None = None, normalised: bool = True):
        """A tornado plot: one bar per parameter (median over the cohort), whiskers
        from the 5th to the 95th percentile and a box for the quartiles when the
        cohort has more than one patient; largest effect on top.

        For an output over time, ``time=`` picks the save time; without it the median
        normalised sensitivity of every parameter is drawn against time.
        Returns the matplotlib Axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.45 * len(self.parameters) + 1.5))
        label = (
            f"d log {self.quantity} / d log parameter"
            if normalised
            else f"d {self.quantity} / d parameter"
        )
        if self.times is not None and time is None:
            s = self.normalised if normalised else self.absolute
            ok = self.status == 0
            for j, name in enumerate(self.parameters):
                ax.plot(self.times, np.nanmedian(s[ok, :, j], axis=0), label=name)
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_xlabel("time")
            ax.set_ylabel(label)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            ax.set_title(f"local sensitivity of {self.quantity} (median over patients)")
            return ax
        df = self.summary(time, normalised=normalised).iloc[::-1]
        pos = np.arange(len(df))
        med = df["median"].to_numpy()
        colours = np.where(med >= 0, "tab:red", "tab:blue")
        ax.barh(pos, med, color=colours, alpha=0.8)
        if self.n_patients > 1:
            ax.hlines(pos, df["q05"], df["q95"], color="k", lw=1)
            ax.hlines(pos, df["q25"], df["q75"], color="k", lw=4)
        ax.axvline(0.0, color="0.3", lw=0.8)
        ax.set_yticks(pos, list(df.index))
        ax.set_xlabel(label)
        where = "" if time is None else f" at t = {time:g}"
        n = (
            f" ({self.n_patients} patients: median, 25-75 and 5-95 %)"
            if self.n_patients > 1
            else ""
        )
        ax.set_title(f"local sensitivity of {self.quantity}{where}{n}", fontsize=10)
        return ax


def _forward_solver(solver):
    """A solver that supports forward-mode differentiation: ``Diffrax`` with
    ``adjoint="forward"`` (a Diffrax given with the checkpoint adjoint is switched)."""
    if solver is None:
        return Diffrax(adjoint="forward")
    if isinstance(solver, Diffrax) and solver.adjoint != "forward":
        fields = {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}
        return Diffrax(**{**fields, "adjoint": "forward"})
    return solver


def local(
    model,
    params=None,
    regimen=None,
    times=None,
    *,
    output: str | None = None,
    endpoint=None,
    parameters=None,
    solver=None,
    dtype=None,
) -> LocalResult:
    """Local sensitivities ``dy/dtheta`` and ``d log y / d log theta`` by forward-mode AD.

    One compiled call: ``jax.jacfwd`` of the whole simulation with respect to one
    offset per parameter, shared by the cohort. Patients are independent, so the
    derivative of patient ``i``'s quantity with respect to that offset is its own
    ``dy_i/dtheta_i``; every patient and parameter comes out of one program (``k``
    tangent directions, batched by ``jacfwd``).

    Arguments:
        model: a twinjax ``Model`` (simulated with :func:`twinjax.simulate`), or a
            JAX function ``f(params) -> (N,)`` (one number per patient) of a
            parameter dict.
        params: ``{name: value}`` (scalars: one patient; ``(N,)`` arrays: a cohort) or
            a population ``Cohort``. For a Model, missing parameters take their
            defaults; for a function, these are the values differentiated at.
        regimen, times: as for :func:`twinjax.simulate` (a Model only).
        output: an output or state of the model: sensitivities at every save time,
            shape ``(N, T, k)``.
        endpoint: a :class:`twinjax.trial.Endpoint` (kinds ``value``, ``change``,
            ``cmax``, ``auc``, ``ctrough``, or ``custom`` with a JAX-traceable
            ``fn``), or a JAX function ``fn(times, outputs) -> (N,)`` with ``outputs``
            a dict of ``(N, T)`` arrays (outputs and states): shape ``(N, k)``.
        parameters: the parameters to differentiate with respect to (default: every
            parameter of the model, or every key of ``params`` for a function).
        solver: default ``solvers.Diffrax(adjoint="forward")``; a ``Diffrax`` given
            with the (reverse-mode) checkpoint adjoint is switched to the forward one,
            ``solvers.Ensemble`` differentiates in forward mode as it is.
        dtype: floating dtype of the simulation (default: float64 with x64 on).

    Returns:
        A :class:`LocalResult` (``.to_frame()``, ``.summary()``, ``.plot()``).

    Raises:
        ValueError: before any simulation, for unknown parameter, output or endpoint
            names, values outside their bounds, or an endpoint without a derivative.

    The normalised sensitivity of a parameter whose value is 0 is 0; where the
    quantity is 0 it is NaN. At a kink (a lag time of exactly 0, a maximum reached
    at two save times) the derivative is the one the program's branch gives.
    """
    where = "sensitivity.local"
    check_target(model, where)
    p = params_dict(params)
    name, ts, ep, out_name = quantity_spec(
        model, times, output, endpoint, where, differentiable=True
    )
    if is_model(model):
        dtype = dtype or default_float()
        full, n = model.complete(p, dtype=dtype, check=True)
        allowed = model.param_names
    else:
        if not p:
            raise ValueError(f"{where}: a function needs params= (the values to differentiate at)")
        dtype = dtype or default_float()
        full = {k: jnp.asarray(v, dtype) for k, v in p.items()}
        shapes = {k: v.shape for k, v in full.items() if v.ndim > 0}
        if any(v.ndim > 1 for v in full.values()) or len(set(shapes.values())) > 1:
            raise ValueError(f"{where}: params must be scalars or (N,) arrays of one N: {shapes}")
        n = next(iter(shapes.values()))[0] if shapes else None
        allowed = tuple(full)
    names = tuple(parameters) if parameters is not None else tuple(allowed)
    if not names:
        raise ValueError(f"{where}: no parameters to differentiate with respect to")
    check_names(names, allowed, "parameter(s)", where)
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: parameters are repeated: {list(names)}")
    nb = n or 1
    theta = broadcast_batch(full, nb)
    solver = _forward_solver(solver) if is_model(model) else None

    def g(delta):
        q = dict(theta)
        for i, k in enumerate(names):
            q[k] = theta[k] + delta[i]
        if is_model(model):
            r = simulate(model, q, regimen, times, solver=solver, dtype=dtype, check=False)
            if ep is None:
                y = r[out_name]
            else:
                y = endpoint_values(ep, ts, model_outputs(r), xp=jnp)
            status = r.status
        else:
            y = jnp.asarray(model(q))
            if y.shape not in ((), (nb,)):
                raise ValueError(
                    f"{where}: the function must return one number per patient, shape "
                    f"({nb},); it returned shape {y.shape}"
                )
            status = jnp.zeros((nb,), jnp.int32)
            y = jnp.broadcast_to(y, (nb,))
        return y, (y, status)

    t0 = _time.perf_counter()
    J, (y, status) = jax.jit(jax.jacfwd(g, has_aux=True))(jnp.zeros((len(names),), dtype))
    J = np.asarray(jax.block_until_ready(J), np.float64)
    seconds = _time.perf_counter() - t0
    y = np.asarray(y, np.float64)
    vals = np.stack([np.asarray(theta[k], np.float64) for k in names], axis=-1)  # (N, k)
    bshape = (nb,) + (1,) * (y.ndim - 1) + (len(names),)
    th = vals.reshape(bshape)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(th == 0, 0.0, J * th / y[..., None])
        norm = np.where(y[..., None] == 0, np.nan, norm)
    status = np.asarray(status)
    bad = status != 0
    if bad.any():
        J[bad] = np.nan
        norm[bad] = np.nan
    return LocalResult(
        quantity=name,
        parameters=names,
        values=vals,
        y=y,
        absolute=J,
        normalised=norm,
        times=ts if ep is None and ts is not None else None,
        status=status,
        seconds=seconds,
    )
