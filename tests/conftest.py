"""Strict numerics for the whole suite: x64 on, rank promotion raises."""

import os

import jax

# the CLI turns the persistent compilation cache on; CLI tests run in this process, so
# no cache unless one is asked for (tests/test_latency.py runs its own processes)
os.environ.setdefault("TWINJAX_CACHE_DIR", "off")

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
