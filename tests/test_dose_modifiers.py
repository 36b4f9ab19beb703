"""Per-compartment dose modifiers F, ALAG, R, D (NONMEM names) and RATE -1 / -2 (issue #14).

The model is the library one-compartment model with first-order absorption (depot =
compartment 1, central = 2) given ``F2``, ``ALAG2``, ``R2``, ``D2`` on the central
compartment with :meth:`Model.with_dose_modifiers`, as in the issue's NONMEM benchmark.
Every expected value is a closed-form sum of single-dose responses (superposition;
``pk_analytic``): bolus, zero-order infusion and first-order absorption, with NONMEM's
rules for the infusion length (RATE > 0: ``F * AMT / RATE``; DUR; RATE -1: rate ``R2``,
length ``F * AMT / R2``; RATE -2: length ``D2``, rate ``F * AMT / D2``), lag times, and
steady states as sums over ``N_IMPLIED`` earlier doses (SS 1 discards what came before;
SS 2 adds to it; EVID 4 resets first). Nothing in an expected value integrates an ODE.

Compile count: the scenario set (both the ``Dose``/``Regimen`` and the ``read_nonmem``
regimens) runs as patients of one ``simulate`` call; the gradient test compiles a
forward-mode and a reverse-mode program (two XLA programs: forward with residuals,
backward), whose values also give the finite differences.
"""

import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pk_analytic as ref
import pytest

import twinjax as tj
from twinjax.data import read_nonmem
from twinjax.models import pk
from twinjax.solve import _simulate
from twinjax.solve._status import Status

TIGHT = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12)
CL, V, KA = 4.0, 30.0, 1.2
A, L = ref.macro_constants(CL=CL, V=V)
N_IMPLIED = 200
BASE = pk.one_compartment("first_order")  # states: depot (1), central (2), eliminated
MODEL = BASE.with_dose_modifiers(central=("F", "ALAG", "R", "D"), F_upper=2.0)
CMT = {1: "depot", 2: "central"}
TIMES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 9.0, 11.9, 12.0, 12.5, 14.0, 18.0, 24.0, 30.0, 48.0]
)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6 * np.max(np.abs(b)))))


# ---------------------------------------------------------------- no compilation


def test_declared_parameters_names_bounds_and_defaults():
    assert MODEL.dose_parameters() == {
        "depot": ("F", "TLAG", None, None),
        "central": ("F2", "ALAG2", "R2", "D2"),
    }
    assert MODEL.param_names == BASE.param_names + ("F2", "ALAG2", "R2", "D2")
    t = MODEL.param_table()
    assert (t.loc["F2", "value"], t.loc["F2", "upper"], t.loc["F2", "transform"]) == (
        1.0,
        2.0,
        "logit",
    )
    assert (t.loc["ALAG2", "value"], t.loc["ALAG2", "lower"], t.loc["ALAG2", "unit"]) == (
        0.0,
        0.0,
        "h",
    )
    assert t.loc["R2", "unit"] == "mg/h" and t.loc["D2", "unit"] == "h"
    # by NONMEM number, one kind; default F upper bound 1
    m = BASE.with_dose_modifiers({2: "F"})
    assert m.param("F2").upper == 1.0 and m.dose_parameters()["central"][0] == "F2"
    # the library models keep their depot F / TLAG; F_upper widens F
    assert pk.one_compartment("first_order", F_upper=1.5).param("F").upper == 1.5
    # coupled models prefix the names; a converted time unit converts ALAG/D and R
    c = tj.couple({"pk": MODEL}, time_unit="min")
    assert c.dose_parameters()["pk.central"] == ("pk.F2", "pk.ALAG2", "pk.R2", "pk.D2")
    assert c.param("pk.D2").unit == "min" and c.param("pk.R2").unit == "mg/min"
    assert c.param("pk.F2").unit == "1"


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="already has a F parameter 'F'"):
        BASE.with_dose_modifiers(depot=("F",))
    with pytest.raises(ValueError, match="unknown compartment 'gut'"):
        BASE.with_dose_modifiers(gut=("F",))
    with pytest.raises(ValueError, match=r"compartment number 7 is not one of 1\.\.3"):
        BASE.with_dose_modifiers({7: ("F",)})
    with pytest.raises(ValueError, match="each must be one of"):
        BASE.with_dose_modifiers(central=("BIO",))
    with pytest.raises(ValueError, match="F_upper = 0.5"):
        BASE.with_dose_modifiers(central=("F",), F_upper=0.5)
    with pytest.raises(ValueError, match="given twice"):
        BASE.with_dose_modifiers({2: "F"}, central="ALAG")


