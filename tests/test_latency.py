"""Latency for one patient (issue #17 item 7): shape buckets and the compilation cache.

- Padding a fit's batch to its shape bucket (subjects, observation records, event rows)
  changes no result, and padding subjects never appear in the outputs.
- A new batch size or record count within a bucket runs the program already traced
  (counted with ``eqx.debug.get_num_traces``), for the fit and for the forecast.
- ``enable_compilation_cache`` writes into the folder it is given (nothing at import),
  and a second fresh process loads the programs from it.

Timings: ``benchmarks/latency.py`` (fresh processes, cold and warm cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import numpy as np
import pytest

import twinjax as tj
from twinjax._compile_cache import default_cache_dir
from twinjax.calibrate import ErrorModel, fit_individual
from twinjax.calibrate._data import fit_buckets, shape_bucket
from twinjax.calibrate._forecast import _forecast_program
from twinjax.calibrate._map import map_program
from twinjax.models import pk

ROOT = Path(__file__).resolve().parents[1]
ORAL = pk.one_compartment(absorption="first_order")
POP = tj.Population(
    ORAL, typical={"KA": 1.55, "CL": 2.75, "V": 31.8}, omega={"KA": 0.41, "CL": 0.07, "V": 0.02}
)
ERR = ErrorModel("additive", add=0.69)


def _theo(ids, drop_last=None):
    """Theophylline subjects ``ids``; ``drop_last={id: k}`` removes the last ``k``
    observation records of a subject (another record count)."""
    ds = tj.data.datasets.theophylline().subset(ids)
    if not drop_last:
        return ds
    frame = ds.data.copy()
    for sid, k in drop_last.items():
        obs = frame.index[(frame["ID"] == sid) & (frame["EVID"] == 0)]
        frame = frame.drop(obs[-k:])
    return tj.Dataset(frame.reset_index(drop=True), compartments=ds.compartments)


def test_bucket_sizes():
    assert [shape_bucket(n) for n in (1, 2, 3, 5, 7, 8, 9, 256)] == [1, 2, 4, 8, 8, 8, 16, 256]
    assert shape_bucket(257) == 512 and shape_bucket(1000) == 1024 and shape_bucket(1025) == 1280
    assert shape_bucket(3, minimum=8) == 8
    # subjects a multiple of the device count; records at least 8, events at least 4
    assert fit_buckets(5, 11, 1) == (8, 16, 4)
    assert fit_buckets(5, 11, 1, multiple=3) == (9, 16, 4)


@pytest.fixture(scope="module")
def five():
    """Five subjects, padded (the default) and not; the trace count after them."""
    ds = _theo([1, 2, 3, 4, 5])
    padded = fit_individual(ORAL, ds, POP, ERR)
    plain = fit_individual(ORAL, ds, POP, ERR, buckets=False)
    return ds, padded, plain, eqx.debug.get_num_traces(map_program)


def test_padding_does_not_change_the_fit(five):
    ds, padded, plain, _ = five
    # 5 subjects -> 8, 11 records -> 16, 1 dose row -> 4: the padding is real
    assert fit_buckets(5, plain.times.shape[1], 1) == (8, 16, 4)
    assert padded.ids == plain.ids == [1, 2, 3, 4, 5]
    assert padded.etas.shape == plain.etas.shape == (5, 3)
    assert padded.ipred.shape == plain.ipred.shape == plain.times.shape == (5, 11)
    np.testing.assert_array_equal(padded.n_iter, plain.n_iter)
    np.testing.assert_array_equal(padded.converged, plain.converged)
    assert bool(np.all(padded.converged))
    # equal to rounding (XLA vectorises another batch size differently)
    for name in ("etas", "cov_eta", "objective", "pred", "ipred", "iwres"):
        a, b = getattr(padded, name), getattr(plain, name)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=name)
    for k in padded.names:
        np.testing.assert_allclose(padded.params[k], plain.params[k], rtol=1e-12)
        np.testing.assert_allclose(padded.se[k], plain.se[k], rtol=1e-10)
        np.testing.assert_allclose(padded.ci95[k][0], plain.ci95[k][0], rtol=1e-10)
    # padding subjects are in no output; shrinkage uses the real subjects only
    assert len(padded.to_dataframe()) == 5 and len(padded.observations()) == 5 * 11
    for k in padded.names:
        assert padded.shrinkage[k] == pytest.approx(plain.shrinkage[k], rel=1e-9, abs=1e-12)


def test_new_batch_size_and_record_count_do_not_retrace(five):
    ds, padded, _, traces = five
    # 7 subjects (bucket 8), one with 9 records instead of 11 (bucket 16): no new trace
    ds7 = _theo([6, 7, 8, 9, 10, 11, 12], drop_last={8: 2})
    r7 = fit_individual(ORAL, ds7, POP, ERR)
    assert eqx.debug.get_num_traces(map_program) == traces
    assert r7.n == 7 and bool(np.all(r7.converged)) and r7.times.shape == (7, 11)
    assert int(r7.mask[2].sum()) == 9
    # the forecast: 25 or 30 times (bucket 32), 6 or 8 doses (bucket 8): one trace
    reg6 = tj.Regimen([tj.Dose(amt=300.0, cmt="depot", time=0.0, ii=12.0, addl=5)])
    reg8 = tj.Regimen([tj.Dose(amt=300.0, cmt="depot", time=0.0, ii=12.0, addl=7)])
    before = eqx.debug.get_num_traces(_forecast_program)
    fa = r7.forecast(reg6, np.linspace(0.0, 72.0, 25), n_samples=64, subject=8)
    fb = r7.forecast(reg8, np.linspace(0.0, 96.0, 30), n_samples=64, subject=8)
    assert eqx.debug.get_num_traces(_forecast_program) == before + 1
    assert fa.map.shape == (25,) and fb.samples.shape == (64, 30)
    # the padded forecast is the plain simulation of the MAP estimate
    p = {k: float(v[2]) for k, v in r7.params.items()}
    ref = tj.simulate(ORAL, p, reg8, np.linspace(0.0, 96.0, 30), solver=r7.solver)
    np.testing.assert_allclose(fb.map, np.asarray(ref["C"]), rtol=1e-9, atol=1e-12)


def test_the_suite_cache_is_the_folder_run_tests_gives_or_none():
    """tests/conftest.py: JAX's persistent cache is the folder tools/run_tests.py gives the
    test processes (``TWINJAX_TEST_CACHE_DIR``), and the CLI's too; without one, the
    tests run with no persistent cache (JAX's own setting) and the CLI's off."""
    import jax

    shared = os.environ.get("TWINJAX_TEST_CACHE_DIR", "").strip()
    if shared and shared.lower() != "off":
        assert jax.config.jax_compilation_cache_dir == shared
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        assert os.environ["TWINJAX_CACHE_DIR"] == shared
    else:
        assert jax.config.jax_compilation_cache_dir == os.environ.get("JAX_COMPILATION_CACHE_DIR")
        assert os.environ["TWINJAX_CACHE_DIR"]  # "off" unless set before the run


def test_default_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TWINJAX_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.setenv("TWINJAX_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.delenv("TWINJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "twinjax" / "jax"


_CHILD = r"""
import json, os, sys, collections
import jax
import twinjax
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
before = jax.config.jax_compilation_cache_dir  # importing twinjax sets nothing
folder = twinjax.enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else None)
f = jax.jit(lambda x: jax.numpy.sin(x) * 2.0 + 1.0)
y = float(f(jax.numpy.arange(3.0))[2])
print(json.dumps(dict(
    before=before, folder=None if folder is None else str(folder),
    after=jax.config.jax_compilation_cache_dir, y=y,
    hits=events["/jax/compilation_cache/cache_hits"],
)))
"""


def _child(tmp_path, *args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("TWINJAX_CACHE_DIR", "XDG_CACHE_HOME")}
    e["HOME"] = str(tmp_path / "home")  # the default folder would be under it
    e.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=str(ROOT),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_writes_into_the_given_folder_and_a_new_process_hits_it(tmp_path):
    cache = tmp_path / "cache"
    first = _child(tmp_path, str(cache))
    assert first["before"] is None  # import twinjax does not touch JAX's config
    assert first["folder"] == str(cache.resolve()) == first["after"]
    assert first["hits"] == 0 and first["y"] == pytest.approx(2 * np.sin(2.0) + 1)
    written = sorted(p.name for p in cache.iterdir())
    assert written, "nothing was cached"
    second = _child(tmp_path, str(cache))
    assert second["hits"] >= 1 and second["y"] == first["y"]
    # off: nothing enabled, nothing written (not even under the default folder)
    off = _child(tmp_path, env={"TWINJAX_CACHE_DIR": "off"})
    assert off["folder"] is None and off["after"] is None
    assert not (tmp_path / "home").exists()
    assert sorted(p.name for p in cache.iterdir()) == written


# ============================================================ stored executables
def test_usable_records_is_error_model_usable():
    """``prepare_data`` decides on the host which records an error model can use; the
    decision is ``ErrorModel.usable``'s for every kind (NaN kept, infinities and, for a
    log error, non-positive values out)."""
    import jax.numpy as jnp

    from twinjax.calibrate._data import usable_records

    dv = np.array([[1.5, 0.0, -2.0, np.nan], [np.inf, -np.inf, 1e-300, 7.0]])
    for e in (
        ErrorModel("additive", add=1.0),
        ErrorModel("proportional", prop=0.1),
        ErrorModel("combined", add=1.0, prop=0.1),
        ErrorModel("log", add=0.2),
    ):
        ref = np.asarray(e.usable(jnp.asarray(dv)))
        np.testing.assert_array_equal(usable_records(e, dv), ref, err_msg=e.kind)


def test_executable_key_covers_what_determines_the_program():
    """The store's key (computed without tracing) changes with each array's shape,
    dtype and weak type, with every non-array argument (a Python float, a model
    parameter of a static object), with the function and with x64; it is the same
    for the same call and does not depend on the arrays' values."""
    import jax
    import jax.numpy as jnp

    from twinjax._executables import program_key
    from twinjax.calibrate._map import natural_program

    x = np.zeros((4, 3))
    base = program_key(map_program, (ERR, x, 1.0), {"block": None})[0]
    same = program_key(map_program, (ERR, np.ones((4, 3)), 1.0), {"block": None})[0]
    assert base == same
    others = [
        program_key(map_program, (ERR, np.zeros((8, 3)), 1.0), {"block": None}),
        program_key(map_program, (ERR, np.zeros((4, 3), np.float32), 1.0), {"block": None}),
        program_key(map_program, (ERR, jnp.asarray(0.0), 1.0), {"block": None}),
        program_key(map_program, (ERR, jnp.asarray(np.float64(0.0)), 1.0), {"block": None}),
        program_key(map_program, (ERR, x, 1.5), {"block": None}),
        program_key(map_program, (ERR, x, 1.0), {"block": 8}),
        program_key(map_program, (ErrorModel("additive", add=0.7), x, 1.0), {"block": None}),
        program_key(natural_program, (ERR, x, 1.0), {"block": None}),
    ]
    with jax.enable_x64(False):
        others.append(program_key(map_program, (ERR, x, 1.0), {"block": None}))
    keys = [k for k, _ in others]
    assert base not in keys and len(set(keys)) == len(keys)
    # the weak and the strong scalar differ (above); the leaves are the arrays in order
    _, leaves = program_key(map_program, (ERR, x, {"a": np.ones(2)}), {"b": None})
    assert len(leaves) == 2 and leaves[0] is x


