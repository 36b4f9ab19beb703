"""Cross-check against Myokit: the Luo-Rudy 1991 model shipped with Myokit.

Myokit (Clerx M, et al. Prog Biophys Mol Biol 120:100-114, 2016) loads the same
equations (its ``example.mmt``) and simulates them with CVODE; its Simulation needs a C
compiler and the SUNDIALS library, which pip does not install. Where SUNDIALS is missing
the reference is still Myokit's model: its equations are written out as a Python
function by Myokit's own expression writer and integrated with SciPy's LSODA at
``rtol = atol = 1e-10``, one stimulus interval at a time so that no step crosses the
switch. That reference needs only pip packages. Measured over the 5 beats, it matches
Myokit's CVODE (rtol 1e-10, max step 0.01 ms) to within 3e-8 relative in every biomarker
checked here (APD30 130.71244 ms in the first beat for both; twinjax: 131.49463, +0.60 %), and
:func:`test_scipy_reference_is_converged` checks it against rtol 1e-8 and Radau.

``TWINJAX_MYOKIT_REFERENCE=scipy`` forces the SciPy reference where CVODE works;
``=cvode`` makes a missing CVODE an error instead of a fallback.
"""

import math
import os

import numpy as np
import pytest

from twinjax.models import ep

myokit = pytest.importorskip("myokit")
pytest.importorskip("myokit.formats.python")
scipy_integrate = pytest.importorskip("scipy.integrate")

N_BEATS = 5
BCL, STIM_DUR = 1000.0, 0.5  # ms: as ep.pace's defaults
LOG_STEP = 0.005  # ms between logged points


def _model():
    path = os.path.join(os.path.dirname(myokit.__file__), "_bin", "example.mmt")
    model, _, _ = myokit.load(path)
    return model


def _cvode_traces(model):
    """Membrane potential per beat from Myokit's CVODE simulation (needs SUNDIALS)."""
    proto = myokit.Protocol()
    proto.schedule(1.0, 0.0, STIM_DUR, BCL, 0)  # level, start, duration, period
    sim = myokit.Simulation(model, proto)
    sim.set_tolerance(1e-10, 1e-10)
    sim.set_max_step_size(0.01)
    out = []
    for b in range(N_BEATS):
        d = sim.run(BCL, log=["engine.time", "membrane.V"], log_interval=LOG_STEP)
        out.append((np.asarray(d["engine.time"]) - BCL * b, np.asarray(d["membrane.V"])))
    return out


def _python_rhs(model):
    """Myokit's equations as ``f(t, y, pace) -> dy/dt`` (states in ``model.states()`` order).

    Each variable gets a plain Python name; Myokit's ``PythonExpressionWriter`` writes every
    equation, in Myokit's solvable order, and the variables bound to time and pacing take
    ``t`` and ``pace`` (other bound variables, such as a single cell's diffusion current,
    keep their equations, as in a single-cell Myokit Simulation).
    """
    states = list(model.states())
    name = {v: f"v{i}" for i, v in enumerate(model.variables(deep=True))}

    def lhs(x):
        if isinstance(x, myokit.Derivative):
            return "d_" + name[x.var()]
        return name[x.var() if isinstance(x, myokit.Name) else x]

    writer = myokit.formats.python.PythonExpressionWriter()
    writer.set_lhs_function(lhs)
    body = [f"{name[s]} = y[{i}]" for i, s in enumerate(states)]
    bound = {"time": "t", "pace": "pace"}
    for group in model.solvable_order().values():
        for eq in group.equations():
            var = eq.lhs.var()
            if var.binding() in bound:
                body.append(f"{name[var]} = {bound[var.binding()]}")
            else:  # other bindings (a cable's diffusion current) keep their value, as in CVODE
                body.append(writer.eq(eq))
    body.append("return [" + ", ".join("d_" + name[s] for s in states) + "]")
    src = "def rhs(t, y, pace):\n" + "".join(f"    {line}\n" for line in body)
    scope = {"math": math}
    exec(compile(src, f"<myokit rhs: {model.name()}>", "exec"), scope)
    return scope["rhs"]


def _scipy_traces(model, rtol=1e-10, method="LSODA", n_beats=N_BEATS):
    """Membrane potential per beat: Myokit's model integrated by SciPy (no SUNDIALS)."""
    rhs = _python_rhs(model)
    iv = [s.qname() for s in model.states()].index("membrane.V")
    y = np.asarray(model.initial_values(as_floats=True), dtype=float)
    t_log = np.arange(round(BCL / LOG_STEP)) * LOG_STEP
    out = []
    for b in range(n_beats):
        v = []
        for t0, t1, pace in ((0.0, STIM_DUR, 1.0), (STIM_DUR, BCL, 0.0)):
            sol = scipy_integrate.solve_ivp(
                lambda t, x, pace=pace: rhs(t, x, pace),
                (t0, t1),
                y,
                method=method,
                rtol=rtol,
                atol=rtol,
                dense_output=True,
            )
            assert sol.success, (b, t0, sol.message)
            v.append(sol.sol(t_log[(t_log >= t0) & (t_log < t1)])[iv])
            y = sol.y[:, -1]
        out.append((t_log, np.concatenate(v)))
    return out


def _myokit_beats():
    model = _model()
    choice = os.environ.get("TWINJAX_MYOKIT_REFERENCE", "")
    traces = None
    if choice != "scipy":
        try:
            traces = _cvode_traces(model)
        except Exception:  # no SUNDIALS (or no C compiler): Myokit cannot build CVODE
            if choice == "cvode":
                raise
    if traces is None:
        traces = _scipy_traces(model)
    return [ep.from_trace(t, v) for t, v in traces]


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


def test_scipy_reference_is_converged():
    """The SciPy reference at rtol 1e-10 agrees with rtol 1e-8 and with Radau (one beat)."""
    model = _model()
    ((t, v),) = _scipy_traces(model, rtol=1e-10, n_beats=1)
    ref = ep.from_trace(t, v)
    for kw in (dict(rtol=1e-8), dict(rtol=1e-9, method="Radau")):
        ((t, v),) = _scipy_traces(model, n_beats=1, **kw)
        other = ep.from_trace(t, v)
        for k in ("APD90", "APD50", "APD30", "V_peak", "dVdt_max"):
            assert other[k] == pytest.approx(ref[k], rel=1e-5), (kw, k)
