"""Latency for one patient (issue #17 item 7): a MAP fit plus a forecast from a fresh process.

The clinic's use: a new patient's data arrive and a dose is needed now. Every scenario
runs in a FRESH Python process (``subprocess.run`` of a small script), one after the
other, sharing one temporary compilation cache folder (``TWINJAX_CACHE_DIR``):

- ``a_cold``: theophylline subject 1 (11 records), empty cache: everything compiles;
- ``b_same_patient``: the same again (a rerun);
- ``c_new_patient``: subject 2 with 9 records (another patient, another record count,
  the same shape buckets);
- ``d_batch_7``: subjects 6-12 at once (a new subject bucket, 8: compiles once);
- ``e_batch_5``: subjects 1-5 (the same bucket as 7: no compilation).

``tj.enable_compilation_cache()`` turns on JAX's persistent cache and the store of
whole executables (``twinjax._executables``: programs routed through it are loaded with
no tracing or lowering; the MAP fit's are). Every process imports the same copy of the
twinjax package (a snapshot taken at the start), so an edit of the working tree during
the run does not change the stored executables' key.

Each is split into the import (``import jax`` + ``import twinjax``) and the fit +
forecast (``fit_individual`` + ``FitResult.forecast`` of 6 doses, 25 times, 500
posterior samples; wall and process CPU seconds), and JAX's own counters say where
the time went: tracing (and which programs were traced), lowering to MLIR, XLA
compilation or loading from the cache (``jax.monitoring`` events), and the executable
store's counts (loaded, compiled, stored) and seconds (key, load, compile). The
fit + forecast is then repeated in the same process (``warm_in_process_s``: the run
itself, nothing compiled). Baseline: the same sequence with the cache off
(``TWINJAX_CACHE_DIR=off``). Also: ``python -X importtime -c "import twinjax"``,
summed by top-level package.

Run: ``python benchmarks/latency.py`` (``--quick``: no baseline); writes
``benchmarks/results/latency.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, collections
t0 = time.perf_counter()
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import twinjax as tj
t_import = time.perf_counter() - t0
folder = tj.enable_compilation_cache()  # TWINJAX_CACHE_DIR: the folder, or "off"
from twinjax import _executables
durations = collections.defaultdict(float)
counts = collections.Counter()
traced = collections.Counter()


def on_duration(name, d, **kw):
    durations[name] += d
    counts.update([name])
    if name.endswith("jaxpr_trace_duration"):
        traced.update([str(kw.get("fun_name"))])


jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
from twinjax.calibrate import ErrorModel, fit_individual
from twinjax.models import pk

args = json.loads(sys.argv[1])
model = pk.one_compartment(absorption="first_order")
pop = tj.Population(
    model, typical={"KA": 1.55, "CL": 2.75, "V": 31.8}, omega={"KA": 0.41, "CL": 0.07, "V": 0.02}
)
err = ErrorModel("additive", add=0.69)
ds = tj.data.datasets.theophylline().subset(args["ids"])
if args.get("drop"):
    frame = ds.data.copy()
    for sid, k in args["drop"].items():
        obs = frame.index[(frame["ID"] == int(sid)) & (frame["EVID"] == 0)]
        frame = frame.drop(obs[-k:])
    ds = tj.Dataset(frame.reset_index(drop=True), compartments=ds.compartments)
reg = tj.Regimen([tj.Dose(amt=300.0, cmt="depot", time=0.0, ii=12.0, addl=5)])
times = np.linspace(0.0, 72.0, 25)


def once():
    t, c = time.perf_counter(), time.process_time()
    fit = fit_individual(model, ds, pop, err)
    t_fit = time.perf_counter() - t
    fc = fit.forecast(reg, times, n_samples=500, subject=args["ids"][0])
    return fit, fc, t_fit, time.perf_counter() - t, time.process_time() - c


fit, fc, t_fit, t_total, cpu_total = once()
first = dict(durations), dict(counts)
stored = dict(counts=_executables.counts(), seconds=_executables.seconds())
programs = dict(traced)
_, _, t_fit2, t_total2, _ = once()
print(json.dumps(dict(
    import_s=t_import, fit_s=t_fit, fit_forecast_s=t_total, fit_forecast_cpu_s=cpu_total,
    warm_in_process_fit_s=t_fit2, warm_in_process_s=t_total2,
    durations=first[0], counts=first[1], cache=None if folder is None else str(folder),
    executables=stored, traced_programs=programs,
    n=fit.n, records=int(fit.mask.sum()), converged=int(fit.converged.sum()),
    map_trough=float(fc.map[-1]),
)))
"""

SCENARIOS = [
    ("a_cold", dict(ids=[1])),
    ("b_same_patient", dict(ids=[1])),
    ("c_new_patient", dict(ids=[2], drop={2: 2})),
    ("d_batch_7", dict(ids=[6, 7, 8, 9, 10, 11, 12])),
    ("e_batch_5", dict(ids=[1, 2, 3, 4, 5])),
]

