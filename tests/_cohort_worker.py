"""Run a fixed cohort in a subprocess (used by test_cohort.py for kill/resume and devices)."""

import os
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import twinjax as tj  # noqa: E402
from twinjax.models import pk  # noqa: E402


def setup(n=600):
    model = pk.two_compartment("first_order")
    rng = np.random.default_rng(7)
    params = {
        "CL": 5 * np.exp(0.3 * rng.standard_normal(n)),
        "V": 50 * np.exp(0.2 * rng.standard_normal(n)),
    }
    regimen = tj.Regimen.repeat(100.0, "depot", every=12.0, n=6)
    times = np.linspace(0.0, 72.0, 73)
    return model, params, regimen, times


def run(store=None, chunk_size=50, devices=None, progress=False):
    model, params, regimen, times = setup()
    return tj.simulate_cohort(
        model,
        params,
        regimen,
        times,
        solver=tj.solvers.Ensemble(),
        store=store,
        chunk_size=chunk_size,
        progress=progress,
        devices=devices,
    )


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "dist":  # dist STORE CHUNK RANK N_PROCESSES PORT
        rank, n_proc, port = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}",
            num_processes=n_proc,
            process_id=rank,
            initialization_timeout=120,
        )
        r = run(store=out, chunk_size=int(sys.argv[3]))
        print(f"rank {rank}: computed {r.chunks_computed} status_ok {int((r.status == 0).sum())}")
        sys.stdout.flush()
        os._exit(0)  # skip the distributed runtime's shutdown handshake
    elif mode == "store":
        r = run(store=out, chunk_size=int(sys.argv[3]))
        print(f"computed {r.chunks_computed} reused {r.chunks_reused}")
    else:  # devices: in-memory run, saved to npz
        r = run(chunk_size=int(sys.argv[3]))
        np.savez(out, C=r["C"], status=r.status, n_devices=len(jax.devices()))