def test_undeclared_modifier_says_how_to_declare_it():
    hint = (
        r"F2 is NONMEM's bioavailability of compartment 2 \('central'\); "
        r"declare it with model\.with_dose_modifiers\(\{'central': \('F',\)\}\)"
    )
    with pytest.raises(ValueError, match=hint):
        tj.simulate(BASE, dict(F2=1.0), None, jnp.asarray([1.0]))
    reg = tj.Regimen([tj.Dose(100.0, "central", rate=-1)])
    with pytest.raises(ValueError, match=r"no R parameter on 'central'.*\('R',\).*R2"):
        tj.simulate(BASE, {}, reg, jnp.asarray([1.0]))
    reg2 = tj.Regimen([tj.Dose(100.0, "central", rate=-2)])
    with pytest.raises(ValueError, match=r"no D parameter on 'central'.*D2"):
        tj.simulate(BASE.with_dose_modifiers(central="R"), {}, reg2, jnp.asarray([1.0]))


def test_f_above_one_needs_a_declared_upper_bound():
    """Refused by the bounds check before anything compiles."""
    m = BASE.with_dose_modifiers(central=("F",))
    reg = tj.Regimen([tj.Dose(100.0, "central")])
    before = eqx.debug.get_num_traces(_simulate.simulate_core)
    with pytest.raises(ValueError, match=r"'F2' = 1.3 is outside its bounds \[0, 1\]"):
        tj.simulate(m, dict(F2=1.3), reg, jnp.asarray([1.0]))
    with pytest.raises(ValueError, match=r"'F' = 1.2 is outside its bounds \[0, 1\]"):
        tj.simulate(BASE, dict(F=1.2), reg, jnp.asarray([1.0]))
    assert eqx.debug.get_num_traces(_simulate.simulate_core) == before


def test_dose_rate_values():
    d = tj.Dose(100.0, "central", rate=-1)
    assert d.modelled == -1 and d.is_infusion
    assert tj.Dose(100.0, "central", rate=-2).modelled == -2
    with pytest.raises(ValueError, match=r"rate = -3\.0; a rate is >= 0, or -1"):
        tj.Dose(100.0, "central", rate=-3.0)
    with pytest.raises(ValueError, match="not both"):
        tj.Dose(100.0, "central", rate=-2, dur=3.0)
    with pytest.raises(ValueError, match="needs amt > 0"):
        tj.Dose(0.0, "central", rate=-1)
    with pytest.raises(ValueError, match="ii > 0"):
        tj.Dose(100.0, "central", rate=-1, ss=1)


# ----------------------------------------------------------------- scenario set


def rec(time=0.0, amt=100.0, cmt=2, rate=0.0, dur=0.0, ii=0.0, addl=0, ss=0, evid=1):
    return dict(time=time, amt=amt, cmt=cmt, rate=rate, dur=dur, ii=ii, addl=addl, ss=ss, evid=evid)


