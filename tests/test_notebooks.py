"""The tutorial notebooks (issue #18; 06 walks through `twinjax fit`, issue #17 item 8):
each executes without error in a fresh kernel and shows its figures, and the committed
copy keeps them (``make notebooks`` re-executes and writes them back)."""

import os
import pathlib
import re
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))
import notebooks as nbtools  # noqa: E402

NAMES = [p.name for p in nbtools.paths()]

# Lines a notebook prints from what it computed (its own checks); the committed copy and
# every fresh execution must print them.
PRINTS = {
    "06_fit_a_population.ipynb": (
        # the FOCE-I fit by `twinjax fit` vs nlmixr2 FOCEi (ka 1.59, CL 2.75, V 31.8, OFV 116.80)
        "every fixed effect within 1 % and the OFV within 0.05 of nlmixr2 FOCEi: True",
        # a bad specification: exit code 2, nothing written, every problem named by its key
        "exit code: 2 | output folder created: False",
        "unknown key 'methd' in [fit]",
        "[parameters.KA].value: 50 is outside the bounds [0.05, 20]",
    ),
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """The notebooks' kernels (and the ``twinjax`` command notebook 06 runs) share one
    persistent compilation cache: the suite's (``TWINJAX_TEST_CACHE_DIR``, see
    tests/conftest.py) or a folder of this module. A program one notebook compiled
    (02's one-subject fit, forecast and dose search, which 06 runs again) is loaded by
    the next instead of compiled; each notebook still runs in a fresh kernel."""
    folder = os.environ.get("TWINJAX_TEST_CACHE_DIR", "").strip()
    if folder.lower() in ("", "off"):
        folder = str(tmp_path_factory.mktemp("notebook-jax-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", folder)
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
        mp.setenv("TWINJAX_CACHE_DIR", folder)
        yield folder


def _printed(nb) -> str:
    return "".join(
        o.get("text", "") for o in nbtools.outputs(nb) if o.get("output_type") == "stream"
    )


def test_the_notebooks():
    assert NAMES == [
        "01_virtual_trial.ipynb",
        "02_calibrate_a_twin.ipynb",
        "03_heart_twin.ipynb",
        "04_glucose_twin.ipynb",
        "05_cardiac_safety.ipynb",
        "06_fit_a_population.ipynb",
    ]
    assert set(PRINTS) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_keeps_its_figures(name):
    import nbformat

    nb = nbformat.read(nbtools.NOTEBOOKS / name, as_version=4)
    assert nbtools.figures(nb) >= 1, f"{name} has no figure in its stored outputs"
    assert not nbtools.errors(nb)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'matplotlib.use("Agg")' not in src and "matplotlib.use('Agg')" not in src
    assert not re.search(r"(from|import)\s+\S*\._", src), "a notebook imports a private module"
    printed = _printed(nb)
    for line in PRINTS.get(name, ()):
        assert line in printed, f"{name}: its stored outputs do not print {line!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_and_shows_figures(name, shared_cache):
    pytest.importorskip("nbclient")
    nb = nbtools.execute(nbtools.NOTEBOOKS / name)
    assert not nbtools.errors(nb)
    assert nbtools.figures(nb) >= 1
    printed = _printed(nb)
    for line in PRINTS.get(name, ()):
        assert line in printed, f"{name}: executed, it does not print {line!r}"