EVENTS = {
    "trace_s": "/jax/core/compile/jaxpr_trace_duration",
    "lower_s": "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "compile_or_load_s": "/jax/core/compile/backend_compile_duration",
    "cache_load_s": "/jax/compilation_cache/cache_retrieval_time_sec",
}


def child(args: dict, cache: str, src: Path) -> dict:
    env = dict(os.environ, TWINJAX_CACHE_DIR=cache, PYTHONPATH=str(src))
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(src),
        timeout=1800,
    )
    wall = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    d, c = r.pop("durations"), r.pop("counts")
    row = dict(r, process_wall_s=wall, loadavg_1min=[load0, os.getloadavg()[0]])
    for k, name in EVENTS.items():
        row[k] = d.get(name, 0.0)
    row["n_programs_traced"] = c.get("/jax/core/compile/jaxpr_trace_duration", 0)
    row["n_programs_lowered"] = c.get("/jax/core/compile/jaxpr_to_mlir_module_duration", 0)
    row["cache_hits"] = c.get("/jax/compilation_cache/cache_hits", 0)
    row["cache_misses"] = c.get("/jax/compilation_cache/cache_misses", 0)
    return row


def snapshot(dest: Path) -> Path:
    """A copy of the twinjax package, imported by every scenario (``PYTHONPATH``): all
    processes run the same source, so the stored executables' key (which includes a
    hash of twinjax's source files) does not change if the working tree is edited
    while the benchmark runs."""
    import shutil

    shutil.copytree(
        ROOT / "twinjax", dest / "twinjax", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def import_profile() -> dict:
    """``python -X importtime -c "import twinjax"``: self time by top-level package."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import twinjax"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
    )
    agg: collections.Counter = collections.Counter()
    total = 0
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cum, name = line[len("import time:") :].split("|")
        name = name.strip()
        agg[name.split(".")[0]] += int(own)
        if name == "twinjax":
            total = int(cum)
    return dict(
        total_s=total / 1e6,
        by_package_s={k: round(v / 1e6, 4) for k, v in agg.most_common(12)},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="no cache-off baseline")
    a = ap.parse_args()
    con = _common.console()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="twinjax-latency-") as tmp:
        cache = str(Path(tmp) / "cache")
        src = snapshot(Path(tmp) / "src")
        for name, args in SCENARIOS:
            rows[name] = child(args, cache, src)
            r = rows[name]
            con.print(
                f"cache  {name:16s} import {r['import_s']:.2f} s  fit+forecast "
                f"{r['fit_forecast_s']:.2f} s (cpu {r['fit_forecast_cpu_s']:.2f}; fit "
                f"{r['fit_s']:.2f}; {r['n_programs_traced']} traced: trace {r['trace_s']:.2f}, "
                f"lower {r['lower_s']:.2f}, compile/load {r['compile_or_load_s']:.2f}; "
                f"executables {r['executables']['counts']}; warm in-process "
                f"{r['warm_in_process_s']:.3f}) load {r['loadavg_1min'][0]:.1f}"
            )
        n_files = sum(1 for _ in Path(cache).rglob("*") if _.is_file())
        size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
        exe = Path(cache) / "executables"
        n_exe = sum(1 for _ in exe.glob("*")) if exe.is_dir() else 0
        base = {}
        if not a.quick:
            for name, args in SCENARIOS:
                base[name] = child(args, "off", src)
                r = base[name]
                con.print(
                    f"no cache {name:14s} import {r['import_s']:.2f} s  fit+forecast "
                    f"{r['fit_forecast_s']:.2f} s (trace {r['trace_s']:.2f}, lower "
                    f"{r['lower_s']:.2f}, compile {r['compile_or_load_s']:.2f}) "
                    f"load {r['loadavg_1min'][0]:.1f}"
                )
    imp = import_profile()
    con.print(f"import twinjax (-X importtime): {imp['total_s']:.2f} s; {imp['by_package_s']}")
    warm = [rows[k]["fit_forecast_s"] for k in ("b_same_patient", "c_new_patient", "e_batch_5")]
    payload = dict(
        benchmark="latency",
        description=__doc__,
        command="python benchmarks/latency.py" + (" --quick" if a.quick else ""),
        goal="fresh-process fit + forecast (import excluded) under 1 s after the first run",
        goal_met_b_c_e=all(w < 1.0 for w in warm),
        cache=dict(scenarios=rows, files=n_files, bytes=size, executables=n_exe),
        no_cache=dict(scenarios=base),
        import_profile=imp,
        machine=_common.machine_info(),
        loadavg_end=os.getloadavg(),
    )
    path = _common.write_json("latency.json", payload)
    con.print(f"wrote {path}")


if __name__ == "__main__":
    main()
