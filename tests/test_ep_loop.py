"""The Rush-Larsen beat loop carries its state packed: same numbers as a dict carry.

``ep._solver.beat`` keeps the state and the biomarker accumulators as two stacked
arrays in its ``while_loop`` (fewer loop buffers and copies on the CPU). That is a
change of layout only: here a plain loop that carries dicts of ``(N,)`` arrays, written
from the same step formulas (the voltage rule and the error controller), must give the
same state and biomarkers after two beats of a small Luo-Rudy population (differences
only at rounding level).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax.models import ep
from twinjax.models.ep import _biomarkers as bm
from twinjax.models.ep import _solver


def _dict_carry_beat(model, solver, p, y):
    """One beat, every cell, with the state and accumulators carried as dicts."""
    bcl = p["BCL"]
    N = bcl.shape[0]
    t0 = jnp.zeros((N,), bcl.dtype)

    def cond(c):
        t, _, _, it, status, _ = c
        return jnp.any((t < bcl) & (status == 0)) & (it < solver.max_steps)

    def body(c):
        t, y, acc, it, status, h = c
        active = (t < bcl) & (status == 0)
        g0, d0, _ = model.evaluate(t, y, p)
        dt = jnp.minimum(solver.dv_max / (jnp.abs(d0["V"]) + 1e-12), h)
        dt = jnp.clip(dt, solver.dt_min, solver.dt_max)
        dt = jnp.where(t < p["stim_dur"], jnp.minimum(dt, p["stim_dur"] - t), dt)
        last = dt >= bcl - t
        dt = jnp.where(active, jnp.where(last, bcl - t, dt), 0.0)
        ym = {k: v for k, v in y.items()}
        for k in model.gates:
            inf, tau = g0[k]
            ym[k] = inf + (y[k] - inf) * jnp.exp(-0.5 * dt / tau)
        for k, dk in d0.items():
            ym[k] = y[k] + 0.5 * dt * dk
        g1, d1, c1 = model.evaluate(t + 0.5 * dt, ym, p)
        y1 = {}
        for k in model.gates:
            inf, tau = g1[k]
            y1[k] = inf + (y[k] - inf) * jnp.exp(-dt / tau)
        for k, dk in d1.items():
            y1[k] = y[k] + dt * dk
        ok = active & jnp.all(jnp.stack([jnp.isfinite(v) for v in y1.values()]), axis=0)
        y_new = {k: jnp.where(ok, y1[k], y[k]) for k in y}
        t_new = jnp.where(ok, jnp.where(last, bcl, t + dt), t)
        qnet = sum(c1[k] for k in model.qnet_currents)
        acc = bm.update_acc(acc, ok, t, dt, y["V"], y_new["V"], d0["V"], d1["V"], qnet)
        status = jnp.where(active & ~ok, 1, status)
        # error controller: |dt (d1 - d0)| against rtol (|y| + 10 mV for V)
        err = 0.0 * t
        for k in d0:
            scale = solver.rtol * (jnp.abs(y[k]) + (10.0 if k == "V" else 0.0))
            err = jnp.maximum(err, jnp.abs(dt * (d1[k] - d0[k])) / scale)
        fac = jnp.clip(0.9 / jnp.sqrt(jnp.maximum(err, 1e-12)), 0.2, 2.0)
        h = jnp.where(dt > 0, dt * fac, h)
        return t_new, y_new, acc, it + 1, status, h

    h0 = jnp.full((N,), solver.dt_max, bcl.dtype)
    c0 = (t0, y, bm.init_acc(y["V"]), jnp.zeros((), jnp.int32), jnp.zeros((N,), jnp.int32), h0)
    _, y, acc, it, _, _ = jax.lax.while_loop(cond, body, c0)
    return y, bm.finish(acc, y["V"]), it


def test_packed_loop_equals_dict_carry_loop():
    model = ep.LuoRudy1991()
    solver = ep.RushLarsen()
    gK = float(model.defaults()["gK"])
    params = {"gK": jnp.asarray([1.0, 0.7, 1.4]) * gK}
    p, y0, _ = _solver.batched_inputs(model, params, None, None)

    @jax.jit
    def reference(p, y):
        for _ in range(2):
            y, bio, it = _dict_carry_beat(model, solver, p, y)
        return y, bio, it

    y_ref, bio_ref, it_ref = reference(p, y0)
    res = ep.pace(model, params, 2, record="last", solver=solver)
    assert np.all(np.asarray(res.status) == 0)
    assert int(np.asarray(res.biomarkers["steps"])[-1, 0]) == int(it_ref)
    for k in model.state_names:
        np.testing.assert_allclose(res.state[k], y_ref[k], rtol=1e-12, atol=1e-300, err_msg=k)
    for k in ("APD90", "APD50", "APD30", "V_peak", "dVdt_max", "qNet", "V_rest"):
        np.testing.assert_allclose(res.biomarkers[k][-1], bio_ref[k], rtol=1e-12, err_msg=k)
    apd = np.asarray(res.biomarkers["APD90"][-1])
    assert np.all(np.isfinite(apd)) and apd[1] > apd[0] > apd[2]  # gK lower -> longer APD


_SPLIT = """
import sys
import jax
import numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
from twinjax.models import ep
from twinjax.models.ep import _shard

