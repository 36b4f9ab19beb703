"""The cohort result store: a Zarr folder that only writes where it owns.

Layout (Zarr v3)::

    manifest.json          what the store holds: format, fingerprint, sizes, names
    .lock                  the writer's pid, host and start time (while one writes)
    chunks/<c>.json        one record per finished chunk: rows, SHA-256 of every
                           array's chunk, the process and host that wrote it
    times (T,)             save times
    status (N,)            per-patient status codes
    params/<name> (N,)     every parameter of every patient
    outputs/<name> (N, T)  requested outputs and states

Rules:

- A store path must be new, an empty folder, or a twinjax store (recognised by its
  manifest). Anything else is refused with a message; nothing is ever deleted.
- Every array chunk carries a CRC32C checksum (a Zarr codec), so a flipped byte or
  a truncated chunk fails when read instead of returning a wrong number; each
  finished chunk's record holds the SHA-256 of its data.
- On resume, every chunk listed as done is checked: its files must exist (always),
  and with ``verify=True`` its data are read back and compared with the recorded
  SHA-256. A missing or corrupt chunk is recomputed and reported, never returned.
- One writer at a time: a lock file holds the writer's pid and host; a second
  writer gets a :class:`StoreLockedError`. A lock left by a dead process on the same
  host is taken over. Under ``jax.distributed`` the processes of one run share the
  store: process 0 holds the lock, each process writes its own chunks.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import socket
import time

import numpy as np

FORMAT = "twinjax-cohort-store"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".lock"
CHUNKS = "chunks"


class StoreError(ValueError):
    """A store path that twinjax refuses to use, or a store it cannot trust."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class StoreCorruptError(StoreError):
    """Stored data failed its checksum or is missing."""


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _listing(path: pathlib.Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def inspect_path(path: pathlib.Path) -> dict | None:
    """The manifest of the twinjax store at ``path``; None for a new or empty folder.

    Raises:
        StoreError: ``path`` is a file, a non-empty folder that is not a twinjax store,
            a store of another format, or a store whose manifest cannot be read.
    """
    if not path.exists():
        return None
    if not path.is_dir():
        raise StoreError(f"store path {path} is a file, not a folder; choose a folder path")
    entries = [p for p in path.iterdir() if p.name != LOCK]
    mpath = path / MANIFEST
    if not mpath.exists():
        if not entries:
            return None
        raise StoreError(
            f"store path {path} is not empty and is not a twinjax store (it holds "
            f"{_listing(path)}); twinjax writes only into a new or empty folder or its own "
            "store and never deletes files: choose another path"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise StoreError(
            f"{mpath} cannot be read ({type(err).__name__}: {err}); the store may be "
            "truncated or corrupt, so none of it is reused and nothing is deleted: choose "
            "another path, or remove the folder yourself"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(
            f"{path} has a manifest.json but is not a twinjax cohort store of this version "
            f"(expected format {FORMAT!r} version {FORMAT_VERSION}); nothing is reused or "
            "deleted: choose another path"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path} was written by a twinjax with store format "
            f"{manifest.get('format_version')}, this one writes {FORMAT_VERSION}; choose "
            "another path"
        )
    return manifest


def write_manifest(path: pathlib.Path, manifest: dict) -> None:
    _atomic_write(path / MANIFEST, json.dumps(manifest, indent=1))


# ---------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """An exclusive lock on a store folder: ``.lock`` holds the writer's pid and host."""

    def __init__(self, path: pathlib.Path, note: str = ""):
        self.path = path / LOCK
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "note": note,
        }
        self.held = False

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # being written right now, or unreadable: look again
                    time.sleep(0.2)
                    holder = self._holder()
                if (
                    holder is not None
                    and holder.get("host") == self.info["host"]
                    and not _pid_alive(int(holder.get("pid", -1)))
                ):
                    # a lock left by a process that died on this host: take it over
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                who = (
                    f"process {holder.get('pid')} on host {holder.get('host')} since "
                    f"{holder.get('since')}"
                    if holder
                    else "another process"
                )
                raise StoreLockedError(
                    f"{self.path.parent} is being written by {who}; wait for it to finish "
                    f"(or, if that process is gone, remove {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            return
        raise StoreLockedError(f"could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def release(self) -> None:
        if not self.held:
            return
        holder = self._holder()
        if holder is not None and holder.get("pid") == self.info["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False


# ---------------------------------------------------------------------------- chunks
def chunk_digest(values: np.ndarray) -> str:
    a = np.ascontiguousarray(values)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def record_path(path: pathlib.Path, c: int) -> pathlib.Path:
    return path / CHUNKS / f"{c}.json"


def write_record(path: pathlib.Path, c: int, record: dict) -> None:
    (path / CHUNKS).mkdir(exist_ok=True)
    _atomic_write(record_path(path, c), json.dumps(record, indent=1))


def read_records(path: pathlib.Path) -> dict[int, dict]:
    """The finished-chunk records; an unreadable record counts as not finished."""
    out: dict[int, dict] = {}
    folder = path / CHUNKS
    if not folder.exists():
        return out
    for f in folder.glob("*.json"):
        try:
            rec = json.loads(f.read_text())
            out[int(rec["chunk"])] = rec
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, OSError):
            continue
    return out


def chunk_files(path: pathlib.Path, arrays: list[str], c: int) -> list[pathlib.Path]:
    """The files of chunk ``c`` (rows) of each array (Zarr v3, '/'-separated keys)."""
    files = []
    for a in arrays:
        suffix = "/0" if a.startswith("outputs/") else ""
        files.append(path / a / "c" / f"{c}{suffix}")
    return files


def missing_files(path: pathlib.Path, arrays: list[str], c: int) -> list[str]:
    return [
        str(f.relative_to(path))
        for f in chunk_files(path, arrays, c)
        if not f.is_file() or f.stat().st_size == 0
    ]
