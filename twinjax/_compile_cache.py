"""A persistent compilation cache: compiled programs kept on disk between processes.

JAX compiles every program the first time a process runs it (for a MAP fit of one
patient: the batched Levenberg-Marquardt loop with forward-mode sensitivities, several
seconds). JAX's persistent compilation cache stores the compiled executables on disk,
keyed by the program, the compile options, the backend and the library versions, so a
later process that builds the same program loads it instead of compiling it again.
Together with the padded shape buckets of :func:`twinjax.calibrate.fit_individual`, a
new patient (or batch size) builds the same program as the last one did.

Opt-in in the library (:func:`enable_compilation_cache`; importing twinjax changes no
JAX setting), on by default in the ``twinjax`` command line. The folder is, first
found: the ``path`` argument, the environment variable ``TWINJAX_CACHE_DIR``,
``$XDG_CACHE_HOME/twinjax/jax``, ``~/.cache/twinjax/jax``. ``TWINJAX_CACHE_DIR=off``
(or ``0``, ``no``, ``false``, ``none``, empty) turns it off. Nothing is written
anywhere else. The cache may be deleted at any time (it is rebuilt as programs are
compiled); it holds executables for this machine's backend and JAX version only.

JAX's cache still traces and lowers every program in a new process before it looks it
up. With ``executables=True`` (the default) the programs that twinjax routes through
:func:`twinjax._executables.call` (the MAP fit's) are also stored whole, in the
subfolder ``executables/``, keyed without tracing: a later process loads and runs them
directly (:mod:`twinjax._executables`).
"""

from __future__ import annotations

import os
import pathlib

__all__ = [
    "compilation_cache_dir",
    "default_cache_dir",
    "enable_compilation_cache",
    "executables_dir",
]

ENV = "TWINJAX_CACHE_DIR"
OFF = ("off", "0", "no", "false", "none", "")

EXECUTABLES = "executables"  # the subfolder of stored executables

_STATE: dict[str, pathlib.Path | None] = {"dir": None, "executables": None}


def default_cache_dir() -> pathlib.Path | None:
    """The cache folder used when none is given: ``$TWINJAX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/twinjax/jax``, else ``~/.cache/twinjax/jax``; None when
    ``TWINJAX_CACHE_DIR`` turns the cache off."""
    env = os.environ.get(ENV)
    if env is not None:
        if env.strip().lower() in OFF:
            return None
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "twinjax" / "jax"


def enable_compilation_cache(
    path: str | os.PathLike | None = None, *, executables: bool = True
) -> pathlib.Path | None:
    """Keep compiled JAX programs on disk, so that later processes load them.

    Sets JAX's ``jax_compilation_cache_dir`` to the folder and its thresholds so that
    every program is cached, however small or quick to compile
    (``jax_persistent_cache_min_compile_time_secs = 0``,
    ``jax_persistent_cache_min_entry_size_bytes = -1``). Programs compiled earlier in
    this process are not written back; those compiled from now on are.

    Arguments:
        path: the cache folder (created if needed). Default: ``$TWINJAX_CACHE_DIR``,
            else ``$XDG_CACHE_HOME/twinjax/jax``, else ``~/.cache/twinjax/jax``. The
            string ``"off"`` (like ``TWINJAX_CACHE_DIR=off`` without ``path``)
            turns the cache off.
        executables: also keep the programs twinjax routes through
            :func:`twinjax._executables.call` as whole executables in
            ``<folder>/executables`` (loaded without tracing or lowering by a later
            process; see :mod:`twinjax._executables`). False: JAX's cache only.

    Returns:
        The cache folder, or None when the cache is off.

    Raises:
        OSError: the folder cannot be created (it names the folder).
    """
    if path is not None and str(path).strip().lower() in OFF:
        folder = None
    elif path is not None:
        folder = pathlib.Path(path).expanduser()
    else:
        folder = default_cache_dir()
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if folder is None:
        if _STATE["dir"] is not None:
            jax.config.update("jax_compilation_cache_dir", None)
            cc.reset_cache()
        _STATE["dir"] = _STATE["executables"] = None
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create the compilation cache folder {str(folder)!r} ({err}); give "
            f"another with {ENV}=/some/folder, or {ENV}=off"
        ) from err
    folder = folder.resolve()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # a cache JAX already initialised (or found unset) at an earlier compilation is
    # looked up again at the next one
    cc.reset_cache()
    _STATE["dir"] = folder
    _STATE["executables"] = folder / EXECUTABLES if executables else None
    return folder


def compilation_cache_dir() -> pathlib.Path | None:
    """The folder :func:`enable_compilation_cache` set in this process (None: off)."""
    return _STATE["dir"]


def executables_dir() -> pathlib.Path | None:
    """The folder of whole stored executables (None: not stored; see
    :func:`enable_compilation_cache`)."""
    return _STATE["executables"]
