"""Link kinds are classes (``twinjax.ode``); their string names are aliases."""

import ast
import dataclasses
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pd, pk
from twinjax.ode import (
    KINDS,
    LINK_KINDS,
    Direct,
    Emax,
    Linear,
    Link,
    LinkKind,
    Param,
    Sigmoid,
    UserLink,
    link_kind,
)


def _scaled(c, base, q):
    return base * (1.0 + q["s"] * c)


USER_Q = {"s": Param("s", 0.02, "L/mg", -1.0, 1.0, "identity")}

# (target, string name, class instance, params)
CASES = [
    ("pd.KOUT", "linear", Linear(), {"slope": 0.05}),
    ("pd.KOUT", "emax", Emax(), {"Emax": -0.4, "EC50": 0.8}),
    ("pd.KOUT", "sigmoid", Sigmoid(), {"Emax": 0.6, "EC50": 1.2, "gamma": 2.5}),
]


def _run(links):
    m = tj.couple({"pk": pk.one_compartment("first_order"), "pd": pd.IndirectResponse(1)}, links)
    reg = tj.Regimen([tj.Dose(100.0, "pk.depot", 0.0), tj.Dose(50.0, "pk.depot", 12.0)])
    r = tj.simulate(m, {}, reg, jnp.linspace(0.0, 36.0, 37))
    return m, {k: np.asarray(v) for k, v in r.outputs.items()}


@pytest.mark.parametrize("target,name,kind,params", CASES, ids=[c[1] for c in CASES])
def test_a_class_and_its_string_name_give_bitwise_equal_simulations(target, name, kind, params):
    by_name = [Link("pk.C", "pd.C", "direct"), Link("pk.C", target, name, params)]
    by_class = [Link("pk.C", "pd.C", Direct()), Link("pk.C", target, kind, params)]
    assert by_name == by_class and hash(tuple(by_name)) == hash(tuple(by_class))
    assert by_name[1].kind == kind and by_name[1].kind.name == name
    m1, a = _run(by_name)
    m2, b = _run(by_class)
    assert m1.params == m2.params
    assert set(a) == set(b) and "pd.R" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert np.ptp(a["pd.R"]) > 1.0  # the links do something


def test_the_user_kind_by_name_and_by_class_are_the_same_link():
    a = Link("pk.C", "pd.R0", "user", USER_Q, fn=_scaled)
    b = Link("pk.C", "pd.R0", UserLink(_scaled), USER_Q)
    c = Link("pk.C", "pd.R0", UserLink, USER_Q, fn=_scaled)
    assert a == b == c and hash(a) == hash(b) == hash(c)
    assert a.kind == UserLink(_scaled) and a.kind.name == "user" and b.fn is _scaled
    _, ra = _run([Link("pk.C", "pd.C"), a])
    _, rb = _run([Link("pk.C", "pd.C"), b])
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])
    with pytest.raises(ValueError, match=r"Link kind 'user' needs fn\(C, P, q\)"):
        Link("pk.C", "pd.R0", "user", USER_Q)
    with pytest.raises(ValueError, match="must be a Param"):
        Link("pk.C", "pd.R0", "user", {"s": 0.1}, fn=_scaled).param_table()
    with pytest.raises(ValueError, match="fn is only for kind 'user'"):
        Link("pk.C", "pd.KOUT", Emax(), fn=_scaled)


def test_the_formulas_of_the_built_in_kinds():
    c, base = jnp.asarray(2.0), jnp.asarray(3.0)
    q = {"slope": 0.1, "Emax": -0.5, "EC50": 1.5, "gamma": 2.0}
    assert float(Direct().apply(c, base, q)) == 2.0
    assert float(Linear().apply(c, base, q)) == pytest.approx(3.0 * 1.2)
    assert float(Emax().apply(c, base, q)) == pytest.approx(3.0 * (1 - 0.5 * 2 / 3.5))
    assert float(Sigmoid().apply(c, base, q)) == pytest.approx(3.0 * (1 - 0.5 * 4 / 6.25))
    assert float(UserLink(_scaled).apply(c, base, {"s": 0.5})) == 6.0


