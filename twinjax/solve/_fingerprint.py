"""Content fingerprints of everything that determines a cohort's numbers.

A result store may only hand back stored numbers when the request that made them
is the same as the new one. "The same" is decided here, by content, never by
``repr``: every array is hashed by its dtype, shape and bytes; every model, solver
and link by its class and every field; every Python function by its code, its
constants, its default arguments, the values captured in its closure and the
module-level values it reads. Classes written outside twinjax and the libraries it
builds on are hashed with the code of their methods (a user's model whose ``rhs``
changed is a different model); twinjax's own code is covered by a hash of the
installed package's source files, and library versions are part of the hash.

Anything that cannot be hashed by content (an object of unknown type, a function
without Python code) is reported, not guessed: the caller then refuses to reuse
stored results and says why.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import pathlib
import types
from collections.abc import Mapping

import numpy as np

# modules whose objects are identified by their qualified name and their package
# version (their code does not change within a version)
_LIBRARIES = (
    "builtins",
    "math",
    "operator",
    "functools",
    "numpy",
    "scipy",
    "jax",
    "jaxlib",
    "equinox",
    "diffrax",
    "optimistix",
    "lineax",
    "optax",
    "abc",
    "typing",
    "enum",
    "dataclasses",
    "collections",
)
_VERSIONED = ("jax", "jaxlib", "numpy", "equinox", "diffrax", "optimistix", "lineax", "scipy")


def _is_library(module: str | None) -> bool:
    root = (module or "").split(".")[0]
    return root in _LIBRARIES


def _is_twinjax(module: str | None) -> bool:
    return (module or "").split(".")[0] == "twinjax"


@functools.cache
def environment_hash() -> str:
    """Library versions and a hash of twinjax's own source files."""
    h = hashlib.sha256()
    for name in _VERSIONED:
        try:
            h.update(f"{name}={importlib.metadata.version(name)};".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name}=absent;".encode())
    root = pathlib.Path(__file__).resolve().parent.parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class Fingerprint:
    """A running SHA-256 over canonical encodings, with a list of what it could not hash.

    ``add(label, obj)`` feeds one object; ``problems`` names the parts that could
    not be fingerprinted by content (then stored results must not be reused).
    """

    def __init__(self):
        self._h = hashlib.sha256()
        self.problems: list[str] = []
        self._seen: dict[int, int] = {}
        self._keep: list = []  # keep visited objects alive so their ids stay unique

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def add(self, label: str, obj) -> None:
        self._put(f"<{label}>")
        self._feed(obj, label, depth=0)

    # -- encoding -------------------------------------------------------------
    def _put(self, s: str) -> None:
        self._h.update(s.encode())
        self._h.update(b"\x00")

    def _array(self, a) -> None:
        a = np.asarray(a)
        self._put(f"array {a.dtype.str} {a.shape}")
        self._h.update(np.ascontiguousarray(a).tobytes())

    def _feed(self, obj, path: str, depth: int) -> None:  # noqa: C901 (one dispatch table)
        if depth > 60:
            self.problems.append(f"{path}: nested too deeply to fingerprint")
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self._put(f"{type(obj).__name__}:{obj!r}")
            return
        if isinstance(obj, enum.Enum):
            self._put(f"enum:{type(obj).__module__}.{type(obj).__qualname__}.{obj.name}")
            return
        if isinstance(obj, (np.ndarray, np.generic)) or _is_jax_array(obj):
            self._array(obj)
            return
        if isinstance(obj, np.dtype):
            self._put(f"dtype:{obj.str}")
            return
        # objects met before (shared sub-objects, recursive references)
        key = id(obj)
        if key in self._seen:
            self._put(f"ref:{self._seen[key]}")
            return
        self._seen[key] = len(self._seen)
        self._keep.append(obj)
        if isinstance(obj, (tuple, list, set, frozenset)):
            items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
            self._put(f"{type(obj).__name__}[{len(items)}]")
            for i, v in enumerate(items):
                self._feed(v, f"{path}[{i}]", depth + 1)
            return
        if isinstance(obj, Mapping):
            self._put(f"mapping[{len(obj)}]")
            for k in sorted(obj, key=repr):
                self._feed(k, f"{path}.key", depth + 1)
                self._feed(obj[k], f"{path}[{k!r}]", depth + 1)
            return
        if isinstance(obj, type):
            self._class(obj, path, depth)
            return
        if isinstance(obj, functools.partial):
            self._put("partial")
            self._feed(obj.func, f"{path}.func", depth + 1)
            self._feed(obj.args, f"{path}.args", depth + 1)
            self._feed(obj.keywords, f"{path}.keywords", depth + 1)
            return
        if isinstance(obj, types.MethodType):
            self._put("method")
            self._feed(obj.__func__, f"{path}.__func__", depth + 1)
            self._feed(obj.__self__, f"{path}.__self__", depth + 1)
            return
        if isinstance(obj, types.FunctionType):
            self._function(obj, path, depth)
            return
        if isinstance(obj, types.ModuleType):
            self._put(f"module:{obj.__name__}")
            return
        if isinstance(obj, types.CodeType):
            self._code(obj, path, depth)
            return
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None and callable(obj):  # jax.jit, custom_jvp, functools.wraps
            self._put(f"wrapped:{type(obj).__module__}.{type(obj).__qualname__}")
            self._feed(wrapped, f"{path}.__wrapped__", depth + 1)
            return
        if isinstance(obj, (types.BuiltinFunctionType, np.ufunc)) or (
            callable(obj) and _is_library(getattr(obj, "__module__", None))
        ):
            name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
            if name is None:
                self.problems.append(f"{path}: a callable of type {type(obj).__name__}")
                return
            self._put(f"library-callable:{getattr(obj, '__module__', '')}.{name}")
            return
        # structured objects: dataclasses (equinox modules are dataclasses) and plain ones
        cls = type(obj)
        self._class(cls, path + ".__class__", depth)
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                self._put(f"field:{f.name}")
                self._feed(getattr(obj, f.name, None), f"{path}.{f.name}", depth + 1)
            return
        state = getattr(obj, "__dict__", None)
        slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ())]
        if state is None and not slots:
            self.problems.append(
                f"{path}: an object of type {cls.__module__}.{cls.__qualname__} "
                "(neither data nor a Python function)"
            )
            return
        fields = dict(state or {})
        for s in slots:
            if hasattr(obj, s):
                fields[s] = getattr(obj, s)
        for k in sorted(fields):
            self._put(f"attr:{k}")
            self._feed(fields[k], f"{path}.{k}", depth + 1)

    def _class(self, cls: type, path: str, depth: int) -> None:
        self._put(f"class:{cls.__module__}.{cls.__qualname__}")
        if _is_library(cls.__module__) or _is_twinjax(cls.__module__):
            return  # covered by the library versions / twinjax's source hash
        # a user's class: its own code counts (a changed rhs is a different model)
        for base in cls.__mro__:
            if _is_library(base.__module__) or _is_twinjax(base.__module__):
                continue
            for name in sorted(vars(base)):
                if name.startswith("__") and name not in ("__call__", "__init__"):
                    continue
                member = vars(base)[name]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    self._put(f"member:{base.__qualname__}.{name}")
                    self._function(member, f"{path}.{name}", depth + 1)

    def _function(self, fn: types.FunctionType, path: str, depth: int) -> None:
        module = fn.__module__
        self._put(f"function:{module}.{fn.__qualname__}")
        if _is_library(module):
            return
        own_code = not _is_twinjax(module)  # twinjax's code is in the source hash
        if own_code:
            self._code(fn.__code__, path, depth)
        self._feed(fn.__defaults__, f"{path}.__defaults__", depth + 1)
        self._feed(fn.__kwdefaults__, f"{path}.__kwdefaults__", depth + 1)
        for i, cell in enumerate(fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name not yet bound)
                self._put("empty-cell")
                continue
            self._feed(value, f"{path}.<closure {fn.__code__.co_freevars[i]}>", depth + 1)
        if not own_code:
            return
        # module-level names the body reads (constants, helper functions, classes)
        g = fn.__globals__
        for name in _global_names(fn.__code__):
            if name in g:
                self._put(f"global:{name}")
                self._feed(g[name], f"{path}.<global {name}>", depth + 1)

    def _code(self, code: types.CodeType, path: str, depth: int) -> None:
        self._put(f"code:{code.co_name}:{code.co_argcount}:{code.co_kwonlyargcount}")
        self._h.update(code.co_code)
        self._put(repr(code.co_names))
        self._put(repr(code.co_varnames))
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self._code(c, path, depth + 1)
            else:
                self._feed(c, f"{path}.<const>", depth + 1)


def _global_names(code: types.CodeType):
    """Names a code object (and the code objects nested in it) may read as globals."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= set(_global_names(c))
    return sorted(names)


def _is_jax_array(obj) -> bool:
    try:
        import jax

        return isinstance(obj, jax.Array)
    except ImportError:  # pragma: no cover
        return False


def describe_callable(fn) -> str:
    """A short name of a callable, for messages."""
    try:
        return f"{fn.__module__}.{fn.__qualname__} ({inspect.getsourcefile(fn)})"
    except (AttributeError, TypeError):
        return repr(fn)
