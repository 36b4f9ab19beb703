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


_SHARDED = """
import sys
import jax
import numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
from twinjax.models import ep
from twinjax.models.ep import _shard
assert jax.device_count() == 2 and _shard.device_count(None, 16, 16) == 2  # split
out = {}
lr = ep.LuoRudy1991()
gK = np.linspace(0.6, 1.4, 16) * float(lr.defaults()["gK"])
r = ep.pace(lr, {"gK": gK}, 2, record="all", save_every=25.0)
out.update({f"lr_bio_{k}": v for k, v in r.biomarkers.items()})
out.update({f"lr_state_{k}": v for k, v in r.state.items()})
out.update({f"lr_trace_{k}": v for k, v in r.trace.items()})
out["lr_status"] = r.status
pop = ep.cell_population.sample(ep.ORd(), jax.random.key(0), 16, sigma=0.3)
r = ep.pace(ep.ORd(), pop, 1, record="last")
out.update({f"ord_bio_{k}": v for k, v in r.biomarkers.items()})
out.update({f"ord_state_{k}": v for k, v in r.state.items()})
cipa = ep.CiPAORd()
r = ep.pace_cipa(cipa, ep.cipa_compound_params(cipa, "dofetilide", np.linspace(0, 4, 16)), 1)
out.update({f"cipa_bio_{k}": v for k, v in r.biomarkers.items()})
out.update({f"cipa_state_{k}": v for k, v in r.state.items()})
np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in out.items()})
"""


def test_pace_split_over_two_devices_is_bitwise_the_same(tmp_path):
    """``pace`` on two host devices (each paces its own half of the cells) gives the
    one-device numbers bitwise: states, every biomarker (``steps`` included: the
    largest over the devices), status and saved trace; LR1991 (16 cells, two beats,
    saves), ORd (16 cells, one beat) and CiPAORd with dofetilide (``pace_cipa``, 16
    cells, one beat)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED)
    path = tmp_path / "sharded.npz"
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2")
    subprocess.run([sys.executable, str(script), str(path)], env=env, check=True, timeout=900)
    two = np.load(path)
    assert jax.device_count() == 1

    lr = ep.LuoRudy1991()
    gK = np.linspace(0.6, 1.4, 16) * float(lr.defaults()["gK"])
    r = ep.pace(lr, {"gK": gK}, 2, record="all", save_every=25.0)
    one = {f"lr_bio_{k}": v for k, v in r.biomarkers.items()}
    one.update({f"lr_state_{k}": v for k, v in r.state.items()})
    one.update({f"lr_trace_{k}": v for k, v in r.trace.items()})
    one["lr_status"] = r.status
    pop = ep.cell_population.sample(ep.ORd(), jax.random.key(0), 16, sigma=0.3)
    r = ep.pace(ep.ORd(), pop, 1, record="last")
    one.update({f"ord_bio_{k}": v for k, v in r.biomarkers.items()})
    one.update({f"ord_state_{k}": v for k, v in r.state.items()})
    cipa = ep.CiPAORd()
    r = ep.pace_cipa(cipa, ep.cipa_compound_params(cipa, "dofetilide", np.linspace(0, 4, 16)), 1)
    one.update({f"cipa_bio_{k}": v for k, v in r.biomarkers.items()})
    one.update({f"cipa_state_{k}": v for k, v in r.state.items()})
    assert sorted(one) == sorted(two.files)
    for k, v in one.items():
        np.testing.assert_array_equal(two[k], np.asarray(v), err_msg=k)
    assert np.all(two["lr_status"] == 0)


def test_pace_refuses_a_device_count_this_process_lacks():
    model = ep.LuoRudy1991()
    gK = np.full(16, float(model.defaults()["gK"]))
    for bad in (0, 2, 1.5, True):
        with pytest.raises(ValueError, match="devices"):
            ep.pace(model, {"gK": gK}, devices=bad)
    with pytest.raises(ValueError, match="devices"):
        ep.pace_cipa(ep.CiPAORd(), {"BCL": np.full(16, 2000.0)}, devices=2)
