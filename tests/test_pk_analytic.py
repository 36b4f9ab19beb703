"""Linear PK against closed-form solutions, superposition, steady state, mass balance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pk_analytic as ref
import pytest
from scipy.integrate import solve_ivp

import twinjax as tj
from twinjax.models import pk

TIGHT = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12)
P1 = dict(CL=4.0, V=30.0)
P2 = dict(CL=4.0, V=30.0, Q=8.0, V2=60.0)
P3 = dict(CL=4.0, V=30.0, Q=8.0, V2=60.0, Q3=1.5, V3=150.0)
PARAMS = {1: P1, 2: P2, 3: P3}
TIMES = np.concatenate([np.linspace(0.0, 48.0, 97), [60.0, 72.0]])


def _maxrel(a, b, floor=1e-6):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.maximum(np.abs(b), floor * np.max(np.abs(b)))
    return float(np.max(np.abs(a - b) / scale))


def _expected(n, route, doses, p, ka=1.3, F=1.0, tlag=0.0):
    a, l = ref.macro_constants(**p)
    c = np.zeros_like(TIMES)
    for t0, amt, dur in doses:
        if route == "bolus":
            c += ref.bolus(TIMES, amt, a, l, t0)
        elif route == "infusion":
            c += ref.infusion(TIMES, amt, dur, a, l, t0)
        else:
            c += ref.oral(TIMES, amt, ka, a, l, F=F, t0=t0 + tlag)
    return c


CASES = [
    (n, route, multiple)
    for n in (1, 2, 3)
    for route in ("bolus", "infusion", "oral")
    for multiple in (False, True)
]


def _doses(route, multiple):
    dur = 2.5 if route == "infusion" else 0.0
    return [(0.0, 100.0, dur)] + ([(12.0, 50.0, dur), (24.0, 80.0, dur)] if multiple else [])


@functools.cache
def _closed_form_runs(n, absorption):
    """Every (route, multiple) case of one model, as the patients of one simulate call.

    One compiled program per model instead of one per regimen shape (one or three
    records, bolus or infusion): ``solvers.Diffrax`` integrates each patient of a batch
    on its own (its own adaptive steps), so each case is the same solve as alone.
    """
    routes = ("oral",) if absorption == "first_order" else ("bolus", "infusion")
    cases = [(route, multiple) for route in routes for multiple in (False, True)]
    model = pk.Compartmental(n_cmt=n, absorption=absorption)
    p = dict(PARAMS[n])
    cmt = "depot" if absorption == "first_order" else "central"
    if absorption == "first_order":
        p.update(KA=1.3, F=0.7, TLAG=0.25)
    regimens = [
        tj.Regimen([tj.Dose(amt, cmt, t0, dur=dur) for t0, amt, dur in _doses(*c)]) for c in cases
    ]
    r = tj.simulate(model, p, regimens, TIMES, solver=tj.solvers.Diffrax(rtol=1e-8, atol=1e-10))
    return {c: (int(r.status[i]), np.asarray(r.outputs["C"][i])) for i, c in enumerate(cases)}


@pytest.mark.parametrize("n,route,multiple", CASES)
def test_closed_form_float64(n, route, multiple):
    status, c = _closed_form_runs(n, "first_order" if route == "oral" else "iv")[(route, multiple)]
    assert status == 0
    want = _expected(n, route, _doses(route, multiple), PARAMS[n], ka=1.3, F=0.7, tlag=0.25)
    assert _maxrel(c, want) < 1e-6


@pytest.mark.parametrize("n", [1, 2, 3])
def test_closed_form_float32(n):
    model = pk.Compartmental(n_cmt=n, absorption="first_order")
    p = dict(PARAMS[n], KA=1.3, F=0.7)
    doses = [(0.0, 100.0, 0.0), (12.0, 100.0, 0.0)]
    reg = tj.Regimen([tj.Dose(a, "depot", t) for t, a, _ in doses])
    r = tj.simulate(
        model, p, reg, TIMES, dtype=jnp.float32, solver=tj.solvers.Diffrax(rtol=1e-6, atol=1e-6)
    )
    assert r.outputs["C"].dtype == jnp.float32
    want = _expected(n, "oral", doses, PARAMS[n], ka=1.3, F=0.7)
    assert _maxrel(r.outputs["C"], want, floor=1e-3) < 1e-3


def test_macro_constants_agree_with_matrix_exponential():
    """The two independent references agree (checks the reference itself)."""
    model = pk.three_compartment()
    doses = [(0.0, 100.0, 0, 0.0), (6.0, 40.0, 0, 3.0)]
    i_c = model.state_names.index("central")
    doses = [(t, a, i_c, d) for t, a, _, d in doses]
    y = ref.linear_system(model, P3, doses, TIMES)
    a, l = ref.macro_constants(**P3)
    c = ref.bolus(TIMES, 100.0, a, l) + ref.infusion(TIMES, 40.0, 3.0, a, l, 6.0)
    assert _maxrel(y[:, i_c] / P3["V"], c) < 1e-9


def test_transit_compartments_against_matrix_exponential():
    model = pk.one_compartment("transit", n_transit=3)
    p = dict(P1, KA=0.9, MTT=3.0, F=0.8)
    reg = tj.Regimen([tj.Dose(100.0, "depot", 0.0), tj.Dose(100.0, "depot", 10.0)])
    r = tj.simulate(model, p, reg, TIMES, solver=tj.solvers.Diffrax(rtol=1e-8, atol=1e-10))
    i_d = model.state_names.index("depot")
    y = ref.linear_system(model, p, [(0.0, 80.0, i_d, 0.0), (10.0, 80.0, i_d, 0.0)], TIMES)
    for i, s in enumerate(model.state_names):
        assert _maxrel(r.states[s], y[:, i], floor=1e-4) < 1e-6, s


# ------------------------------------------------------------ tight-tolerance runs
# The tests below that simulate one model at the TIGHT tolerances take their patients
# from one simulate call per model (one compiled program per model instead of one per
# test): each case is a patient with its own parameters, regimen and save times (padded
# to the longest with its last time; the padded saves are dropped). solvers.Diffrax
# integrates each patient of a batch on its own adaptive steps, so each case is the same
# solve as alone.

MM_PARAMS = dict(V=30.0, VMAX=40.0, KM=2.0)
SUPERPOSITION_TIMES = np.linspace(0.0, 72.0, 145)
TAU, N_DOSES = 12.0, 60  # 60 doses = 720 h >> the terminal half-life (~16 h)
T_LAST = TAU * (N_DOSES - 1)
SS_TIMES = T_LAST + np.linspace(0.0, TAU, 25)
RESET_TIMES = np.array([0.0, 5.0, 10.0, 10.0001, 15.0, 20.0])
MASS_BALANCE = {  # test id: (model, the key of its tight run)
    "1cmt": (pk.one_compartment(), "1cmt"),
    "2cmt-oral": (pk.two_compartment("first_order"), "2cmt-oral"),
    "3cmt-transit": (pk.three_compartment("transit", n_transit=2), "3cmt-transit"),
    "mm": (pk.one_compartment(elimination="michaelis_menten"), "mm"),
}


def _mass_balance_regimen(cmt):
    return tj.Regimen(
        [
            tj.Dose(100.0, cmt, 0.0),
            tj.Dose(50.0, cmt, 5.0, dur=4.0),
            tj.Dose(70.0, cmt, 30.0, ii=8.0, addl=2),
        ]
    )


def _superposition_cases(cmt):
    """The five-dose regimen and each of its doses alone."""
    regimens = [tj.Regimen.repeat(100.0, cmt, every=12.0, n=5)] + [
        tj.Regimen([tj.Dose(100.0, cmt, 12.0 * k)]) for k in range(5)
    ]
    return [(("superposition", k), P2, r, SUPERPOSITION_TIMES) for k, r in enumerate(regimens)]


def _steady_state_cases(kind, cmt, p):
    """60 repeated doses and the SS=1 record."""
    dur = 2.0 if kind == "infusion" else 0.0
    many = tj.Regimen.repeat(100.0, cmt, every=TAU, n=N_DOSES, dur=dur)
    ss = tj.Regimen([tj.Dose(100.0, cmt, T_LAST, dur=dur, ii=TAU, ss=1)])
    return [(("many", kind), p, many, SS_TIMES), (("ss", kind), p, ss, SS_TIMES)]


def _tight_cases(key):
    if key == "1cmt":
        reset = tj.Regimen(
            [
                tj.Dose(100.0, "central", 0.0),
                tj.Reset(10.0),
                tj.Dose(50.0, "central", 15.0, evid=4),
            ]
        )
        cases = [("mass balance", {}, _mass_balance_regimen("central"), TIMES)]
        return pk.one_compartment(), cases + [("reset", P1, reset, RESET_TIMES)]
    if key == "mm":
        cases = [("scipy", MM_PARAMS, tj.Regimen([tj.Dose(300.0, "central")]), TIMES)]
        cases.append(("mass balance", {}, _mass_balance_regimen("central"), TIMES))
        return pk.one_compartment(elimination="michaelis_menten"), cases
    if key == "2cmt-iv":
        cases = _superposition_cases("central")
        cases += _steady_state_cases("bolus", "central", P2)
        cases += _steady_state_cases("infusion", "central", P2)
        return pk.two_compartment("iv"), cases
    if key == "2cmt-oral":
        cases = _superposition_cases("depot")
        cases += _steady_state_cases("oral", "depot", dict(P2, KA=1.0))
        cases.append(("mass balance", {}, _mass_balance_regimen("depot"), TIMES))
        return pk.two_compartment("first_order"), cases
    assert key == "3cmt-transit"
    cases = [("mass balance", {}, _mass_balance_regimen("depot"), TIMES)]
    return pk.three_compartment("transit", n_transit=2), cases


@functools.cache
def _tight_runs(key):
    """``{case: {"status", "states", "C"}}`` of every case of one model, simulated as
    the patients of one call; parameters a case does not give take their defaults."""
    model, cases = _tight_cases(key)
    p = {
        k: jnp.asarray([c[1].get(k, model.param(k).value) for c in cases])
        for k in {k for c in cases for k in c[1]}
    }
    T = max(len(c[3]) for c in cases)
    times = np.stack([np.concatenate([c[3], np.full(T - len(c[3]), c[3][-1])]) for c in cases])
    r = tj.simulate(model, p, [c[2] for c in cases], jnp.asarray(times), solver=TIGHT)
    out = {}
    for i, (name, _, _, ts) in enumerate(cases):
        n = len(ts)
        out[name] = dict(
            status=int(r.status[i]),
            states={s: np.asarray(v[i, :n]) for s, v in r.states.items()},
            C=np.asarray(r.outputs["C"][i, :n]),
        )
    return out


def test_michaelis_menten_against_scipy_radau():
    p = MM_PARAMS
    r = _tight_runs("mm")["scipy"]

    def f(t, y):
        c = y[0] / p["V"]
        return [-p["VMAX"] * c / (p["KM"] + c)]

    sol = solve_ivp(
        f, (0, TIMES[-1]), [300.0], method="Radau", t_eval=TIMES, rtol=1e-12, atol=1e-12
    )
    assert _maxrel(r["states"]["central"], sol.y[0], floor=1e-6) < 1e-6


@pytest.mark.parametrize("absorption", ["iv", "first_order"])
def test_superposition(absorption):
    runs = _tight_runs("2cmt-iv" if absorption == "iv" else "2cmt-oral")
    c = [runs[("superposition", k)]["C"] for k in range(6)]
    total = np.zeros(SUPERPOSITION_TIMES.shape)
    for k in range(5):
        total += c[1 + k]
    assert _maxrel(c[0], total) < 1e-8


@pytest.mark.parametrize("kind", ["bolus", "oral", "infusion"])
def test_steady_state_equals_limit_of_repeated_doses(kind):
    runs = _tight_runs("2cmt-oral" if kind == "oral" else "2cmt-iv")
    many, ss = runs[("many", kind)]["C"], runs[("ss", kind)]["C"]
    assert _maxrel(ss, many) < 1e-7


@pytest.mark.parametrize("which", list(MASS_BALANCE))
def test_mass_balance(which):
    model, key = MASS_BALANCE[which]
    r = _tight_runs(key)["mass balance"]
    F = 1.0
    dosed = np.where(
        TIMES >= 46.0,
        360.0,
        np.where(
            TIMES >= 38.0,
            290.0,
            np.where(
                TIMES >= 30.0,
                220.0,
                np.where(TIMES >= 5.0, 100.0 + 50.0 * np.clip((TIMES - 5) / 4, 0, 1), 100.0),
            ),
        ),
    )
    body = sum(r["states"][s] for s in model.state_names)
    np.testing.assert_allclose(body, F * dosed, rtol=1e-10, atol=1e-9)


def test_reset_evid3_and_evid4():
    c = _tight_runs("1cmt")["reset"]["C"]
    a, l = ref.macro_constants(**P1)
    assert c[1] == pytest.approx(ref.bolus(5.0, 100.0, a, l), rel=1e-8)
    assert c[2] == 0.0 and c[3] == 0.0  # reset at t=10 (right-continuous)
    assert c[4] == pytest.approx(50.0 / 30.0, rel=1e-10)
    assert c[5] == pytest.approx(ref.bolus(20.0, 50.0, a, l, 15.0), rel=1e-8)


def test_infusion_by_rate_uses_bioavailability_for_duration():
    """NONMEM: with RATE given, duration = F * AMT / RATE."""
    model = pk.one_compartment("first_order")
    p = dict(P1, KA=1.0, F=0.5)
    r = tj.simulate(
        model,
        p,
        tj.Regimen([tj.Dose(100.0, "depot", rate=10.0)]),
        jnp.array([4.0, 5.0, 6.0, 48.0]),
        solver=TIGHT,
    )
    dep = np.asarray(r.states["depot"])
    assert dep[-1] < 1e-6
    tot = float(sum(np.asarray(r.states[s])[-1] for s in model.state_names))
    assert tot == pytest.approx(50.0, rel=1e-9)


def test_gradient_through_steady_state_matches_finite_differences():
    model = pk.two_compartment("first_order")
    times = jnp.linspace(0.0, 12.0, 7)

    def out(cl, amt):
        reg = tj.Regimen([tj.Dose(amt, "depot", 0.0, ii=12.0, ss=1)])
        return tj.simulate(model, dict(P2, CL=cl), reg, times, solver=TIGHT).outputs["C"][3]

    # reverse mode with the value: the two programs jax.value_and_grad compiles (forward
    # with residuals, backward) give the gradient and the values of the finite
    # differences (no third, plain program); not jitted as one: that one program took
    # longer to compile (the test alone 34.8, 30.6 -> 32.6, 27.9 CPU s)
    value_and_grad = jax.value_and_grad(out, argnums=(0, 1))
    g = value_and_grad(4.0, 100.0)[1]

    def value(cl, amt):
        return value_and_grad(cl, amt)[0]

    h = 1e-4
    fd_cl = (value(4.0 + h, 100.0) - value(4.0 - h, 100.0)) / (2 * h)
    fd_a = (value(4.0, 100.0 + h) - value(4.0, 100.0 - h)) / (2 * h)
    assert float(g[0]) == pytest.approx(float(fd_cl), rel=1e-5)
    assert float(g[1]) == pytest.approx(float(fd_a), rel=1e-5)
