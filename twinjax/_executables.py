"""Compiled programs stored as executables: a fresh process runs them without tracing.

JAX's persistent compilation cache (:mod:`._compile_cache`) skips only XLA's compile:
a fresh process still traces every program to a jaxpr and lowers it to MLIR before
it can look the executable up (for a one-patient MAP fit and forecast, seconds). This
module stores the executable itself, with the structure of its inputs and outputs,
under a key computed from the call's arguments WITHOUT tracing, so that a later
process with the same key loads and runs it directly.

The key (SHA-256) covers everything that determines the program:

- the function (module and qualified name) and twinjax's own source files, with the
  versions of JAX, jaxlib and the libraries twinjax traces through
  (:func:`twinjax.solve._fingerprint.environment_hash`);
- every non-array argument by content (:class:`~twinjax.solve._fingerprint.Fingerprint`:
  models, solvers and error models by class and every field, user classes by the code
  of their methods, functions by their code, constants and closures), with the place
  of each array argument in the argument tree;
- each array argument's dtype, shape and weak type (not its values: they are inputs);
- the backend, its platform version, the device kind and count, ``XLA_FLAGS`` and
  every JAX configuration value (``jax_enable_x64`` among them) except those about
  caching, logging and printing;
- the serialisation format of this module.

Anything that cannot be keyed by content (an argument Fingerprint cannot hash, an
input on another device than the first, a program over several devices, an output
that is not an array) runs on the normal jit path; so does every call when the store
is off, and every call whose stored entry cannot be read, is corrupt (its SHA-256 is
checked) or fails to load. A changed key misses; it never loads another program.

The store is on with :func:`twinjax.enable_compilation_cache` (``executables=True``,
the default): the folder ``executables/`` inside the compilation cache folder. Files
are written whole (a temporary file renamed), one per program and platform. The
executables are loaded with pickle (JAX's own format for serialised executables):
load only a folder you wrote yourself.

:func:`call` is the one entry point: ``call(f, *args, **kwargs)`` for an
``eqx.filter_jit`` function ``f`` returns what ``f(*args, **kwargs)`` returns, to the
last bit (the same program, compiled by the same XLA).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import hashlib
import os
import pathlib
import pickle
import threading
import time
from typing import Any

__all__ = ["call", "counts", "program_key", "seconds"]

FORMAT = "twinjax-executable-1"
SUFFIX = ".exe.pkl"

# what happened to each call (tests and benchmarks read it): "memory" (run from this
# process's table), "loaded" (read from the store), "compiled" (traced and compiled
# here), "stored" (written to the store), "jit" (the normal path: store off or not
# keyable), "load_failed", "store_failed"
_COUNTS: collections.Counter = collections.Counter()
# seconds spent, by phase: "key" (computing keys), "load" (reading and loading stored
# executables), "compile" (tracing, lowering and compiling here), "store" (writing)
_SECONDS: collections.Counter = collections.Counter()
_MEMORY: dict[str, tuple[Any, Any]] = {}
_LOCK = threading.Lock()
_COMPILE_LOCK = threading.Lock()

# JAX settings that do not change a program (where it is cached, what is logged)
_CONFIG_IGNORED = ("cache", "log", "pprint", "traceback", "dump", "debug_info_in")


class _Slot(enum.Enum):
    """Marks where an array argument sits in the argument tree (in the key)."""

    ARRAY = "array"


class Unkeyable(Exception):
    """The call cannot be keyed by content (it runs on the jit path)."""


def counts() -> dict[str, int]:
    """How the calls of this process ran, by outcome (see ``_COUNTS``)."""
    return dict(_COUNTS)


def seconds() -> dict[str, float]:
    """Seconds this process spent keying, loading, compiling and storing programs."""
    return dict(_SECONDS)


def _store_dir() -> pathlib.Path | None:
    from ._compile_cache import executables_dir

    return executables_dir()


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` for an ``eqx.filter_jit`` function ``fn``, through a
    stored executable when the store is on (see the module docstring)."""
    folder = _store_dir()
    if folder is None:
        _COUNTS["jit"] += 1
        return fn(*args, **kwargs)
    t = time.perf_counter()
    try:
        key, leaves = program_key(fn, args, kwargs)
    except Exception:  # noqa: BLE001 (Unkeyable, or anything unforeseen: the jit path)
        _COUNTS["jit"] += 1
        return fn(*args, **kwargs)
    finally:
        _SECONDS["key"] += time.perf_counter() - t
    entry = _MEMORY.get(key)
    if entry is not None:
        _COUNTS["memory"] += 1
    else:
        t = time.perf_counter()
        entry = _load(folder, key)
        _SECONDS["load"] += time.perf_counter() - t
        if entry is None:
            t = time.perf_counter()
            try:
                entry, storable = _compile(fn, args, kwargs)
            except Exception:  # noqa: BLE001 (the jit path raises what is the caller's)
                _COUNTS["jit"] += 1
                return fn(*args, **kwargs)
            finally:
                _SECONDS["compile"] += time.perf_counter() - t
            _COUNTS["compiled"] += 1
            if storable:
                t = time.perf_counter()
                _store(folder, key, entry)
                _SECONDS["store"] += time.perf_counter() - t
        else:
            _COUNTS["loaded"] += 1
            return _first_run(folder, key, entry, leaves, fn, args, kwargs)
        with _LOCK:
            _MEMORY[key] = entry
    compiled, out_tree = entry
    import jax

    return jax.tree.unflatten(out_tree, compiled(*leaves))


