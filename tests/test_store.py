"""The cohort result store (issue #13): it writes only where it owns, reuses only what
provably matches the request, never returns a missing or corrupt chunk as a number,
lets one writer at a time in, and is shared by the processes of one jax.distributed
run (bitwise equal to one process)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import _cohort_worker as worker
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.ode import Model, State, couple
from twinjax.ode._couple import Link
from twinjax.ode._param import Param, real
from twinjax.solve import StoreCorruptError, StoreError, StoreLockedError, StoreRepairWarning
from twinjax.solve._fingerprint import Fingerprint

HERE = pathlib.Path(__file__).parent
TIMES = np.linspace(0.0, 24.0, 7)


def _small(n=40):
    model = pk.one_compartment()
    rng = np.random.default_rng(3)
    params = {"CL": 2 + rng.random(n), "V": 30 + 10 * rng.random(n)}
    return model, params, tj.Regimen([tj.Dose(100.0, "central")])


def _run(store, model=None, params=None, regimen=None, **kw):
    m, p, r = _small()
    kw.setdefault("chunk_size", 10)
    return tj.simulate_cohort(
        m if model is None else model,
        p if params is None else params,
        r if regimen is None else regimen,
        TIMES,
        solver=tj.solvers.Ensemble(),
        store=store,
        progress=False,
        **kw,
    )


def _flip_byte(f: pathlib.Path):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


# ---------------------------------------------------------------- never delete
def test_store_refuses_a_folder_holding_user_files(tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "data.csv").write_text("ID,TIME\n1,0\n")
    with pytest.raises(StoreError, match="not empty and is not a twinjax store"):
        _run(d)
    assert (d / "notes.txt").read_text() == "my notes"
    assert (d / "sub" / "data.csv").read_text() == "ID,TIME\n1,0\n"
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt", "sub"]


def test_store_refuses_a_file_path_and_a_foreign_manifest(tmp_path):
    f = tmp_path / "file.zarr"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        _run(f)
    d = tmp_path / "other"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"fingerprint": "abc", "done": []}))
    with pytest.raises(StoreError, match="not a twinjax cohort store"):
        _run(d)
    assert json.loads((d / "manifest.json").read_text()) == {"fingerprint": "abc", "done": []}


def test_store_in_an_empty_folder_and_resume_false(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    r = _run(d)
    assert r.chunks_computed == 4 and np.all(r.status == 0)
    with pytest.raises(StoreError, match="resume=False"):
        _run(d, resume=False)
    again = _run(d)
    assert again.chunks_reused == 4 and again.chunks_computed == 0
    np.testing.assert_array_equal(again["C"], r["C"])
    assert not (d / ".lock").exists()


# ---------------------------------------------------------------- fingerprints
class Forced(Model):
    """``y' = sum(rates) - k y``: the numbers depend on an array field."""

    rates: jnp.ndarray

    @property
    def states(self):  # type: ignore[override]
        return (State("y", "1"),)

    @property
    def params(self):  # type: ignore[override]
        return (real("k", 0.1, "1/h", lower=0.0, upper=10.0),)

    def rhs(self, t, y, p, u):
        return {"y": jnp.sum(self.rates) - p["k"] * y["y"]}

    def init(self, p):
        return {"y": jnp.zeros_like(p["k"])}

    def observe(self, t, y, p):
        return {"Y": y["y"]}


def test_array_field_is_part_of_the_fingerprint(tmp_path):
    k = {"k": np.full(8, 0.1)}
    a = Forced(jnp.array([1.0, 2.0, 3.0]))
    b = Forced(jnp.array([100.0, 200.0, 300.0]))
    assert repr(a) == repr(b)  # what the old fingerprint looked at
    store = tmp_path / "s"
    ra = _run(store, model=a, params=k, regimen=tj.Regimen([]), chunk_size=4)
    with pytest.raises(StoreError, match="different run"):
        _run(store, model=b, params=k, regimen=tj.Regimen([]), chunk_size=4)
    rb = _run(tmp_path / "t", model=b, params=k, regimen=tj.Regimen([]), chunk_size=4)
    assert rb["Y"][0, -1] > 50 * ra["Y"][0, -1]


def _fp(obj):
    fp = Fingerprint()
    fp.add("x", obj)
    return fp.hexdigest(), fp.problems


SCALE = 2.0


def test_function_fingerprints_follow_code_closures_and_globals():
    global SCALE

    def f(c, p, q):
        return p * (1 + q["s"] * c)

    def g(c, p, q):
        return p * (1 + q["s"] * c * c)

    def make(k):
        return lambda c, p, q: p * k * c

    def h(c, p, q):
        return p * SCALE * c

    assert _fp(f)[0] != _fp(g)[0]  # body changed
    assert _fp(make(1.0))[0] != _fp(make(2.0))[0]  # closure constant changed
    assert _fp(make(1.0))[0] == _fp(make(1.0))[0]
    before = _fp(h)[0]
    SCALE = 3.0
    try:
        assert _fp(h)[0] != before  # a module-level constant it reads changed
    finally:
        SCALE = 2.0
    assert _fp(h)[0] == before
    assert _fp(np.array([1.0, 2.0]))[0] != _fp(np.array([1.0, 2.0], np.float32))[0]
    assert not _fp(f)[1] and not _fp(make(1.0))[1]


