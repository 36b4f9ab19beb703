"""Endpoint kinds as classes (``twinjax.trial.AUC``, ...): the same numbers as their
names, unknown names refused, a kind defined outside the package, and no string tests
of a kind left in the package."""

import dataclasses
import pathlib
import re
from typing import ClassVar

import numpy as np
import pytest

import twinjax as tj
from twinjax.trial import (
    AUC,
    KINDS,
    Change,
    Cmax,
    Ctrough,
    Custom,
    Endpoint,
    EndpointKind,
    Responder,
    Safety,
    SpecError,
    TimeInRange,
    Tmax,
    Trial,
    Value,
    endpoint_kind,
)
from twinjax.trial._report_design import describe_endpoint
from twinjax.trial._report_format import endpoint_unit

ROOT = pathlib.Path(__file__).resolve().parent.parent

# a small synthetic save grid: 3 patients, 13 saves on an uneven grid
T = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0])
_rng = np.random.default_rng(3)
Y = np.abs(_rng.normal(5.0, 2.0, (3, T.size)))
Y[1, 0] = 0.0  # a zero baseline: percent change is NaN there
OUT = {"C": Y, "E": Y[::-1] * 0.5}


def _fn(times, outputs):
    return outputs["C"][:, -1] - outputs["E"][:, 3]


#: (class, extra fields): every kind with the fields it needs, some variants
CASES = [
    (Value, dict(output="C", time=2.5)),
    (Value, dict(output="C", time=8.0)),
    (Change, dict(output="C", time=12.0, baseline_time=1.0)),
    (Change, dict(output="C", time=13.0, percent=True)),
    (Cmax, dict(output="C", window=(2.0, 12.0))),
    (Tmax, dict(output="E")),
    (AUC, dict(output="C", window=(0.5, 10.0))),
    (AUC, dict(output="E")),
    (Ctrough, dict(output="C", window=(20.0, 24.0))),
    (TimeInRange, dict(output="C", low=3.0, high=6.0, window=(1.0, 20.0))),
    (Responder, dict(output="C", time=24.0, threshold=0.5, direction="above")),
    (Responder, dict(output="C", time=24.0, threshold=-10.0, percent=True)),
    (Safety, dict(output="C", threshold=2.0)),
    (Safety, dict(output="E", threshold=4.0, direction="above", window=(4.0, 16.0))),
    (Custom, dict(fn=_fn)),
    (Custom, dict(fn=_fn, binary_custom=True)),
]


def test_the_table_names_every_kind_once():
    assert list(KINDS) == [
        "value",
        "change",
        "cmax",
        "tmax",
        "auc",
        "ctrough",
        "time_in_range",
        "responder",
        "safety",
        "custom",
    ]
    assert all(KINDS[n].name == n for n in KINDS)
    assert {c for c, _ in CASES} == set(KINDS.values())


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(CASES)])
def test_a_class_computes_what_its_name_computes(cls, kw):
    by_name = Endpoint("e", cls.name, **kw)
    by_class = Endpoint("e", cls(), **kw)
    by_type = Endpoint("e", cls, **kw)
    assert by_name.kind == by_class.kind == by_type.kind == cls()
    assert isinstance(by_name.kind, cls) and by_name == by_class
    ref = by_name.compute(T, OUT)
    assert ref.shape == (3,)
    np.testing.assert_array_equal(by_class.compute(T, OUT), ref)
    np.testing.assert_array_equal(by_type.compute(T, OUT), ref)
    assert by_class.binary == by_name.binary
    # the name is the text: reports, TOML, messages
    assert by_class.kind.name == cls.name and dataclasses.replace(by_class).kind == cls()


def test_formulas_on_the_grid():
    """The numbers themselves (the trial's formulas, unchanged)."""
    c = Y
    np.testing.assert_array_equal(Endpoint("v", Value(), "C", time=8.0).compute(T, OUT), c[:, 7])
    np.testing.assert_allclose(
        Endpoint("v", Value(), "C", time=2.5).compute(T, OUT), 0.5 * (c[:, 3] + c[:, 4])
    )
    np.testing.assert_array_equal(
        Endpoint("a", AUC(), "C").compute(T, OUT), np.trapezoid(c, T, axis=1)
    )
    np.testing.assert_array_equal(
        Endpoint("s", Safety(), "C", threshold=2.0).compute(T, OUT), (c < 2.0).any(axis=1)
    )
    pct = Endpoint("p", Change(), "C", time=24.0, percent=True).compute(T, OUT)
    assert np.isnan(pct[1]) and np.isfinite(pct[[0, 2]]).all()


