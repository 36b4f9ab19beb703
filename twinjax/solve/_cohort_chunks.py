"""Chunk planning and pipelining for ``simulate_cohort``: the chunk size from a memory
budget, the sharded compiled call, and the loop that keeps one chunk in flight while the
previous one is copied out and written."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode._piecewise import Schedule
from ._cohort_store import CohortStore
from ._devices import per_device, shard
from ._simulate import simulate_core


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


@eqx.filter_jit
def simulate_sharded(model, solver, p, ev, ts2, n_dev: int, sched=None):
    """``simulate_core`` with each device running its own share of the patients."""
    return per_device(
        lambda p, ev, sched, ts2: simulate_core(model, solver, p, ev, ts2, None, sched),
        n_dev,
        (p, ev, sched),
        (ts2,),
    )


@dataclasses.dataclass
class ChunkPipeline:
    """Computes chunks and writes them to the store (or to the in-memory arrays).

    ``mem`` and ``status_mem`` are the in-memory outputs, used when ``st`` is None;
    ``prog`` / ``task`` the progress bar, advanced once per finished chunk.
    """

    model: Any
    solver: Any
    names: tuple[str, ...]
    n: int
    chunk_size: int
    n_dev: int
    p_np: dict
    pw_np: dict
    pw_interp: dict
    dtype: Any
    shared: bool
    ev_all: Any
    ts2: Any
    st: CohortStore | None
    mem: dict
    status_mem: np.ndarray
    prog: Any = None
    task: Any = None
    computed: int = 0

    def launch(self, c):
        """Dispatch chunk ``c`` (asynchronously: JAX returns before it is computed)."""
        chunk_size, n, p_np, pw_np = self.chunk_size, self.n, self.p_np, self.pw_np
        dtype, ev_all, n_dev = self.dtype, self.ev_all, self.n_dev
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
                interp=self.pw_interp,
            )
        if self.shared:
            ev = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk_size,) + x.shape[1:]), ev_all)
        else:
            ev = jax.tree.map(lambda x: x[idx], ev_all)
        if n_dev > 1:
            pc, ev, sched = shard((pc, ev, sched), n_dev)
            states, outs, status = simulate_sharded(
                self.model, self.solver, pc, ev, self.ts2, n_dev, sched
            )
        else:
            states, outs, status = simulate_core(
                self.model, self.solver, pc, ev, self.ts2, None, sched
            )
        res = {**states, **outs}
        return c, a, b, {k: res[k] for k in self.names}, status

    def finish(self, job):
        """Wait for a dispatched chunk and write it out."""
        c, a, b, res, status = job
        status = np.asarray(status)[: b - a]
        chunk_vals = {k: np.asarray(res[k])[: b - a] for k in self.names}
        if self.st is not None:
            self.st.write(c, a, b, chunk_vals, status)
        else:
            for k in self.names:
                self.mem[k][a:b] = chunk_vals[k]
            self.status_mem[a:b] = status
        self.computed += 1
        if self.prog is not None:
            self.prog.advance(self.task)

    def run(self, chunks):
        # one chunk in flight while the previous one is copied out and written
        pending = None
        for c in chunks:
            job = self.launch(c)
            if pending is not None:
                self.finish(pending)
            pending = job
        if pending is not None:
            self.finish(pending)