def _linked(fn):
    return couple(
        {"pk": pk.one_compartment(), "pd": _Effect()},
        [Link("pk.C", "pd.base", "user", {"s": Param("s", 0.5, "L/mg", 0.0, 10.0)}, fn=fn)],
    )


class _Effect(Model):
    """``E = base`` (a parameter a link drives)."""

    @property
    def states(self):  # type: ignore[override]
        return ()

    @property
    def params(self):  # type: ignore[override]
        return (real("base", 1.0, "1", lower=0.0, upper=1e6),)

    def rhs(self, t, y, p, u):
        return {}

    def init(self, p):
        return {}

    def observe(self, t, y, p):
        return {"E": p["base"] + 0.0 * t}


def test_changed_user_link_function_is_not_reused(tmp_path):
    def lin(c, p, q):
        return p * (1 + q["s"] * c)

    def quad(c, p, q):
        return p * (1 + q["s"] * c * c)

    n = 6
    params = {"pk.CL": np.full(n, 2.0), "pk.V": np.full(n, 30.0)}
    reg = tj.Regimen([tj.Dose(100.0, "pk.central")])
    store = tmp_path / "s"
    r1 = _run(store, model=_linked(lin), params=params, regimen=reg, chunk_size=3)
    with pytest.raises(StoreError, match="different run"):
        _run(store, model=_linked(quad), params=params, regimen=reg, chunk_size=3)
    r2 = _run(tmp_path / "t", model=_linked(quad), params=params, regimen=reg, chunk_size=3)
    assert not np.allclose(r1["pd.E"], r2["pd.E"])


class _Opaque:
    """A callable whose state cannot be seen (no __dict__, no slots)."""

    __slots__ = ()

    def __call__(self, c, p, q):
        return p * (1 + q["s"] * c)


def test_unfingerprintable_function_is_never_reused(tmp_path):
    _, problems = _fp(_Opaque())
    assert problems and "_Opaque" in problems[0]
    n = 6
    params = {"pk.CL": np.full(n, 2.0), "pk.V": np.full(n, 30.0)}
    reg = tj.Regimen([tj.Dose(100.0, "pk.central")])
    store = tmp_path / "s"
    r = _run(store, model=_linked(_Opaque()), params=params, regimen=reg, chunk_size=3)
    assert np.all(r.status == 0)
    with pytest.raises(StoreError, match="cannot be fingerprinted"):
        _run(store, model=_linked(_Opaque()), params=params, regimen=reg, chunk_size=3)


# ---------------------------------------------------------------- damaged stores
def test_deleted_chunk_is_recomputed_and_reported(tmp_path):
    store = tmp_path / "s"
    fresh = _run(store)
    os.remove(store / "outputs" / "C" / "c" / "2" / "0")
    with pytest.warns(StoreRepairWarning, match=r"\[2\]"):
        again = _run(store)
    assert again.chunks_repaired == (2,) and again.chunks_computed == 1
    np.testing.assert_array_equal(again["C"], fresh["C"])
    assert np.all(again.status == 0) and not np.isnan(again["C"]).any()


def test_deleted_chunk_record_means_not_done(tmp_path):
    store = tmp_path / "s"
    fresh = _run(store)
    os.remove(store / "chunks" / "1.json")
    again = _run(store)
    assert again.chunks_computed == 1 and again.chunks_reused == 3
    np.testing.assert_array_equal(again["C"], fresh["C"])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_output_chunk_is_an_error_then_repaired_with_verify(tmp_path, damage):
    store = tmp_path / "s"
    fresh = _run(store)
    f = store / "outputs" / "C" / "c" / "1" / "0"
    if damage == "flip":
        _flip_byte(f)
    else:
        f.write_bytes(f.read_bytes()[:7])
    cheap = _run(store)  # presence checks pass; the data are never returned as numbers
    assert np.all(cheap.status == 0)
    with pytest.raises(StoreCorruptError, match="verify=True"):
        cheap["C"]
    with pytest.warns(StoreRepairWarning):
        verified = _run(store, verify=True)
    assert verified.chunks_repaired == (1,)
    np.testing.assert_array_equal(verified["C"], fresh["C"])


def test_corrupt_status_chunk_is_recomputed(tmp_path):
    store = tmp_path / "s"
    fresh = _run(store)
    _flip_byte(store / "status" / "c" / "3")
    with pytest.warns(StoreRepairWarning):
        again = _run(store)
    np.testing.assert_array_equal(again.status, fresh.status)
    np.testing.assert_array_equal(again["C"], fresh["C"])


