"""UVA/Padova closed loop: twinjax's batched cohort vs simglucose's own simulator, one run.

Both sides, timed in the same process on the same machine:

* **simglucose** (J. Xie, the open-source UVA/Padova 2008 academic simulator most users
  run): its own engine, ``SimObj(T1DSimEnv(T1DPatient, CGMSensor, InsulinPump,
  CustomScenario), BBController, 1 day).simulate()``, one patient after another, for
  ``k`` named adults (``adult#001`` ...). Sensor ``GuardianRT`` (5-min sampling, the
  Breton-Kovatchev noise), pump ``Insulet`` (quantised basal and bolus),
  ``BBController(target=140)`` (CR and CF from its ``Quest.csv``), meals of 50 g at
  7:00, 70 g at 12:00 and 80 g at 19:00. Patient-days per second = k / wall time
  (environment construction included; no rendering, no CSV written). CPU time
  (``time.process_time``) is recorded beside the wall time on both sides: on this
  shared machine the ratio per CPU-second is the one least moved by other work.
* **twinjax**: ``glucose.simulate_closed_loop`` on ``N`` virtual adults
  (``virtual_patients(seed=0, N)``: the 10 adults, kinetic parameters perturbed
  log-normally; the per-patient cost is that of a named adult), ``BasalBolus`` with the
  same CR/CF and target, ``CGM()`` noise (key 0), the same meals, 5-min sampling, 1-min
  patient steps (DOPRI5, rtol = atol = 1e-6), one compiled program for the whole cohort:
  this is ``benchmarks/glucose_cohort.py``'s protocol. Timed steady (compiled) and with
  compilation (the first call).

What differs between the two closed loops: simglucose quantises insulin to its pump's
increments and its controller reads the CGM averaged over the previous interval and
sees a meal one interval after it is eaten (so its bolus comes 5 min later); twinjax's
loop delivers the unquantised rate and boluses in the interval of the meal; the CGM
noise draws differ (different generators). So the closed-loop traces of the k patients
are compared as outcomes (mean glucose, TIR), not point by point.

**Agreement check (same inputs):** the insulin that simglucose's pump delivered to each
of the k patients (its ``insulin_hist``, U/min per 5-min interval) is replayed into
twinjax's loop (``Replay`` controller below, ideal sensor, 1-min sampling), and
simglucose's recorded glucose (its env's ``BG``: subcutaneous glucose ``Gs/Vg``
averaged over the minutes of each interval) is compared with twinjax's ``Gs/Vg``
averaged over the same minutes. Tolerance: RMS difference < 0.1 % of the mean (both
integrate the same equations with DOPRI5 at rtol 1e-6; tests/test_simglucose.py finds
~1e-5 % open loop).

Run: ``python benchmarks/glucose_vs_simglucose.py`` (k = 3 simglucose patients,
N = 1,000 twinjax patients x 1 day; writes benchmarks/results/glucose_vs_simglucose.json),
``--quick`` (k = 1, N = 50; printed and written to the temp dir only).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MEALS_H = ((7.0, 50.0), (12.0, 70.0), (19.0, 80.0))  # (hour, g)


def _simglucose():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation inside simglucose
        from simglucose.actuator.pump import InsulinPump
        from simglucose.controller.basal_bolus_ctrller import BBController
        from simglucose.patient.t1dpatient import T1DPatient
        from simglucose.sensor.cgm import CGMSensor
        from simglucose.simulation.env import T1DSimEnv
        from simglucose.simulation.scenario import CustomScenario
        from simglucose.simulation.sim_engine import SimObj
    return T1DPatient, CGMSensor, InsulinPump, CustomScenario, T1DSimEnv, BBController, SimObj


def run_simglucose(name: str, days: int, seed: int):
    """One patient through simglucose's own engine. Returns (wall s, CPU s, env)."""
    from datetime import datetime, timedelta

    T1DPatient, CGMSensor, InsulinPump, CustomScenario, T1DSimEnv, BBController, SimObj = (
        _simglucose()
    )
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = datetime(2026, 1, 1, 0, 0, 0)
        scenario = CustomScenario(
            start_time=start,
            scenario=[(24.0 * d + h, g) for d in range(days) for h, g in MEALS_H],
        )
        env = T1DSimEnv(
            T1DPatient.withName(name),
            CGMSensor.withName("GuardianRT", seed=seed),
            InsulinPump.withName("Insulet"),
            scenario,
        )
        sim = SimObj(env, BBController(target=140), timedelta(days=days), animate=False)
        sim.simulate()
    return time.perf_counter() - t0, time.process_time() - c0, env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="k = 1, N = 50 (smoke test)")
    ap.add_argument("--k", type=int, default=None, help="simglucose patients (adult#001..)")
    ap.add_argument("--n", type=int, default=None, help="twinjax patients")
    ap.add_argument("--days", type=int, default=1, help="simulated days (both sides)")
    ap.add_argument("--repeats", type=int, default=2, help="steady twinjax repeats")
    a = ap.parse_args(argv)
    k = a.k or (1 if a.quick else 3)
    n = a.n or (50 if a.quick else 1000)
    days = a.days
    if not 1 <= k <= 10:
        raise SystemExit(f"--k {k}: between 1 and 10 (simglucose's adult#001..adult#010)")
    C.setup_precision(False)
    logging.getLogger("simglucose").setLevel(logging.WARNING)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from twinjax.models import glucose as gl

    con = C.console()
    load_before = os.getloadavg()
    names = [f"adult#{i + 1:03d}" for i in range(k)]

    # ---- simglucose, one patient after another
    sg_rows, envs = [], []
    for i, name in enumerate(names):
        wall, cpu, env = run_simglucose(name, days, seed=i + 1)
        envs.append(env)
        sg_rows.append(dict(patient=name, wall_s=wall, cpu_s=cpu, patient_days_per_s=days / wall))
        con.print(f"simglucose {name}: {wall:.2f} s for {days} day(s)")
    sg_wall = sum(r["wall_s"] for r in sg_rows)
    sg_rate = k * days / sg_wall
    sg_cpu_rate = k * days / sum(r["cpu_s"] for r in sg_rows)

    # ---- twinjax, the whole cohort in one compiled loop
    p, base = gl.virtual_patients(seed=0, n=n)
    q = gl.therapy_params(list(base))
    ctrl = gl.BasalBolus(CR=q["CR"], CF=q["CF"], target=140.0)
    meals = gl.daily_meals(days)
    key = jax.random.PRNGKey(0)

    def run():
        return gl.simulate_closed_loop(
            p, ctrl, duration=1440.0 * days, meals=meals, sensor=gl.CGM(), key=key, check=False
        )

    res, first, best, steady = C.time_call(run, repeats=a.repeats)
    c0 = time.process_time()  # CPU seconds of one more steady call (all threads)
    C.block(run())
    tj_cpu = time.process_time() - c0
    status = np.asarray(res.status)
    tj_rate = n * days / best
    tj_rate_first = n * days / first

    # ---- same named patients in twinjax's closed loop (outcomes side by side)
    pk = gl.patient_params(names)
    qk = gl.therapy_params(names)
    rk = gl.simulate_closed_loop(
        pk,
        gl.BasalBolus(CR=qk["CR"], CF=qk["CF"], target=140.0),
        duration=1440.0 * days,
        meals=meals,
        sensor=gl.CGM(),
        key=key,
    )
    closed = []
    for i, (name, env) in enumerate(zip(names, envs, strict=True)):
        sg = np.asarray(env.CGM_hist[1:])  # simglucose CGM, averaged over each interval
        tj = np.asarray(rk.cgm[i])  # twinjax CGM at each sampling time
        closed.append(
            dict(
                patient=name,
                simglucose_mean_cgm=float(np.mean(sg)),
                simglucose_tir_cgm=float(np.mean((sg >= 70) & (sg <= 180)) * 100),
                simglucose_insulin_U=float(np.sum(env.insulin_hist) * 5.0),
                twinjax_mean_cgm=float(np.mean(tj)),
                twinjax_tir_cgm=float(np.mean((tj >= 70) & (tj <= 180)) * 100),
                twinjax_insulin_U=float(np.sum(np.asarray(rk.insulin[i])) * 5.0),
            )
        )

    # ---- agreement on the same inputs: simglucose's delivered insulin replayed
    n_int = len(envs[0].insulin_hist)
    ins = np.stack([np.asarray(e.insulin_hist, float) for e in envs])  # (k, n_int) U/min
    per_min = np.repeat(ins, 5, axis=1)
    per_min = np.concatenate([per_min, per_min[:, -1:]], axis=1)  # one extra minute

    class Replay(gl.OpenLoop):
        """Insulin rates given per minute (U/min), looked up by the loop's time."""

        schedule: jax.Array

        def __call__(self, state, t, cgm, meal, p, sample_time):
            i = jnp.clip(
                jnp.round(t / sample_time).astype(jnp.int32), 0, self.schedule.shape[1] - 1
            )
            return state, jnp.take_along_axis(self.schedule, i[:, None], axis=1)[:, 0]

    minutes = 5 * n_int + 1
    rr = gl.simulate_closed_loop(
        pk,
        Replay(schedule=jnp.asarray(per_min)),
        duration=float(minutes),
        meals=meals,
        sample_time=1.0,
        sensor=gl.CGM(noise=False),
    )
    gs = np.asarray(rr.cgm)  # ideal sensor: Gs/Vg at minutes 0..minutes-1
    agree = []
    for i, (name, env) in enumerate(zip(names, envs, strict=True)):
        sg_bg = np.asarray(env.BG_hist[1:])
        tj = gs[i, 1:].reshape(n_int, 5).mean(axis=1)  # minutes 5j+1 .. 5j+5
        rms = 100 * float(np.sqrt(np.mean((tj - sg_bg) ** 2)) / np.mean(sg_bg))
        agree.append(
            dict(
                patient=name,
                rms_diff_pct_of_mean=rms,
                max_abs_diff_mg_dl=float(np.max(np.abs(tj - sg_bg))),
                bg_range_mg_dl=[float(np.min(sg_bg)), float(np.max(sg_bg))],
            )
        )
    tol_pct = 0.1
    agree_ok = all(r["rms_diff_pct_of_mean"] < tol_pct for r in agree)

    payload = dict(
        benchmark="glucose_vs_simglucose",
        description=__doc__,
        quick=a.quick,
        days=days,
        simglucose=dict(
            setup="SimObj(T1DSimEnv(T1DPatient.withName(name), CGMSensor GuardianRT, "
            "InsulinPump Insulet, CustomScenario meals 7:00 50 g / 12:00 70 g / 19:00 80 g), "
            "BBController(target=140)).simulate(), one patient after another",
            patients=names,
            rows=sg_rows,
            wall_s=sg_wall,
            patient_days_per_s=sg_rate,
            patient_days_per_cpu_s=sg_cpu_rate,
            cores_used=1,
        ),
        twinjax=dict(
            setup="simulate_closed_loop(virtual_patients(seed=0, N), BasalBolus(CR, CF, 140), "
            "CGM() noise key 0, daily_meals, 5-min sampling, 1-min DOPRI5 steps rtol=atol=1e-6)",
            n_patients=n,
            status_counts={str(s): int(c) for s, c in zip(*np.unique(status, return_counts=True))},
            **C.timing_fields(first, best, steady),
            patient_days_per_s=tj_rate,
            patient_days_per_s_incl_compile=tj_rate_first,
            steady_cpu_s=tj_cpu,
            patient_days_per_cpu_s=n * days / tj_cpu,
            cores_available=os.cpu_count(),
        ),
        ratio_per_patient_day=tj_rate / sg_rate,
        ratio_per_patient_day_incl_compile=tj_rate_first / sg_rate,
        ratio_per_patient_day_per_core=(tj_rate / (os.cpu_count() or 1)) / sg_rate,
        ratio_per_cpu_s=(n * days / tj_cpu) / sg_cpu_rate,
        target_ratio=5000.0,
        closed_loop_side_by_side=closed,
        agreement=dict(
            protocol="simglucose's delivered insulin replayed into twinjax (1-min sampling, "
            "ideal sensor); simglucose env BG (Gs/Vg averaged over each 5-min interval) vs "
            "twinjax Gs/Vg averaged over the same minutes",
            tolerance_rms_pct_of_mean=tol_pct,
            passed=agree_ok,
            rows=agree,
        ),
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        peak_rss_gib=C.peak_rss_gib(),
        machine=C.machine_info(),
    )
    out_dir = Path(tempfile.gettempdir()) if a.quick else None
    path = C.write_json("glucose_vs_simglucose.json", payload, out_dir)
    con.print(
        f"simglucose {sg_rate:.3f} patient-days/s ({k} patients); twinjax {tj_rate:.0f} "
        f"steady, {tj_rate_first:.0f} with compile ({n} patients): ratio "
        f"{tj_rate / sg_rate:.0f}x (with compile {tj_rate_first / sg_rate:.0f}x; target 5000x); "
        f"per CPU-second {(n * days / tj_cpu) / sg_cpu_rate:.0f}x"
    )
    for r in agree:
        con.print(
            f"agreement {r['patient']}: RMS {r['rms_diff_pct_of_mean']:.2e} % of mean, "
            f"max {r['max_abs_diff_mg_dl']:.2e} mg/dL (tolerance {tol_pct} %)"
        )
    con.print(f"wrote {path}")
    if not agree_ok:
        raise SystemExit("glucose traces disagree beyond tolerance")
    return payload


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.1f} s")