def _first_run(folder, key, entry, leaves, fn, args, kwargs):
    """Run a program just loaded from the store, to the end; if it fails where the jit
    path does not, the entry is bad: it is removed and the jit path's result returned."""
    import jax

    compiled, out_tree = entry
    try:
        out = jax.block_until_ready(compiled(*leaves))
    except Exception:  # noqa: BLE001 (the jit path decides whose error it is)
        result = fn(*args, **kwargs)  # raises if the call itself is at fault
        _COUNTS["run_failed"] += 1
        _path(folder, key).unlink(missing_ok=True)
        return result
    with _LOCK:
        _MEMORY[key] = entry
    return jax.tree.unflatten(out_tree, out)


# ============================================================================ the key
def _environment() -> str:
    """The platform, the libraries and twinjax's source: a hash, per process."""
    with _LOCK:
        env = _ENV.get("hash")
    if env is not None:
        return env
    import jax

    from .solve._fingerprint import environment_hash

    devices = jax.devices()
    h = hashlib.sha256()
    for part in (
        FORMAT,
        environment_hash(),
        jax.__version__,
        jax.default_backend(),
        devices[0].client.platform_version,
        devices[0].device_kind,
        str(len(devices)),
        os.environ.get("XLA_FLAGS", ""),
    ):
        h.update(part.encode())
        h.update(b"\x00")
    env = h.hexdigest()
    with _LOCK:
        _ENV["hash"] = env
    return env


_ENV: dict[str, str] = {}


def _config() -> str:
    """Every JAX configuration value that may change a program (thread-local values
    included, e.g. inside ``jax.enable_x64``)."""
    import jax

    items = []
    for name in sorted(jax.config.values):
        if any(s in name for s in _CONFIG_IGNORED):
            continue
        try:
            value = getattr(jax.config, name)
        except AttributeError:
            value = jax.config.values[name]
        items.append(f"{name}={value!r}")
    return ";".join(items)


def _aval(x) -> tuple:
    """``(slot, dtype, shape, weak type)`` of an array argument, as jit sees it."""
    import jax
    import numpy as np

    if isinstance(x, jax.Array):
        devices = x.sharding.device_set
        if len(devices) != 1 or next(iter(devices)) != jax.devices()[0]:
            raise Unkeyable("an input on another device than the first")
        return (_Slot.ARRAY, str(x.dtype), tuple(x.shape), bool(getattr(x, "weak_type", False)))
    dtype = jax.dtypes.canonicalize_dtype(np.asarray(x).dtype)
    return (_Slot.ARRAY, str(dtype), tuple(np.shape(x)), False)


def _unwrap(fn):
    """The Python function under jit and trace-count wrappers (``__wrapped__``)."""
    seen = 0
    while hasattr(fn, "__wrapped__") and seen < 10:
        fn, seen = fn.__wrapped__, seen + 1
    if not callable(fn) or not hasattr(fn, "__qualname__"):
        raise Unkeyable(f"a function without a name: {fn!r}")
    return fn


def program_key(fn, args: tuple, kwargs: dict) -> tuple[str, list]:
    """The store's key of ``fn(*args, **kwargs)`` and the call's array leaves.

    Raises:
        Unkeyable: something in the call cannot be hashed by content.
    """
    import equinox as eqx
    import jax

    from .solve._fingerprint import Fingerprint

    tree = (args, kwargs)
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_array(x)]
    static = jax.tree.map(lambda x: _Slot.ARRAY if eqx.is_array(x) else x, tree)
    fp = Fingerprint()
    fp.add("environment", _environment())
    fp.add("config", _config())
    inner = _unwrap(fn)
    fp.add("function", f"{inner.__module__}.{inner.__qualname__}")
    fp.add("function body", inner)
    fp.add("static", static)
    fp.add("arrays", [_aval(a) for a in leaves])
    if fp.problems:
        raise Unkeyable("; ".join(fp.problems))
    return fp.hexdigest(), leaves


