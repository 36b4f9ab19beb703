"""Cohort throughput: a PK/PD virtual cohort with SciPy, vmapped diffrax and Ensemble.

Model: 2-compartment oral PK (first-order absorption) driving a Jusko type-3
indirect response (stimulation of production), coupled by ``Link("pk.C", "pd.C")``.
Regimen: 200 mg into ``pk.depot`` every 12 h, 14 doses (7 days); saves hourly,
0..168 h (169 times). Patients: ``Population.from_cv`` (log-normal IIV on CL 30 %,
V 25 %, KA 40 %, EC50 30 %), ``.sample(jax.random.key(0), n)``.

Methods (same tolerances rtol = 1e-6, atol = 1e-9):

- ``scipy_lsoda``: a per-patient ``scipy.integrate.solve_ivp(method="LSODA")`` loop,
  integrating dose to dose (bolus added at each dose), ``t_eval`` hourly, on a subset.
- ``diffrax``: ``twinjax.solvers.Diffrax(rtol, atol)`` (Tsit5 + PID) through
  ``twinjax.simulate``: ``jax.vmap`` over ``diffeqsolve`` with ``throw=False`` inside
  one ``jax.jit``, as the diffrax FAQ recommends.
- ``ensemble``: ``twinjax.solvers.Ensemble(rtol, atol)`` (batched DOPRI5) through
  ``twinjax.simulate``: one device, i.e. one CPU core, like the two above.
- ``ensemble_all_cores``: the same solver through ``twinjax.simulate_cohort`` in
  memory, sharded over one JAX device per CPU core (the script sets
  ``--xla_force_host_platform_device_count`` to the core count unless XLA_FLAGS
  already names one); each device runs its own step loop.
- ``ensemble_stream``: ``twinjax.simulate_cohort`` with Ensemble, streamed to a Zarr
  store, each size in its own subprocess (peak RSS measured there).

Errors against ``Diffrax(rtol=1e-10, atol=1e-12)`` on a common subset of patients:
``rel_err`` = max over patients of max_t |a - b| / max_t |b| (per output), and
``pointwise_rel_err`` = max |a - b| / max(|b|, 1e-3 max_t |b|).

Run: ``python benchmarks/cohort_throughput.py`` (full), ``--quick`` (< 1 min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RTOL, ATOL = 1e-6, 1e-9
MATCH_RTOLS = (2e-6, 3e-6, 5e-6)  # tried for the accuracy-matched Ensemble row
REF_RTOL, REF_ATOL = 1e-10, 1e-12
OUTPUTS = ("pk.C", "pd.R")
CV = {"pk.CL": 0.3, "pk.V": 0.25, "pk.KA": 0.4, "pd.EC50": 0.3}
DOSE, EVERY, NDOSE, T_END = 200.0, 12.0, 14, 168.0


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N only (smoke test, < 1 min)")
    ap.add_argument("--float32", action="store_true", help="float32 (default float64)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="in-memory sizes")
    ap.add_argument(
        "--stream-sizes",
        type=int,
        nargs="*",
        default=None,
        help="streamed simulate_cohort sizes (Ensemble)",
    )
    ap.add_argument("--no-stream", action="store_true", help="skip the streamed runs")
    ap.add_argument("--scipy-n", type=int, default=100, help="patients in the SciPy loop")
    ap.add_argument("--ref-n", type=int, default=100, help="patients in the error subset")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cell-budget-s",
        type=float,
        default=150.0,
        help="skip an in-memory (method, N) predicted to take longer per call",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="a budget for the run, from its start: skip an in-memory (method, N) whose "
        "predicted calls would end past it (none by default; the GPU suite sets one so "
        "that the JSON is written inside its time limit)",
    )
    ap.add_argument(
        "--stream-budget-s",
        type=float,
        default=420.0,
        help="skip a streamed size predicted to take longer",
    )
    ap.add_argument("--memory-budget-gib", type=float, default=1.0)
    ap.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="where the Zarr stores go (default: a temporary directory)",
    )
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--devices",
        type=int,
        default=None,
        help="CPU devices for the all-cores rows (default: the core count)",
    )
    ap.add_argument("--_stream-child", nargs=2, metavar=("N", "STORE"), help=argparse.SUPPRESS)
    return ap


def setup(float32):
    import jax

    import twinjax as tj
    from twinjax.models import pd, pk

    model = tj.couple(
        {"pk": pk.two_compartment("first_order"), "pd": pd.IndirectResponse(3)},
        [tj.Link("pk.C", "pd.C")],
    )
    regimen = tj.Regimen.repeat(DOSE, "pk.depot", every=EVERY, n=NDOSE)
    times = jax.numpy.linspace(0.0, T_END, 169)
    pop = tj.Population.from_cv(model, CV)
    return tj, model, regimen, times, pop


def stream_child(n, store, float32, memory_budget_gib):
    """Run in a subprocess: one streamed simulate_cohort; print a JSON line."""
    C.setup_precision(float32)
    import jax

    tj, model, regimen, times, pop = setup(float32)
    t = time.perf_counter()
    cohort = pop.sample(jax.random.key(0), n)
    t_sample = time.perf_counter() - t
    t = time.perf_counter()
    res = tj.simulate_cohort(
        model,
        cohort,
        regimen,
        times,
        solver=tj.solvers.Ensemble(rtol=RTOL, atol=ATOL),
        store=store,
        memory_budget_gib=memory_budget_gib,
        resume=False,
        progress=False,
        outputs=list(OUTPUTS),
    )
    wall = time.perf_counter() - t
    import numpy as np

    st = np.asarray(res.status)
    print(
        "RESULT "
        + json.dumps(
            dict(
                n=n,
                sample_s=t_sample,
                wall_s=wall,
                n_failed=int(np.sum(st != 0)),
                chunks=res.chunks_computed,
                self_peak_rss_gib=C.hwm_rss_gib(),
                store_bytes=sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file()),
            )
        )
    )


def scipy_loop(model, params, n):
    """Per-patient LSODA, dose to dose, hourly t_eval. Returns (C, R) and seconds."""
    import numpy as np
    from scipy.integrate import solve_ivp

    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    t_all = np.linspace(0.0, T_END, 169)
    doses = EVERY * np.arange(NDOSE)
    Cs, Rs = np.empty((n, 169)), np.empty((n, 169))
    t0 = time.perf_counter()
    for i in range(n):
        CL, V, Q, V2, KA = (P[k][i] for k in ("pk.CL", "pk.V", "pk.Q", "pk.V2", "pk.KA"))
        F, TLAG = P["pk.F"][i], P["pk.TLAG"][i]
        R0, KOUT, EMAX, EC50 = (P[k][i] for k in ("pd.R0", "pd.KOUT", "pd.EMAX", "pd.EC50"))
        assert TLAG == 0.0
        kin = R0 * KOUT

        def rhs(t, y):
            depot, central, periph, _elim, R = y
            c = central / V
            flow = Q * (c - periph / V2)
            s = EMAX * c / (EC50 + c)
            return [-KA * depot, KA * depot - CL * c - flow, flow, CL * c, kin * (1 + s) - KOUT * R]

        y = np.array([0.0, 0.0, 0.0, 0.0, R0])
        out = np.empty((169, 5))
        for k, td in enumerate(doses):
            y = y.copy()
            y[0] += F * DOSE
            t_stop = doses[k + 1] if k + 1 < len(doses) else T_END
            last = k + 1 == len(doses)
            mask = (t_all >= td) & ((t_all <= t_stop) if last else (t_all < t_stop))
            sol = solve_ivp(
                rhs, (td, t_stop), y, method="LSODA", rtol=RTOL, atol=ATOL, t_eval=t_all[mask]
            )
            out[mask] = sol.y.T
            y = (
                sol.y[:, -1]
                if sol.t[-1] == t_stop
                else solve_ivp(
                    rhs, (sol.t[-1], t_stop), sol.y[:, -1], method="LSODA", rtol=RTOL, atol=ATOL
                ).y[:, -1]
            )
        Cs[i] = out[:, 1] / V
        Rs[i] = out[:, 4]
    return {"pk.C": Cs, "pd.R": Rs}, time.perf_counter() - t0


def errors(a, b):
    import numpy as np

    out = {}
    for k in OUTPUTS:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        scale = np.max(np.abs(y), axis=-1, keepdims=True)
        rel = np.max(np.abs(x - y), axis=-1) / scale[:, 0]
        pw = np.abs(x - y) / np.maximum(np.abs(y), 1e-3 * scale)
        out[k] = dict(rel_err=float(np.max(rel)), pointwise_rel_err=float(np.max(pw)))
    out["max_rel_err"] = max(out[k]["rel_err"] for k in OUTPUTS)
    out["max_pointwise_rel_err"] = max(out[k]["pointwise_rel_err"] for k in OUTPUTS)
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    C.use_all_cpu_cores(args.devices)
    if args._stream_child:
        n, store = args._stream_child
        stream_child(int(n), store, args.float32, args.memory_budget_gib)
        return None
    dtype_name = C.setup_precision(args.float32)
    import jax
    import numpy as np

    tj, model, regimen, times, pop = setup(args.float32)
    con = C.console()
    info = C.machine_info()
    t_start = time.perf_counter()

    if args.quick:
        sizes = args.sizes or [200]
        stream_sizes = args.stream_sizes if args.stream_sizes is not None else [200]
        scipy_n, ref_n, repeats = min(args.scipy_n, 5), min(args.ref_n, 10), 1
    else:
        sizes = args.sizes or [1000, 10_000, 100_000]
        stream_sizes = (
            args.stream_sizes
            if args.stream_sizes is not None
            else [1000, 10_000, 100_000, 1_000_000]
        )
        scipy_n, ref_n, repeats = args.scipy_n, args.ref_n, args.repeats
    if args.no_stream:
        stream_sizes = []

    con.rule("Cohort throughput: 2-cmt oral PK + IDR type 3, 14 doses, 169 saves")
    con.print(f"devices: {info['jax_devices']}  dtype: {dtype_name}")
    solvers = {
        "diffrax": tj.solvers.Diffrax(rtol=RTOL, atol=ATOL),
        "ensemble": tj.solvers.Ensemble(rtol=RTOL, atol=ATOL),
    }
    solvers["ensemble_all_cores"] = solvers["ensemble"]
    ref_solver = tj.solvers.Diffrax(rtol=REF_RTOL, atol=REF_ATOL)

    def sim(solver, params):
        r = tj.simulate(model, params, regimen, times, solver=solver)
        return {k: r.outputs[k] for k in OUTPUTS}, r.status

    def sim_cohort(solver, params):
        r = tj.simulate_cohort(
            model, params, regimen, times, solver=solver, progress=False, outputs=list(OUTPUTS)
        )
        return {k: r[k] for k in OUTPUTS}, r.status

    runner = dict(diffrax=sim, ensemble=sim, ensemble_all_cores=sim_cohort)

    # ------------------------- accuracy subset -------------------------------
    sub = pop.sample(jax.random.key(0), max(ref_n, scipy_n))
    sub_p = dict(model.complete(sub.params)[0])
    ref, ref_st = sim(ref_solver, sub_p)
    ref = {k: np.asarray(v) for k, v in C.block(ref).items()}
    assert np.all(np.asarray(ref_st) == 0)
    acc = {}
    for name, s in solvers.items():
        got, st = C.block(runner[name](s, sub_p))
        acc[name] = errors(got, ref)
        acc[name]["n_failed"] = int(np.sum(np.asarray(st) != 0))
    con.print("[bold]SciPy LSODA loop[/]")
    sp_out, sp_s = scipy_loop(model, sub_p, scipy_n)
    acc["scipy_lsoda"] = errors(sp_out, {k: v[:scipy_n] for k, v in ref.items()})
    # Equal accuracy: the loosest Ensemble rtol whose error on the subset is no larger
    # than the SciPy loop's (the targets are "at equal or better accuracy").
    sp_err = acc["scipy_lsoda"]["max_rel_err"]
    matched = None
    for rt in MATCH_RTOLS:
        s_m = tj.solvers.Ensemble(rtol=rt, atol=ATOL)
        got, st = C.block(sim_cohort(s_m, sub_p))
        e = errors(got, ref)
        con.print(f"  Ensemble rtol={rt:.0e}: rel {e['max_rel_err']:.2e} (SciPy {sp_err:.2e})")
        if e["max_rel_err"] > sp_err or int(np.sum(np.asarray(st) != 0)) != 0:
            break
        matched, acc["ensemble_matched"] = rt, {**e, "rtol": rt}
    if matched is not None:
        solvers["ensemble_matched"] = tj.solvers.Ensemble(rtol=matched, atol=ATOL)
        runner["ensemble_matched"] = sim_cohort
    scipy_row = dict(
        method="scipy_lsoda",
        n=scipy_n,
        total_s=sp_s,
        per_patient_s=sp_s / scipy_n,
        patients_per_s=scipy_n / sp_s,
    )
    con.print(f"  {scipy_n} patients in {sp_s:.2f} s -> {sp_s / scipy_n * 1e3:.2f} ms/patient")
    for k, v in acc.items():
        con.print(
            f"  accuracy {k:12s} rel {v['max_rel_err']:.2e}  "
            f"pointwise {v['max_pointwise_rel_err']:.2e}"
        )

    # ------------------------- in-memory simulate ----------------------------
    rows = [scipy_row]
    last, skipped, compile_s = {}, {}, {}

    def need(name, pred):
        """Predicted seconds of a row: its first call (a new shape compiles again, as
        long as the method's last compile) and its repeats."""
        reps = 1 if pred * (1 + repeats) > args.cell_budget_s else repeats
        return compile_s.get(name, 0.0) + (1 + reps) * pred

    for n in sizes:
        cohort = pop.sample(jax.random.key(0), n)
        params = cohort.params
        for name, s in solvers.items():
            row = dict(
                method=name,
                n=n,
                path=(
                    "twinjax.simulate_cohort (in memory, all cores)"
                    if name == "ensemble_all_cores"
                    else "twinjax.simulate (in memory, one device)"
                ),
            )
            pred = None if name not in last else last[name][1] * n / last[name][0]
            spent = time.perf_counter() - t_start
            if name in skipped:
                row["skipped"] = skipped[name]
            elif pred is not None and pred > args.cell_budget_s:
                row["skipped"] = skipped[name] = (
                    f"predicted {pred:.0f} s per call > cell budget {args.cell_budget_s:.0f} s"
                )
            elif args.budget_s is not None and (
                spent >= args.budget_s
                or (pred is not None and spent + need(name, pred) > args.budget_s)
            ):
                # not remembered in ``skipped``: a smaller row of another method may fit
                row["skipped"] = f"run budget of {args.budget_s:.0f} s: {spent:.0f} s spent" + (
                    "" if pred is None else f", {need(name, pred):.0f} s predicted"
                )
            if "skipped" in row:
                con.print(f"  [yellow]skip[/] {name} N={n}: {row['skipped']}")
                rows.append(row)
                continue
            reps = (
                1 if (pred is not None and pred * (1 + repeats) > args.cell_budget_s) else repeats
            )
            (out, st), first, best, steady = C.time_call(
                lambda: runner[name](s, params), repeats=reps
            )
            last[name] = (n, best)
            compile_s[name] = max(first - best, 0.0)
            row.update(
                **C.timing_fields(first, best, steady),
                patients_per_s=n / best,
                per_patient_s=best / n,
                n_failed=int(np.sum(np.asarray(st) != 0)),
                peak_rss_gib=C.peak_rss_gib(),
            )
            rows.append(row)
            con.print(
                f"  {name:10s} N={n:>8d}  first {first:8.2f} s  best {best:8.3f} s  "
                f"{n / best:10.0f} patients/s  fail {row['n_failed']}"
            )

    # ------------------------- streamed simulate_cohort ----------------------
    stream_rows = []
    tmp = None
    store_dir = args.store_dir
    if stream_sizes and store_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="twinjax_bench_")
        store_dir = Path(tmp.name)
    prev = None
    for n in stream_sizes:
        row = dict(method="ensemble_stream", n=n, path="twinjax.simulate_cohort -> Zarr")
        if prev is not None:
            pred = prev[1] * n / prev[0]
            if pred > args.stream_budget_s:
                row["skipped"] = (
                    f"predicted {pred:.0f} s > stream budget {args.stream_budget_s:.0f} s"
                )
                con.print(f"  [yellow]skip[/] stream N={n}: {row['skipped']}")
                stream_rows.append(row)
                continue
        store = Path(store_dir) / f"cohort_{n}.zarr"
        cmd = [
            sys.executable,
            __file__,
            "--_stream-child",
            str(n),
            str(store),
            "--memory-budget-gib",
            str(args.memory_budget_gib),
        ]
        if args.float32:
            cmd.append("--float32")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import psutil

        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except Exception:
                pass
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            row["error"] = (stderr or stdout)[-2000:]
            con.print(f"  [red]stream N={n} failed[/]: {row['error'][-400:]}")
            stream_rows.append(row)
            break
        res = json.loads(line[0][len("RESULT ") :])
        row.update(res)
        row.update(
            process_wall_s=wall,
            peak_rss_gib=max(res["self_peak_rss_gib"] or 0.0, peak / 2**30),
            peak_rss_gib_psutil_sampled=peak / 2**30,
            patients_per_s=n / res["wall_s"],
            per_patient_s=res["wall_s"] / n,
            note="wall_s includes compilation (one compile per process)",
        )
        prev = (n, res["wall_s"])
        stream_rows.append(row)
        con.print(
            f"  stream N={n:>8d}  {res['wall_s']:8.1f} s  {n / res['wall_s']:9.0f} "
            f"patients/s  peak RSS {row['peak_rss_gib']:.2f} GiB  fail {res['n_failed']}"
        )
        import shutil

        shutil.rmtree(store, ignore_errors=True)
    if tmp is not None:
        tmp.cleanup()

    # ------------------------------ summary -----------------------------------
    def at(name, n):
        return next(
            (r for r in rows if r["method"] == name and r["n"] == n and "best_s" in r), None
        )

    common = [n for n in sizes if at("ensemble", n) and at("diffrax", n)]
    summary = {}
    if common:
        n = common[-1]
        summary["ensemble_vs_diffrax_speedup"] = (
            at("diffrax", n)["best_s"] / at("ensemble", n)["best_s"]
        )
        summary["ensemble_vs_diffrax_speedup_n"] = n
        summary["ensemble_vs_diffrax_speedup_note"] = (
            "like for like: both through twinjax.simulate on one device (one core)"
        )
    ens = [r for r in rows if r["method"] == "ensemble" and "best_s" in r]
    allc = [r for r in rows if r["method"] == "ensemble_all_cores" and "best_s" in r]
    n_dev = len(jax.devices())
    if allc:
        best_pp = min(r["per_patient_s"] for r in allc)
        summary["ensemble_vs_scipy_speedup"] = scipy_row["per_patient_s"] / best_pp
        summary["ensemble_vs_scipy_speedup_note"] = (
            f"SciPy LSODA loop per-patient time (one process, one core) / best Ensemble "
            f"per-patient time through simulate_cohort in memory on all {n_dev} CPU "
            f"cores (one JAX device per core)"
        )
        summary["ensemble_all_cores_patients_per_s"] = max(r["patients_per_s"] for r in allc)
        summary["n_devices"] = n_dev
        if common:
            n = common[-1]
            if at("ensemble_all_cores", n):
                summary["ensemble_all_cores_vs_diffrax_speedup"] = (
                    at("diffrax", n)["best_s"] / at("ensemble_all_cores", n)["best_s"]
                )
    mat = [r for r in rows if r["method"] == "ensemble_matched" and "best_s" in r]
    if mat:
        best_pp = min(r["per_patient_s"] for r in mat)
        summary["ensemble_vs_scipy_speedup_same_rtol"] = summary.get("ensemble_vs_scipy_speedup")
        summary["ensemble_vs_scipy_speedup"] = scipy_row["per_patient_s"] / best_pp
        summary["ensemble_vs_scipy_speedup_note"] = (
            f"at equal accuracy: SciPy LSODA loop per-patient time (one process, one core, "
            f"rtol {RTOL:g}) / best per-patient time of Ensemble(rtol="
            f"{acc['ensemble_matched']['rtol']:g}), the loosest tolerance whose max relative "
            f"error on the subset ({acc['ensemble_matched']['max_rel_err']:.2e}) is no larger "
            f"than SciPy's ({acc['scipy_lsoda']['max_rel_err']:.2e}), through simulate_cohort "
            f"in memory on all {n_dev} CPU cores; ensemble_vs_scipy_speedup_same_rtol uses "
            f"rtol {RTOL:g} on both sides"
        )
        summary["ensemble_matched_rtol"] = acc["ensemble_matched"]["rtol"]
        summary["ensemble_matched_max_rel_err"] = acc["ensemble_matched"]["max_rel_err"]
    if ens:
        best_pp = min(r["per_patient_s"] for r in ens)
        summary["ensemble_vs_scipy_speedup_1device"] = scipy_row["per_patient_s"] / best_pp
        if "ensemble_vs_scipy_speedup" not in summary:
            summary["ensemble_vs_scipy_speedup"] = summary["ensemble_vs_scipy_speedup_1device"]
        # compile time does not depend on N; at large N first - best is mostly noise
        summary["compile_s"] = ens[0]["compile_s"]
        summary["compile_s_n"] = ens[0]["n"]
        summary["ensemble_patients_per_s"] = max(r["patients_per_s"] for r in ens)
    dif = [r for r in rows if r["method"] == "diffrax" and "best_s" in r]
    if dif:
        summary["diffrax_compile_s"] = dif[0]["compile_s"]
        summary["diffrax_patients_per_s"] = max(r["patients_per_s"] for r in dif)
    summary["scipy_patients_per_s"] = scipy_row["patients_per_s"]
    summary["ensemble_max_rel_err"] = acc["ensemble"]["max_rel_err"]
    summary["ensemble_all_cores_max_rel_err"] = acc["ensemble_all_cores"]["max_rel_err"]
    summary["diffrax_max_rel_err"] = acc["diffrax"]["max_rel_err"]
    summary["scipy_max_rel_err"] = acc["scipy_lsoda"]["max_rel_err"]
    big = [r for r in stream_rows if r["n"] == 1_000_000 and "peak_rss_gib" in r]
    summary["peak_rss_gib_1e6"] = big[0]["peak_rss_gib"] if big else None
    if not big:
        summary["peak_rss_gib_1e6_note"] = "the 1e6 streamed run was not done (see stream rows)"
    done_stream = [r for r in stream_rows if "wall_s" in r]
    if done_stream:
        summary["largest_streamed_n"] = done_stream[-1]["n"]
        summary["largest_streamed_wall_s"] = done_stream[-1]["wall_s"]
        summary["largest_streamed_peak_rss_gib"] = done_stream[-1]["peak_rss_gib"]
    summary["skipped"] = {
        **skipped,
        **{f"stream_{r['n']}": r["skipped"] for r in stream_rows if "skipped" in r},
    }
    summary["wall_s"] = time.perf_counter() - t_start
    targets = dict(
        ensemble_vs_diffrax_speedup=">= 10",
        ensemble_vs_scipy_speedup=">= 300",
        peak_rss_gib_1e6="< 4",
        compile_s="< 20",
    )
    payload = dict(
        benchmark="cohort_throughput",
        protocol=dict(
            model="couple({pk: two_compartment('first_order'), pd: IndirectResponse(3)}, "
            "[Link('pk.C', 'pd.C')])",
            regimen=f"Regimen.repeat({DOSE}, 'pk.depot', every={EVERY}, n={NDOSE})",
            times="linspace(0, 168, 169)",
            population=f"Population.from_cv(model, {CV})",
            seed="jax.random.key(0)",
            rtol=RTOL,
            atol=ATOL,
            reference=f"solvers.Diffrax(rtol={REF_RTOL}, atol={REF_ATOL}) on the first "
            f"{max(ref_n, scipy_n)} patients",
            error="rel_err: max over patients of max_t|a-b|/max_t|b|; pointwise_rel_err: "
            "max |a-b| / max(|b|, 1e-3 max_t|b|); outputs pk.C and pd.R",
            scipy="solve_ivp(method='LSODA', rtol=1e-6, atol=1e-9) per patient, dose to dose "
            "with the bolus added at each dose, t_eval hourly; hand-written numpy rhs",
            timing="first call vs best of steady calls (block_until_ready); compile_s = first - "
            "best. Streamed runs: one process per size, wall time includes compilation",
        ),
        quick=args.quick,
        dtype=dtype_name,
        machine=info,
        targets=targets,
        summary=summary,
        accuracy=acc,
        rows=rows,
        stream_rows=stream_rows,
    )
    path = C.write_json("cohort_throughput.json", payload, args.out)
    con.print(f"wrote {path}")
    con.print(
        C.table(
            "summary",
            ["key", "value"],
            [(k, v) for k, v in summary.items() if not isinstance(v, dict)],
        )
    )
    if not args.no_plot:
        plot(rows, stream_rows, args.out / "cohort_throughput.png", dtype_name, info)
    return payload