# (name, records, F2, ALAG2, R2, D2); durations in comments are F2 * AMT / R2 or D2
SCENARIOS = [
    ("bolus", [rec()], 1.0, 0.0, 0.0, 0.0),
    ("bolus F2 ALAG2", [rec()], 0.6, 1.5, 0.0, 0.0),
    ("bolus F2 > 1", [rec()], 1.4, 0.0, 0.0, 0.0),
    ("oral depot", [rec(cmt=1)], 0.5, 2.0, 0.0, 0.0),  # F2/ALAG2 do not act on the depot
    ("RATE", [rec(rate=20.0)], 0.8, 0.0, 0.0, 0.0),  # 4 h
    ("RATE ALAG2 F2 > 1", [rec(rate=20.0)], 1.3, 0.75, 0.0, 0.0),
    ("DUR", [rec(dur=4.0)], 0.7, 0.0, 0.0, 0.0),
    ("DUR ALAG2", [rec(dur=4.0)], 1.2, 2.0, 0.0, 0.0),
    ("RATE -1", [rec(rate=-1)], 0.8, 0.0, 25.0, 0.0),  # 3.2 h
    ("RATE -1 ALAG2", [rec(rate=-1)], 1.0, 1.25, 25.0, 0.0),
    ("RATE -2", [rec(rate=-2)], 0.9, 0.0, 0.0, 3.0),
    ("RATE -2 ALAG2 F2 > 1", [rec(rate=-2)], 1.5, 0.5, 0.0, 5.0),
    ("ADDL bolus", [rec(ii=12.0, addl=3)], 0.9, 1.0, 0.0, 0.0),
    ("ADDL RATE -1", [rec(rate=-1, ii=12.0, addl=2)], 0.8, 0.0, 10.0, 0.0),  # 8 h
    ("ADDL RATE -2 overlapping", [rec(rate=-2, ii=8.0, addl=3)], 1.0, 0.0, 0.0, 10.0),
    ("SS1 bolus", [rec(ii=12.0, ss=1)], 0.8, 0.0, 0.0, 0.0),
    ("SS1 bolus ALAG2 ADDL", [rec(ii=12.0, ss=1, addl=1)], 0.7, 1.5, 0.0, 0.0),
    ("SS1 RATE DUR < II", [rec(rate=25.0, ii=12.0, ss=1)], 1.0, 0.0, 0.0, 0.0),  # 4 h
    ("SS1 DUR = II", [rec(dur=12.0, ii=12.0, ss=1)], 0.9, 0.0, 0.0, 0.0),
    ("SS1 DUR > II ALAG2", [rec(dur=30.0, ii=12.0, ss=1)], 0.9, 2.5, 0.0, 0.0),
    ("SS1 RATE -1 DUR < II", [rec(rate=-1, ii=12.0, ss=1)], 0.8, 0.0, 50.0, 0.0),  # 1.6 h
    ("SS1 RATE -1 DUR > II", [rec(rate=-1, ii=12.0, ss=1)], 0.9, 0.0, 5.0, 0.0),  # 18 h
    (
        "SS1 RATE -1 DUR = II ALAG2",
        [rec(amt=120.0, rate=-1, ii=12.0, ss=1, addl=1)],
        1.0,
        1.0,
        10.0,
        0.0,
    ),
    ("SS1 RATE -2 DUR < II", [rec(rate=-2, ii=12.0, ss=1)], 1.2, 0.0, 0.0, 4.0),
    ("SS1 RATE -2 DUR = II", [rec(rate=-2, ii=12.0, ss=1)], 1.0, 0.0, 0.0, 12.0),
    ("SS1 RATE -2 DUR > II ALAG2", [rec(rate=-2, ii=12.0, ss=1)], 0.8, 2.0, 0.0, 30.0),
    (
        "SS2 RATE -2 after a dose",
        [rec(amt=300.0), rec(24.0, rate=-2, ii=12.0, ss=2)],
        1.0,
        0.0,
        0.0,
        3.0,
    ),
    (
        "EVID4 SS1 RATE -1",
        [rec(amt=300.0), rec(24.0, rate=-1, ii=12.0, ss=1, evid=4)],
        0.9,
        0.5,
        20.0,
        0.0,
    ),
    ("EVID4 RATE -2", [rec(amt=300.0, rate=-1), rec(24.0, rate=-2, evid=4)], 1.0, 0.0, 50.0, 2.0),
    ("SS1 oral depot", [rec(cmt=1, ii=12.0, ss=1)], 0.5, 0.0, 0.0, 0.0),
    (
        "SS2 RATE -1 ALAG2 on SS1 bolus",
        [rec(ii=12.0, ss=1), rec(24.0, rate=-1, ii=12.0, ss=2)],
        0.9,
        1.0,
        30.0,
        0.0,
    ),
]


