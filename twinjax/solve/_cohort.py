"""``simulate_cohort``: large cohorts in memory-bounded chunks, sharded over devices,
streamed to a resumable Zarr store.

Each chunk is one compiled call of the same program (the last chunk is padded, so
nothing recompiles). Patients are independent, so a patient's result does not
depend on the chunk size or on the number of devices: the same seed gives the same
cohort and the same numbers.

Store layout (a Zarr v3 group at ``store``)::

    manifest.json            written atomically after every finished chunk
    times (T,)               save times
    status (N,)              per-patient status codes
    params/<name> (N,)       every parameter of every patient
    outputs/<name> (N, T)    requested outputs and states

On resume the manifest tells which chunks are complete; only the others are
computed. A process killed mid-chunk leaves that chunk out of the manifest, so it is
recomputed and overwritten. A manifest whose fingerprint (model, parameters,
regimen, times, chunk size, solver) differs from the new request is refused.

Multi-host: call ``jax.distributed.initialize()`` in every process before
``simulate_cohort``; ``jax.devices()`` then lists every host's devices and each
chunk is sharded over all of them (each host must see the same inputs). With
several hosts, give each its own ``store`` path or let host 0 write (``write=``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import Regimen, compile_regimens
from ..model._model import _default_float
from ._devices import per_device, shard
from ._diffrax import Diffrax
from ._simulate import _simulate_core, check_times

MANIFEST = "manifest.json"


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

    Attributes:
        n: number of patients.
        times: ``(T,)`` save times.
        status: ``(N,)`` status codes.
        names: stored outputs and states.
        store: the Zarr store path (None when kept in memory).
        covariates: the cohort's covariate table, if any.
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

    def __getitem__(self, name) -> np.ndarray:
        """An ``(N, T)`` output (read from the store)."""
        if name not in self.names:
            raise KeyError(f"{name!r} was not stored; stored: {list(self.names)}")
        if self._memory is not None:
            return self._memory[name]
        import zarr

        # zarr types a group member as Array | Group and a read as NDArrayLike; this member
        # is an array, read as a numpy array
        return zarr.open_group(str(self.store), mode="r")[f"outputs/{name}"][...]  # type: ignore[index,return-value]

    def to_xarray(self):
        """An ``xarray.Dataset`` (patient x time); covariates and parameters as coordinates."""
        import xarray as xr

        data = {k: (("patient", "time"), self[k]) for k in self.names}
        data["status"] = (("patient",), self.status)
        coords = {"patient": np.arange(self.n), "time": self.times}
        for k, v in self.params.items():
            coords[f"param_{k}"] = ("patient", np.asarray(v))
        if self.covariates is not None:
            for c in self.covariates.columns:
                coords[c] = ("patient", np.asarray(self.covariates[c]))
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


def _fingerprint(model, params, regimen, times, chunk, solver, names) -> str:
    h = hashlib.sha256()
    h.update(repr(model).encode())
    h.update(repr(solver).encode())
    h.update(repr(names).encode())
    h.update(str(chunk).encode())
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(params[k])).tobytes())
    h.update(np.ascontiguousarray(np.asarray(times)).tobytes())
    h.update(repr(regimen).encode())
    return h.hexdigest()


def _write_manifest(path: pathlib.Path, manifest: dict):
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path / MANIFEST)


@eqx.filter_jit
def _simulate_sharded(model, solver, p, ev, ts2, n_dev: int):
    """``_simulate_core`` with each device running its own share of the patients."""
    return per_device(
        lambda p, ev, ts2: _simulate_core(model, solver, p, ev, ts2), n_dev, (p, ev), (ts2,)
    )


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
    progress: bool = True,
    outputs: Sequence[str] | None = None,
    dtype=None,
    devices: int | None = None,
) -> CohortResult:
    """Simulate a large cohort in chunks, sharded over devices, optionally to Zarr.

    Arguments:
        model: the model.
        cohort_or_params: a :class:`~twinjax.Cohort` or ``{name: (N,) array}``.
        regimen: a shared :class:`~twinjax.Regimen`, a list of ``N`` regimens, or None.
        times: ``(T,)`` save times.
        solver: default ``solvers.Diffrax()``; ``solvers.Ensemble()`` is the fast one.
        store: a directory for a Zarr store (created); None keeps results in memory.
        chunk_size: patients per chunk; by default chosen from ``memory_budget_gib``
            (and at most 4096 per device on CPU),
            rounded to a multiple of the number of devices.
        resume: reuse finished chunks of an existing store with the same fingerprint.
        progress: show a rich progress bar.
        outputs: names of outputs and/or states to keep (default: all outputs).
        dtype: floating dtype.
        devices: use the first ``devices`` devices (default: all of ``jax.devices()``).

    Returns:
        A :class:`CohortResult`.

    Raises:
        ValueError: invalid inputs (before any compilation), or a store holding a
            different run.
    """
    if times is None:
        raise ValueError("simulate_cohort needs save times")
    dtype = dtype or _default_float()
    solver = solver if solver is not None else Diffrax()
    covariates = None
    if hasattr(cohort_or_params, "params"):
        covariates = getattr(cohort_or_params, "covariates", None)
        params = cohort_or_params.params
    else:
        params = cohort_or_params
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
    n_dev = len(jax.devices()) if devices is None else int(devices)
    itemsize = jnp.dtype(dtype).itemsize
    if chunk_size is None:
        chunk_size = choose_chunk_size(model, n, T, len(names), itemsize, memory_budget_gib, n_dev)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if chunk_size % n_dev:
        chunk_size += n_dev - chunk_size % n_dev
    n_chunks = -(-n // chunk_size)
    p_np = {k: np.broadcast_to(np.asarray(v), (n,)).copy() for k, v in p.items()}

    root = None
    manifest = None
    if store is not None:
        import zarr

        path = pathlib.Path(store)
        fp = _fingerprint(model, p_np, regimen, ts, chunk_size, solver, names)
        mpath = path / MANIFEST
        if mpath.exists():
            manifest = json.loads(mpath.read_text())
            if manifest.get("fingerprint") != fp:
                raise ValueError(
                    f"{path} holds a different run (model, parameters, regimen, times, chunk "
                    "size or solver differ); choose another store path or delete it"
                )
            if not resume:
                raise ValueError(f"{path} exists and resume=False; choose another store path")
            root = zarr.open_group(str(path), mode="r+")
        else:
            path.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(str(path), mode="w")
            root.create_array("times", data=np.asarray(ts))
            root.create_array(
                "status", shape=(n,), chunks=(chunk_size,), dtype="int32", fill_value=-1
            )
            for k, v in p_np.items():
                root.create_array(f"params/{k}", data=v, chunks=(chunk_size,))
            for k in names:
                root.create_array(
                    f"outputs/{k}",
                    shape=(n, T),
                    chunks=(chunk_size, T),
                    dtype=np.dtype(dtype),
                    fill_value=np.nan,
                )
            manifest = dict(
                fingerprint=fp,
                n=n,
                chunk_size=chunk_size,
                n_chunks=n_chunks,
                names=names,
                model=type(model).__name__,
                done=[],
            )
            _write_manifest(path, manifest)
        done = set(manifest["done"])
    else:
        done = set()
        mem = {k: np.empty((n, T), np.dtype(dtype)) for k in names}
        status_all = np.empty((n,), np.int32)

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
        task = prog.add_task(
            f"{n} patients in {n_chunks} chunks", total=n_chunks, completed=len(done)
        )

    def launch(c):
        """Dispatch chunk ``c`` (asynchronously: JAX returns before it is computed)."""
        a, b = c * chunk_size, min((c + 1) * chunk_size, n)
        idx = np.minimum(np.arange(a, a + chunk_size), n - 1)  # pad with the last patient
        pc = {k: jnp.asarray(v[idx]) for k, v in p_np.items()}
        if shared:
            ev = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk_size,) + x.shape[1:]), ev_all)
        else:
            ev = jax.tree.map(lambda x: x[idx], ev_all)
        if n_dev > 1:
            pc, ev = shard((pc, ev), n_dev)
            states, outs, status = _simulate_sharded(model, solver, pc, ev, ts2, n_dev)
        else:
            states, outs, status = _simulate_core(model, solver, pc, ev, ts2)
        res = {**states, **outs}
        return c, a, b, {k: res[k] for k in names}, status

    def finish(job):
        """Wait for a dispatched chunk and write it out."""
        nonlocal computed
        c, a, b, res, status = job
        status = np.asarray(status)[: b - a]
        chunk_vals = {k: np.asarray(res[k])[: b - a] for k in names}
        if root is not None:
            for k in names:
                root[f"outputs/{k}"][a:b] = chunk_vals[k]
            root["status"][a:b] = status
            done.add(c)
            manifest["done"] = sorted(done)
            _write_manifest(path, manifest)
        else:
            for k in names:
                mem[k][a:b] = chunk_vals[k]
            status_all[a:b] = status
        computed += 1
        if prog is not None:
            prog.advance(task)

    try:
        # one chunk in flight while the previous one is copied out and written
        pending = None
        for c in range(n_chunks):
            if c in done:
                continue
            job = launch(c)
            if pending is not None:
                finish(pending)
            pending = job
        if pending is not None:
            finish(pending)
    finally:
        if prog is not None:
            prog.stop()
    if root is not None:
        # zarr types a group member as Array | Group; "status" is an array
        status_all = np.asarray(root["status"][...])  # type: ignore[index]
        return CohortResult(
            n,
            np.asarray(ts),
            status_all,
            names,
            path,
            p_np,
            covariates,
            None,
            computed,
            n_chunks - computed,
        )
    return CohortResult(
        n, np.asarray(ts), status_all, names, None, p_np, covariates, mem, computed, 0
    )