def plot(rows, stream_rows, path, dtype_name, info):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = (("ensemble", "o-"), ("ensemble_all_cores", "D-"), ("ensemble_matched", "v-"),
              ("diffrax", "s--"))  # fmt: skip
    for name, style in styles:
        pts = [(r["n"], r["patients_per_s"]) for r in rows if r["method"] == name and "best_s" in r]
        if pts:
            where = (
                "simulate, in memory, 1 device"
                if name in ("ensemble", "diffrax")
                else "simulate_cohort, in memory, all cores"
            )
            if name == "ensemble_matched":
                where += ", rtol matched to SciPy's error"
            ax.loglog(*zip(*pts), style, label=f"{name} ({where})")
    pts = [(r["n"], r["patients_per_s"]) for r in stream_rows if "patients_per_s" in r]
    if pts:
        ax.loglog(*zip(*pts), "^-", label="ensemble (simulate_cohort, Zarr, incl. compile)")
    sp = [r for r in rows if r["method"] == "scipy_lsoda"]
    if sp:
        ax.axhline(sp[0]["patients_per_s"], color="k", ls=":", label="SciPy LSODA loop")
    ax.set_xlabel("cohort size N (patients)")
    ax.set_ylabel("throughput (patients / s)")
    ax.set_title(
        f"2-cmt oral PK + IDR3, 14 doses, 169 saves, {dtype_name}\n"
        f"{info['jax_devices'][0]}, {info['cpu_count']} CPU cores"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
