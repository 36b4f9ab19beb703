"""Compile time per organ model, on the path its users run.

One row per model: the first call (trace + compile + run) and a second, steady call
of the same program with the same shapes, each timed in CPU seconds of this process
(``time.process_time``) and in wall seconds. The compile cost is
``compile_cpu_s = first_cpu_s - steady_cpu_s`` (trace, lowering and XLA compilation).
XLA's compilation is mostly serial (only the LLVM code generation of its kernels runs
on a small thread pool), so on a quiet machine the wall time is close to this or a
little below; unlike the wall time it does not grow with the load of a shared machine
(the wall ``compile_s = first - steady`` is kept as well).
``under_10s`` is judged on ``compile_cpu_s``. Each row runs a small case (two patients
or cells) so that the run itself is short:

* ``pk2_oral``: ``twinjax.simulate`` of the registered 2-compartment oral PK model,
  100 mg at t = 0, 25 hourly saves, ``solvers.Ensemble`` (the default solver).
* ``pbpk``: ``twinjax.simulate`` of ``MinimalPBPK``, 100 mg oral, 25 hourly saves.
* ``uva_padova``: ``glucose.simulate_closed_loop``, adult#001 and #002, BasalBolus,
  daily meals, 1 day (the closed loop of ``benchmarks/glucose_cohort.py``).
* ``circulation``: ``circulation.to_periodic_steady_state`` of two ``Circulation``
  twins (``Ensemble("dopri5")``, the path of ``benchmarks/circulation_twins.py``).
* ``ord_endo``: ``ep.pace(ep.ORd(), ..., record="last")``, 1 beat (the population
  path of ``benchmarks/ep_population.py`` and ``ord_vs_myokit.py``).
* ``cipa_ord``: ``ep.pace_cipa(ep.CiPAORd(), ...)``, 1 beat (its own loop: the hERG
  Markov block has an exponential step of its own).

Target (issue #16): every catalogue model under 10 s on this machine. The machine is
a shared 2-core CPU: the load average is recorded before and after the run and with
each row (``load_1min``: the 1-minute load average after its two calls). No persistent
compilation cache is enabled here (``jax_compilation_cache_dir`` is recorded).

Run: ``python benchmarks/compile_time.py [--only NAME ...]``; writes
benchmarks/results/compile_time.json (with ``--only``, the other models' rows are kept
as they were, each row with the date it was ``measured`` and its load).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def cases():
    import jax.numpy as jnp

    import twinjax as tj
    from twinjax.models import ep
    from twinjax.models import glucose as gl
    from twinjax.models._registry import get_model

    def pk2():
        m = get_model("pk2_oral")
        times = jnp.linspace(0.0, 24.0, 25)
        reg = tj.Regimen([tj.Dose(100.0, "depot", 0.0)])
        return lambda: tj.simulate(m, {}, reg, times)

    def pbpk():
        m = get_model("pbpk")
        times = jnp.linspace(0.0, 24.0, 25)
        reg = tj.Regimen([tj.Dose(100.0, "lumen", 0.0)])
        return lambda: tj.simulate(m, {}, reg, times)

    def uva():
        names = ["adult#001", "adult#002"]
        p, q = gl.patient_params(names), gl.therapy_params(names)
        ctrl = gl.BasalBolus(CR=q["CR"], CF=q["CF"], target=140.0)
        return lambda: gl.simulate_closed_loop(p, ctrl, meals=gl.daily_meals(1))

    def circ():
        from twinjax.models.circulation import Circulation, to_periodic_steady_state

        m = Circulation()
        p = {"HR": jnp.asarray([70.0, 80.0])}
        ens = tj.solvers.Ensemble("dopri5", rtol=1e-6, atol=1e-6)
        return lambda: to_periodic_steady_state(m, p, ens, tol=1e-3, max_beats=200).metrics

    def ord_():
        m = ep.ORd()
        p = {"GKr": jnp.asarray([0.046, 0.04])}
        return lambda: ep.pace(m, p, 1, record="last").biomarkers

    def cipa():
        m = ep.CiPAORd()
        p = {"BCL": jnp.asarray([1000.0, 1000.0])}
        return lambda: ep.pace_cipa(m, p, 1).biomarkers

    return dict(
        pk2_oral=pk2, pbpk=pbpk, uva_padova=uva, circulation=circ, ord_endo=ord_, cipa_ord=cipa
    )


def measure(fn) -> dict:
    """CPU and wall seconds of the first call of ``fn`` and of a second, steady one."""
    c0, w0 = time.process_time(), time.perf_counter()
    C.block(fn())
    c1, w1 = time.process_time(), time.perf_counter()
    C.block(fn())
    c2, w2 = time.process_time(), time.perf_counter()
    first_cpu, steady_cpu = c1 - c0, c2 - c1
    return dict(
        compile_cpu_s=max(first_cpu - steady_cpu, 0.0),
        first_cpu_s=first_cpu,
        steady_cpu_s=steady_cpu,
        **C.timing_fields(w1 - w0, w2 - w1, [w2 - w1]),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="rows to run (default: all)")
    a = ap.parse_args(argv)
    import jax

    C.setup_precision(False)
    all_cases = cases()
    names = a.only or list(all_cases)
    unknown = [n for n in names if n not in all_cases]
    if unknown:
        raise SystemExit(f"--only {unknown}: unknown; choose from {sorted(all_cases)}")
    load_before = os.getloadavg()
    rows = []
    for name in names:
        row = dict(model=name, **measure(all_cases[name]()), load_1min=os.getloadavg()[0])
        row["under_10s"] = row["compile_cpu_s"] < 10.0
        rows.append(row)
        print(
            f"{name}: compile {row['compile_cpu_s']:.1f} CPU s (first {row['first_cpu_s']:.1f}, "
            f"steady {row['steady_cpu_s']:.2f}); wall first {row['first_call_s']:.1f} s, "
            f"steady {row['best_s']:.2f} s; load {row['load_1min']:.1f}"
        )
    kept = []
    path = C.RESULTS / "compile_time.json"
    if a.only and path.exists():  # the other models' rows stay as they were measured
        import json

        old = json.loads(path.read_text())
        kept = [r for r in old.get("rows", []) if r.get("model") not in names]
        for r in kept:
            r.setdefault("measured", old.get("machine", {}).get("date"))
    date = C.machine_info().get("date")
    for r in rows:
        r["measured"] = date
    payload = dict(
        benchmark="compile_time",
        description=__doc__,
        rows=[*kept, *rows],
        target_s=10.0,
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        compilation_cache_dir=jax.config.jax_compilation_cache_dir,
        machine=C.machine_info(),
    )
    print(C.write_json("compile_time.json", payload))
    return payload


if __name__ == "__main__":
    main()
