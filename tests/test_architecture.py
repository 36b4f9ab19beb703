"""The package's layout rules, checked on the source (``ast``, nothing is imported):

- no import cycles between twinjax's modules: the graph has an edge ``a -> b`` for every
  ``import`` / ``from ... import`` in ``a`` naming module ``b`` (function-level imports
  included: a lazy import is still a dependency; ``from pkg import name`` is an edge to
  ``pkg.name`` when that is a module, else to ``pkg``);
- no module reaches into another for a private name: no ``from .x import _name`` and no
  ``x._name`` on an imported twinjax module (a public name inside a private module is
  fine: ``from ._engine import piecewise_params``);
- the trial layer asks a model for what it declares (``Model.runs_own_trials`` and the
  other trial capabilities) instead of probing it with ``hasattr`` or naming a PK output.

Imports under ``if TYPE_CHECKING:`` (annotations only) are not imports at run time and
are not counted. No module is exempt (``PENDING`` is where one would be listed, with the
reason, while it is being reworked).
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "twinjax"

#: modules still to be cleaned (prefixes of dotted names); see the module docstring
PENDING: tuple[str, ...] = ()


def _pending(mod: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in PENDING)


def _module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def load_sources(root: pathlib.Path = ROOT, package: str = "twinjax") -> dict:
    """``{module: (source, is_package)}`` for every ``.py`` file of ``package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        name, is_pkg = _module_name(path, root)
        out[name] = (path.read_text(encoding="utf-8"), is_pkg)
    return out