def test_capabilities():
    assert [k for k, c in KINDS.items() if c.smooth] == [
        "value",
        "change",
        "cmax",
        "auc",
        "ctrough",
        "custom",
    ]
    assert [k for k, c in KINDS.items() if c.needs_time] == ["value", "change", "responder"]
    assert [k for k, c in KINDS.items() if c.reads_baseline] == ["change", "responder"]
    assert [k for k, c in KINDS.items() if c.needs_threshold] == ["responder", "safety"]
    assert [k for k, c in KINDS.items() if not c.needs_output] == ["custom"]
    assert [k for k, c in KINDS.items() if c.min_window_saves != 1] == ["auc"]
    e = Endpoint("x", Custom(), fn=_fn)
    assert not e.binary and Endpoint("x", Custom(), fn=_fn, binary_custom=True).binary
    assert Endpoint("r", Responder(), "C", time=1.0, threshold=1.0).binary


@pytest.mark.parametrize("bad", ["AUC", "area", "Value", " cmax"])
def test_an_unknown_name_is_refused_with_the_allowed_list(bad):
    allowed = re.escape(str(list(KINDS)))
    with pytest.raises(
        SpecError, match=rf"kind {re.escape(repr(bad))} unknown; allowed: {allowed}"
    ):
        Endpoint("e", bad, output="C")
    with pytest.raises(ValueError, match=rf"unknown; allowed: {allowed}"):
        endpoint_kind(bad)


def test_other_kinds_are_refused():
    with pytest.raises(SpecError, match=r"Endpoint\('e'\).kind: expected a string, got"):
        Endpoint("e", 3, output="C")
    with pytest.raises(SpecError, match="abstract"):
        Endpoint("e", EndpointKind, output="C")
    with pytest.raises(TypeError, match="EndpointKind or one of the names"):
        endpoint_kind(None)
    # the checks name the kind by its name, whichever way it was given
    with pytest.raises(SpecError, match="kind 'responder' needs a threshold"):
        Endpoint("e", Responder(), output="C", time=1.0)
    with pytest.raises(SpecError, match="time_in_range needs low and high"):
        Endpoint("e", TimeInRange, output="C", low=1.0)
    with pytest.raises(SpecError, match="a custom endpoint needs fn"):
        Endpoint("e", Custom())


@dataclasses.dataclass(frozen=True)
class TimeAbove(EndpointKind):
    """A kind defined outside the package: fraction of the saved times in the window
    with the output above the endpoint's threshold."""

    name: ClassVar[str] = "time_above"
    needs_threshold: ClassVar[bool] = True

    def unit(self, endpoint, output_unit, time_unit):
        return "fraction of time"

    def evaluate(self, endpoint, r, xp=np):
        return np.mean(r.yw > endpoint.threshold, axis=1)


def test_a_new_kind_by_subclassing():
    e = Endpoint("above3", TimeAbove(), output="C", threshold=3.0, window=(1.0, 20.0))
    w = (T >= 1.0) & (T <= 20.0)
    np.testing.assert_array_equal(e.compute(T, OUT), np.mean(Y[:, w] > 3.0, axis=1))
    assert not e.binary and e.kind.name == "time_above"
    with pytest.raises(SpecError, match="kind 'time_above' needs a threshold"):
        Endpoint("above3", TimeAbove, output="C")
    with pytest.raises(SpecError, match="kind 'time_above' needs an output"):
        Endpoint("above3", TimeAbove(), threshold=1.0)
    assert e.problems(["C"], 24.0) == []
    assert "unknown output 'C'" in e.problems(["X"], 24.0)[0]
    # not a TOML name: the strings stay the built-in ones
    with pytest.raises(SpecError, match="kind 'time_above' unknown"):
        Endpoint("above3", "time_above", output="C", threshold=1.0)


def _pk_spec(n):
    return {
        "trial": {"name": "kinds", "seed": 11, "duration": 24.0, "save_every": 2.0},
        "population": {
            "model": "pk1_oral",
            "n_per_arm": n,
            "demographics": False,
            "iiv": {"CL": 0.2},
        },
        "arms": [
            {"name": "placebo", "placebo": True},
            {"name": "10 mg", "doses": [{"amt": 10.0, "cmt": "depot", "ii": 6.0, "addl": 3}]},
        ],
        "endpoints": [
            {"name": "C_12", "kind": "value", "output": "C", "time": 12.0},
            {"name": "dC_24", "kind": "change", "output": "C", "time": 24.0},
            {"name": "AUC", "kind": "auc", "output": "C", "window": [12.0, 24.0]},
            {
                "name": "high",
                "kind": "safety",
                "output": "C",
                "threshold": 0.3,
                "direction": "above",
            },
        ],
        "statistics": {"replicates": 5},
    }


