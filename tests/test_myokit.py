"""Cross-check against Myokit: the Luo-Rudy 1991 model shipped with Myokit.

Myokit (Clerx M, et al. Prog Biophys Mol Biol 120:100-114, 2016) simulates the same
equations (its ``example.mmt``) with CVODE; its Simulation needs a C compiler and
SUNDIALS headers. Where those are missing the test falls back to Myokit's
``Simulation1d`` (forward Euler in C, no SUNDIALS) with a 1 us step.
"""

import os

import numpy as np
import pytest

from twinjax.models import ep

myokit = pytest.importorskip("myokit")

N_BEATS = 5


def _myokit_beats():
    path = os.path.join(os.path.dirname(myokit.__file__), "_bin", "example.mmt")
    model, _, _ = myokit.load(path)
    proto = myokit.Protocol()
    proto.schedule(1.0, 0.0, 0.5, 1000.0, 0)  # level, start, duration, period: as ep.pace
    beats = []
    try:
        sim = myokit.Simulation(model, proto)
        sim.set_tolerance(1e-10, 1e-10)
        sim.set_max_step_size(0.01)
        prefix = ""
    except Exception:  # no SUNDIALS: Myokit's own forward-Euler simulation
        sim = myokit.Simulation1d(model, proto, ncells=1)
        sim.set_step_size(0.001)
        prefix = "0."
    for b in range(N_BEATS):
        d = sim.run(1000.0, log=["engine.time", prefix + "membrane.V"], log_interval=0.005)
        t = np.asarray(d["engine.time"]) - 1000.0 * b
        beats.append(ep.from_trace(t, np.asarray(d[prefix + "membrane.V"])))
    return beats


def test_luo_rudy_apd90_matches_myokit():
    ref = _myokit_beats()
    res = ep.pace(ep.LuoRudy1991(), {}, N_BEATS)
    assert int(res.status) == 0
    for b in (0, N_BEATS - 1):
        ours = {k: float(v[b]) for k, v in res.biomarkers.items()}
        for k in ("APD90", "APD50", "APD30"):
            assert ours[k] == pytest.approx(ref[b][k], rel=0.01), (b, k)
        assert ours["APD90"] == pytest.approx(ref[b]["APD90"], rel=1e-3)  # in fact ~1e-4
        assert ours["V_peak"] == pytest.approx(ref[b]["V_peak"], abs=0.5)
        assert ours["V_rest"] == pytest.approx(ref[b]["V_rest"], abs=0.05)
        assert ours["dVdt_max"] == pytest.approx(ref[b]["dVdt_max"], rel=0.02)
