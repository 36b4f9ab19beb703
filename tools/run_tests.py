"""Run the test suite one file per pytest process, then print one combined summary.

XLA keeps every compiled program of a process; hundreds of them in one long pytest
process crashed the compiler twice in clean CI runs (a segfault and an abort, in
different tests, each of which passes on its own). A fresh process per test file
keeps each process small. Files run in parallel, one process per CPU core by default
(``TWINJAX_TEST_JOBS`` or ``-j N`` overrides), longest first. Extra arguments are
passed to every pytest call.

Each file's line gives its wall time and its CPU time (user + system of its pytest
process and of every process it waited for: a notebook's kernel, a CLI run; from
``os.wait4``); the summary gives the total CPU and the utilisation, total CPU over
(wall x jobs): near 1 the cores were busy, well below 1 they waited (a file waiting on
a subprocess, or the last long file running alone). On a loaded machine wall times say
little; compare CPU times.

Most of the suite's time is XLA:CPU compiling programs (each file is a fresh process),
so the test processes compile with XLA:CPU's classic fusion code generator instead of
the newer MLIR fusion emitters (``FAST_COMPILE``, added to ``XLA_FLAGS``), and in one
piece: XLA splits each program's LLVM module into parts compiled on parallel threads
(``--xla_cpu_parallel_codegen_split_count``), which on a machine whose cores already run
one test process each only adds the splitting. One part, measured on the loaded 2-core
machine: a benchmark process compiling a solve, its gradient, a batch and an Ensemble
solve 21.3 -> 19.5 s CPU (two runs each; results bitwise equal); test_circulation.py 125
-> 109 s (measured together with ``--xla_llvm_disable_expensive_passes``, which is not
used: XLA:CPU's LLVM pipeline no longer reads it). CPU time of test files on the loaded
2-core machine, XLA's defaults -> the classic generator: test_catalogue.py 433 -> 288 s,
test_ep.py 203 -> 107 s; results equal to rounding (1e-16 relative on a two-compartment
solve). The programs are also compiled without LLVM's optimisation passes
(``--xla_backend_optimization_level=0``; XLA's own HLO optimisations still run): CPU s
of single files, classic generator -> also no LLVM optimisation, on the 2-core machine
at load 2-6 (2026-11-30): test_time_varying.py 95.7 -> 73.0, test_covariates.py 77.4 ->
46.8, test_variability.py 72.7 -> 35.5, test_ep.py ~61 -> 50.2, test_glucose.py ~47 ->
33.3; long simulations run slower (test_cipa_exposure.py ~31 -> 34), compiling dominates
elsewhere; the files that mostly run long loops keep LLVM's optimisation
(``OPTIMISED_FILES``). A clean-clone run with it off everywhere: 1389 s wall, 2719 s CPU
(the run before, with it on: 1611 s). An earlier try of this flag failed
test_circulation.py (batch and single runs 8.5e-6 apart, 1e-6 checked); with the
circulation's present program it passes (68 + 3 CPU s). The programs differ from the
ones users get by code generation only; set ``TWINJAX_TEST_DEFAULT_CODEGEN=1`` (or one
of the flags in ``XLA_FLAGS``) to test with XLA's defaults. The flags are used only
where the installed jaxlib accepts them (XLA aborts on a flag it does not know; checked
once by a short subprocess). The files that check bitwise equality across batch shapes
(``DEFAULT_CODEGEN_FILES``) always run with XLA's defaults: with the classic generator
some patients' results differ by 1 ulp between chunk sizes (seen in a clean CI run:
test_cohort.py, test_store.py).

The test processes of one run share JAX's persistent compilation cache in a fresh
temporary folder (``TWINJAX_TEST_CACHE_DIR``, read by tests/conftest.py; removed at the
end; a folder given in the environment is used and kept instead, ``off`` turns it off).
A program another file already compiled (same program, shapes, flags: JAX's cache key)
is loaded instead of compiled. Measured on the loaded 2-core machine: the programs the
files share are mostly JAX's small eager operations (``jit_broadcast_in_dim``,
``jit_convert_element_type``, ...; test_calibrate.py after two other files: 171 of its
490 compilations loaded), each 10-50 ms of compiling; the large programs (solves, fits)
are each file's own, so the saving is a few seconds per file.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# the longest files start first, by their wall times in the last clean-clone run on the
# 2-core machine (1389 s, 2026-11-30; the files of OPTIMISED_FILES and test_ensemble.py
# by their times in the run before, 1611 s, with LLVM's optimisation), except
# test_notebooks.py: it starts two files
# after test_fit_cli.py, whose FOCE-I fit of the shipped example puts that fit's programs
# in the run's shared compilation cache before notebook 06 (its last) runs the same fit
# with the `twinjax` command (measured alone: that command 59 CPU s with an empty
# cache, 18 with the programs in it)
LONGEST_FIRST = (
    "test_catalogue.py",
    "test_catalogue_organs.py",
    "test_iov_fit.py",
    "test_calibrate.py",
    "test_saem_covariates.py",
    "test_posterior.py",
    "test_saem.py",
    "test_censoring.py",
    "test_pk_analytic.py",
    "test_saem_iov.py",
    "test_uncertainty_pop.py",
    "test_trial.py",
    "test_fit_cli.py",
    "test_time_varying.py",
    "test_circulation.py",
    "test_notebooks.py",
    "test_nonmem_dosing.py",
    "test_iov_forecast.py",
    "test_dose_modifiers.py",
    "test_ep.py",
    "test_multi_output.py",
    "test_cohort.py",
    "test_store.py",
    "test_ensemble.py",
    "test_latency.py",
    "test_foce_exact.py",
    "test_variability.py",
    "test_covariates.py",
    "test_glucose.py",
    "test_cipa_exposure.py",
    "test_simglucose.py",
    "test_failures.py",
    "test_population.py",
    "test_iov_uncertainty.py",
    "test_stiff.py",
    "test_ep_loop.py",
    "test_pbpk.py",
    "test_sensitivity.py",
    "test_cipa_safety.py",
    "test_static.py",
    "test_units.py",
    "test_cipa_uncertainty.py",
    "test_cipa.py",
    "test_npde.py",
    "test_periodic.py",
    "test_trial_sensitivity.py",
    "test_vpc_blq.py",
    "test_iov.py",
    "test_report.py",
    "test_validation.py",
    "test_data.py",
    "test_stats.py",
    "test_myokit.py",
    "test_spec.py",
    "test_tmdd.py",
    "test_architecture.py",
    "test_controlled.py",
    "test_outdir.py",
    "test_batch.py",
    "test_cipa_table.py",
    "test_input_edges.py",
)
KINDS = ("passed", "failed", "skipped", "errors", "deselected")
FAST_COMPILE = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
    "--xla_backend_optimization_level=0",
)
# Files that check results bitwise across batch shapes (chunk sizes, device counts,
# processes): a property of the code XLA generates by default, which users run. The
# classic generator rounds some patients differently (1 ulp) with the batch size, so
# these files always run with XLA's defaults (they are short).
# test_ensemble.py checks that two programs (with and without saves, in blocks or whole)
# take bitwise the same steps: true with XLA's defaults and with the classic generator,
# not without LLVM's optimisation (1 ulp apart, seen in a clean run).
DEFAULT_CODEGEN_FILES = ("test_cohort.py", "test_store.py", "test_ensemble.py")
# Files whose time is mostly running long compiled loops (MCMC chains, SAEM kernels)
# rather than compiling: without LLVM's optimisation they ran slower (clean run,
# 2026-11-30, wall s with -> without it: test_posterior.py 119 -> 218,
# test_saem_iov.py 71 -> 88, test_saem_covariates.py 135 -> 141), so they keep it.
OPTIMISED_FILES = ("test_posterior.py", "test_saem_iov.py", "test_saem_covariates.py")
NO_LLVM_OPT = "--xla_backend_optimization_level=0"
# JAX's persistent compilation cache shared by the test processes of one run (read by
# tests/conftest.py): a fresh temporary folder, removed at the end; a folder given in the
# environment is used (and kept) instead, "off" turns it off
CACHE_ENV = "TWINJAX_TEST_CACHE_DIR"


def test_env() -> dict[str, str]:
    """The environment of the test processes: ``FAST_COMPILE`` added to ``XLA_FLAGS``
    where jaxlib accepts it (XLA aborts on a flag it does not know)."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    names = [f.split("=")[0] for f in FAST_COMPILE]
    if env.get("TWINJAX_TEST_DEFAULT_CODEGEN") or any(n in flags for n in names):
        return env
    trial = dict(env, XLA_FLAGS=" ".join([flags, *FAST_COMPILE]).strip())
    probe = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"],
        env=trial,
        capture_output=True,
    )
    if probe.returncode == 0:
        return trial
    print(f"XLA_FLAGS: {' '.join(FAST_COMPILE)} not accepted by this jaxlib; its defaults used")
    return env


