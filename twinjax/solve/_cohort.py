"""``simulate_cohort``: large cohorts in memory-bounded chunks, sharded over devices,
streamed to a verified, resumable Zarr store, optionally by several processes.

Each chunk is one compiled call of the same program (the last chunk is padded, so
nothing recompiles). Patients are independent, so a patient's result does not
depend on the chunk size, the number of devices or the number of processes: the
same seed gives the same cohort and the same numbers.

The store (see :mod:`twinjax.solve._store` for its layout and rules) only writes
into a new or empty folder or its own store; it is reused only when the fingerprint
of everything that determines the numbers matches (model, parameters, regimen,
times, chunk size, solver, outputs, dtype, twinjax and library versions), and every
reused chunk is checked before it is returned.

Several processes (``jax.distributed.initialize()`` before ``simulate_cohort``):
every process calls ``simulate_cohort`` with the same inputs and the same ``store``
(a folder all of them see); chunk ``c`` is computed by process ``c % P`` on its own
devices and written by it; the processes meet at a barrier and each returns the
whole result read from the store. The store is bitwise the same as one process's.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import socket
import warnings
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import Regimen, compile_regimens
from ..model._model import default_float
from ..model._piecewise import Schedule
from . import _store
from ._devices import per_device, shard
from ._diffrax import Diffrax
from ._fingerprint import Fingerprint, environment_hash
from ._simulate import check_times, piecewise_params, simulate_core
from ._store import StoreCorruptError, StoreError


class StoreRepairWarning(UserWarning):
    """A chunk listed as finished was missing or corrupt and has been recomputed."""


def _codecs():
    import zarr.codecs as zc

    # zstd, then a CRC32C of the compressed bytes: a flipped byte or a truncated chunk
    # fails its checksum when read instead of decoding to a wrong number
    return dict(
        compressors=[zc.ZstdCodec(), zc.Crc32cCodec()],
        chunk_key_encoding={"name": "default", "separator": "/"},
        config={"write_empty_chunks": True},
        overwrite=True,
    )


def _bytes_per_patient(model, T, n_out, itemsize):
    S = max(len(model.state_names), 1)
    # engine carries (T, S) saves twice (segment saves and the merged result),
    # the solver's dense-output writes, and the outputs: a safety factor of 8.
    return 8 * T * (S + n_out) * itemsize + 4096


# On CPU a chunk is capped at a few thousand patients per device: the Ensemble solver
# runs it in cache-sized blocks (``Ensemble.block``), and bigger chunks only add
# memory. Accelerators want large batches.
CPU_CHUNK_PER_DEVICE = 4096


def choose_chunk_size(model, n, T, n_out, itemsize, memory_budget_gib, n_devices=1):
    per = _bytes_per_patient(model, T, n_out, itemsize)
    c = int(memory_budget_gib * 2**30 // per)
    if jax.default_backend() == "cpu":
        c = min(c, CPU_CHUNK_PER_DEVICE * n_devices)
    c = max(n_devices, min(c, n))
    c = max(n_devices, (c // n_devices) * n_devices)
    # balanced: as many chunks as the cap needs, but equal ones (the last chunk is
    # padded, so 10,000 patients in caps of 8,192 would otherwise compute 16,384)
    n_chunks = -(-n // c)
    c = -(-n // n_chunks)
    return -(-c // n_devices) * n_devices


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
        return _read(self.store, f"outputs/{name}", slice(None))

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
                v = _read(self.store, f"outputs/{name}", slice(a, b))[ok]
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


def _read(store, array: str, rows: slice) -> np.ndarray:
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


def _fingerprint(model, solver, names, chunk_size, params, ts, ev_all, dtype):
    fp = Fingerprint()
    fp.add("store format", _store.FORMAT_VERSION)
    fp.add("environment", environment_hash())
    fp.add("model", model)
    fp.add("solver", solver)
    fp.add("outputs", tuple(names))
    fp.add("chunk size", int(chunk_size))
    fp.add("dtype", np.dtype(dtype).str)
    fp.add("params", {k: np.asarray(v) for k, v in params.items()})
    fp.add("times", np.asarray(ts))
    fp.add("events", jax.tree.map(np.asarray, ev_all))
    return fp.hexdigest(), fp.problems


class _Store:
    """One call's view of its result store: open or create, verify, write chunks."""

    def __init__(self, path, fp, problems, resume, verify, n, chunk_size, n_chunks, names):
        self.path = pathlib.Path(path)
        self.fp, self.problems = fp, problems
        self.resume, self.verify = resume, verify
        self.n, self.chunk_size, self.n_chunks, self.names = n, chunk_size, n_chunks, names
        self.arrays = [f"outputs/{k}" for k in names] + ["status"]
        self.lock = _store.StoreLock(self.path, note=f"simulate_cohort of {n} patients")
        self.root = None

    # -- opening --------------------------------------------------------------
    def open(self, model, p_np, ts, dtype, n_processes: int) -> None:
        """Check the path, take the lock, create the store or check that it matches."""
        manifest = _store.inspect_path(self.path)
        if manifest is None:
            self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            manifest = _store.inspect_path(self.path)  # again, now that we hold the lock
            if manifest is None or not manifest.get("arrays_ready"):
                if manifest is not None:
                    self._check_same(manifest)
                self._create(model, p_np, ts, dtype, n_processes)
            else:
                self._check_same(manifest)
                if not self.resume:
                    raise StoreError(
                        f"{self.path} already holds this run and resume=False; choose another "
                        "store path (twinjax never overwrites a store)"
                    )
        except BaseException:
            self.lock.release()
            raise
        self.attach()

    def attach(self) -> None:
        import zarr

        self.root = zarr.open_group(str(self.path), mode="r+")

    def _check_same(self, manifest: dict) -> None:
        if manifest.get("unverifiable"):
            raise StoreError(
                f"{self.path} holds results made from parts that cannot be fingerprinted "
                f"({'; '.join(manifest['unverifiable'])}), so twinjax cannot tell whether they "
                "match this request and will not reuse them; choose another store path"
            )
        if self.problems:
            raise StoreError(
                f"{self.path} holds earlier results, but this request cannot be fingerprinted "
                f"({'; '.join(self.problems)}), so they cannot be checked against it and are "
                "not reused; choose another store path"
            )
        if manifest.get("fingerprint") != self.fp:
            raise StoreError(
                f"{self.path} holds a different run (model, its functions or array fields, "
                "parameters, regimen, times, chunk size, solver, outputs, dtype or the twinjax "
                "version differ); choose another store path (nothing was changed or deleted)"
            )

    def _create(self, model, p_np, ts, dtype, n_processes: int) -> None:
        import zarr

        manifest = dict(
            format=_store.FORMAT,
            format_version=_store.FORMAT_VERSION,
            fingerprint=self.fp,
            unverifiable=list(self.problems),
            arrays_ready=False,
            n=self.n,
            chunk_size=self.chunk_size,
            n_chunks=self.n_chunks,
            names=list(self.names),
            dtype=np.dtype(dtype).name,
            model=type(model).__name__,
            n_processes=n_processes,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        _store.write_manifest(self.path, manifest)
        kw = _codecs()
        root = zarr.open_group(str(self.path), mode="a")
        T = len(ts)
        root.create_array("times", data=np.asarray(ts), **kw)
        root.create_array(
            "status", shape=(self.n,), chunks=(self.chunk_size,), dtype="int32", fill_value=-1, **kw
        )
        for k, v in p_np.items():
            root.create_array(f"params/{k}", data=v, chunks=(self.chunk_size,), **kw)
        for k in self.names:
            root.create_array(
                f"outputs/{k}",
                shape=(self.n, T),
                chunks=(self.chunk_size, T),
                dtype=np.dtype(dtype),
                fill_value=np.nan,
                **kw,
            )
        manifest["arrays_ready"] = True
        _store.write_manifest(self.path, manifest)

    # -- chunks ---------------------------------------------------------------
    def finished(self, mine) -> tuple[set[int], list[int]]:
        """Chunks (of ``mine``) that are finished and intact, and those to repair."""
        records = _store.read_records(self.path)
        good, repair = set(), []
        for c in mine:
            rec = records.get(c)
            if rec is None:
                continue
            if self._intact(c, rec):
                good.add(c)
            else:
                repair.append(c)
        return good, repair

    def _intact(self, c: int, rec: dict) -> bool:
        a, b = c * self.chunk_size, min((c + 1) * self.chunk_size, self.n)
        if rec.get("rows") != [a, b] or set(rec.get("sha256", {})) != set(self.arrays):
            return False
        if _store.missing_files(self.path, self.arrays, c):
            return False
        if not self.verify:
            return True
        for arr in self.arrays:
            try:
                vals = self.root[arr][a:b]  # type: ignore[index]
            except (ValueError, RuntimeError, OSError):
                return False
            if _store.chunk_digest(np.asarray(vals)) != rec["sha256"][arr]:
                return False
        return True

    def write(self, c: int, a: int, b: int, values: dict, status: np.ndarray) -> None:
        digests = {}
        for k in self.names:
            self.root[f"outputs/{k}"][a:b] = values[k]  # type: ignore[index]
            digests[f"outputs/{k}"] = _store.chunk_digest(values[k])
        self.root["status"][a:b] = status  # type: ignore[index]
        digests["status"] = _store.chunk_digest(status)
        _store.write_record(
            self.path,
            c,
            dict(
                chunk=c,
                rows=[a, b],
                sha256=digests,
                process=jax.process_index(),
                n_processes=jax.process_count(),
                host=socket.gethostname(),
                pid=os.getpid(),
                written=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            ),
        )

    def read_status(self) -> tuple[np.ndarray, list[int]]:
        """All status codes, and the chunks whose status cannot be read back intact."""
        status = np.full((self.n,), -1, np.int32)
        bad = []
        for c in range(self.n_chunks):
            a, b = c * self.chunk_size, min((c + 1) * self.chunk_size, self.n)
            try:
                status[a:b] = self.root["status"][a:b]  # type: ignore[index]
            except (ValueError, RuntimeError, OSError):
                bad.append(c)
        return status, bad


@eqx.filter_jit
def _simulate_sharded(model, solver, p, ev, ts2, n_dev: int, sched=None):
    """``simulate_core`` with each device running its own share of the patients."""
    return per_device(
        lambda p, ev, sched, ts2: simulate_core(model, solver, p, ev, ts2, None, sched),
        n_dev,
        (p, ev, sched),
        (ts2,),
    )


def _barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _agree(ok: bool) -> bool:
    """True in every process when process 0 says ``ok`` (a collective)."""
    from jax.experimental import multihost_utils

    flag = multihost_utils.broadcast_one_to_all(np.int32(1 if ok else 0))
    return bool(int(flag))


def simulate_cohort(
    model,
    cohort_or_params,
    regimen=None,
    times=None,
    *,
    solver=None,
    store=None,
    chunk_size: int | None = None,
    memory_budget_gib: float = 1.0,
    resume: bool = True,
    verify: bool = False,
    progress: bool = True,
    outputs: Sequence[str] | None = None,
    dtype=None,
    devices: int | None = None,
) -> CohortResult:
    """Simulate a large cohort in chunks, sharded over devices, optionally to Zarr.

    Arguments:
        model: the model.
        cohort_or_params: a :class:`~twinjax.Cohort` or ``{name: (N,) array}``; a
            :class:`~twinjax.Piecewise` value makes a parameter change in time (e.g.
            inter-occasion variability), as in :func:`~twinjax.simulate`.
        regimen: a shared :class:`~twinjax.Regimen`, a list of ``N`` regimens, or None.
        times: ``(T,)`` save times.
        solver: default ``solvers.Diffrax()``; ``solvers.Ensemble()`` is the fast one.
        store: a folder for the Zarr store: new, empty, or a twinjax store made by the
            same request (then its finished chunks are checked and reused). Any other
            folder is refused; nothing is ever deleted. None keeps results in memory.
        chunk_size: patients per chunk; by default chosen from ``memory_budget_gib``
            (and at most 4096 per device on CPU),
            rounded to a multiple of the number of devices.
        resume: reuse finished chunks of an existing store with the same fingerprint.
        verify: read every reused chunk back and compare it with its recorded SHA-256
            (without it, reused chunks are checked for presence, and every read checks
            each chunk's CRC32C).
        progress: show a rich progress bar.
        outputs: names of outputs and/or states to keep (default: all outputs).
        dtype: floating dtype.
        devices: use the first ``devices`` local devices (default: all of this
            process's devices).

    Returns:
        A :class:`CohortResult`.

    Raises:
        ValueError: invalid inputs (before any compilation).
        StoreError: a store path that is not new, empty or this run's store; a store
            whose manifest cannot be read; a request that cannot be fingerprinted
            against an existing store. :class:`StoreLockedError` when another process
            is writing the store.
    """
    if times is None:
        raise ValueError("simulate_cohort needs save times")
    dtype = dtype or default_float()
    solver = solver if solver is not None else Diffrax()
    covariates = None
    if hasattr(cohort_or_params, "params"):
        covariates = getattr(cohort_or_params, "covariates", None)
        params = cohort_or_params.params
    else:
        params = cohort_or_params
    params, pw = piecewise_params(model, params, True)  # parameters that change in time
    p, n = model.complete(params, dtype=dtype)
    if n is None:
        raise ValueError(
            "simulate_cohort needs (N,) parameter arrays; use simulate for one patient"
        )
    ts = check_times(times, dtype)
    if ts.ndim != 1:
        raise ValueError("simulate_cohort takes one (T,) time grid shared by all patients")
    T = ts.shape[0]
    all_out = list(model.output_names)
    names = tuple(outputs) if outputs is not None else tuple(all_out)
    unknown = [k for k in names if k not in all_out and k not in model.state_names]
    if unknown:
        raise ValueError(
            f"unknown output(s) {unknown}; outputs are {all_out}, states {list(model.state_names)}"
        )
    if isinstance(regimen, Sequence) and not isinstance(regimen, Regimen):
        if len(regimen) != n:
            raise ValueError(f"{len(regimen)} regimens for {n} patients")
        ev_all = compile_regimens(list(regimen), model, dtype=dtype)
        shared = False
    else:
        ev_all = compile_regimens([regimen], model, dtype=dtype)
        shared = True
    n_proc, rank = jax.process_count(), jax.process_index()
    if n_proc > 1 and store is None:
        raise ValueError(
            f"simulate_cohort runs in {n_proc} processes (jax.distributed): give a store "
            "folder that every process sees; each process writes its own chunks there"
        )
    n_local = jax.local_device_count()
    n_dev = n_local if devices is None else int(devices)
    if not 1 <= n_dev <= n_local:
        raise ValueError(f"devices = {devices}; this process has {n_local} device(s)")
    itemsize = jnp.dtype(dtype).itemsize
    if chunk_size is None:
        chunk_size = choose_chunk_size(model, n, T, len(names), itemsize, memory_budget_gib, n_dev)
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    if chunk_size % n_dev:
        chunk_size += n_dev - chunk_size % n_dev
    n_chunks = -(-n // chunk_size)
    p_np = {k: np.broadcast_to(np.asarray(v), (n,)).copy() for k, v in p.items()}
    pw_np = {
        k: tuple(
            np.broadcast_to(np.asarray(a), (n, np.shape(v.times)[-1])).copy()
            for a in (v.times, v.values)
        )
        for k, v in pw.items()
    }
    pw_interp = {k: v.interpolation for k, v in pw.items()}
    # the fingerprint of a store covers the change tables too
    p_fp = {**p_np}
    for k, (tt, vv) in pw_np.items():
        p_fp[f"{k}:piecewise_{pw_interp[k]}_times"] = tt
        p_fp[f"{k}:piecewise_{pw_interp[k]}_values"] = vv
    mine = [c for c in range(n_chunks) if c % n_proc == rank]

    st: _Store | None = None
    done: set[int] = set()
    repaired: list[int] = []
    if store is not None:
        fp, problems = _fingerprint(model, solver, names, chunk_size, p_fp, ts, ev_all, dtype)
        st = _Store(store, fp, problems, resume, verify, n, chunk_size, n_chunks, names)
        if n_proc == 1:
            st.open(model, p_np, ts, dtype, n_proc)
        else:
            # process 0 checks the path, takes the lock and creates the store; the
            # others attach once it says the store is ready
            err: BaseException | None = None
            if rank == 0:
                try:
                    st.open(model, p_np, ts, dtype, n_proc)
                except BaseException as e:  # reported in every process below
                    err = e
            if not _agree(err is None):
                if err is not None:
                    raise err
                raise StoreError(
                    f"process 0 refused the store {store} (see its message); nothing was computed"
                )
            if rank != 0:
                st.attach()
        done, repaired = st.finished(mine)
        if repaired:
            warnings.warn(
                f"{st.path}: chunk(s) {repaired} were listed as finished but are missing or "
                "corrupt; they are recomputed",
                StoreRepairWarning,
                stacklevel=2,
            )
    else:
        mem = {k: np.empty((n, T), np.dtype(dtype)) for k in names}
        status_mem = np.empty((n,), np.int32)

    todo = [c for c in mine if c not in done]
    ts2 = ts[None]  # shared save times (1, T), replicated on every device
    computed = 0
    prog = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        prog = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        prog.start()
        where = f" (process {rank} of {n_proc})" if n_proc > 1 else ""
        task = prog.add_task(
            f"{n} patients in {n_chunks} chunks{where}", total=len(mine), completed=len(done)
        )

    def launch(c):
        """Dispatch chunk ``c`` (asynchronously: JAX returns before it is computed)."""
        a, b = c * chunk_size, min((c + 1) * chunk_size, n)
        idx = np.minimum(np.arange(a, a + chunk_size), n - 1)  # pad with the last patient
        pc = {k: jnp.asarray(v[idx]) for k, v in p_np.items()}
        sched = None
        if pw_np:
            sched = Schedule(
                tables={
                    k: (jnp.asarray(tt[idx], dtype), jnp.asarray(vv[idx], dtype))
                    for k, (tt, vv) in pw_np.items()
                },
                interp=pw_interp,
            )
        if shared:
            ev = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk_size,) + x.shape[1:]), ev_all)
        else:
            ev = jax.tree.map(lambda x: x[idx], ev_all)
        if n_dev > 1:
            pc, ev, sched = shard((pc, ev, sched), n_dev)
            states, outs, status = _simulate_sharded(model, solver, pc, ev, ts2, n_dev, sched)
        else:
            states, outs, status = simulate_core(model, solver, pc, ev, ts2, None, sched)
        res = {**states, **outs}
        return c, a, b, {k: res[k] for k in names}, status

    def finish(job):
        """Wait for a dispatched chunk and write it out."""
        nonlocal computed
        c, a, b, res, status = job
        status = np.asarray(status)[: b - a]
        chunk_vals = {k: np.asarray(res[k])[: b - a] for k in names}
        if st is not None:
            st.write(c, a, b, chunk_vals, status)
        else:
            for k in names:
                mem[k][a:b] = chunk_vals[k]
            status_mem[a:b] = status
        computed += 1
        if prog is not None:
            prog.advance(task)

    def run_chunks(chunks):
        # one chunk in flight while the previous one is copied out and written
        pending = None
        for c in chunks:
            job = launch(c)
            if pending is not None:
                finish(pending)
            pending = job
        if pending is not None:
            finish(pending)

    try:
        run_chunks(todo)
        if st is not None and n_proc > 1:
            _barrier(f"twinjax simulate_cohort {st.fp[:16]} done")
        if st is not None:
            status_all, bad = st.read_status()
            bad_mine = [c for c in bad if c % n_proc == rank]
            if bad_mine:  # a status chunk that does not read back intact: compute it again
                warnings.warn(
                    f"{st.path}: chunk(s) {bad_mine} failed their checksum; recomputed",
                    StoreRepairWarning,
                    stacklevel=2,
                )
                repaired += bad_mine
                run_chunks(bad_mine)
            if n_proc > 1:
                _barrier(f"twinjax simulate_cohort {st.fp[:16]} repaired")
            if bad:
                status_all, bad = st.read_status()
                if bad:
                    raise StoreCorruptError(f"{st.path}: status of chunk(s) {bad} unreadable")
    finally:
        if prog is not None:
            prog.stop()
        if st is not None:
            st.lock.release()
    if st is not None:
        return CohortResult(
            n,
            np.asarray(ts),
            status_all,
            names,
            st.path,
            p_np,
            covariates,
            None,
            computed,
            len(done),
            tuple(repaired),
        )
    return CohortResult(
        n, np.asarray(ts), status_mem, names, None, p_np, covariates, mem, computed, 0
    )
