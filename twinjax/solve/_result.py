"""Simulation results: times, states, outputs and a status code per patient."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._status import Status


class Result(eqx.Module):
    """The outcome of :func:`twinjax.simulate`.

    Attributes:
        times: ``(T,)`` save times (``(N, T)`` when patients have their own times).
        states: ``{state: (N, T)}`` (``(T,)`` for one patient).
        outputs: ``{output: (N, T)}`` from ``Model.observe``.
        status: ``(N,)`` int codes (``()`` for one patient); see :class:`Status`.
        params: the full parameter dict used.

    A failed patient (``status != 0``) has NaN states and outputs at every save time;
    :meth:`summarise` counts failed patients and leaves them out of its statistics,
    and the tables of :meth:`to_dataframe` and :meth:`to_xarray` carry ``status`` and
    ``ok`` columns.
    """

    times: jax.Array
    states: dict
    outputs: dict
    status: jax.Array
    params: dict

    @property
    def n_patients(self) -> int | None:
        return None if self.status.ndim == 0 else int(self.status.shape[0])

    @property
    def ok(self) -> jax.Array:
        """Boolean mask of patients whose simulation succeeded."""
        return self.status == Status.OK

    def __getitem__(self, name: str) -> jax.Array:
        """An output or a state by name."""
        if name in self.outputs:
            return self.outputs[name]
        if name in self.states:
            return self.states[name]
        raise KeyError(
            f"{name!r} is neither an output {list(self.outputs)} nor a state {list(self.states)}"
        )

    def failures(self) -> dict[str, int]:
        """``{status name: number of patients}`` for every failure code present."""
        st = np.atleast_1d(np.asarray(self.status))
        codes, counts = np.unique(st[st != Status.OK], return_counts=True)
        return {Status(int(c)).name: int(k) for c, k in zip(codes, counts)}

    def summarise(self, name: str) -> dict:
        """Per-time statistics of an output or state over the patients that succeeded.

        Returns:
            ``{"n_ok": int, "n_failed": int, "failed": {status name: count},
            "mean", "sd", "min", "max": (T,) arrays}``; NaN where no patient
            succeeded (``sd`` also with a single one).
        """
        ok = np.atleast_1d(np.asarray(self.ok))
        v = np.asarray(self[name], np.float64)
        v = v.reshape((ok.shape[0], -1))[ok]
        n_ok = int(ok.sum())
        T = v.shape[-1]
        nan = np.full(T, np.nan)
        return {
            "n_ok": n_ok,
            "n_failed": int(ok.shape[0] - n_ok),
            "failed": self.failures(),
            "mean": v.mean(axis=0) if n_ok else nan,
            "sd": v.std(axis=0, ddof=1) if n_ok > 1 else nan,
            "min": v.min(axis=0) if n_ok else nan,
            "max": v.max(axis=0) if n_ok else nan,
        }

    def patient(self, i: int) -> Result:
        """The result of patient ``i`` as a single-patient Result."""
        if self.n_patients is None:
            raise ValueError("this Result holds a single patient")
        t = self.times if self.times.ndim == 1 else self.times[i]
        pick = lambda d: {k: v[i] for k, v in d.items()}  # noqa: E731
        return Result(t, pick(self.states), pick(self.outputs), self.status[i], pick(self.params))

    def to_xarray(self, covariates=None):
        """An ``xarray.Dataset`` with dims ``(patient, time)``; covariates as coordinates."""
        import xarray as xr

        batched = self.n_patients is not None
        dims = ("patient", "time") if batched else ("time",)
        data = {k: (dims, np.asarray(v)) for k, v in {**self.states, **self.outputs}.items()}
        coords = {}
        if batched:
            n = self.n_patients
            coords["patient"] = np.arange(n)
            data["status"] = (("patient",), np.asarray(self.status))
            data["ok"] = (("patient",), np.asarray(self.ok))
            if self.times.ndim == 1:
                coords["time"] = np.asarray(self.times)
            else:
                data["time_of_save"] = (dims, np.asarray(self.times))
            for k, v in self.params.items():
                coords[f"param_{k}"] = ("patient", np.broadcast_to(np.asarray(v), (n,)))
            if covariates is not None:
                for c in covariates.columns:
                    coords[c] = ("patient", np.asarray(covariates[c]))
        else:
            coords["time"] = np.asarray(self.times)
        return xr.Dataset(data, coords=coords)

    def to_dataframe(self):
        """A long pandas table: one row per patient and time, one column per quantity."""
        import pandas as pd

        batched = self.n_patients is not None
        vals = {k: np.asarray(v) for k, v in {**self.states, **self.outputs}.items()}
        if not batched:
            df = pd.DataFrame({"time": np.asarray(self.times), **vals})
            df.insert(0, "status", int(self.status))
            df.insert(1, "ok", bool(self.ok))
            return df
        n = self.n_patients
        T = next(iter(vals.values())).shape[1] if vals else jnp.shape(self.times)[-1]
        t = np.broadcast_to(np.asarray(self.times), (n, T))
        df = pd.DataFrame(
            {
                "patient": np.repeat(np.arange(n), T),
                "time": t.reshape(-1),
                **{k: v.reshape(-1) for k, v in vals.items()},
            }
        )
        df["status"] = np.repeat(np.asarray(self.status), T)
        df["ok"] = np.repeat(np.asarray(self.ok), T)
        return df