def test_a_trial_with_class_kinds_and_a_new_kind():
    n = 16
    t0 = Trial.from_dict(_pk_spec(n))
    assert [type(e.kind) for e in t0.endpoints] == [Value, Change, AUC, Safety]
    endpoints = [
        Endpoint("C_12", Value(), output="C", time=12.0),
        Endpoint("dC_24", Change(), output="C", time=24.0),
        Endpoint("AUC", AUC(), output="C", window=(12.0, 24.0)),
        Endpoint("high", Safety(), output="C", threshold=0.3, direction="above"),
        Endpoint("above", TimeAbove(), output="C", threshold=0.2, window=(2.0, 24.0)),
    ]
    assert endpoints[:4] == t0.endpoints
    t = Trial(
        t0.model,
        t0.population,
        t0.arms,
        endpoints,
        duration=24.0,
        save_every=2.0,
        n_per_arm=n,
        seed=11,
        name="kinds",
        replicates=5,
    )
    a = t.run(progress=False)
    b = t0.run(progress=False)
    cols = ["C_12", "dC_24", "dC_24_baseline", "AUC", "high"]
    assert a.table[cols].equals(b.table[cols])
    dosed = a.table[a.table["arm"] == "10 mg"]
    assert dosed["above"].between(0, 1).all() and dosed["above"].max() > 0
    assert (a.table.loc[a.table["arm"] == "placebo", "above"] == 0).all()
    assert set(a.comparisons["endpoint"]) >= {"above", "high"}
    # the report words and units: by kind, and a generic line for the new one
    assert describe_endpoint(t, endpoints[2]) == describe_endpoint(t0, t0.endpoints[2])
    assert describe_endpoint(t, endpoints[4]).startswith("time_above of C over [2")
    assert endpoint_unit(t, endpoints[4]) == "fraction of time"
    assert endpoint_unit(t, endpoints[2]) == endpoint_unit(t0, t0.endpoints[2])


@dataclasses.dataclass(frozen=True)
class WindowMean(EndpointKind):
    """A smooth kind defined outside the package: the mean of the saved values in the
    window, written with ``xp`` so that local sensitivities can differentiate it."""

    name: ClassVar[str] = "window_mean"
    smooth: ClassVar[bool] = True

    def evaluate(self, endpoint, r, xp=np):
        return xp.mean(r.yw, axis=1)


def test_sensitivity_reads_the_kind_capabilities():
    from twinjax.models import pk

    model = pk.one_compartment("first_order")
    reg = tj.Regimen([tj.Dose(time=0.0, amt=100.0, cmt="depot")])
    params = {"CL": np.array([5.0, 4.0]), "V": np.array([50.0, 62.0]), "KA": 1.0, "F": 0.9}
    ts = np.linspace(0.0, 24.0, 25)
    for ep in (
        Endpoint("t", Tmax(), output="C"),
        Endpoint("t", TimeAbove(), output="C", threshold=1.0),
    ):
        with pytest.raises(ValueError, match=f"of kind '{ep.kind.name}' is piecewise"):
            tj.sensitivity.local(model, params, reg, ts, endpoint=ep)
    # a new smooth kind is differentiated like the same formula written as a custom fn
    w = (ts >= 4.0) & (ts <= 12.0)
    mean = Endpoint("m", WindowMean(), output="C", window=(4.0, 12.0))
    fn = Endpoint("m", Custom(), fn=lambda t, o: o["C"][:, np.nonzero(w)[0]].mean(axis=1))
    kw = dict(parameters=("CL", "V"), solver=tj.solvers.Diffrax(rtol=1e-8, atol=1e-10))
    a = tj.sensitivity.local(model, params, reg, ts, endpoint=mean, **kw)
    b = tj.sensitivity.local(model, params, reg, ts, endpoint=fn, **kw)
    np.testing.assert_allclose(a.y, b.y, rtol=1e-12)
    np.testing.assert_allclose(a.absolute, b.absolute, rtol=1e-12)
    assert np.all(np.asarray(a.absolute)[:, 0] < 0)  # a higher CL: a lower mean


#: a comparison of a kind with a string: ``kind == "auc"``, ``e.kind in ("value", ...)``
STRING_TEST = re.compile(r"""\bkind\b\s*(==|!=|\bnot\s+in\b|\bin\b)\s*[("'\[{]""")


def test_no_kind_is_tested_by_its_name_in_the_package():
    hits = []
    for sub in ("trial", "sensitivity"):
        for path in sorted((ROOT / "twinjax" / sub).rglob("*.py")):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if STRING_TEST.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []
    assert STRING_TEST.search('if e.kind == "auc":')
    assert STRING_TEST.search("if e.kind in ('value', 'change'):")
    assert STRING_TEST.search('elif ep.kind not in ("tmax",):')
    assert not STRING_TEST.search("if e.kind.smooth:")
