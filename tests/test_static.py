"""Static checks in the suite: ruff (lint and format) and mypy on the package.

The tool versions are pinned in the ``dev`` extra (installed by ``make test``), so a
new release of either cannot change what passes.
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
PATHS = ["twinjax", "tests", "benchmarks", "calibration", "tools"]


def tool(name):
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def check(*cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_lint():
    check(tool("ruff"), "check", *PATHS)


def test_ruff_format():
    check(tool("ruff"), "format", "--check", *PATHS)


def test_mypy():
    check(tool("mypy"), "twinjax")
