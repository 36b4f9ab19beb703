"""Shared helpers of the twinjax benchmarks: timing, memory, machine info, JSON."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def use_all_cpu_cores(n: int | None = None) -> int:
    """One JAX device per CPU core (``twinjax.solve._devices.use_cpu_cores``)."""
    from twinjax.solve._devices import use_cpu_cores

    return use_cpu_cores(n)


def setup_precision(float32: bool) -> str:
    """Set jax_enable_x64 (on unless float32). Returns the dtype name used."""
    import jax

    jax.config.update("jax_enable_x64", not float32)
    return "float32" if float32 else "float64"


def block(x):
    import jax

    return jax.block_until_ready(x)


def time_call(fn, *, repeats: int = 3, min_repeats: int = 1, budget_s: float | None = None):
    """Time ``fn()`` (blocking on its result).

    The first call (trace + compile + run) is timed apart; then ``repeats`` steady
    calls (fewer if ``budget_s`` would be exceeded, but at least ``min_repeats``).

    Returns ``(result, first_s, best_s, all_steady_s)``; ``compile_s`` is
    ``first_s - best_s``.
    """
    t = time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t
    steady = []
    for i in range(repeats):
        if budget_s is not None and i >= min_repeats and sum(steady) + first > budget_s:
            break
        t = time.perf_counter()
        out = block(fn())
        steady.append(time.perf_counter() - t)
    best = min(steady) if steady else first
    return out, first, best, steady


def timing_fields(first: float, best: float, steady: list) -> dict:
    """The timing columns of a benchmark row, from :func:`time_call`'s numbers."""
    return dict(
        first_call_s=first,
        best_s=best,
        steady_s=steady,
        n_repeats=len(steady),
        compile_s=max(first - best, 0.0),
    )


def peak_rss_gib(children: bool = False) -> float:
    """Peak resident set size of this process (or its waited-for children), GiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kb = resource.getrusage(who).ru_maxrss
    if sys.platform == "darwin":  # bytes on macOS
        kb = kb / 1024
    return kb / 1024**2


def hwm_rss_gib() -> float | None:
    """Peak RSS of this process's address space (Linux VmHWM; reset at exec, unlike
    ``ru_maxrss``, which a child process inherits from its parent)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def rss_gib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1024**3
    except Exception:  # pragma: no cover
        return float("nan")


def machine_info() -> dict:
    import jax

    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_backend": jax.default_backend(),
        "versions": {},
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        import psutil

        info["memory_total_gib"] = round(psutil.virtual_memory().total / 1024**3, 2)
        info["cpu_count_physical"] = psutil.cpu_count(logical=False)
    except Exception:  # pragma: no cover
        pass
    for mod in ("jax", "jaxlib", "diffrax", "equinox", "numpy", "scipy", "twinjax"):
        try:
            info["versions"][mod] = __import__(mod).__version__
        except Exception:
            pass
    return info


def _clean(x):
    """Make numbers JSON-friendly (numpy scalars, NaN/inf as None)."""
    import math

    import numpy as np

    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(_clean(payload), indent=2) + "\n")
    return path


def console():
    try:
        from rich.console import Console

        return Console()
    except Exception:  # pragma: no cover

        class _C:
            def print(self, *a, **k):
                print(*a)

            def rule(self, s=""):
                print("-" * 20, s)

        return _C()


def table(title, columns, rows):
    """A rich table (or plain text) of rows."""
    try:
        from rich.table import Table

        t = Table(title=title)
        for c in columns:
            t.add_column(str(c))
        for r in rows:
            t.add_row(*[fmt(v) for v in r])
        return t
    except Exception:  # pragma: no cover
        return "\n".join(
            [title, " | ".join(columns)] + [" | ".join(fmt(v) for v in r) for r in rows]
        )


def fmt(v):
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)
