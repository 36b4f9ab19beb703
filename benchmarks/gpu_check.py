"""GPU results against CPU results: the same programs on both backends, one process.

Runs (float64) the PK/PD cohort of ``cohort_throughput.py`` (2-compartment oral PK with
an indirect-response PD, 200 mg q12h x 14, 169 hourly saves) with ``Ensemble`` and
the stiff cohort's TMDD model with Rodas5P on the default device and on the CPU, and
a FOCE-I-style batched MAP fit of theophylline; writes the largest relative
differences and the devices to ``gpu_check.json``. The tolerance a result must meet is
the solvers' own (rtol 1e-6): two backends may round differently, so results agree to
the integration tolerance, not bitwise. Exit status 1 if a check fails.

    python benchmarks/gpu_check.py [--n 4096] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def rel_diff(a, b):
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.maximum(np.abs(b), 1e-8 * np.nanmax(np.abs(b)))
    return float(np.nanmax(np.abs(a - b) / scale))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="patients per cohort")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest relative difference")
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    a = ap.parse_args(argv)
    C.setup_precision(False)
    import jax
    import numpy as np

    import twinjax as tj
    from twinjax.models import pd, pk

    cpu = jax.devices("cpu")[0]
    dev = jax.devices()[0]
    rows = []

    def both(name, fn):
        out = {}
        for label, d in (("device", dev), ("cpu", cpu)):
            with jax.default_device(d):
                t = time.perf_counter()
                r = fn()
                r = jax.tree.map(np.asarray, r)
                out[label] = (r, time.perf_counter() - t)
        diffs = jax.tree.leaves(jax.tree.map(rel_diff, out["device"][0], out["cpu"][0]))
        d = max(diffs) if diffs else 0.0
        rows.append(
            dict(
                check=name,
                max_rel_diff=d,
                ok=bool(d <= a.tol),
                device_s=out["device"][1],
                cpu_s=out["cpu"][1],
            )
        )
        print(f"{name}: max relative difference {d:.3g} ({'ok' if d <= a.tol else 'FAIL'})")

    # 1. the PK/PD cohort (Ensemble, adaptive Tsit5)
    model = tj.couple(
        {"pk": pk.two_compartment("first_order"), "pd": pd.IndirectResponse(3)},
        [tj.Link("pk.C", "pd.C")],
    )
    reg = tj.Regimen.repeat(200.0, "pk.depot", every=12.0, n=14)
    ts = np.linspace(0.0, 168.0, 169)
    pop = tj.Population.from_cv(model, {"pk.CL": 0.3, "pk.V": 0.25, "pk.KA": 0.4, "pd.EC50": 0.3})
    cohort = pop.sample(jax.random.key(0), a.n)
    params = {k: np.asarray(v) for k, v in cohort.params.items()}

    def pkpd():
        r = tj.simulate(model, params, reg, ts, solver=tj.solvers.Ensemble(rtol=1e-6, atol=1e-9))
        return {k: r.outputs[k] for k in ("pk.C", "pd.R")}, r.status

    both("pkpd_cohort_ensemble_tsit5", lambda: pkpd()[0])

    # 2. a stiff model with the batched Rosenbrock method (stiff_cohort.py's TMDD)
    from twinjax.models.tmdd import TMDD

    m2 = TMDD()
    p2 = tj.Population.from_cv(
        m2, {"CL": 0.3, "V": 0.3, "KON": 0.3, "KDEG": 0.3, "R0": 0.3}, typical={"KON": 10.0}
    )
    c2 = {k: np.asarray(v) for k, v in p2.sample(jax.random.key(0), a.n).params.items()}
    r2 = tj.Regimen.repeat(300.0, "central", every=168.0, n=2)

    def stiff():
        r = tj.simulate(
            m2,
            c2,
            r2,
            np.linspace(0.0, 336.0, 57),
            solver=tj.solvers.Ensemble("rodas5p", rtol=1e-6, atol=1e-9),
        )
        return {k: r.outputs[k] for k in ("C", "R", "RC")}

    both("tmdd_cohort_rodas5p", stiff)

    # 3. batched MAP fits (theophylline, forward-mode Jacobians through the solver)
    ds = tj.data.datasets.theophylline()
    oral = pk.one_compartment("first_order")
    prior = tj.Population(
        oral, typical={"KA": 1.5, "CL": 2.8, "V": 32.0}, omega={"KA": 0.4, "CL": 0.07, "V": 0.02}
    )

    def mapfit():
        f = tj.calibrate.fit_individual(
            oral, ds, prior, tj.calibrate.ErrorModel("additive", add=0.7)
        )
        return {"etas": f.etas, "ipred": f.ipred}

    both("theophylline_map_fit", mapfit)

    payload = dict(
        benchmark="gpu_check",
        device=str(dev),
        device_kind=getattr(dev, "device_kind", ""),
        backend=jax.default_backend(),
        n=a.n,
        tolerance=a.tol,
        checks=rows,
        all_ok=all(r["ok"] for r in rows),
        machine=C.machine_info(),
    )
    path = C.write_json("gpu_check.json", payload, a.out)
    print(f"wrote {path}")
    return 0 if payload["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
