"""Execute the tutorial notebooks and keep their outputs, figures included.

``make notebooks`` (or ``python tools/notebooks.py [NAME ...]``) re-executes every
notebook in ``notebooks/`` in a fresh kernel, from its own folder, and writes it back
with its outputs, so the committed notebooks show their figures. The test suite
(``tests/test_notebooks.py``) executes each one again and counts its figures.
"""

from __future__ import annotations

import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def paths(names=()) -> list[pathlib.Path]:
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not names:
        return found
    chosen = [p for p in found if any(p.name.startswith(n) or p.stem == n for n in names)]
    missing = [n for n in names if not any(p.name.startswith(n) or p.stem == n for p in found)]
    if missing:
        raise SystemExit(f"no notebook named {missing}; notebooks: {[p.name for p in found]}")
    return chosen


def execute(path: pathlib.Path, timeout: int = 900):
    """Run a notebook in a fresh kernel from its folder; returns the executed notebook."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return nb


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def figures(nb) -> int:
    """Number of images (PNG or SVG) among a notebook's outputs."""
    return sum(
        1
        for o in outputs(nb)
        if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
    )


def errors(nb) -> list[dict]:
    return [o for o in outputs(nb) if o.get("output_type") == "error"]


def main(argv: list[str]) -> int:
    import nbformat
    from rich.console import Console

    con = Console()
    for path in paths(argv):
        t = time.perf_counter()
        with con.status(f"executing {path.name}"):
            nb = execute(path)
        if errors(nb):
            con.print(f"[red]{path.name}: errors[/]; not written")
            return 1
        nbformat.write(nb, path)
        con.print(f"{path.name}: {figures(nb)} figures, {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