def run_file(f: pathlib.Path, argv: list[str], env: dict[str, str]):
    """Run one test file's pytest process; returns the file, its exit status, its output,
    its wall time and its CPU time (user + system, the process and every descendant it
    waited for, e.g. a notebook's kernel or a CLI run: ``os.wait4``'s resource usage)."""
    t = time.time()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(f), *argv],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return f, proc.returncode, text, time.time() - t, usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    jobs = int(os.environ.get("TWINJAX_TEST_JOBS", os.cpu_count() or 1))
    if argv[:1] == ["-j"]:
        jobs, argv = int(argv[1]), argv[2:]
    files = sorted((ROOT / "tests").glob("test_*.py"))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    files.sort(key=lambda f: rank.get(f.name, len(rank)))
    with tempfile.TemporaryDirectory(prefix="twinjax-test-cache-") as tmp:
        cache = os.environ.get(CACHE_ENV) or tmp
        off = cache.strip().lower() == "off"
        return run_all(files, argv, jobs, {} if off else {CACHE_ENV: cache})


def run_all(files: list[pathlib.Path], argv: list[str], jobs: int, extra: dict[str, str]) -> int:
    totals = {k: 0 for k in KINDS}
    bad = []
    t0 = time.time()
    cpu_total = 0.0
    env = dict(test_env(), **extra)
    default_env = dict(os.environ, **extra)
    optimised_env = dict(env, XLA_FLAGS=env.get("XLA_FLAGS", "").replace(NO_LLVM_OPT, "").strip())

    def env_of(f: pathlib.Path) -> dict[str, str]:
        if f.name in DEFAULT_CODEGEN_FILES:
            return default_env
        return optimised_env if f.name in OPTIMISED_FILES else env

    with cf.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(run_file, f, argv, env_of(f)) for f in files]
        for fut in cf.as_completed(futures):
            f, code, out, dt, cpu = fut.result()
            cpu_total += cpu
            tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            counts = {k: 0 for k in totals}
            for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0]):
                counts["errors" if word.startswith("error") else word] += int(n)
            for k in totals:
                totals[k] += counts[k]
            ok = code in (0, 5)
            print(f"{f.name}: {tail[0]} [{dt:.0f} s wall / {cpu:.0f} s CPU]", flush=True)
            if not ok:
                bad.append(f.name)
                if not (counts["failed"] or counts["errors"]):
                    totals["errors"] += 1  # a crash: count it
                print(out[-6000:], flush=True)
    wall = time.time() - t0
    # utilisation: the CPU the test processes used over what `jobs` cores could give in
    # the run's wall time (well under 1: cores idle, e.g. a process waiting or the last
    # long file running alone)
    print(
        f"total time {wall:.0f} s wall, {cpu_total:.0f} s CPU ({jobs} parallel, utilisation "
        f"{cpu_total / (wall * max(jobs, 1)):.2f}); files with failures: {bad or 'none'}"
    )
    failed = totals["failed"] + totals["errors"]
    print(f"{totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
