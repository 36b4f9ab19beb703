"""Lorenz ensemble benchmark (protocol of the DiffEqGPU paper).

Utkarsh, Churavy, Ma, Rackauckas et al., "Automated translation and accelerated
solving of differential equations on multiple GPU platforms", Computer Methods in
Applied Mechanics and Engineering (2024): Lorenz system with sigma = 10,
beta = 8/3, rho spread uniformly over [0, 21] across the ensemble, u0 = (1, 0, 0),
t in [0, 1], final state only; (a) fixed dt = 1e-3 (1000 steps) and (b) adaptive
rtol = atol = 1e-8; N = 8 * 4^k trajectories.

Methods:

- ``ensemble_rk4``      twinjax ``solvers.Ensemble("rk4", dt=1e-3)`` (fixed step)
- ``diffrax_tsit5_fixed`` vmapped ``diffrax.Tsit5`` with ``ConstantStepSize`` (the
  paper's fixed-step method)
- ``limit_proxy_rk4``  classical RK4 written out by hand on three ``(N,)`` arrays in a
  ``lax.fori_loop`` (no status, saves or step control): the limit proxy, what the
  arithmetic costs; ``engine_overhead_vs_limit_proxy`` is ensemble_rk4 / this
- ``ensemble_rk4_unblocked`` the same as ``ensemble_rk4`` with ``block=0`` (the whole
  batch in one loop instead of blocks of ``Ensemble.block_size`` patients: 4,096 for
  the lean fixed-step loop on 3 states)
- ``diffrax_rk4_fixed`` vmapped diffrax classical RK4 (an ``AbstractERK`` with the
  RK4 ``ButcherTableau``), the like-for-like comparison of ``ensemble_rk4``
- ``ensemble_tsit5`` / ``ensemble_dopri5``  ``solvers.Ensemble`` adaptive
- ``diffrax_tsit5_adaptive`` vmapped ``diffrax.Tsit5`` + ``PIDController``

Diffrax is written as its FAQ recommends: the whole program under one ``jax.jit``,
``jax.vmap`` over ``diffeqsolve``, ``throw=False``, ``SaveAt(t1=True)``, timed with
``jax.block_until_ready``. The Ensemble solver is called through
``solver.integrate(f, t0, t1, y0, None, args, model)`` (final state only, no save
loop; the same call ``twinjax.simulate`` makes per segment), jitted the same way; the
``ensemble_rk4_simulate`` row goes through the public ``twinjax.simulate`` with save
time ``[1.0]`` (up to N = 65,536) to show that path's overhead:
``simulate_overhead_vs_limit_proxy`` (and ``_cpu``, the ratio of process CPU times)
is that row / the limit proxy. ``twinjax.simulate`` passes no infusion rates when the
regimen has no infusions; the ``integrate`` rows do the same (``(p, None)``).

Run: ``python benchmarks/lorenz_ensemble.py`` (full), ``--quick`` (< 1 min).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N only (smoke test, < 1 min)")
    ap.add_argument("--max-n", type=int, default=2**20, help="largest ensemble size")
    ap.add_argument("--min-n", type=int, default=1, help="smallest ensemble size")
    ap.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    ap.add_argument("--repeats", type=int, default=3, help="steady-state repeats per point")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=840.0,
        help="wall-clock budget of the whole run; larger N are skipped beyond it",
    )
    ap.add_argument(
        "--cell-budget-s",
        type=float,
        default=120.0,
        help="skip a (method, N) predicted to take longer than this for one call",
    )
    ap.add_argument("--ref-subset", type=int, default=256)
    ap.add_argument(
        "--single-call-from",
        type=int,
        default=2**19,
        help="from this N on, time one call only (compiled ahead of time where the row "
        "is a jitted function, so that the call is the run alone; else its first call, "
        "compilation included)",
    )
    ap.add_argument(
        "--tsit5-fixed-max-n",
        type=int,
        default=2**17,
        help="largest N for diffrax_tsit5_fixed (the slowest row; the like-for-like "
        "fixed-step comparison is diffrax_rk4_fixed)",
    )
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    ap.add_argument(
        "--name",
        default="lorenz_ensemble.json",
        help="file name of the JSON written under --out (e.g. lorenz_limit_proxy.json for "
        "a run at one N)",
    )
    ap.add_argument(
        "--methods",
        default=None,
        help="comma-separated rows to run (default: all); e.g. "
        "limit_proxy_rk4,ensemble_rk4,ensemble_rk4_unblocked",
    )
    ap.add_argument("--no-plot", action="store_true")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    dtype_name = C.setup_precision(args.float32)

    import diffrax as dfx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import twinjax as tj
    from twinjax.ode import Model, State
    from twinjax.ode._param import real
    from twinjax.solve._engine import vector_field

    con = C.console()
    dtype = jnp.float32 if args.float32 else jnp.float64
    SIGMA, BETA = 10.0, 8.0 / 3.0
    DT, RTOL, ATOL = 1e-3, 1e-8, 1e-8

    class Lorenz(Model):
        """The Lorenz (1963) system."""

        reference = "Lorenz 1963"

        @property
        def states(self):  # type: ignore[override]
            return (State("x", "1"), State("y", "1"), State("z", "1"))

        @property
        def params(self):  # type: ignore[override]
            return (real("sigma", SIGMA, "1"), real("rho", 28.0, "1"), real("beta", BETA, "1"))

        def rhs(self, t, y, p, u):
            x, yy, z = y["x"], y["y"], y["z"]
            return {
                "x": p["sigma"] * (yy - x),
                "y": x * (p["rho"] - z) - yy,
                "z": x * yy - p["beta"] * z,
            }

        def init(self, p):
            one = jnp.ones_like(p["rho"])
            return {"x": one, "y": 0.0 * one, "z": 0.0 * one}

        def observe(self, t, y, p):
            return {}

    model = Lorenz()
    f = vector_field(model)

    # ---------------- twinjax Ensemble: solver.integrate, jitted ----------------------
    def ensemble_fn(solver):
        @jax.jit
        def run(rho):
            n = rho.shape[0]
            p = {
                "sigma": jnp.full((n,), SIGMA, dtype),
                "rho": rho,
                "beta": jnp.full((n,), BETA, dtype),
            }
            y0 = jnp.stack(
                [jnp.ones((n,), dtype), jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)], -1
            )
            t0 = jnp.zeros((n,), dtype)
            t1 = jnp.ones((n,), dtype)
            # no infusion rates (None), as twinjax.simulate passes when nothing is infused
            _, y1, status = solver.integrate(f, t0, t1, y0, None, (p, None), model)
            return y1, status

        return run

    def ensemble_simulate_fn(solver):
        ts = jnp.array([1.0], dtype)

        def run(rho):
            r = tj.simulate(model, {"rho": rho}, None, ts, solver=solver, dtype=dtype, check=False)
            y1 = jnp.stack([r.states[s][:, -1] for s in ("x", "y", "z")], -1)
            return y1, r.status

        return run

    # ---------------- the limit proxy: RK4 written out on three (N,) arrays ------------
    def limit_proxy_fn():
        """Classical RK4 by hand: ``lax.fori_loop`` over 1000 steps of three ``(N,)``
        arrays, no status, events, saves or step control. What the hardware needs for
        this method; the engine's overhead is the difference to ``ensemble_rk4``."""
        n_steps = int(round(1.0 / DT))

        def rhs(x, y, z, rho):
            return SIGMA * (y - x), x * (rho - z) - y, x * y - BETA * z

        @jax.jit
        def run(rho):
            h = jnp.asarray(DT, dtype)

            def step(_, u):
                x, y, z = u
                a = rhs(x, y, z, rho)
                b = rhs(x + 0.5 * h * a[0], y + 0.5 * h * a[1], z + 0.5 * h * a[2], rho)
                c = rhs(x + 0.5 * h * b[0], y + 0.5 * h * b[1], z + 0.5 * h * b[2], rho)
                d = rhs(x + h * c[0], y + h * c[1], z + h * c[2], rho)
                return tuple(
                    v + h / 6 * (a[i] + 2 * b[i] + 2 * c[i] + d[i]) for i, v in enumerate(u)
                )

            one = jnp.ones_like(rho)
            x, y, z = jax.lax.fori_loop(0, n_steps, step, (one, 0 * one, 0 * one))
            return jnp.stack([x, y, z], -1), jnp.zeros(rho.shape, jnp.int32)

        return run

    # ---------------- diffrax, vmapped as its FAQ recommends ---------------------------
    class RK4(dfx.AbstractERK):
        """Classical RK4 (fixed step only: no error estimate)."""

        tableau = dfx.ButcherTableau(
            c=np.array([0.5, 0.5, 1.0]),
            b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
            b_error=np.zeros(4),
            a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
        )
        interpolation_cls = dfx.ThirdOrderHermitePolynomialInterpolation.from_k

        def order(self, terms):
            return 4

    def lorenz_vf(t, u, a):
        rho = a
        x, y, z = u[0], u[1], u[2]
        return jnp.stack([SIGMA * (y - x), x * (rho - z) - y, x * y - BETA * z])

    term = dfx.ODETerm(lorenz_vf)

    def diffrax_fn(solver, controller, dt0, max_steps):
        u0 = jnp.array([1.0, 0.0, 0.0], dtype)

        @jax.jit
        def run(rho):
            def one(r):
                sol = dfx.diffeqsolve(
                    term,
                    solver,
                    0.0,
                    1.0,
                    dt0,
                    u0,
                    args=r,
                    saveat=dfx.SaveAt(t1=True),
                    stepsize_controller=controller,
                    max_steps=max_steps,
                    throw=False,
                )
                ok = sol.result == dfx.RESULTS.successful
                return sol.ys[-1], jnp.where(ok, 0, 1).astype(jnp.int32)

            return jax.vmap(one)(rho)

        return run

    methods = {
        "limit_proxy_rk4": dict(
            kind="fixed",
            fn=limit_proxy_fn(),
            desc="hand-written structure-of-arrays RK4 (lax.fori_loop over three (N,) "
            "arrays, dt=1e-3): the limit proxy",
        ),
        "ensemble_rk4": dict(
            kind="fixed",
            fn=ensemble_fn(tj.solvers.Ensemble("rk4", dt=DT)),
            desc="twinjax solvers.Ensemble('rk4', dt=1e-3) via solver.integrate",
        ),
        "ensemble_rk4_unblocked": dict(
            kind="fixed",
            fn=ensemble_fn(tj.solvers.Ensemble("rk4", dt=DT, block=0)),
            desc="twinjax solvers.Ensemble('rk4', dt=1e-3, block=0) via solver.integrate "
            "(one loop over the whole batch)",
        ),
        "diffrax_rk4_fixed": dict(
            kind="fixed",
            fn=diffrax_fn(RK4(), dfx.ConstantStepSize(), DT, 1100),
            desc="vmapped diffrax RK4 (ButcherTableau ERK), ConstantStepSize dt0=1e-3",
        ),
        "diffrax_tsit5_fixed": dict(
            kind="fixed",
            fn=diffrax_fn(dfx.Tsit5(), dfx.ConstantStepSize(), DT, 1100),
            desc="vmapped diffrax Tsit5, ConstantStepSize dt0=1e-3",
        ),
        "ensemble_tsit5": dict(
            kind="adaptive",
            fn=ensemble_fn(tj.solvers.Ensemble("tsit5", rtol=RTOL, atol=ATOL)),
            desc="twinjax solvers.Ensemble('tsit5', rtol=atol=1e-8) via solver.integrate",
        ),
        "ensemble_dopri5": dict(
            kind="adaptive",
            fn=ensemble_fn(tj.solvers.Ensemble("dopri5", rtol=RTOL, atol=ATOL)),
            desc="twinjax solvers.Ensemble('dopri5', rtol=atol=1e-8) via solver.integrate",
        ),
        "diffrax_tsit5_adaptive": dict(
            kind="adaptive",
            fn=diffrax_fn(dfx.Tsit5(), dfx.PIDController(rtol=RTOL, atol=ATOL), None, 100_000),
            desc="vmapped diffrax Tsit5 + PIDController(rtol=atol=1e-8), dt0 automatic",
        ),
        "ensemble_rk4_simulate": dict(
            kind="fixed",
            fn=ensemble_simulate_fn(tj.solvers.Ensemble("rk4", dt=DT)),
            max_n=2**16,
            desc="twinjax.simulate(model, {'rho': rhos}, None, [1.0], solver=Ensemble('rk4'))",
        ),
    }
    # diffrax's dt0=None picks the first step like Hairer; the reference is diffrax
    # Dopri8 rtol = atol = 1e-12 on a subset of the same rho values (1e-6 in float32,
    # whose rounding 1e-12 is far below: the controller would never accept a step)
    ref_tol = 1e-6 if args.float32 else 1e-12
    ref_fn = diffrax_fn(
        dfx.Dopri8(), dfx.PIDController(rtol=ref_tol, atol=ref_tol), None, 1_000_000
    )

    if args.quick:
        sizes = [8, 32, 128, 512]
        repeats = min(args.repeats, 2)
    else:
        sizes = [8 * 4**k for k in range(10)]
        repeats = args.repeats
    sizes = [n for n in sizes if args.min_n <= n <= args.max_n]
    if not args.quick and args.max_n not in sizes:
        sizes.append(args.max_n)  # 2^20 itself is not of the form 8 * 4^k
    methods["diffrax_tsit5_fixed"]["max_n"] = args.tsit5_fixed_max_n
    if args.methods:
        chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in methods]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; choose from {list(methods)}")
        methods = {k: v for k, v in methods.items() if k in chosen}

    info = C.machine_info()
    con.rule("Lorenz ensemble (DiffEqGPU protocol)")
    con.print(f"devices: {info['jax_devices']}  dtype: {dtype_name}  sizes: {sizes}")
    t_start = time.perf_counter()
    rows = []
    last = {}  # method -> (n, best_s) for the time prediction
    skipped_methods = {}
    for n in sizes:
        rho = jnp.linspace(0.0, 21.0, n, dtype=dtype)
        m = min(args.ref_subset, n)
        idx = np.unique(np.linspace(0, n - 1, m).round().astype(int))
        ref, ref_status = ref_fn(rho[idx])
        ref = np.asarray(ref, np.float64)
        assert np.all(np.asarray(ref_status) == 0)
        for name, spec in methods.items():
            row = dict(method=name, kind=spec["kind"], n=n)
            if n > spec.get("max_n", 10**12):
                continue
            elapsed = time.perf_counter() - t_start
            if name in skipped_methods:
                row["skipped"] = skipped_methods[name]
                rows.append(row)
                continue
            pred = None
            if name in last:
                n0, b0 = last[name]
                pred = b0 * n / n0
            if elapsed > args.budget_s:
                row["skipped"] = f"run budget of {args.budget_s:.0f} s spent ({elapsed:.0f} s)"
            elif pred is not None and pred > args.cell_budget_s:
                row["skipped"] = (
                    f"predicted {pred:.0f} s per call > cell budget {args.cell_budget_s:.0f} s"
                )
            elif pred is not None and elapsed + 2 * pred > args.budget_s:
                row["skipped"] = (
                    f"predicted {pred:.0f} s per call would exceed the run "
                    f"budget ({elapsed:.0f} of {args.budget_s:.0f} s used)"
                )
            if "skipped" in row:
                skipped_methods[name] = row["skipped"]
                rows.append(row)
                con.print(f"  [yellow]skip[/] {name:24s} N={n:>8d}: {row['skipped']}")
                continue
            reps = repeats
            if pred is not None and pred * (1 + repeats) > args.cell_budget_s:
                reps = 1
            fn = spec["fn"]
            aot = None  # ahead-of-time compile: (wall s, CPU s)
            if n >= args.single_call_from:
                reps = 0
                if hasattr(fn, "lower"):
                    # one call, compiled ahead of time: its time is the run alone
                    c, w = time.process_time(), time.perf_counter()
                    fn = fn.lower(rho).compile()
                    aot = (time.perf_counter() - w, time.process_time() - c)
            cpu = []  # process CPU time of each call (all threads): robust to other load

            def call(fn=fn):
                c = time.process_time()
                r = jax.block_until_ready(fn(rho))
                cpu.append(time.process_time() - c)
                return r

            (y1, status), first, best, steady = C.time_call(call, repeats=reps)
            cpu_best = min(cpu[1:]) if len(cpu) > 1 else cpu[0]
            last[name] = (n, best)
            y1 = np.asarray(y1, np.float64)
            a = y1[idx]
            err = np.max(np.max(np.abs(a - ref), -1) / np.max(np.abs(ref), -1))
            row.update(
                **C.timing_fields(first, best, steady),
                traj_per_s=n / best,
                max_rel_err=float(err),
                err_subset=len(idx),
                max_abs_err=float(np.max(np.abs(a - ref))),
                n_failed=int(np.sum(np.asarray(status) != 0)),
                peak_rss_gib=C.peak_rss_gib(),
                cpu_best_s=cpu_best,
                load_avg_1min=os.getloadavg()[0],
            )
            if aot is not None:  # the one call was the run alone
                row.update(compile_s=aot[0], compile_cpu_s=aot[1], first_call_s=aot[0] + first)
                row["timing"] = "compiled ahead of time (jit.lower.compile), then one call"
            if spec["kind"] == "fixed":
                row["ns_per_traj_step"] = best / (n * 1000) * 1e9
                row["cpu_ns_per_traj_step"] = cpu_best / (n * 1000) * 1e9
            rows.append(row)
            con.print(
                f"  {name:24s} N={n:>8d}  first {first:8.3f} s  best {best:8.4f} s  "
                f"err {err:.2e}  fail {row['n_failed']}  CPU {cpu_best:.3f} s"
                + (
                    f"  {row['ns_per_traj_step']:.2f} ns/traj/step"
                    if "ns_per_traj_step" in row
                    else ""
                )
            )

    # ------------------------------- summary ------------------------------------
    def at(name, n):
        for r in rows:
            if r["method"] == name and r["n"] == n and "best_s" in r:
                return r
        return None

    def largest_common(a, b):
        ns = [n for n in sizes if at(a, n) and at(b, n)]
        return ns[-1] if ns else None

    summary = {}
    # headline: like for like (classical RK4 on both sides, 1000 steps of dt = 1e-3)
    n_fixed = largest_common("ensemble_rk4", "diffrax_rk4_fixed")
    if n_fixed:
        e, d = at("ensemble_rk4", n_fixed), at("diffrax_rk4_fixed", n_fixed)
        summary["speedup_vs_diffrax_fixed"] = d["best_s"] / e["best_s"]
        summary["speedup_vs_diffrax_fixed_n"] = n_fixed
        summary["speedup_vs_diffrax_fixed_note"] = (
            "ensemble_rk4 vs diffrax RK4 (the same method and steps), dt = 1e-3, at the "
            "largest N both ran"
        )
        summary["ns_per_traj_step_fixed"] = e["ns_per_traj_step"]
        summary["ns_per_traj_step_fixed_diffrax_rk4"] = d["ns_per_traj_step"]
    for ens, key in (
        ("ensemble_rk4", "engine_overhead_vs_limit_proxy"),
        ("ensemble_rk4_unblocked", "engine_overhead_unblocked_vs_limit_proxy"),
        ("ensemble_rk4_simulate", "simulate_overhead_vs_limit_proxy"),
    ):
        n_lim = largest_common(ens, "limit_proxy_rk4")
        if n_lim:
            e, lim = at(ens, n_lim), at("limit_proxy_rk4", n_lim)
            summary[key] = e["best_s"] / lim["best_s"]
            summary[key + "_cpu"] = e["cpu_best_s"] / lim["cpu_best_s"]
            summary[key + "_n"] = n_lim
            summary["ns_per_traj_step_limit_proxy"] = lim["ns_per_traj_step"]
            summary[key + "_note"] = (
                f"{ens} time / the hand-written SoA RK4's, same steps, at the largest N "
                "both ran (1.0 = the engine adds nothing); _cpu: the same ratio of process "
                "CPU time (all threads), less sensitive to other jobs on the machine"
            )
    n_t5 = largest_common("ensemble_rk4", "diffrax_tsit5_fixed")
    if n_t5:
        e, d = at("ensemble_rk4", n_t5), at("diffrax_tsit5_fixed", n_t5)
        summary["speedup_vs_diffrax_tsit5_fixed"] = d["best_s"] / e["best_s"]
        summary["speedup_vs_diffrax_tsit5_fixed_n"] = n_t5
        summary["speedup_vs_diffrax_tsit5_fixed_note"] = (
            "ensemble_rk4 (4 stages/step) vs diffrax Tsit5 fixed step (6 stages/step + "
            "FSAL), the paper's fixed-step method on the diffrax side"
        )
    for ens in ("ensemble_tsit5", "ensemble_dopri5"):
        n_ad = largest_common(ens, "diffrax_tsit5_adaptive")
        if n_ad:
            e, d = at(ens, n_ad), at("diffrax_tsit5_adaptive", n_ad)
            key = (
                "speedup_vs_diffrax_adaptive"
                if ens == "ensemble_tsit5"
                else "speedup_vs_diffrax_adaptive_dopri5"
            )
            summary[key] = d["best_s"] / e["best_s"]
            summary[key + "_cpu"] = d["cpu_best_s"] / e["cpu_best_s"]
            summary[key + "_n"] = n_ad
    summary["max_rel_err"] = {
        name: max(
            (r["max_rel_err"] for r in rows if r["method"] == name and "max_rel_err" in r),
            default=None,
        )
        for name in methods
    }
    summary["largest_n_run"] = {
        name: max((r["n"] for r in rows if r["method"] == name and "best_s" in r), default=None)
        for name in methods
    }
    summary["compile_s"] = {
        name: max(
            (r["compile_s"] for r in rows if r["method"] == name and "compile_s" in r), default=None
        )
        for name in methods
    }
    summary["skipped"] = skipped_methods
    summary["peak_rss_gib"] = C.peak_rss_gib()
    summary["wall_s"] = time.perf_counter() - t_start

    payload = dict(
        benchmark="lorenz_ensemble",
        protocol=dict(
            source="Utkarsh et al. 2024, CMAME (DiffEqGPU): Lorenz ensemble",
            sigma=SIGMA,
            beta=BETA,
            rho="linspace(0, 21, N)",
            u0=[1.0, 0.0, 0.0],
            tspan=[0.0, 1.0],
            save="final state only",
            fixed_dt=DT,
            adaptive_rtol=RTOL,
            adaptive_atol=ATOL,
            sizes=sizes,
            reference=f"diffrax Dopri8, PIDController(rtol=atol={ref_tol:g}), on up to "
            f"{args.ref_subset} evenly spaced rho of each N",
            error="max over the subset of max_k |a_k - ref_k| / max_k |ref_k| (final state)",
            timing="first call (trace+compile+run) vs best of the steady calls; "
            "compile_s = first - best; jax.block_until_ready",
            ensemble_call="solver.integrate(f, t0, t1, y0, None, (p, None), model) under jax.jit "
            "(what twinjax.simulate runs per segment, without the save loop); "
            "ensemble_rk4_simulate uses twinjax.simulate itself",
        ),
        quick=args.quick,
        dtype=dtype_name,
        machine=info,
        methods={k: v["desc"] for k, v in methods.items()},
        summary=summary,
        rows=rows,
        command="python benchmarks/lorenz_ensemble.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        load_avg_at_end=list(os.getloadavg()),
    )
    path = C.write_json(args.name, payload, args.out)
    con.print(f"wrote {path}")
    con.print(
        C.table(
            "summary",
            ["key", "value"],
            [(k, v) for k, v in summary.items() if not isinstance(v, dict)],
        )
    )
    if not args.no_plot:
        plot(rows, methods, args.out / "lorenz_ensemble.png", dtype_name, info)
    return payload


def plot(rows, methods, path, dtype_name, info):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in methods:
        pts = [(r["n"], r["best_s"]) for r in rows if r["method"] == name and "best_s" in r]
        if not pts:
            continue
        ls = "-" if name.startswith("ensemble") else "--"
        ax.loglog(*zip(*pts), ls, marker="o", label=name)
    ax.set_xlabel("ensemble size N (trajectories)")
    ax.set_ylabel("time per solve (s, best of steady calls)")
    ax.set_title(
        f"Lorenz ensemble, t in [0,1], {dtype_name}\n{info['jax_devices'][0]}, "
        f"{info['cpu_count']} CPU cores"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
