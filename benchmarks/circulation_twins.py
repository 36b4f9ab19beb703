"""Circulation twins: 10,000 closed-loop circulations run to periodic steady state.

Model: ``twinjax.models.circulation.Circulation()`` (Regazzoni et al. 2022, 0-D, 16
states, smooth valves). Cohort: log-normal variation (CV 15 %) of heart rate,
systemic arterial resistance and compliance, LV and RV active elastance and
systemic venous compliance around the defaults, ``jax.random.key(0)``.

Each twin runs beat by beat (phase as the independent variable, one beat per step
of the outer loop) until the beat-to-beat change of the state at beat start is
below ``tol = 1e-3`` (:func:`to_periodic_steady_state`), then one beat with 201
saves is reduced to SBP, DBP, MAP, SV, EF, CO, EDV and ESV.

- ``ensemble``: ``solvers.Ensemble("dopri5", rtol=1e-6, atol=1e-6)`` on the whole
  cohort (one compiled program, per-patient steps; converged twins stop).
- ``diffrax``: ``solvers.Diffrax("tsit5", rtol=1e-6, atol=1e-6)`` (vmapped diffeqsolve)
  on a subset, for agreement (max relative difference of each metric) and speed.

Timings: first call (trace + compile + run) and best steady call, float64, CPU; in
wall seconds and in CPU seconds of this process (``time.process_time``, all threads:
less sensitive to other jobs on a shared machine), with the load average before and
after.
Run: ``python benchmarks/circulation_twins.py`` (10,000 twins) or ``--quick``;
``--n``, ``--n-diffrax``, ``--repeats`` and ``--name`` (the JSON's file name) for
smaller runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def cohort(n, seed=0):
    import jax
    import jax.numpy as jnp

    from twinjax.models.circulation import Circulation

    m = Circulation()
    names = ("HR", "R_AR_SYS", "C_AR_SYS", "EA_LV", "EA_RV", "C_VEN_SYS")
    z = jax.random.normal(jax.random.key(seed), (len(names), n))
    return m, {k: m.param(k).value * jnp.exp(0.15 * z[i]) for i, k in enumerate(names)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (200 twins)")
    ap.add_argument("--n", type=int, default=None, help="number of twins")
    ap.add_argument("--n-diffrax", type=int, default=None, help="Diffrax subset size")
    ap.add_argument("--repeats", type=int, default=None, help="steady Ensemble calls")
    ap.add_argument("--name", default=None, help="file name of the JSON under benchmarks/results/")
    args = ap.parse_args(argv)
    dtype = C.setup_precision(False)
    import numpy as np

    import twinjax as tj
    from twinjax.models.circulation import to_periodic_steady_state

    n = args.n or (200 if args.quick else 10_000)
    nd = args.n_diffrax if args.n_diffrax is not None else (20 if args.quick else 100)
    m, p = cohort(n)
    ens = tj.solvers.Ensemble("dopri5", rtol=1e-6, atol=1e-6)
    dfx = tj.solvers.Diffrax("tsit5", rtol=1e-6, atol=1e-6)
    cpu = []  # process CPU time of each call (all threads): robust to other load

    def run_e():
        c = time.process_time()
        r = C.block(to_periodic_steady_state(m, p, ens, tol=1e-3, max_beats=200))
        cpu.append(time.process_time() - c)
        return r

    reps = args.repeats if args.repeats is not None else (1 if not args.quick else 2)
    load_before = os.getloadavg()
    ss, first, best, steady = C.time_call(run_e, repeats=reps)
    cpu_steady = min(cpu[1:]) if len(cpu) > 1 else cpu[0]
    beats = np.asarray(ss.beats)
    ok = np.asarray(ss.status) == 0
    sub = {k: v[:nd] for k, v in p.items()}
    run_d = lambda: to_periodic_steady_state(m, sub, dfx, tol=1e-3, max_beats=200)  # noqa: E731
    agree, diffrax = None, None  # --n-diffrax 0: no Diffrax rows
    if nd > 0:
        sd, dfirst, dbest, _ = C.time_call(run_d, repeats=1)
        agree = {
            k: float(np.max(np.abs(np.asarray(ss.metrics[k][:nd]) - np.asarray(sd.metrics[k])) /
                            np.abs(np.asarray(sd.metrics[k]))))
            for k in ss.metrics
        }  # fmt: skip
        diffrax = dict(
            solver="Diffrax(tsit5, rtol=1e-6, atol=1e-6)",
            n_twins=nd,
            first_call_s=dfirst,
            steady_s=dbest,
            twins_per_s=nd / dbest,
            beats_mean=float(np.mean(np.asarray(sd.beats))),
        )
    mets = {
        k: dict(zip(("p5", "p50", "p95"), np.percentile(np.asarray(v)[ok], [5, 50, 95])))
        for k, v in ss.metrics.items()
    }
    payload = dict(
        benchmark="circulation_twins",
        quick=args.quick,
        dtype=dtype,
        note=(
            "CPU run on the shared 2-core development machine (other jobs were running): "
            "timings are indicative only"
        ),
        machine=C.machine_info(),
        n_twins=n,
        tol=1e-3,
        ensemble=dict(
            solver="Ensemble(dopri5, rtol=1e-6, atol=1e-6)",
            first_call_s=first,
            steady_s=best,
            first_call_cpu_s=cpu[0],
            steady_cpu_s=cpu_steady,
            steady_cpu_all_s=cpu[1:],
            compile_cpu_s=max(cpu[0] - cpu_steady, 0.0),
            twins_per_s=n / best,
            beats_mean=float(beats.mean()),
            beats_max=int(beats.max()),
            simulated_beats_per_s=float(beats.sum() / best),
            converged_fraction=float(np.mean(np.asarray(ss.converged))),
            ok_fraction=float(ok.mean()),
        ),
        diffrax=diffrax,
        max_rel_diff_ensemble_vs_diffrax=agree,
        cohort_metrics_percentiles=mets,
        peak_rss_gib=C.peak_rss_gib(),
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        command="python benchmarks/circulation_twins.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )
    name = args.name or ("circulation_twins_quick.json" if args.quick else "circulation_twins.json")
    path = C.write_json(name, payload)
    print(path)
    print({k: payload[k] for k in ("ensemble", "diffrax", "max_rel_diff_ensemble_vs_diffrax")})


if __name__ == "__main__":
    main()
