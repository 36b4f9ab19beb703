"""Strict numerics for the whole suite: x64 on, rank promotion raises.

``TWINJAX_TEST_CACHE_DIR`` (tools/run_tests.py sets it to a fresh temporary folder per
suite run, removed at the end): JAX's persistent compilation cache in that folder, shared
by the test processes of the run and by the CLI runs of the tests, so a program compiled
once is loaded, not compiled again, wherever the same program (JAX's cache key: the
program, shapes, XLA flags, jaxlib) comes again. Unset or "off": no persistent cache.

``TWINJAX_TEST_COMPILE_LOG=<file>``: JAX logs every compilation (``jax_log_compiles``)
and each log line is appended to that file behind the id of the test that ran it, to
count a file's compilations per test (several processes may append to one file).
"""

import logging
import os

import jax

SHARED_CACHE = os.environ.get("TWINJAX_TEST_CACHE_DIR", "")
if SHARED_CACHE.strip().lower() in ("", "off"):
    SHARED_CACHE = ""
    # the CLI turns the persistent compilation cache on; CLI tests run in this process,
    # so no cache unless one is asked for (tests/test_latency.py runs its own processes)
    os.environ.setdefault("TWINJAX_CACHE_DIR", "off")
else:
    os.environ["TWINJAX_CACHE_DIR"] = SHARED_CACHE  # the CLI's cache: the same folder
    jax.config.update("jax_compilation_cache_dir", SHARED_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


COMPILE_LOG = os.environ.get("TWINJAX_TEST_COMPILE_LOG", "")
_current_test = ["(collection)"]


class _CompileLog(logging.Handler):
    """Appends each of JAX's compile-log lines to ``COMPILE_LOG``, behind the test id."""

    def emit(self, record):
        with open(COMPILE_LOG, "a") as f:
            f.write(f"{_current_test[0]}\t{record.getMessage().splitlines()[0]}\n")


if COMPILE_LOG:
    jax.config.update("jax_log_compiles", True)
    _handler = _CompileLog(level=logging.WARNING)
    for _name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.compiler"):
        logging.getLogger(_name).addHandler(_handler)

    def pytest_runtest_logstart(nodeid, location):
        _current_test[0] = nodeid


def pytest_configure(config):
    if SHARED_CACHE:
        # two test processes run at once: one may read an entry the other is still
        # writing (JAX writes cache files in place); JAX then warns and compiles the
        # program itself, which is correct, so that warning is not an error here
        config.addinivalue_line(
            "filterwarnings",
            "ignore:Error reading persistent compilation cache entry:UserWarning",
        )
