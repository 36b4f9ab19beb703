"""Benchmark: a population of ORd models paced to steady state in one batched run.

A population of N endocardial O'Hara-Rudy 2011 models (conductances log-normal,
sigma 0.3, `twinjax.models.ep.cell_population.sample`) is paced at 1 Hz from the shipped
control steady state with the batched second-order Rush-Larsen loop
(`twinjax.models.ep.pace`, record="last": biomarkers reduced on the fly, no
trajectories stored), split over one JAX device per core (the script sets
`--xla_force_host_platform_device_count`; one model runs on one device).
Reports beats per second (N x beats / wall time of the steady call, compilation timed
apart), the step count per beat, and the APD90 spread.

The 2-core CPU is shared with other work while this runs: numbers are indicative.

Usage: python benchmarks/ep_population.py [--quick] [--float32]
(--quick: N = 1, 100 and 5 beats, printed only; the full run writes
benchmarks/results/ep_population.json)
"""

from __future__ import annotations

import argparse
import os

from _common import machine_info, setup_precision, time_call, use_all_cpu_cores, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small population, few beats")
    ap.add_argument("--float32", action="store_true")
    args = ap.parse_args()
    use_all_cpu_cores()  # one JAX device per core: ep.pace splits a population over them
    dtype_name = setup_precision(args.float32)

    import jax
    import numpy as np

    from twinjax.models import ep

    load_before = os.getloadavg()
    model = ep.ORd()
    sizes = [1, 100] if args.quick else [1, 100, 1000]
    n_beats = 5 if args.quick else 20
    solver = ep.RushLarsen()
    rows = []
    for n in sizes:
        p = ep.cell_population.sample(model, jax.random.key(0), n, sigma=0.3)
        res, first, best, steady = time_call(
            lambda p=p: ep.pace(model, p, n_beats, record="last", solver=solver).biomarkers,
            repeats=1,
        )
        apd = np.asarray(res["APD90"][-1])
        steps = np.asarray(res["steps"][-1])
        rows.append(
            dict(
                n_models=n,
                n_beats=n_beats,
                first_call_s=first,
                steady_s=best,
                compile_s=max(first - best, 0.0),
                beats_per_second=n * n_beats / best,
                steps_per_beat=float(np.max(steps)),
                apd90_median=float(np.nanmedian(apd)),
                apd90_p5_p95=[float(np.nanpercentile(apd, 5)), float(np.nanpercentile(apd, 95))],
                abnormal=int(np.sum(np.asarray(res["EAD"][-1]) | np.asarray(res["RF"][-1]))),
            )
        )
        print(rows[-1], flush=True)
    big = rows[-1]
    payload = dict(
        benchmark="ep_population",
        protocol=dict(
            model="ep.ORd(celltype='endo')",
            population="ep.cell_population.sample(model, jax.random.key(0), N, sigma=0.3) over "
            "GNa, GNaL, Gto, PCa, GKr, GKs, GK1, Gncx, Pnak, Jrel_scale, Jup_scale",
            pacing="BCL 1000 ms, -80 A/F x 0.5 ms, from the shipped 1 Hz control steady state",
            solver=f"ep.RushLarsen(dt_max={solver.dt_max}, dt_min={solver.dt_min}, "
            f"dv_max={solver.dv_max}, rtol={solver.rtol})",
            timing="first call (trace + compile + run) vs a steady call; "
            "beats_per_second = N * n_beats / steady_s",
            note="2-core CPU shared with concurrent work: indicative numbers",
        ),
        quick=args.quick,
        dtype=dtype_name,
        machine=machine_info(),
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        rows=rows,
        summary=dict(
            beats_per_second=big["beats_per_second"],
            n_models=big["n_models"],
            n_beats=big["n_beats"],
            steps_per_beat=big["steps_per_beat"],
        ),
    )
    if args.quick:  # a smoke run: printed, not recorded
        print(payload["summary"])
    else:
        print(write_json("ep_population.json", payload))


if __name__ == "__main__":
    main()
