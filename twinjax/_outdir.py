"""Output folders that twinjax owns: it writes only into a new or empty folder, or one
it made before for the same kind of output; it never overwrites files it did not write.

A folder twinjax writes into gets a marker file (``.twinjax``) naming what it holds
(``trial``, ``safety``, ``simulation``, ``demo``); a later run of the same kind may
replace its own files there. A folder with anything else in it is refused.
"""

from __future__ import annotations

import datetime
import json
import pathlib

MARKER = ".twinjax"


class OutputFolderError(ValueError):
    """An output folder twinjax will not write into."""


def claim(out, kind: str) -> pathlib.Path:
    """Make ``out`` a twinjax output folder of ``kind`` (or check that it is one).

    Raises:
        OutputFolderError: ``out`` is a file, a folder holding files twinjax did not
            write, or the output folder of another kind of run.
    """
    out = pathlib.Path(out)
    marker = out / MARKER
    if out.exists():
        if not out.is_dir():
            raise OutputFolderError(f"output folder {out} exists and is not a folder")
        if marker.exists():
            try:
                owner = json.loads(marker.read_text()).get("kind")
            except (json.JSONDecodeError, OSError, AttributeError):
                owner = None
            if owner != kind:
                raise OutputFolderError(
                    f"output folder {out} holds the output of a twinjax {owner or 'unknown'} "
                    f"run, not of a {kind} run; choose another folder"
                )
            return out
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
        if entries:
            more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
            raise OutputFolderError(
                f"output folder {out} is not empty and was not written by twinjax (it holds "
                f"{', '.join(entries[:5])}{more}); twinjax never overwrites files it did not "
                "write: choose a new or empty folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {
                "kind": kind,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
        )
    )
    return out