def _resolve(current: str, is_pkg: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def analyse(sources: dict, top: str = "twinjax"):
    """``(graph, private)``: the import graph ``{module: {imported modules}}`` and the
    private reaches ``[(module, line, target, name)]``."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    private = []
    for mod, (src, is_pkg) in sources.items():
        tree = ast.parse(src)
        aliases: dict[str, str] = {}  # local name -> twinjax module it is bound to
        # imports under ``if TYPE_CHECKING:`` are for annotations only: never run, no cycle
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If)
            and isinstance(block.test, ast.Name)
            and block.test.id == "TYPE_CHECKING"
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == top and a.name in sources:
                        graph[mod].add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node.level, node.module)
                if target.split(".")[0] != top:
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in sources:  # a module
                        graph[mod].add(sub)
                        aliases[a.asname or a.name] = sub
                        continue
                    if target in sources:
                        graph[mod].add(target)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append((mod, node.lineno, target, a.name))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{aliases[node.value.id]}.{node.attr}" not in sources  # not a module
            ):
                private.append((mod, node.lineno, aliases[node.value.id], node.attr))
        graph[mod].discard(mod)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------ the checker itself
_TOY = {
    "twinjax": ("", True),
    "twinjax.a": ("from . import _b\n", True),
    "twinjax.a._b": ("def f():\n    from ._c import helper\n", False),
    "twinjax.a._c": ("from ._b import _hidden\n\ndef helper(): ...\n", False),
    "twinjax.d": ("from .a import _b\n\nx = _b._secret\ny = _b.public\n", False),
    "twinjax.e": ("import numpy as np\nfrom .a._c import helper\n", False),
}


def test_the_checker_finds_a_cycle_through_a_lazy_import_and_private_reaches():
    graph, private = analyse(_TOY)
    assert graph["twinjax.a"] == {"twinjax.a._b"}
    assert graph["twinjax.a._b"] == {"twinjax.a._c"}  # the function-level import counts
    assert graph["twinjax.e"] == {"twinjax.a._c"}  # numpy is not part of the graph
    assert cycles(graph) == [["twinjax.a._b", "twinjax.a._c"]]
    assert sorted((m, t, n) for m, _, t, n in private) == [
        ("twinjax.a._c", "twinjax.a._b", "_hidden"),
        ("twinjax.d", "twinjax.a._b", "_secret"),
    ]
    # without the lazy import there is no cycle
    toy = dict(_TOY, **{"twinjax.a._b": ("def f():\n    pass\n", False)})
    assert cycles(analyse(toy)[0]) == []


# ------------------------------------------------------------------ the package
SOURCES = load_sources()


def test_no_import_cycles_outside_the_pending_modules():
    graph, _ = analyse(SOURCES)
    found = cycles(graph)
    bad = [c for c in found if not all(_pending(m) for m in c)]
    assert not bad, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in bad)


def test_no_private_names_imported_across_modules_outside_the_pending_ones():
    _, private = analyse(SOURCES)
    bad = [p for p in private if not _pending(p[0])]
    assert not bad, "private names reached from another module:\n" + "\n".join(
        f"{m} line {ln}: {t}.{n}" for m, ln, t, n in bad
    )


#: the trial capabilities a model declares (twinjax.ode._model.Model)
CAPABILITIES = (
    "runs_own_trials",
    "trial_simulate",
    "trial_output_names",
    "default_trial_outputs",
    "beat_output_names",
    "output_units",
    "varies_in_time",
)


def test_the_trial_layer_reads_declared_capabilities_and_names_no_output():
    """No ``hasattr``/``getattr`` probe for a capability and no literal ``"pk.C"`` in
    ``twinjax/trial/``; every capability has a default on the abstract Model."""
    probes, literals = [], []
    for mod, (src, _) in SOURCES.items():
        if not mod.startswith("twinjax.trial"):
            continue
        for node in ast.walk(ast.parse(src)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in CAPABILITIES
            ):
                probes.append(
                    f"{mod} line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})"
                )
            if isinstance(node, ast.Constant) and node.value == "pk.C":
                literals.append(f"{mod} line {node.lineno}")
    assert not probes, probes
    assert not literals, literals
    model_src = SOURCES["twinjax.ode._model"][0]
    cls = next(
        n for n in ast.parse(model_src).body if isinstance(n, ast.ClassDef) and n.name == "Model"
    )
    declared = set()
    for n in cls.body:
        if isinstance(n, ast.FunctionDef):
            declared.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            declared.add(n.target.id)
    assert set(CAPABILITIES) <= declared, set(CAPABILITIES) - declared


def test_the_quasi_static_twin_is_a_model_holding_a_coupled_one():
    """``QuasiStaticTwin`` derives from the abstract Model, not from the concrete
    ``Coupled``, and declares the capabilities a trial reads."""
    from twinjax.models._multiscale import QuasiStaticTwin
    from twinjax.models.pk import one_compartment
    from twinjax.ode import Coupled, Link, Model

    assert issubclass(QuasiStaticTwin, Model) and not issubclass(QuasiStaticTwin, Coupled)
    link = Link("pk.C", "circ.R_AR_SYS", "emax", {"Emax": -0.3}, name="d")
    twin = QuasiStaticTwin(one_compartment("first_order"), [link])
    assert isinstance(twin.coupled, Coupled)
    assert twin.param_names == twin.coupled.param_names
    assert twin.runs_own_trials and not Model.runs_own_trials and not twin.coupled.runs_own_trials
    assert twin.default_trial_outputs[0] == "pk.C"  # the concentration the link reads
    assert set(twin.beat_output_names) <= set(twin.trial_output_names)
    assert twin.output_units["circ.MAP"] == "mmHg"
    assert twin.varies_in_time("pk.CL") and not twin.varies_in_time("circ.R_AR_SYS")
    plain = twin.coupled  # an ODE model: every default
    assert plain.beat_output_names == () and plain.output_units == {}
    assert plain.trial_output_names == plain.output_names + plain.state_names
    assert plain.varies_in_time("circ.R_AR_SYS")


def test_the_checker_ignores_imports_for_annotations_only():
    toy = {
        "twinjax": ("", True),
        "twinjax.a": ("", True),
        "twinjax.a._b": ("from ._c import helper\n", False),
        "twinjax.a._c": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._b import X\n",
            False,
        ),
    }
    graph, _ = analyse(toy)
    assert cycles(graph) == []
    toy["twinjax.a._c"] = ("from ._b import X\n", False)
    assert cycles(analyse(toy)[0]) != []
