"""The result of :func:`~twinjax.simulate_cohort`: :class:`CohortResult`, the outputs
in a Zarr store or in memory, read lazily, chunk by chunk, or as xarray / pandas."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from ._store import StoreCorruptError


@dataclasses.dataclass
class CohortResult:
    """Results of :func:`simulate_cohort`, in a Zarr store or in memory.

    Outputs of a failed patient (``status != 0``) are NaN.

    Attributes:
        n: number of patients.
        times: ``(T,)`` save times.
        status: ``(N,)`` status codes.
        names: stored outputs and states.
        store: the Zarr store path (None when kept in memory).
        params: every patient's parameters.
        covariates: the cohort's covariate table, if any.
        chunks_computed, chunks_reused: chunks computed by this call (by this process,
            under ``jax.distributed``) and chunks reused from the store.
        chunks_repaired: chunks that were listed as finished but were missing or
            corrupt, and were recomputed.
    """

    n: int
    times: np.ndarray
    status: np.ndarray
    names: tuple[str, ...]
    store: pathlib.Path | None
    params: dict
    covariates: object = None
    _memory: dict | None = None
    chunks_computed: int = 0
    chunks_reused: int = 0
    chunks_repaired: tuple[int, ...] = ()

    def _check_name(self, name):
        if name not in self.names:
            raise KeyError(f"{name!r} was not stored; stored: {list(self.names)}")

    def array(self, name):
        """The ``(N, T)`` output as a lazy Zarr array (nothing is read until indexed)."""
        self._check_name(name)
        if self._memory is not None:
            return self._memory[name]
        import zarr

        return zarr.open_group(str(self.store), mode="r")[f"outputs/{name}"]

    def __getitem__(self, name) -> np.ndarray:
        """An ``(N, T)`` output (read from the store; every chunk's checksum is checked).

        Raises:
            StoreCorruptError: a chunk of the store fails its checksum or cannot be
                decoded (run ``simulate_cohort`` again with ``verify=True`` to repair it).
        """
        self._check_name(name)
        if self._memory is not None:
            return self._memory[name]
        return read_array(self.store, f"outputs/{name}", slice(None))

    def lazy(self, name):
        """The ``(N, T)`` output as a dask array over the store's chunks (needs dask)."""
        self._check_name(name)
        import dask.array as da

        if self._memory is not None:
            return da.from_array(self._memory[name])
        return da.from_zarr(self.array(name))

    def summarise(self, name) -> dict[str, Any]:
        """Per-time statistics of an output over the patients with status 0.

        Read chunk by chunk, so a store larger than memory can be summarised.

        Returns:
            ``{"n_ok": int, "n_failed": int, "mean", "sd", "min", "max": (T,) arrays}``.
        """
        self._check_name(name)
        T = len(self.times)
        count = np.zeros(T)
        mean = np.zeros(T)
        m2 = np.zeros(T)
        lo = np.full(T, np.inf)
        hi = np.full(T, -np.inf)
        step = int(self._chunk_rows())
        for a in range(0, self.n, step):
            b = min(a + step, self.n)
            ok = self.status[a:b] == 0
            if self._memory is not None:
                v = self._memory[name][a:b][ok]
            else:
                v = read_array(self.store, f"outputs/{name}", slice(a, b))[ok]
            v = np.asarray(v, np.float64)
            k = v.shape[0]
            if k == 0:
                continue
            # Chan et al.'s parallel update of mean and sum of squared deviations
            cm = v.mean(axis=0)
            c2 = ((v - cm) ** 2).sum(axis=0)
            delta = cm - mean
            tot = count + k
            mean = mean + delta * k / tot
            m2 = m2 + c2 + delta**2 * count * k / tot
            count = tot
            lo = np.minimum(lo, v.min(axis=0))
            hi = np.maximum(hi, v.max(axis=0))
        n_ok = int((self.status == 0).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.sqrt(m2 / (count - 1)) if n_ok > 1 else np.full(T, np.nan)
        empty = count == 0
        return {
            "n_ok": n_ok,
            "n_failed": int(self.n - n_ok),
            "mean": np.where(empty, np.nan, mean),
            "sd": np.where(empty, np.nan, sd),
            "min": np.where(empty, np.nan, lo),
            "max": np.where(empty, np.nan, hi),
        }

    def _chunk_rows(self) -> int:
        if self._memory is not None:
            return 65536
        return int(self.array(self.names[0]).chunks[0])

    def to_xarray(self, lazy: bool | None = None):
        """An ``xarray.Dataset`` (patient x time); covariates and parameters as coordinates.

        Arguments:
            lazy: dask-backed variables read on demand (default: True for a store when
                dask is installed, so a store bigger than memory can be opened).
        """
        import xarray as xr

        if lazy is None:
            lazy = self.store is not None and _has_dask()
        get = self.lazy if lazy else self.__getitem__
        data: dict[str, Any] = {k: (("patient", "time"), get(k)) for k in self.names}
        data["status"] = (("patient",), self.status)
        coords: dict[str, Any] = {"patient": np.arange(self.n), "time": self.times}
        for k, v in self.params.items():
            coords[f"param_{k}"] = ("patient", np.asarray(v))
        cov: Any = self.covariates
        if cov is not None:
            for c in cov.columns:
                coords[c] = ("patient", np.asarray(cov[c]))
        return xr.Dataset(data, coords=coords)

    def to_dataframe(self):
        """A long pandas table: one row per patient and time."""
        import pandas as pd

        T = len(self.times)
        cols = {
            "patient": np.repeat(np.arange(self.n), T),
            "time": np.tile(self.times, self.n),
        }
        for k in self.names:
            cols[k] = self[k].reshape(-1)
        cols["status"] = np.repeat(self.status, T)
        return pd.DataFrame(cols)


def _has_dask() -> bool:
    try:
        import dask.array  # noqa: F401
    except ImportError:
        return False
    return True


def read_array(store, array: str, rows: slice) -> np.ndarray:
    """Read rows of a stored array; a chunk failing its checksum raises a clear error."""
    import zarr

    try:
        return np.asarray(zarr.open_group(str(store), mode="r")[array][rows])  # type: ignore[index]
    except (ValueError, RuntimeError, OSError) as err:
        raise StoreCorruptError(
            f"{store}: {array} cannot be read back intact ({err}); the store is corrupt. "
            "Run simulate_cohort again on this store with verify=True to recompute the "
            "damaged chunks"
        ) from None