_STORE_CHILD = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import twinjax
from twinjax import _executables

@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def solve(scale, a, b, n):
    # a linear solve (LAPACK on CPU) and a loop: what the fit's program holds
    x = jnp.linalg.solve(a * scale, b)
    return {"x": x, "s": jax.lax.fori_loop(0, n, lambda i, s: s + jnp.sin(s * x[0]), b[1])}

folder = sys.argv[1]
a = np.array([[4.0, 1.0], [2.0, 3.0]]); b = np.array([1.0, 2.0])
runs = []
for executables in (True, False):  # through the store, then the normal jit path
    twinjax.enable_compilation_cache(folder, executables=executables)
    out = _executables.call(solve, 0.5, a, b, jax.device_put(7))
    runs.append(dict(
        counts=_executables.counts(), traces=eqx.debug.get_num_traces(solve),
        x=[float(v) for v in out["x"]], s=float(out["s"]),
    ))
print(json.dumps(runs))
"""


def _source_copy(tmp_path) -> Path:
    """A copy of the twinjax package for the child processes of one test: the stored
    executables' key hashes twinjax's source, which must not change between them."""
    import shutil

    dest = tmp_path / "src"
    if not dest.exists():
        shutil.copytree(
            ROOT / "twinjax", dest / "twinjax", ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def _store_child(folder):
    src = _source_copy(folder.parent)
    env = {k: v for k, v in os.environ.items() if k != "TWINJAX_CACHE_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", _STORE_CHILD, str(folder)],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(src)),
        cwd=str(src),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fresh_process_runs_the_stored_executable_without_tracing(tmp_path):
    """First process: traced, compiled and stored. Without the store (JAX's cache
    kept), the next compile is a hit in JAX's cache, whose executable does not
    serialise whole: it is compiled again afresh (a second trace) and stored. Last
    process: loaded from the store and run with no trace, giving the jit path's numbers
    (the same process, the store off: ``eqx.filter_jit``) to the last bit. A corrupt
    entry is not loaded."""
    import shutil

    from twinjax._executables import SUFFIX, counts
    from twinjax._executables import _load as load_entry

    cache = tmp_path / "cache"
    first, _ = _store_child(cache)
    assert first["traces"] == 1 and first["counts"] == {"compiled": 1, "stored": 1}
    shutil.rmtree(cache / "executables")
    hit, _ = _store_child(cache)
    assert hit["traces"] == 2 and hit["counts"] == {"compiled": 1, "stored": 1}
    stored = sorted((cache / "executables").iterdir())
    assert len(stored) == 1 and stored[0].name.endswith(SUFFIX)
    loaded, jit = _store_child(cache)
    assert loaded["traces"] == 0 and loaded["counts"] == {"loaded": 1}
    assert jit["traces"] == 1 and jit["counts"] == {"loaded": 1, "jit": 1}
    for run in (first, hit, loaded):
        assert run["x"] == jit["x"] and run["s"] == jit["s"]
    # a corrupt entry (its payload's SHA-256 differs) is refused, never loaded
    key = stored[0].name[: -len(SUFFIX)]
    body = bytearray(stored[0].read_bytes())
    body[len(body) // 2] ^= 0xFF
    stored[0].write_bytes(bytes(body))
    failed = counts().get("load_failed", 0)
    assert load_entry(cache / "executables", key) is None
    assert counts()["load_failed"] == failed + 1


_FIT_CHILD = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx
import numpy as np
import twinjax as tj
from twinjax import _executables
from twinjax.calibrate import ErrorModel, fit_individual
from twinjax.calibrate._map import map_program
from twinjax.models import pk

model = pk.one_compartment(absorption="first_order")
pop = tj.Population(
    model, typical={"KA": 1.55, "CL": 2.75, "V": 31.8}, omega={"KA": 0.41, "CL": 0.07, "V": 0.02}
)
ds = tj.data.datasets.theophylline().subset([1])
runs = []
for executables in (True, False):  # through the store, then the normal jit path
    tj.enable_compilation_cache(sys.argv[1], executables=executables)
    r = fit_individual(model, ds, pop, ErrorModel("additive", add=0.69))
    runs.append(dict(
        counts=_executables.counts(), traces=eqx.debug.get_num_traces(map_program),
        values={k: np.asarray(v, np.float64).ravel().tolist() for k, v in dict(
            etas=r.etas, cov=r.cov_eta, O=r.objective, ipred=r.ipred, pred=r.pred,
            iwres=r.iwres, n_iter=r.n_iter, **{"se_" + q: r.se[q] for q in r.names},
        ).items()},
    ))
print(json.dumps(runs))
"""


