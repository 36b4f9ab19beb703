"""simulate_cohort: chunk and device invariance, kill-and-resume, failures, xarray."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import _cohort_worker as worker
import jax
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk

HERE = pathlib.Path(__file__).parent


def test_chunk_size_does_not_change_results():
    a = worker.run(chunk_size=50)
    b = worker.run(chunk_size=256)
    c = worker.run(chunk_size=600)
    np.testing.assert_array_equal(a["C"], b["C"])
    np.testing.assert_array_equal(a["C"], c["C"])
    assert np.all(a.status == 0)


def test_killed_run_resumes_bitwise(tmp_path):
    store = tmp_path / "cohort.zarr"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_cohort_worker.py"), "store", str(store), "10"], env=env
    )
    records = store / "chunks"  # one record per finished chunk
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(list(records.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the worker finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = list(records.glob("*.json"))
    assert 0 < len(done_before) < 60
    assert (store / ".lock").exists()  # left by the killed writer; taken over on resume
    resumed = worker.run(store=store, chunk_size=10)
    assert resumed.chunks_reused == len(done_before)
    assert resumed.chunks_computed == 60 - len(done_before)
    full = worker.run(chunk_size=10)
    np.testing.assert_array_equal(resumed["C"], full["C"])
    np.testing.assert_array_equal(resumed.status, full.status)


def test_four_devices_equal_one_device(tmp_path):
    env = dict(
        os.environ, PYTHONPATH=str(HERE), XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    out = tmp_path / "four.npz"
    subprocess.run(
        [sys.executable, str(HERE / "_cohort_worker.py"), "devices", str(out), "100"],
        env=env,
        check=True,
        timeout=600,
    )
    four = np.load(out)
    assert int(four["n_devices"]) == 4
    one = worker.run(chunk_size=100)
    # Each device runs the same per-patient program on its share (shard_map), so the
    # results are bitwise equal, as they are across chunk sizes.
    np.testing.assert_array_equal(four["C"], one["C"])
    np.testing.assert_array_equal(four["status"], one.status)


def test_store_refuses_a_different_run(tmp_path):
    model, params, regimen, times = worker.setup()
    store = tmp_path / "s.zarr"
    tj.simulate_cohort(
        model,
        params,
        regimen,
        times,
        solver=tj.solvers.Ensemble(),
        store=store,
        chunk_size=300,
        progress=False,
    )
    with pytest.raises(ValueError, match="different run"):
        tj.simulate_cohort(
            model,
            {**params, "CL": params["CL"] * 2},
            regimen,
            times,
            solver=tj.solvers.Ensemble(),
            store=store,
            chunk_size=300,
            progress=False,
        )


def test_blow_up_patient_flagged_rest_intact():
    model = pk.one_compartment()
    cl = np.array([2.0, 3.0, 1e4, 4.0])
    v = np.array([50.0, 50.0, 1e-4, 50.0])
    reg = tj.Regimen([tj.Dose(100.0, "central")])
    times = np.linspace(0.0, 10.0, 11)
    solver = tj.solvers.Ensemble(max_steps=300)
    r = tj.simulate_cohort(
        model, {"CL": cl, "V": v}, reg, times, solver=solver, chunk_size=4, progress=False
    )
    keep = np.array([0, 1, 3])
    r2 = tj.simulate_cohort(
        model,
        {"CL": cl[keep], "V": v[keep]},
        reg,
        times,
        solver=solver,
        chunk_size=3,
        progress=False,
    )
    assert r.status[2] != 0 and np.all(r.status[keep] == 0)
    np.testing.assert_array_equal(r["C"][keep], r2["C"])


def test_population_cohort_to_xarray_and_dataframe():
    model = pk.one_compartment("first_order")
    pop = tj.Population.from_cv(model, {"CL": 0.3, "V": 0.2})
    cohort = pop.sample(jax.random.key(0), 64)
    r = tj.simulate_cohort(
        model,
        cohort,
        tj.Regimen([tj.Dose(100.0, "depot")]),
        np.linspace(0.0, 24.0, 25),
        solver=tj.solvers.Ensemble(),
        memory_budget_gib=0.001,
        progress=False,
    )
    ds = r.to_xarray()
    assert ds["C"].shape == (64, 25)
    assert "param_CL" in ds.coords
    df = r.to_dataframe()
    assert len(df) == 64 * 25 and set(df.columns) >= {"patient", "time", "C", "status"}
