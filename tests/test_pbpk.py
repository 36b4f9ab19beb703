"""Minimal PBPK: mass balance, well-stirred liver, flow- vs capacity-limited clearance."""

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pbpk

M = pbpk.MinimalPBPK()
TIGHT = tj.solvers.Diffrax(rtol=1e-10, atol=1e-12)
STIFF = tj.solvers.Diffrax("kvaerno5", rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cmt", ["lumen", "ven"])
def test_mass_balance_to_round_off(cmt):
    p = {"CLint": 80.0, "fu": 0.2, "Kp_rest": 4.0, "FA": 0.7, "GFR": 5.0, "R_ren": 2.0}
    r = tj.simulate(M, p, tj.Regimen([tj.Dose(100.0, cmt, 0.5)]), jnp.linspace(0, 96, 97),
                    solver=TIGHT)  # fmt: skip
    tot = sum(np.asarray(r.states[s]) for s in M.state_names)
    np.testing.assert_allclose(tot[1:], 100.0, rtol=1e-12)
    assert float(r.states["eliminated_renal"][-1]) > 1.0
    assert float(r.states["eliminated_hepatic"][-1]) > 1.0


def _steady_state(p):
    """Constant IV infusion for 1500 h: extraction and clearance measured in the model."""
    reg = tj.Regimen([tj.Dose(2000.0, "ven", 0.0, dur=2000.0)])
    r = tj.simulate(M, p, reg, jnp.array([1200.0, 1500.0]), solver=STIFF)
    assert np.all(np.asarray(r.status) == 0)
    ph = M.physiology(r.params)
    BP = r.params["BP"]
    c_art = r.states["art"][..., -1] / ph["V"]["art"]
    c_gut = r.states["gut"][..., -1] / ph["V"]["gut"] * BP / r.params["Kp_gut"]
    c_out = r.states["liver"][..., -1] / ph["V"]["liver"] * BP / r.params["Kp_liver"]
    Q = ph["Q"]
    c_in = (Q["ha"] * c_art + Q["gut"] * c_gut) / Q["liver"]
    E = 1.0 - c_out / c_in
    # still at steady state between the two saves
    np.testing.assert_allclose(r.states["art"][..., 0], r.states["art"][..., -1], rtol=1e-7)
    return np.asarray(E), np.asarray(Q["liver"] * E), ph


def test_steady_state_extraction_is_the_well_stirred_closed_form():
    p = {"CLint": jnp.array([5.0, 80.0, 3000.0]), "fu": jnp.array([0.1, 0.5, 0.3]),
         "BP": jnp.array([1.0, 0.8, 1.5]), "Kp_liver": jnp.array([1.0, 3.0, 10.0])}  # fmt: skip
    E, CLh, ph = _steady_state(p)
    want_cl, want_e = pbpk.well_stirred(ph["Q"]["liver"], p["fu"], p["CLint"], p["BP"])
    np.testing.assert_allclose(E, want_e, rtol=1e-7)
    np.testing.assert_allclose(CLh, want_cl, rtol=1e-7)


def test_high_extraction_follows_blood_flow_low_extraction_follows_clint_and_binding():
    high = dict(CLint=1500.0, fu=0.5)  # E ~ 0.9
    low = dict(CLint=5.0, fu=0.1)  # E ~ 0.006
    x2 = jnp.array([1.0, 2.0, 1.0, 1.0])
    for drug, flow_ratio, clint_ratio in ((high, (1.7, 2.0), (1.0, 1.1)),
                                          (low, (1.0, 1.01), (1.85, 2.0))):  # fmt: skip
        p = {
            "CO": 390.0 * x2,
            "CLint": drug["CLint"] * jnp.array([1.0, 1.0, 2.0, 1.0]),
            "fu": drug["fu"] * jnp.array([1.0, 1.0, 1.0, 1.9]),
        }
        _, CL, _ = _steady_state(p)
        assert flow_ratio[0] <= CL[1] / CL[0] <= flow_ratio[1], (drug, CL)
        assert clint_ratio[0] <= CL[2] / CL[0] <= clint_ratio[1], (drug, CL)
        assert clint_ratio[0] <= CL[3] / CL[0] <= clint_ratio[1], (drug, CL)  # fu x 1.9


def test_hepatic_and_renal_impairment_raise_exposure():
    """Low-extraction drug: unbound AUC = dose / (fu_b CLint + ...) rises with Child-Pugh."""
    grades = ["none", "A", "B", "C"]
    cp = [pbpk.child_pugh(g) for g in grades]
    p = {k: jnp.array([c[k] for c in cp]) for k in cp[0]}
    p.update(CLint=10.0, fu=0.3, GFR=0.01)
    reg = tj.Regimen([tj.Dose(100.0, "ven", 0.0)])
    r = tj.simulate(M, p, reg, jnp.linspace(0.0, 1000.0, 2001), solver=STIFF)
    assert np.all(np.asarray(r.status) == 0)
    fu = np.asarray(M.physiology(r.params)["fu"])
    auc_u = fu * np.trapezoid(np.asarray(r["C"]), dx=0.5, axis=-1)
    assert np.all(np.diff(auc_u) > 0), auc_u
    with pytest.raises(ValueError, match="Child-Pugh"):
        pbpk.child_pugh("D")
    renal = {"GFR": jnp.array([pbpk.renal_function(x)["GFR"] for x in (120.0, 60.0, 15.0)]),
             "CLint": 1.0, "fu": 0.8}  # fmt: skip
    r = tj.simulate(M, renal, tj.Regimen([tj.Dose(100.0, "ven", 0.0)]),
                    jnp.linspace(0.0, 48.0, 97), solver=TIGHT)  # fmt: skip
    auc = np.trapezoid(np.asarray(r["C"]), dx=0.5, axis=-1)
    assert np.all(np.diff(auc) > 0), auc
