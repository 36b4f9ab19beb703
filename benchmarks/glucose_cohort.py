"""Glucose cohort: 1,000 virtual T1D patients under basal-bolus therapy for 7 days.

Model: UVA/Padova (``twinjax.models.glucose.UvaPadova``) in the compiled closed loop
``simulate_closed_loop``, the engine's controlled run (``solve/_controlled.py``): the
CGM and controller as its hook every 5 min, each interval integrated in 1-min patient
steps (meals as the input schedule) by ``solvers.Ensemble`` (DOPRI5, rtol = atol =
1e-6) for the whole cohort at once.

Patients: ``virtual_patients(seed=0, n)``: the 10 adults of the academic simulator,
patient ``i`` copies adult ``i mod 10`` with 22 kinetic parameters multiplied by
``exp(0.1 z)`` (log-normal, CV ~10 %), basal-dependent parameters (Vm0, kp1, u2ss)
recomputed so that each patient starts at its own steady state. Therapy: the base
adult's carbohydrate ratio and correction factor (simglucose ``Quest.csv``),
``BasalBolus`` with target 140 mg/dL.

Scenario: meals of 50 g at 7:00, 70 g at 12:00 and 80 g at 19:00 every day, eaten at
5 g/min; CGM with the academic simulator's Johnson-SU/AR(1) noise (key 0).

Outcomes (per patient, from the CGM trace): TIR, TBR70/54, TAR180/250, mean, CV,
GMI, LBGI, HBGI; the JSON holds the cohort's median [IQR] and mean, and the
throughput (patient-days per second, steady and with compilation).

Run: ``python benchmarks/glucose_cohort.py`` (full: 1,000 patients, 7 days),
``--quick`` (50 patients, 1 day; < 1 min).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 patients, 1 day (smoke test)")
    ap.add_argument("--n", type=int, default=None, help="number of patients")
    ap.add_argument("--days", type=int, default=None, help="simulated days")
    ap.add_argument("--float32", action="store_true", help="float32 (default float64)")
    ap.add_argument("--repeats", type=int, default=1, help="steady (compiled) repeats")
    ap.add_argument("--out", default=None, help="JSON name (default glucose_cohort.json)")
    a = ap.parse_args(argv)
    n = a.n or (50 if a.quick else 1000)
    days = a.days or (1 if a.quick else 7)
    dtype_name = C.setup_precision(a.float32)

    import jax
    import numpy as np

    from twinjax.models import glucose as gl

    con = C.console()
    p, base = gl.virtual_patients(seed=0, n=n)
    q = gl.therapy_params(list(base))
    ctrl = gl.BasalBolus(CR=q["CR"], CF=q["CF"], target=140.0)
    meals = gl.daily_meals(days)
    key = jax.random.PRNGKey(0)

    def run():
        r = gl.simulate_closed_loop(
            p, ctrl, duration=1440.0 * days, meals=meals, sensor=gl.CGM(), key=key, check=False
        )
        return r

    res, first, best, steady = C.time_call(run, repeats=a.repeats)
    status = np.asarray(res.status)
    o = {k: np.asarray(v) for k, v in res.outcomes("cgm").items()}
    ok = status == 0
    summary = {
        k: dict(
            median=float(np.median(v[ok])),
            q25=float(np.percentile(v[ok], 25)),
            q75=float(np.percentile(v[ok], 75)),
            mean=float(np.mean(v[ok])),
        )
        for k, v in o.items()
    }
    patient_days = n * days
    payload = dict(
        benchmark="glucose_cohort",
        description=__doc__,
        dtype=dtype_name,
        n_patients=n,
        days=days,
        sample_time_min=5.0,
        patient_step_min=1.0,
        solver="Ensemble(dopri5, rtol=1e-6, atol=1e-6, dt=1 min)",
        controller="BasalBolus(CR, CF from Quest.csv, target 140)",
        status_counts={str(k): int(v) for k, v in zip(*np.unique(status, return_counts=True))},
        first_call_s=first,
        steady_s=best,
        steady_all_s=steady,
        compile_s=first - best if steady else None,
        patient_days_per_s=patient_days / best,
        patient_days_per_s_incl_compile=patient_days / first,
        outcomes_cgm=summary,
        outcomes_bg_mean={
            k: float(np.mean(np.asarray(v)[ok])) for k, v in res.outcomes("bg").items()
        },
        peak_rss_gib=C.peak_rss_gib(),
        machine=C.machine_info(),
    )
    # a smoke run must not overwrite the recorded results: it writes to the temp dir
    out_dir = Path(tempfile.gettempdir()) if a.quick else None
    path = C.write_json(a.out or "glucose_cohort.json", payload, out_dir)
    rows = [(k, v["median"], v["q25"], v["q75"], v["mean"]) for k, v in summary.items()]
    cols = ["outcome", "median", "q25", "q75", "mean"]
    con.print(C.table(f"{n} patients x {days} days (CGM outcomes)", cols, rows))
    con.print(
        f"first call {first:.1f} s, steady {best:.1f} s: {patient_days / best:.0f} patient-days/s; "
        f"status {payload['status_counts']}; wrote {path}"
    )
    return payload


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.1f} s")