def test_defaults_and_unknown_parameters_as_before():
    ln = Link("pk.C", "pd.KOUT", Emax(), {"Emax": -0.3})
    table = {q.name: q for q in ln.param_table()}
    assert table["Emax"].value == -0.3 and table["EC50"].value == 1.0
    assert table["EC50"].transform == "log" and table["Emax"].lower == -1.0
    assert [q.name for q in Sigmoid().param_table({}, "a.b", "c.d")] == ["Emax", "EC50", "gamma"]
    assert Direct().param_table({}, "a.b", "c.d") == ()
    with pytest.raises(ValueError, match=r"Link pk.C->pd.KOUT \(emax\): unknown parameter\(s\)"):
        Link("pk.C", "pd.KOUT", "emax", {"EC": 1.0}).param_table()


def test_unknown_kinds_are_refused_naming_the_allowed_ones():
    allowed = r"\('direct', 'linear', 'emax', 'sigmoid', 'user'\)"
    with pytest.raises(ValueError, match=f"Link kind 'bogus' is not one of {allowed}"):
        link_kind("bogus")
    with pytest.raises(ValueError, match=f"Link kind 'bogus' is not one of {allowed}"):
        Link("pk.C", "pd.C", "bogus")
    with pytest.raises(ValueError, match="Link kind 3 is not one of"):
        Link("pk.C", "pd.C", 3)
    with pytest.raises(ValueError, match="is not one of"):
        link_kind(int)
    assert LINK_KINDS == tuple(KINDS) == ("direct", "linear", "emax", "sigmoid", "user")
    assert all(KINDS[n].name == n for n in KINDS)
    assert link_kind("emax") == link_kind(Emax) == Emax() and link_kind(Emax()) == Emax()


def test_a_kind_without_a_name_cannot_be_made():
    class Nameless(LinkKind):
        def apply(self, c, base, q):
            return base

    with pytest.raises(TypeError, match="needs a class attribute name"):
        Nameless()
    with pytest.raises(TypeError):  # abstract: no apply
        type("NoApply", (LinkKind,), {"name": "noapply"})()


class LogLinear(LinkKind):
    """A kind the package does not know: ``P * (1 + slope * log(1 + C))``."""

    name = "loglinear"
    defaults = (Param("slope", 0.0, "1", -10.0, 10.0, "identity", doc="per log unit"),)

    def apply(self, c, base, q):
        return base * (1.0 + q["slope"] * jnp.log1p(c))


def _loglinear(c, base, q):
    return base * (1.0 + q["slope"] * jnp.log1p(c))


def test_a_new_kind_is_a_subclass_and_couples_without_touching_the_package():
    ln = Link("pk.C", "pd.KOUT", LogLinear(), {"slope": 0.3}, name="drug")
    assert ln.kind.name == "loglinear" and hash(ln) == hash(dataclasses.replace(ln))
    m, a = _run([Link("pk.C", "pd.C"), ln])
    assert m.param("drug.slope").value == 0.3 and m.param("drug.slope").doc == "per log unit"
    with pytest.raises(ValueError, match=r"\(loglinear\): unknown parameter\(s\) \['k'\]"):
        Link("pk.C", "pd.KOUT", LogLinear(), {"k": 1.0}).param_table()
    # the same formula as a user function gives the same numbers
    q = {"slope": Param("slope", 0.3, "1", -10.0, 10.0, "identity")}
    _, b = _run([Link("pk.C", "pd.C"), Link("pk.C", "pd.KOUT", "user", q, fn=_loglinear)])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    _, off = _run([Link("pk.C", "pd.C")])
    assert not np.array_equal(a["pd.R"], off["pd.R"])
    # its parameter is a model parameter like any other
    p = m.param("drug.slope")
    assert math.isfinite(p.lower) and p.unit == "1"


def test_no_link_kind_is_compared_to_a_string_in_the_coupled_model():
    import twinjax.ode._couple as couple_module

    src = pathlib.Path(couple_module.__file__).read_text()
    for bad in ("kind ==", "kind !=", "kind in (", "kind not in", "LINK_KINDS", "_LINK_PARAMS"):
        assert bad not in src, bad
    # no kind name as a string constant in the code (docstrings aside)
    tree = ast.parse(src)
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    names = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value in LINK_KINDS and id(n) not in docs
    ]
    assert names == []
