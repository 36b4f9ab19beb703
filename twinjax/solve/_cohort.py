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

import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import Regimen, compile_regimens
from ..ode._model import default_float
from ._cohort_chunks import ChunkPipeline, choose_chunk_size
from ._cohort_progress import start_progress
from ._cohort_result import CohortResult
from ._cohort_store import CohortStore, StoreRepairWarning, cohort_fingerprint
from ._diffrax import Diffrax
from ._simulate import check_times, piecewise_params
from ._store import StoreCorruptError, StoreError


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

    st: CohortStore | None = None
    mem: dict[str, np.ndarray] = {}  # the in-memory results (when there is no store)
    status_mem = np.empty((0,), np.int32)
    done: set[int] = set()
    repaired: list[int] = []
    if store is not None:
        fp, problems = cohort_fingerprint(model, solver, names, chunk_size, p_fp, ts, ev_all, dtype)
        st = CohortStore(store, fp, problems, resume, verify, n, chunk_size, n_chunks, names)
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
    prog = task = None
    if progress:
        prog, task = start_progress(n, n_chunks, len(mine), len(done), rank, n_proc)
    pipe = ChunkPipeline(
        model=model,
        solver=solver,
        names=names,
        n=n,
        chunk_size=chunk_size,
        n_dev=n_dev,
        p_np=p_np,
        pw_np=pw_np,
        pw_interp=pw_interp,
        dtype=dtype,
        shared=shared,
        ev_all=ev_all,
        ts2=ts2,
        st=st,
        mem=mem,
        status_mem=status_mem,
        prog=prog,
        task=task,
    )

    try:
        pipe.run(todo)
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
                pipe.run(bad_mine)
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
            pipe.computed,
            len(done),
            tuple(repaired),
        )
    return CohortResult(
        n, np.asarray(ts), status_mem, names, None, p_np, covariates, mem, pipe.computed, 0
    )