def test_truncated_manifest_is_refused_with_a_message(tmp_path):
    store = tmp_path / "s"
    _run(store)
    m = store / "manifest.json"
    m.write_text(m.read_text()[:40])
    with pytest.raises(StoreError, match="manifest.json cannot be read"):
        _run(store)
    assert (store / "outputs").exists()  # nothing deleted


# ---------------------------------------------------------------- one writer
def test_live_lock_refuses_and_dead_lock_is_taken_over(tmp_path):
    store = tmp_path / "s"
    _run(store)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": sleeper.pid, "host": socket.gethostname(), "since": "now"}
        (store / ".lock").write_text(json.dumps(lock))
        with pytest.raises(StoreLockedError, match=f"process {sleeper.pid} on host"):
            _run(store)
    finally:
        sleeper.kill()
        sleeper.wait()
    again = _run(store)  # the holder is gone: its lock is taken over
    assert again.chunks_reused == 4
    assert not (store / ".lock").exists()


def test_two_writers_started_together(tmp_path):
    """Two processes on one store: one computes, the other is refused by the lock (or,
    if it starts after the first has finished, reuses every chunk); never a Zarr error,
    never both computing."""
    store = tmp_path / "cohort.zarr"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    cmd = [sys.executable, str(HERE / "_cohort_worker.py"), "store", str(store), "2"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    ok = [o for p, (o, e) in zip(procs, outs) if p.returncode == 0]
    errs = [e for p, (o, e) in zip(procs, outs) if p.returncode != 0]
    if codes[0] == codes[1] == 0:
        assert sorted(o.strip() for o in ok) == ["computed 0 reused 300", "computed 300 reused 0"]
    else:
        assert codes[0] == 0 and len(errs) == 1, errs
        assert "StoreLockedError" in errs[0] and "is being written by process" in errs[0]
        assert ok[0].strip() == "computed 300 reused 0"
    res = worker.run(store=store, chunk_size=2)
    assert res.chunks_computed == 0 and res.chunks_reused == 300
    np.testing.assert_array_equal(res["C"], worker.run(chunk_size=2)["C"])


# ---------------------------------------------------------------- reading back
def test_lazy_reads_and_streamed_summary(tmp_path):
    r = _run(tmp_path / "s", chunk_size=7)
    C = r["C"]
    lazy = r.lazy("C")
    assert type(lazy).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(lazy), C)
    ds = r.to_xarray()
    assert ds["C"].chunks is not None  # dask-backed
    np.testing.assert_allclose(ds["C"].mean("patient").values, C.mean(axis=0))
    s = r.summarise("C")
    assert s["n_ok"] == 40 and s["n_failed"] == 0
    np.testing.assert_allclose(s["mean"], C.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s["sd"], C.std(axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_array_equal(s["max"], C.max(axis=0))


# ---------------------------------------------------------------- several processes
def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("n_proc", [2])
def test_distributed_processes_write_a_store_bitwise_equal_to_one(tmp_path, n_proc):
    one = tmp_path / "one.zarr"
    worker.run(store=one, chunk_size=50)
    many = tmp_path / "many.zarr"
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(HERE), XLA_FLAGS="")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_cohort_worker.py"),
                "dist",
                str(many),
                "50",
                str(rank),
                str(n_proc),
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(n_proc)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    import zarr

    a, b = zarr.open_group(str(one), mode="r"), zarr.open_group(str(many), mode="r")
    np.testing.assert_array_equal(a["outputs/C"][...], b["outputs/C"][...])
    np.testing.assert_array_equal(a["status"][...], b["status"][...])
    rec_one = {int(f.stem): json.loads(f.read_text()) for f in (one / "chunks").glob("*.json")}
    rec_many = {int(f.stem): json.loads(f.read_text()) for f in (many / "chunks").glob("*.json")}
    assert sorted(rec_many) == list(range(12))
    for c in rec_many:
        assert rec_many[c]["sha256"] == rec_one[c]["sha256"]
        assert rec_many[c]["process"] == c % n_proc  # the manifest says who wrote what
        assert rec_many[c]["n_processes"] == n_proc
    assert not (many / ".lock").exists()


# ---------------------------------------------------------------- trials
def test_trial_rerun_reuses_its_stores_and_verify_repairs(tmp_path):
    from test_trial import _small, _spec

    from twinjax.trial import Trial

    t = Trial.from_dict(_small(_spec(), n=8))
    first = t.run(out=tmp_path, progress=False)
    stores = sorted(p for p in (tmp_path / "results.zarr").iterdir() if p.is_dir())
    assert len(stores) == len(t.arms)
    victim = sorted((stores[0] / "outputs").iterdir())[0] / "c" / "0" / "0"
    _flip_byte(victim)
    with pytest.warns(StoreRepairWarning):
        again = t.run(out=tmp_path, progress=False, verify=True)
    cols = [e.name for e in t.endpoints]
    np.testing.assert_array_equal(
        again.table[cols].to_numpy(float), first.table[cols].to_numpy(float)
    )