def expected(records, F2, ALAG2, R2, D2, times):
    """Closed-form concentrations at ``times`` (all at or after the last reset)."""
    contrib = []  # (cmt, amount given, start, duration)
    for r in records:
        if r["ss"] == 1 or r["evid"] == 4:
            contrib = []  # everything before is discarded (times are after it)
        F, lag = (F2, ALAG2) if r["cmt"] == 2 else (1.0, 0.0)
        amt = F * r["amt"]
        dur = {0.0: r["dur"], -1: amt / R2 if R2 else 0, -2: D2}.get(r["rate"], None)
        if dur is None:
            dur = amt / r["rate"]
        ks = range(-N_IMPLIED if r["ss"] else 0, r["addl"] + 1)
        contrib += [(r["cmt"], amt, r["time"] + lag + k * r["ii"], dur) for k in ks]
    out = np.zeros_like(times)
    for cmt, amt, t0, dur in contrib:
        if cmt == 1:
            out = out + ref.oral(times, amt, KA, A, L, t0=t0)
        elif dur > 0:
            out = out + ref.infusion(times, amt, dur, A, L, t0)
        else:
            out = out + ref.bolus(times, amt, A, L, t0)
    return out


def regimen(records):
    return tj.Regimen(
        [
            tj.Dose(
                r["amt"],
                CMT[r["cmt"]],
                r["time"],
                r["rate"],
                r["dur"],
                r["ii"],
                r["addl"],
                r["ss"],
                r["evid"],
            )
            for r in records
        ]
    )


def csv(scenarios):
    rows = ["ID,TIME,DV,AMT,EVID,CMT,RATE,DUR,II,ADDL,SS,MDV"]
    for i, (_, records, *_) in enumerate(scenarios):
        for r in records:
            rows.append(
                f"{i + 1},{r['time']},.,{r['amt']},{r['evid']},{r['cmt']},{r['rate']},"
                f"{r['dur']},{r['ii']},{r['addl']},{r['ss']},1"
            )
    return "\n".join(rows) + "\n"


def test_scenario_set_matches_closed_forms_via_dose_and_read_nonmem():
    """31 scenarios (bolus, RATE, DUR, RATE -1, RATE -2, ADDL, SS 1/2, EVID 4, lags,
    F2 below and above 1) read through ``read_nonmem`` and built with ``Dose``, plus two
    patients that must be flagged (R2 not set; D2 longer than the compiled history):
    one compiled program."""
    ds = read_nonmem(io.StringIO(csv(SCENARIOS)), compartments=MODEL)
    assert ds.ids == list(range(1, len(SCENARIOS) + 1))
    built = [regimen(s[1]) for s in SCENARIOS]
    flagged = [
        (regimen([rec(rate=-1)]), 1.0, 0.0, 0.0, 0.0),  # R2 not set
        # D2 = 80 h needs 6 implied infusions still running at TIME; 5 are compiled
        # (SS_MODEL_HISTORY = 4, + 1 as the compartment has a lag parameter)
        (regimen([rec(rate=-2, ii=12.0, ss=1)]), 1.0, 0.0, 0.0, 80.0),
    ]
    regs = built + list(ds.regimens) + [f[0] for f in flagged]
    mods = [s[2:] for s in SCENARIOS] * 2 + [f[1:] for f in flagged]
    start = [max([r["time"] for r in s[1] if r["ss"] or r["evid"] == 4] + [0.0]) for s in SCENARIOS]
    start = start * 2 + [0.0, 0.0]
    times = np.asarray(start)[:, None] + TIMES[None, :]
    p = dict(CL=CL, V=V, KA=KA)
    for j, name in enumerate(("F2", "ALAG2", "R2", "D2")):
        p[name] = jnp.asarray([m[j] for m in mods])
    r = tj.simulate(MODEL, p, regs, jnp.asarray(times), solver=TIGHT)
    status = np.asarray(r.status)
    n = len(SCENARIOS)
    assert np.all(status[: 2 * n] == Status.OK), status
    assert np.all(status[2 * n :] == Status.NONFINITE)
    assert np.all(np.isnan(np.asarray(r.outputs["C"])[2 * n :]))
    C = np.asarray(r.outputs["C"])
    errs = {}
    for i, (name, records, *mod) in enumerate(SCENARIOS):
        want = expected(records, *mod, times[i])
        assert np.max(want) > 0.1, name
        errs[name] = rel(C[i], want)
        # read_nonmem gives the same regimen as Dose/Regimen
        np.testing.assert_allclose(C[n + i], C[i], rtol=1e-12, atol=1e-14, err_msg=name)
    # the solver runs at rtol 1e-10; measured worst 8e-11 (the issue asks for 1e-4)
    bad = {k: v for k, v in errs.items() if not v < 1e-8}
    assert not bad, bad