# ============================================================================ compile
def _compile(fn, args: tuple, kwargs: dict):
    """Trace ``fn`` (its function, not its jit wrapper: the same program as
    ``eqx.filter_jit`` builds) on the call's arrays, compile; ``((compiled, output
    tree), storable)``, storable when it runs on the first device only.

    An executable that JAX loaded from its persistent cache serialises without some of
    its kernels (jaxlib 0.10 on CPU: the copy then fails with 'Function ... not
    found'); when the compile was such a hit, the program is traced and compiled
    again with JAX's cache off, and that fresh executable is the one stored. A
    compile that missed JAX's cache is fresh, and JAX's cache keeps it too."""
    hits = _jax_cache_hits()
    entry, storable = _trace_and_compile(fn, args, kwargs, fresh=False)
    if storable and _jax_cache_hits() != hits:
        entry, storable = _trace_and_compile(fn, args, kwargs, fresh=True)
    return entry, storable


_HITS = {"n": 0, "listening": 0}


def _jax_cache_hits() -> int:
    """How many programs JAX has loaded from its persistent cache in this process
    (counted from the first call on)."""
    with _LOCK:
        if not _HITS["listening"]:
            import jax

            def count(event: str, **kw: str | int) -> None:
                if event == "/jax/compilation_cache/cache_hits":
                    _HITS["n"] += 1

            jax.monitoring.register_event_listener(count)
            _HITS["listening"] = 1
        return _HITS["n"]


def _trace_and_compile(fn, args: tuple, kwargs: dict, fresh: bool):
    """See :func:`_compile`; ``fresh``: with JAX's persistent cache off."""
    import equinox as eqx
    import jax

    inner = getattr(fn, "__wrapped__", fn)
    dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)
    out_info: dict[str, Any] = {}

    def flat(*xs):
        a, kw = eqx.combine(jax.tree.unflatten(treedef, xs), static)
        out = inner(*a, **kw)
        out_leaves, out_tree = jax.tree.flatten(out)
        if not all(eqx.is_array(o) for o in out_leaves):
            raise Unkeyable("an output that is not an array")
        out_info["tree"] = out_tree
        return out_leaves

    lowered = jax.jit(flat).lower(*leaves)
    with _fresh_compile() if fresh else contextlib.nullcontext():
        compiled = lowered.compile()
    first = {jax.devices()[0]}
    shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    storable = all(set(s.device_set) == first for s in shardings)
    return (compiled, out_info["tree"]), storable


@contextlib.contextmanager
def _fresh_compile():
    """JAX's persistent cache off for one compile (see :func:`_compile`)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    with _COMPILE_LOCK:
        was = bool(jax.config.jax_enable_compilation_cache)
        if was:
            jax.config.update("jax_enable_compilation_cache", False)
            cc.reset_cache()
        try:
            yield
        finally:
            if was:
                jax.config.update("jax_enable_compilation_cache", True)
                cc.reset_cache()


# ============================================================================ the store
def _path(folder: pathlib.Path, key: str) -> pathlib.Path:
    return folder / f"{key}{SUFFIX}"


def _store(folder: pathlib.Path, key: str, entry) -> None:
    """Write the executable (a temporary file renamed, so a reader sees it whole)."""
    from jax.experimental import serialize_executable as se

    compiled, out_tree = entry
    try:
        payload, in_tree, flat_out_tree = se.serialize(compiled)
        body = pickle.dumps(
            dict(
                format=FORMAT,
                key=key,
                sha256=hashlib.sha256(payload).hexdigest(),
                payload=payload,
                in_tree=in_tree,
                flat_out_tree=flat_out_tree,
                out_tree=out_tree,
            ),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, _path(folder, key))
    except Exception:  # noqa: BLE001 (a store that cannot be written is no store)
        _COUNTS["store_failed"] += 1
        return
    _COUNTS["stored"] += 1


def _prepare_backend(dev) -> None:
    """What lowering would have set up before a program runs: on CPU, jaxlib's LAPACK
    kernels take their routines from SciPy when a linear-algebra operation is first
    lowered; a loaded program that calls them must find them set."""
    if dev.platform == "cpu":
        import numpy as np
        from jaxlib import lapack

        lapack.prepare_lapack_call("getrf", np.float64)


def _load(folder: pathlib.Path, key: str):
    """The stored ``(compiled, output tree)`` of ``key``, or None (missing, unreadable,
    another format or key, a payload whose SHA-256 differs, a failed load)."""
    path = _path(folder, key)
    if not path.is_file():
        return None
    try:
        import jax
        from jax.experimental import serialize_executable as se

        d = pickle.loads(path.read_bytes())
        if d.get("format") != FORMAT or d.get("key") != key:
            raise ValueError("another format or key")
        if hashlib.sha256(d["payload"]).hexdigest() != d["sha256"]:
            raise ValueError("a corrupt payload")
        dev = jax.devices()[0]
        _prepare_backend(dev)
        compiled = se.deserialize_and_load(
            d["payload"],
            d["in_tree"],
            d["flat_out_tree"],
            backend=dev.client,
            execution_devices=[dev],
        )
        return compiled, d["out_tree"]
    except Exception:  # noqa: BLE001 (anything wrong with an entry: compile instead)
        _COUNTS["load_failed"] += 1
        return None
