"""Time units at the seams: every model declares one, and couple() refuses or converts."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import CATALOGUE, IDS

import twinjax as tj
from twinjax.models import circulation, ep, glucose, pbpk, pd, pk
from twinjax.models._registry import get_model, registered
from twinjax.ode import Coupled, Model, State
from twinjax.ode._model import TIME_UNITS
from twinjax.ode._param import positive

TIGHT = tj.solvers.Diffrax(rtol=1e-11, atol=1e-12)


class _Decay(Model):
    """A user model that does not declare its time unit: ``dx/dt = -k x``."""

    @property
    def states(self):  # type: ignore[override]
        return (State("x", "1"),)

    @property
    def params(self):  # type: ignore[override]
        return (positive("k", 0.5, "1/time", upper=1e3, doc="decay rate"),)

    def rhs(self, t, y, p, u):
        return {"x": -p["k"] * y["x"]}

    def init(self, p):
        return {"x": jnp.ones_like(p["k"])}

    def observe(self, t, y, p):
        return {"X": y["x"]}


def _declared(m):
    assert m.time_unit in TIME_UNITS, f"{type(m).__name__} declares no time unit"
    # a Coupled model and a twin holding one (QuasiStaticTwin) both list their parts
    parts = m.models if isinstance(m, Coupled) else getattr(m, "models", ())
    for n, sub in parts:
        assert sub.time_unit in TIME_UNITS, f"sub-model {n} declares no time unit"


@pytest.mark.parametrize("e", CATALOGUE, ids=IDS)
def test_every_catalogue_model_declares_a_time_unit(e):
    _declared(e.model)


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_registered_model_declares_a_time_unit(name):
    _declared(get_model(name))


def test_the_declared_units():
    assert pk.one_compartment().time_unit == "h"
    assert pk.three_compartment("transit", n_transit=2).time_unit == "h"
    assert pd.DirectEmax().time_unit == pd.IndirectResponse(2).time_unit == "h"
    assert pd.PrecursorTurnover().time_unit == "h"
    assert pbpk.MinimalPBPK().time_unit == "h"
    assert circulation.Circulation(baroreflex=True).time_unit == "s"
    assert glucose.MinimalModel().time_unit == glucose.UvaPadova().time_unit == "min"
    assert ep.LuoRudy1991().time_unit == ep.ORd().time_unit == ep.CiPAORd().time_unit == "ms"


def test_hours_to_minutes_is_refused_naming_both_units():
    link = tj.Link("pk.C", "gluc.Si", "linear", {"slope": 0.1})
    models = {"pk": pk.one_compartment(), "gluc": glucose.MinimalModel()}
    with pytest.raises(ValueError, match=r"pk \(time unit h\) with gluc \(time unit min\)") as e:
        tj.couple(models, [link])
    assert "time_unit=" in str(e.value)
    with pytest.raises(ValueError, match=r"gluc \(time unit min\) with pk \(time unit h\)"):
        tj.couple({"gluc": glucose.UvaPadova(), "pk": pk.one_compartment()})
    with pytest.raises(ValueError, match=r"pk \(time unit h\) with circ \(time unit s\)"):
        tj.couple({"pk": pk.one_compartment(), "circ": circulation.Circulation()})
    with pytest.raises(ValueError, match="time_unit 'hours' is not one of"):
        tj.couple(models, time_unit="hours")


def test_a_model_declaring_an_unknown_unit_is_rejected():
    class Weekly(_Decay):
        time_unit = "week"

    with pytest.raises(ValueError, match="Weekly: time_unit 'week' is not one of"):
        Weekly()


def test_equal_units_couple_as_before():
    parts = {"pk": pk.one_compartment("first_order"), "pd": pd.IndirectResponse(3)}
    links = [tj.Link("pk.C", "pd.C")]
    m = tj.couple(parts, links)
    assert m.time_unit == "h" and m.time_scales == {"pk": 1.0, "pd": 1.0}
    assert m.param("pk.TLAG").unit == "h"  # nothing rescaled
    same = tj.couple(parts, links, time_unit="h")
    reg = tj.Regimen([tj.Dose(100.0, "pk.depot", 0.5)])
    ts = jnp.linspace(0.0, 24.0, 13)
    a = tj.simulate(m, {"pk.TLAG": 0.3}, reg, ts)
    b = tj.simulate(same, {"pk.TLAG": 0.3}, reg, ts)
    np.testing.assert_array_equal(np.asarray(a["pd.R"]), np.asarray(b["pd.R"]))
    # the coupled derivative is exactly the sub-models' (no factor applied)
    p, _ = m.complete({"pd.C": 0.0})
    y = m.init(p)
    y["pk.central"] = jnp.asarray(40.0)
    d = m.rhs(0.0, y, p, {k: jnp.asarray(0.0) for k in m.state_names})
    sub = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("pk.")}
    ys = {k.split(".", 1)[1]: v for k, v in y.items() if k.startswith("pk.")}
    want = parts["pk"].rhs(0.0, ys, sub, {})
    for k, v in want.items():
        assert float(d[f"pk.{k}"]) == float(v)


def test_undeclared_models_take_the_coupled_unit():
    m = tj.couple({"pk": pk.one_compartment(), "fx": _Decay()})
    assert m.time_unit == "h" and m.time_scales == {"pk": 1.0, "fx": 1.0}
    assert tj.couple({"a": _Decay(), "b": _Decay()}).time_unit is None
    # under conversion an undeclared model is taken to be in the coupled unit
    c = tj.couple({"pk": pk.one_compartment(), "fx": _Decay()}, time_unit="min")
    assert c.time_scales == {"pk": 1.0 / 60.0, "fx": 1.0}


def test_hour_model_coupled_in_minutes_gives_the_same_concentration():
    """A PK model in hours coupled at time_unit="min": C(60 min) = C(1 h), exactly."""
    m = tj.couple({"pk": pk.one_compartment()}, time_unit="min")
    assert m.time_unit == "min" and m.time_scales == {"pk": 1.0 / 60.0}
    CL, V, D = 4.0, 30.0, 100.0  # L/h, L, mg: parameters stay in the model's units
    r = tj.simulate(
        m,
        {"pk.CL": CL, "pk.V": V},
        tj.Regimen([tj.Dose(D, "pk.central", 0.0)]),
        jnp.array([0.0, 60.0, 150.0]),
        solver=TIGHT,
    )
    closed = [D / V * math.exp(-CL / V * h) for h in (0.0, 1.0, 2.5)]
    np.testing.assert_allclose(np.asarray(r["pk.C"]), closed, rtol=1e-9)


def test_conversion_of_oral_doses_lag_and_infusions():
    """Lag time (in the coupled unit), infusion rates and doses: minutes vs hours."""
    hours = pk.two_compartment("first_order")
    m = tj.couple({"pk": hours}, time_unit="min")
    lag = m.param("pk.TLAG")
    assert lag.unit == "min" and lag.upper == 60.0 * hours.param("TLAG").upper
    assert m.param("pk.KA").unit == "1/h"  # rate parameters stay in hours
    p = {"CL": 4.0, "V": 30.0, "KA": 1.3, "F": 0.7, "Q": 8.0, "V2": 60.0}
    reg_h = tj.Regimen([tj.Dose(100.0, "depot", 0.5), tj.Dose(50.0, "central", 1.2, dur=0.8)])
    reg_m = tj.Regimen(
        [tj.Dose(100.0, "pk.depot", 30.0), tj.Dose(50.0, "pk.central", 72.0, dur=48.0)]
    )
    th = jnp.array([0.0, 0.75, 1.0, 1.6, 3.0, 8.0])
    rh = tj.simulate(hours, {**p, "TLAG": 0.25}, reg_h, th, solver=TIGHT)
    pm = {f"pk.{k}": v for k, v in p.items()} | {"pk.TLAG": 15.0}
    rm = tj.simulate(m, pm, reg_m, 60.0 * th, solver=TIGHT)
    assert int(rh.status) == 0 and int(rm.status) == 0
    for k in ("C", "eliminated"):
        np.testing.assert_allclose(np.asarray(rm[f"pk.{k}"]), np.asarray(rh[k]), rtol=1e-8)


def test_pk_in_hours_drives_glucose_in_minutes_when_converted():
    """PK(h) -> Bergman(min), converted either way: the same physical trajectories.

    The link raises the basal insulin, so remote insulin action and glucose move; with
    the secretion threshold below the glucose, the Bergman equations read ``t`` itself
    (second-phase secretion ``gamma (G - h) t``), so the time argument is converted too.
    """
    links = [tj.Link("pk.C", "gluc.Ib", "linear", {"slope": 1.0})]
    parts = {"pk": pk.one_compartment(), "gluc": glucose.MinimalModel()}
    pars = {"pk.CL": 4.0, "pk.V": 30.0, "gluc.h": 80.0}
    th = jnp.array([0.0, 0.5, 1.0, 2.0])
    in_min = tj.couple(parts, links, time_unit="min")
    in_h = tj.couple(parts, links, time_unit="h")
    assert in_min.time_scales == {"pk": 1.0 / 60.0, "gluc": 1.0}
    assert in_h.time_scales == {"pk": 1.0, "gluc": 60.0}
    r_min = tj.simulate(
        in_min, pars, tj.Regimen([tj.Dose(100.0, "pk.central", 0.0)]), 60.0 * th, solver=TIGHT
    )
    r_h = tj.simulate(in_h, pars, tj.Regimen([tj.Dose(100.0, "pk.central", 0.0)]), th, solver=TIGHT)
    assert int(r_min.status) == 0 and int(r_h.status) == 0
    alone = tj.simulate(
        parts["pk"], {"CL": 4.0, "V": 30.0}, tj.Regimen([tj.Dose(100.0, "central", 0.0)]), th
    )
    np.testing.assert_allclose(np.asarray(r_min["pk.C"]), np.asarray(alone["C"]), rtol=1e-6)
    for k in ("pk.C", "gluc.G", "gluc.X", "gluc.I"):
        np.testing.assert_allclose(np.asarray(r_min[k]), np.asarray(r_h[k]), rtol=1e-8, atol=1e-12)
    # and the drug matters: without it the glucose differs
    base = tj.simulate(in_min, pars, None, 60.0 * th, solver=TIGHT)
    assert abs(float(r_min["gluc.G"][-1]) - float(base["gluc.G"][-1])) > 0.3


def test_quasi_static_twin_states_both_units():
    twin = get_model("pk_circulation")
    assert twin.pk_time_unit == "h" and twin.time_unit == "h"
    assert twin.organ_time_unit == "s" == twin.circulation.time_unit
    assert twin.time_scales == {"pk": 1.0, "circ": 3600.0}


def test_the_coupled_time_unit_is_part_of_the_store_fingerprint():
    from twinjax.solve._fingerprint import Fingerprint

    def fp(m):
        f = Fingerprint()
        f.add("model", m)
        assert not f.problems
        return f.hexdigest()

    parts = {"pk": pk.one_compartment()}
    assert fp(tj.couple(parts)) == fp(tj.couple(parts, time_unit="h"))
    assert fp(tj.couple(parts, time_unit="h")) != fp(tj.couple(parts, time_unit="min"))
