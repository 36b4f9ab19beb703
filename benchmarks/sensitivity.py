"""Sobol' sensitivity of a PK/PD endpoint: the whole Saltelli design as one cohort.

Model: 2-compartment oral PK (first-order absorption) driving a Jusko type-3
indirect response (stimulation of production), coupled by ``Link("pk.C", "pd.C")``
(the model of ``cohort_throughput.py``). Regimen: 200 mg into ``pk.depot`` every 12 h,
14 doses; saves hourly over the last day (144..168 h, 25 times). Endpoint: the peak
response on day 7, ``Endpoint("Rmax_day7", "cmax", output="pd.R", window=(144, 168))``.

Parameters varied (uniform, +-50 % around the model's defaults): ``pk.CL, pk.V,
pk.KA, pd.KOUT, pd.EMAX, pd.EC50``; k = 6. Design: ``n`` base samples (default
16,384 = 2^14, the first power of two >= 10,000), ``n (k + 2)`` = 131,072 runs.
Solver ``solvers.Ensemble(rtol=1e-6, atol=1e-9)``, float64, one CPU device.

Timed (wall, ``time.perf_counter``):

- ``batched``: ``twinjax.sensitivity.sobol`` end to end (design, ONE
  ``twinjax.simulate`` call on all runs, endpoint, estimators, 1,000 bootstrap
  resamples): the first call (with compilation) and a second, compiled call.
- ``baseline``: the same model, solver and endpoint evaluated one sample at a time
  (``twinjax.simulate`` with scalar parameters, compiled once, then a Python loop, as
  a per-row loop driving SALib would run it) on the first ``--baseline-n`` rows of
  the design, extrapolated linearly to all runs. The loop's endpoint values are
  compared with the batched ones on those rows.
- ``salib``: ``SALib.analyze.sobol.analyze`` on the same outputs (its row order), the
  same number of resamples and the same seed: its time, and the largest difference
  from our indices and interval half-widths.

Run: ``python benchmarks/sensitivity.py`` (full, a few minutes on 2 cores), ``--quick``.
Writes ``benchmarks/results/sensitivity.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DOSE, EVERY, NDOSE = 200.0, 12.0, 14
VARIED = ("pk.CL", "pk.V", "pk.KA", "pd.KOUT", "pd.EMAX", "pd.EC50")
RTOL, ATOL = 1e-6, 1e-9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 1024, short baseline")
    ap.add_argument("--n", type=int, default=16384, help="base samples (a power of two)")
    ap.add_argument("--baseline-n", type=int, default=300, help="rows run one at a time")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1, help="not 0: SALib reads seed 0 as no seed")
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.baseline_n = 1024, 50
    dtype_name = C.setup_precision(False)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from SALib.analyze import sobol as salib_sobol

    import twinjax as tj
    from twinjax.models import pd, pk
    from twinjax.trial import Endpoint

    con = C.console()
    info = C.machine_info()
    load_start = os.getloadavg()
    model = tj.couple(
        {"pk": pk.two_compartment("first_order"), "pd": pd.IndirectResponse(3)},
        [tj.Link("pk.C", "pd.C")],
    )
    regimen = tj.Regimen.repeat(DOSE, "pk.depot", every=EVERY, n=NDOSE)
    times = np.linspace(144.0, 168.0, 25)
    endpoint = Endpoint("Rmax_day7", "cmax", output="pd.R", window=(144.0, 168.0))
    defaults = {k: float(v) for k, v in model.defaults().items()}
    bounds = {k: (0.5 * defaults[k], 1.5 * defaults[k]) for k in VARIED}
    solver = tj.solvers.Ensemble(rtol=RTOL, atol=ATOL)
    k = len(bounds)
    M = args.n * (k + 2)
    con.rule(f"Sobol' sensitivity of {endpoint.name}: n = {args.n}, k = {k}, {M} runs")

    def run():
        return tj.sensitivity.sobol(
            model,
            bounds,
            regimen=regimen,
            times=times,
            endpoint=endpoint,
            n=args.n,
            seed=args.seed,
            n_bootstrap=args.bootstrap,
            solver=solver,
        )

    t = time.perf_counter()
    res = run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    res2 = run()
    steady = time.perf_counter() - t
    assert np.array_equal(res.y, res2.y, equal_nan=True)
    rss = C.peak_rss_gib()
    con.print(f"batched: first call {first:.1f} s, compiled call {steady:.1f} s {res2.seconds}")
    con.print(res.to_frame().to_string(float_format=lambda v: f"{v:.4f}"))

    # ---- baseline: one sample at a time, same solver and endpoint ------------------
    nb = min(args.baseline_n, M)
    X = res.samples[:nb]

    def one(row):
        p = {name: jnp.asarray(v) for name, v in zip(res.parameters, row)}
        r = tj.simulate(model, p, regimen, times, solver=solver)
        outs = {name: np.asarray(v)[None] for name, v in {**r.states, **r.outputs}.items()}
        return float(endpoint.compute(times, outs)[0])

    t = time.perf_counter()
    y0 = one(X[0])  # compiles the one-patient program
    base_compile = time.perf_counter() - t
    t = time.perf_counter()
    yb = np.array([y0] + [one(x) for x in X[1:]])
    base_loop = time.perf_counter() - t
    per_sample = base_loop / nb
    base_total = base_compile + per_sample * M
    diff = float(np.max(np.abs(yb - res.y[:nb]) / np.abs(res.y[:nb])))
    con.print(
        f"one at a time: {per_sample * 1e3:.2f} ms per sample on {nb} rows -> "
        f"{base_total:.0f} s extrapolated to {M} runs; max rel diff vs batched {diff:.1e}"
    )

    # ---- SALib's analyze on the same outputs ---------------------------------------
    problem = {
        "num_vars": k,
        "names": list(res.parameters),
        "bounds": [list(bounds[p]) for p in res.parameters],
    }
    _, ys = res.salib_order()
    t = time.perf_counter()
    S = salib_sobol.analyze(
        problem, ys, calc_second_order=False, num_resamples=args.bootstrap, seed=args.seed
    )
    salib_s = time.perf_counter() - t
    salib_diff = {
        key: float(np.max(np.abs(np.asarray(S[key]) - getattr(res, key))))
        for key in ("S1", "ST", "S1_conf", "ST_conf")
    }
    con.print(f"SALib analyze: {salib_s:.2f} s; max |difference| {salib_diff}")

    ratio_steady = base_total / steady
    ratio_first = base_total / first
    con.print(
        f"batched vs one at a time: {ratio_steady:.0f}x (compiled call), "
        f"{ratio_first:.0f}x (first call, compilation included)"
    )
    payload = dict(
        benchmark="sensitivity",
        protocol=dict(
            model="couple({pk: two_compartment('first_order'), pd: IndirectResponse(3)}, "
            "[Link('pk.C', 'pd.C')])",
            regimen=f"Regimen.repeat({DOSE}, 'pk.depot', every={EVERY}, n={NDOSE})",
            times="linspace(144, 168, 25)",
            endpoint="Endpoint('Rmax_day7', 'cmax', output='pd.R', window=(144, 168))",
            bounds={p: list(b) for p, b in bounds.items()},
            distribution="uniform on +-50 % of the model defaults",
            design="Saltelli: scrambled Sobol' (scipy.stats.qmc.Sobol, d = 2k), blocks "
            "A, AB_1..AB_k, B",
            estimators="S1: Saltelli et al. 2010 (mean(B (AB_i - A)) / var); ST: Jansen 1999 "
            "(mean((A - AB_i)^2) / (2 var)); output centred; var of A and B",
            solver=f"solvers.Ensemble(rtol={RTOL}, atol={ATOL})",
            batched="twinjax.sensitivity.sobol: ONE twinjax.simulate call on all n (k + 2) "
            "runs (one CPU device); first call includes compilation; 'compiled' is a "
            "second identical call",
            baseline="the same model/solver/endpoint, twinjax.simulate with scalar "
            "parameters compiled once, then a Python loop over the first baseline_n rows "
            "of the design; per-sample time x n (k + 2) + its compile time",
            salib="SALib.analyze.sobol.analyze(calc_second_order=False, num_resamples = "
            "n_bootstrap, seed) on the same outputs in SALib's row order",
            timing="wall clock, time.perf_counter",
        ),
        quick=args.quick,
        dtype=dtype_name,
        machine=info,
        n=args.n,
        k=k,
        runs=M,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        n_dropped=res.n_dropped,
        indices=res.to_frame().reset_index().to_dict(orient="records"),
        batched=dict(
            first_call_s=first,
            compiled_call_s=steady,
            parts_first_s=res.seconds,
            parts_compiled_s=res2.seconds,
            runs_per_s_compiled=M / steady,
            peak_rss_gib=rss,
        ),
        baseline=dict(
            rows=nb,
            compile_s=base_compile,
            loop_s=base_loop,
            per_sample_ms=per_sample * 1e3,
            extrapolated_total_s=base_total,
            max_rel_diff_vs_batched=diff,
        ),
        speedup_vs_one_at_a_time=dict(compiled_call=ratio_steady, first_call=ratio_first),
        salib=dict(
            analyze_s=salib_s,
            ours_analyse_s=res2.seconds["analyse"],
            max_abs_diff=salib_diff,
            version=importlib.metadata.version("SALib"),
        ),
        jax_devices=[str(d) for d in jax.devices()],
        load_average_1_5_15min=dict(start=load_start, end=os.getloadavg()),
        note="the machine is shared: a load average above its core count means other "
        "processes ran during the timings (both the batched run and the baseline)",
    )
    path = C.write_json("sensitivity.json", payload, args.out)
    con.print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
