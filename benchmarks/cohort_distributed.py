"""Cohort streamed by several processes under ``jax.distributed`` into one Zarr store.

Model, regimen, save grid, population and tolerances: those of
``cohort_throughput.py`` (2-compartment oral PK driving an indirect response,
200 mg every 12 h for 7 days, hourly saves, Ensemble rtol 1e-6, atol 1e-9, float64).

Rows, in one run on one machine:

- ``distributed``: ``P`` processes (default 2) started on this machine, each calling
  ``jax.distributed.initialize`` (coordinator on localhost) and then
  ``simulate_cohort`` with the same inputs and store; each process has one CPU device
  and computes the chunks ``c % P == rank``. Peak RSS and wall time per process.
- ``one_process`` (the baseline): one process with one device per core (the same
  cores), streaming ``--baseline-n`` patients to its own store.

Then the two stores' overlapping patients are checked to be bitwise equal (the
same chunk size is used in both), and the distributed store's chunk records are
checked to be complete.

Run: ``python benchmarks/cohort_distributed.py`` (N = 1e7, ~25 GB of store on disk,
deleted afterwards unless ``--keep``), ``--quick`` (N = 20,000).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import cohort_throughput as CT  # noqa: E402

CHUNK = 8192  # patients per chunk, the same in every row (bitwise comparison)


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 20,000 (smoke test)")
    ap.add_argument("--n", type=int, default=10_000_000, help="patients (distributed)")
    ap.add_argument("--baseline-n", type=int, default=1_000_000, help="patients (baseline)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--store-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    ap.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    return ap


def child(n, store, rank, n_proc, port):
    """One process: sample the cohort, stream it, print a JSON line."""
    C.setup_precision(False)
    import jax

    if n_proc > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}",
            num_processes=n_proc,
            process_id=rank,
            initialization_timeout=300,
        )
    tj, model, regimen, times, pop = CT.setup(False)
    t0 = time.perf_counter()
    cohort = pop.sample(jax.random.key(0), n)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = tj.simulate_cohort(
        model,
        cohort,
        regimen,
        times,
        solver=tj.solvers.Ensemble(rtol=CT.RTOL, atol=CT.ATOL),
        store=store,
        chunk_size=CHUNK,
        progress=False,
        outputs=list(CT.OUTPUTS),
    )
    wall = time.perf_counter() - t0
    import numpy as np

    print(
        "RESULT "
        + json.dumps(
            dict(
                rank=rank,
                n=n,
                devices=jax.local_device_count(),
                sample_s=t_sample,
                wall_s=wall,
                chunks_computed=res.chunks_computed,
                n_failed=int(np.sum(np.asarray(res.status) != 0)),
                peak_rss_gib=C.hwm_rss_gib(),
            )
        ),
        flush=True,
    )
    if n_proc > 1:
        os._exit(0)  # skip the distributed runtime's shutdown handshake


def _launch(n, store, n_proc, devices_each):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_each}"
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_child",
                str(n),
                str(store),
                str(r),
                str(n_proc),
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n_proc)
    ]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    rows = []
    for p, (o, e) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"a process failed (exit {p.returncode}):\n{e[-3000:]}")
        line = [ln for ln in o.splitlines() if ln.startswith("RESULT ")][-1]
        rows.append(json.loads(line[len("RESULT ") :]))
    return rows, wall


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._child:
        n, store, rank, n_proc, port = args._child
        child(int(n), store, int(rank), int(n_proc), int(port))
        return
    if args.quick:
        args.n, args.baseline_n = 20_000, 20_000
    con = C.console()
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="twinjax-dist-", dir=args.store_dir))
    try:
        con.rule(f"{args.processes} processes x 1 device, N = {args.n:,}")
        dist_store = tmp / "distributed.zarr"
        dist, dist_wall = _launch(args.n, dist_store, args.processes, 1)
        for r in dist:
            con.print(
                f"  process {r['rank']}: {r['chunks_computed']} chunks, "
                f"{r['wall_s']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB"
            )
        con.rule(f"baseline: 1 process x {cores} devices, N = {args.baseline_n:,}")
        base_store = tmp / "baseline.zarr"
        base, base_wall = _launch(args.baseline_n, base_store, 1, cores)
        b = base[0]
        con.print(f"  {b['wall_s']:.1f} s, peak RSS {b['peak_rss_gib']:.2f} GiB")

        import numpy as np
        import zarr

        m = min(args.n, args.baseline_n)
        za = zarr.open_group(str(dist_store), mode="r")
        zb = zarr.open_group(str(base_store), mode="r")
        equal = all(
            np.array_equal(za[f"outputs/{k}"][:m], zb[f"outputs/{k}"][:m]) for k in CT.OUTPUTS
        ) and np.array_equal(za["status"][:m], zb["status"][:m])
        records = [json.loads(f.read_text()) for f in (dist_store / "chunks").glob("*.json")]
        n_chunks = -(-args.n // CHUNK)
        by_process = {
            r: sum(1 for x in records if x["process"] == r) for r in range(args.processes)
        }
        store_bytes = sum(f.stat().st_size for f in dist_store.rglob("*") if f.is_file())
        dist_pps = args.n / max(r["wall_s"] for r in dist)
        base_pps = args.baseline_n / b["wall_s"]
        payload = dict(
            benchmark="cohort_distributed",
            protocol=__doc__,
            machine=C.machine_info(),
            dtype="float64",
            chunk_size=CHUNK,
            rows=[
                dict(
                    method="distributed",
                    processes=args.processes,
                    devices_per_process=1,
                    n=args.n,
                    wall_s=max(r["wall_s"] for r in dist),
                    launch_to_exit_s=dist_wall,
                    patients_per_s=dist_pps,
                    per_process=dist,
                    peak_rss_gib_max=max(r["peak_rss_gib"] for r in dist),
                    n_failed=dist[0]["n_failed"],
                    store_bytes=store_bytes,
                    chunk_records=len(records),
                    chunks_expected=n_chunks,
                    chunks_by_process=by_process,
                ),
                dict(
                    method="one_process",
                    processes=1,
                    devices_per_process=cores,
                    n=args.baseline_n,
                    wall_s=b["wall_s"],
                    patients_per_s=base_pps,
                    peak_rss_gib=b["peak_rss_gib"],
                    n_failed=b["n_failed"],
                ),
            ],
            summary=dict(
                throughput_ratio_distributed_over_one_process=dist_pps / base_pps,
                first_patients_bitwise_equal=bool(equal),
                patients_compared=m,
                store_complete=len(records) == n_chunks,
                note="wall_s includes compilation (one per process); both rows use all cores",
            ),
        )
        path = C.write_json("cohort_distributed.json", payload, args.out)
        con.print(
            f"throughput {dist_pps:,.0f} vs {base_pps:,.0f} patients/s "
            f"(ratio {dist_pps / base_pps:.2f}); bitwise equal on {m:,}: {equal}; "
            f"records {len(records)}/{n_chunks}; wrote {path}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