# at most one device per 8 cells: the populations below go on 2 of the 3 devices
assert jax.device_count() == 3
counts = {nb: _shard.device_count(None, nb, nb) for nb in (7, 15, 16, 20, 23, 24, 100)}
assert counts == {7: 1, 15: 1, 16: 2, 20: 2, 23: 2, 24: 3, 100: 3}, counts
assert _shard.device_count(2, 100, 100) == 2 and _shard.device_count(None, 1, None) == 1


def flat(tag, r):
    out = {f"{tag}_bio_{k}": v for k, v in r.biomarkers.items()}
    out.update({f"{tag}_state_{k}": v for k, v in r.state.items()})
    out.update({f"{tag}_trace_{k}": v for k, v in (r.trace or {}).items()})
    out[f"{tag}_status"] = r.status
    return out


def cases(devices):
    lr = ep.LuoRudy1991()
    gK = float(lr.defaults()["gK"])
    out = flat("lr", ep.pace(lr, {"gK": np.linspace(0.6, 1.4, 16) * gK}, 2,
                             record="all", save_every=25.0, devices=devices))
    out.update(flat("lr20", ep.pace(lr, {"gK": np.linspace(0.6, 1.4, 20) * gK}, 2,
                                    record="last", save_every=25.0, devices=devices)))
    pop = ep.cell_population.sample(ep.ORd(), jax.random.key(0), 16, sigma=0.3)
    out.update(flat("ord", ep.pace(ep.ORd(), pop, 1, record="last", devices=devices)))
    cipa = ep.CiPAORd()
    dof = ep.cipa_compound_params(cipa, "dofetilide", np.linspace(0, 4, 16))
    out.update(flat("cipa", ep.pace_cipa(cipa, dof, 1, devices=devices)))
    return out


out = {f"one_{k}": v for k, v in cases(1).items()}
out.update({f"two_{k}": v for k, v in cases(None).items()})
np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in out.items()})
"""


def test_pace_split_over_two_devices_is_bitwise_the_same(tmp_path):
    """``pace`` split over two host devices (each paces its own share of the cells)
    gives the one-device numbers bitwise: states, every biomarker (``steps``
    included: the largest over the devices), status and saved trace. LR1991 (16
    cells, two beats, saves), ORd (16 cells, one beat), CiPAORd with dofetilide
    (``pace_cipa``, 16 cells, one beat) and LR1991 with 20 cells (``record="last"``,
    saves): shares of 10 cells padded to 16, the padded path. The process has three
    devices and ``devices=None``: at most one device per 8 cells picks two.

    Both device counts run in one subprocess (JAX's host device count is fixed when
    it starts). 20 cells on one device leave 4 cells to XLA's leftover-cell code,
    which may round differently (see ``_shard.SHARE_MULTIPLE``); for these models
    and XLA flags it does not, so the check is bitwise here too."""
    import os
    import subprocess
    import sys

    script = tmp_path / "split.py"
    script.write_text(_SPLIT)
    path = tmp_path / "split.npz"
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=3")
    subprocess.run([sys.executable, str(script), str(path)], env=env, check=True, timeout=900)
    res = np.load(path)
    one = sorted(k[4:] for k in res.files if k.startswith("one_"))
    assert one == sorted(k[4:] for k in res.files if k.startswith("two_"))
    assert {"lr_trace_V", "lr20_trace_V", "lr20_bio_steps", "cipa_bio_qNet"} <= set(one)
    for k in one:
        np.testing.assert_array_equal(res[f"two_{k}"], res[f"one_{k}"], err_msg=k)
    assert res["one_lr20_bio_APD90"].shape == (1, 20) and res["one_lr20_trace_V"].shape[1] == 20
    for k in ("lr_status", "lr20_status", "ord_status", "cipa_status"):
        assert np.all(res[f"one_{k}"] == 0), k


def test_pace_refuses_a_device_count_this_process_lacks():
    model = ep.LuoRudy1991()
    gK = np.full(16, float(model.defaults()["gK"]))
    for bad in (0, 2, 1.5, True):
        with pytest.raises(ValueError, match="devices"):
            ep.pace(model, {"gK": gK}, devices=bad)
    with pytest.raises(ValueError, match="devices"):
        ep.pace_cipa(ep.CiPAORd(), {"BCL": np.full(16, 2000.0)}, devices=2)