@pytest.mark.slow
def test_a_fresh_process_fits_from_stored_executables_to_the_last_bit(tmp_path):
    """The MAP fit of one theophylline subject: the first process compiles and stores
    its programs (the LM and the natural-scale step); a second fresh process loads
    them, traces no fit program, and its estimates, curvature, objective, predictions,
    residuals and SEs equal the jit path's (``eqx.filter_jit``) to the last bit."""
    cache = tmp_path / "cache"
    src = _source_copy(tmp_path)

    def child():
        env = {k: v for k, v in os.environ.items() if k != "TWINJAX_CACHE_DIR"}
        out = subprocess.run(
            [sys.executable, "-c", _FIT_CHILD, str(cache)],
            capture_output=True,
            text=True,
            env=dict(env, PYTHONPATH=str(src)),
            cwd=str(src),
            timeout=1200,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, _ = child()
    assert first["counts"] == {"compiled": 2, "stored": 2} and first["traces"] == 1
    loaded, jit = child()
    assert loaded["counts"] == {"loaded": 2} and loaded["traces"] == 0
    assert jit["traces"] == 1 and jit["counts"]["jit"] == 2
    for name, ref in jit["values"].items():
        assert loaded["values"][name] == ref == first["values"][name], name
    assert np.isfinite(jit["values"]["O"]).all()