# -------------------------------------------------------------------- gradients

GRAD_TIMES = jnp.asarray([0.7, 2.9, 6.1, 10.3, 15.7, 20.9])  # away from every event
GRAD_REGS = [
    regimen([rec(rate=-1)]),  # rate R2, length F2 * 100 / R2 = 12.86 h
    regimen([rec(rate=-2)]),
    regimen([rec(rate=-1, ii=12.0, ss=1, addl=1)]),  # overlapping (12.86 h > II)
    regimen([rec(rate=-2, ii=12.0, ss=1, addl=1)]),  # D2 = 20 h > II
    regimen([rec(ii=12.0, ss=1, addl=1)]),
    regimen([rec(ii=8.0, addl=2), rec(30.0, rate=-2)]),
]
THETA = np.array([0.9, 1.3, 7.0, 20.0])  # F2, ALAG2, R2, D2
WEIGHTS = jnp.asarray(np.linspace(0.5, 2.0, len(GRAD_REGS) * len(GRAD_TIMES)).reshape(6, 6))


def weighted_output(theta, solver=TIGHT):
    n = len(GRAD_REGS)
    p = dict(CL=CL, V=V, KA=KA)
    for j, name in enumerate(("F2", "ALAG2", "R2", "D2")):
        p[name] = jnp.broadcast_to(theta[j], (n,))
    r = tj.simulate(MODEL, p, GRAD_REGS, GRAD_TIMES, solver=solver)
    return jnp.sum(WEIGHTS * r.outputs["C"])


@pytest.mark.slow
def test_gradients_wrt_f_alag_r_d_match_finite_differences():
    """Forward mode (jacfwd), reverse mode (grad) and central differences agree for F2,
    ALAG2, R2 and D2 through RATE -1 / -2 infusions (single, overlapping, steady state)
    and lagged steady-state boluses."""
    theta = jnp.asarray(THETA)
    forward = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12, adjoint="forward")
    fwd = np.asarray(jax.jacfwd(lambda th: weighted_output(th, forward))(theta))
    rev = np.asarray(jax.grad(weighted_output)(theta))
    # the finite differences take the objective from jax.value_and_grad, which reuses
    # the two programs jax.grad compiled (forward with residuals, backward); a plain
    # program was one more compilation of the whole steady-state solve
    fd = []
    for j in range(4):
        h = 1e-5 * max(1.0, THETA[j])
        e = np.zeros(4)
        e[j] = h
        fp, fm = (float(jax.value_and_grad(weighted_output)(theta + s * e)[0]) for s in (1, -1))
        fd.append((fp - fm) / (2 * h))
    fd = np.asarray(fd)
    assert np.all(np.abs(fd) > 1e-3), fd  # every parameter acts
    np.testing.assert_allclose(fwd, fd, rtol=1e-5)
    np.testing.assert_allclose(rev, fd, rtol=1e-5)
    np.testing.assert_allclose(fwd, rev, rtol=1e-8)
