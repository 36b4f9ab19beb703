"""One ``simulate_cohort`` call's view of its Zarr result store: the request's
fingerprint, creating or checking the store, verifying finished chunks and writing new
ones (the layout and its rules are in :mod:`twinjax.solve._store`)."""

from __future__ import annotations

import datetime
import os
import pathlib
import socket

import jax
import numpy as np

from . import _store
from ._fingerprint import Fingerprint, environment_hash
from ._store import StoreError


class StoreRepairWarning(UserWarning):
    """A chunk listed as finished was missing or corrupt and has been recomputed."""


def _codecs():
    import zarr.codecs as zc

    # zstd, then a CRC32C of the compressed bytes: a flipped byte or a truncated chunk
    # fails its checksum when read instead of decoding to a wrong number
    return dict(
        compressors=[zc.ZstdCodec(), zc.Crc32cCodec()],
        chunk_key_encoding={"name": "default", "separator": "/"},
        config={"write_empty_chunks": True},
        overwrite=True,
    )


def cohort_fingerprint(model, solver, names, chunk_size, params, ts, ev_all, dtype):
    fp = Fingerprint()
    fp.add("store format", _store.FORMAT_VERSION)
    fp.add("environment", environment_hash())
    fp.add("model", model)
    fp.add("solver", solver)
    fp.add("outputs", tuple(names))
    fp.add("chunk size", int(chunk_size))
    fp.add("dtype", np.dtype(dtype).str)
    fp.add("params", {k: np.asarray(v) for k, v in params.items()})
    fp.add("times", np.asarray(ts))
    fp.add("events", jax.tree.map(np.asarray, ev_all))
    return fp.hexdigest(), fp.problems


class CohortStore:
    """One call's view of its result store: open or create, verify, write chunks."""

    def __init__(self, path, fp, problems, resume, verify, n, chunk_size, n_chunks, names):
        self.path = pathlib.Path(path)
        self.fp, self.problems = fp, problems
        self.resume, self.verify = resume, verify
        self.n, self.chunk_size, self.n_chunks, self.names = n, chunk_size, n_chunks, names
        self.arrays = [f"outputs/{k}" for k in names] + ["status"]
        self.lock = _store.StoreLock(self.path, note=f"simulate_cohort of {n} patients")
        self.root = None

    # -- opening --------------------------------------------------------------
    def open(self, model, p_np, ts, dtype, n_processes: int) -> None:
        """Check the path, take the lock, create the store or check that it matches."""
        manifest = _store.inspect_path(self.path)
        if manifest is None:
            self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            manifest = _store.inspect_path(self.path)  # again, now that we hold the lock
            if manifest is None or not manifest.get("arrays_ready"):
                if manifest is not None:
                    self._check_same(manifest)
                self._create(model, p_np, ts, dtype, n_processes)
            else:
                self._check_same(manifest)
                if not self.resume:
                    raise StoreError(
                        f"{self.path} already holds this run and resume=False; choose another "
                        "store path (twinjax never overwrites a store)"
                    )
        except BaseException:
            self.lock.release()
            raise
        self.attach()

    def attach(self) -> None:
        import zarr

        self.root = zarr.open_group(str(self.path), mode="r+")

    def _check_same(self, manifest: dict) -> None:
        if manifest.get("unverifiable"):
            raise StoreError(
                f"{self.path} holds results made from parts that cannot be fingerprinted "
                f"({'; '.join(manifest['unverifiable'])}), so twinjax cannot tell whether they "
                "match this request and will not reuse them; choose another store path"
            )
        if self.problems:
            raise StoreError(
                f"{self.path} holds earlier results, but this request cannot be fingerprinted "
                f"({'; '.join(self.problems)}), so they cannot be checked against it and are "
                "not reused; choose another store path"
            )
        if manifest.get("fingerprint") != self.fp:
            raise StoreError(
                f"{self.path} holds a different run (model, its functions or array fields, "
                "parameters, regimen, times, chunk size, solver, outputs, dtype or the twinjax "
                "version differ); choose another store path (nothing was changed or deleted)"
            )

    def _create(self, model, p_np, ts, dtype, n_processes: int) -> None:
        import zarr

        manifest = dict(
            format=_store.FORMAT,
            format_version=_store.FORMAT_VERSION,
            fingerprint=self.fp,
            unverifiable=list(self.problems),
            arrays_ready=False,
            n=self.n,
            chunk_size=self.chunk_size,
            n_chunks=self.n_chunks,
            names=list(self.names),
            dtype=np.dtype(dtype).name,
            model=type(model).__name__,
            n_processes=n_processes,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        _store.write_manifest(self.path, manifest)
        kw = _codecs()
        root = zarr.open_group(str(self.path), mode="a")
        T = len(ts)
        root.create_array("times", data=np.asarray(ts), **kw)
        root.create_array(
            "status", shape=(self.n,), chunks=(self.chunk_size,), dtype="int32", fill_value=-1, **kw
        )
        for k, v in p_np.items():
            root.create_array(f"params/{k}", data=v, chunks=(self.chunk_size,), **kw)
        for k in self.names:
            root.create_array(
                f"outputs/{k}",
                shape=(self.n, T),
                chunks=(self.chunk_size, T),
                dtype=np.dtype(dtype),
                fill_value=np.nan,
                **kw,
            )
        manifest["arrays_ready"] = True
        _store.write_manifest(self.path, manifest)

    # -- chunks ---------------------------------------------------------------
    def finished(self, mine) -> tuple[set[int], list[int]]:
        """Chunks (of ``mine``) that are finished and intact, and those to repair."""
        records = _store.read_records(self.path)
        good, repair = set(), []
        for c in mine:
            rec = records.get(c)
            if rec is None:
                continue
            if self._intact(c, rec):
                good.add(c)
            else:
                repair.append(c)
        return good, repair

    def _intact(self, c: int, rec: dict) -> bool:
        a, b = c * self.chunk_size, min((c + 1) * self.chunk_size, self.n)
        if rec.get("rows") != [a, b] or set(rec.get("sha256", {})) != set(self.arrays):
            return False
        if _store.missing_files(self.path, self.arrays, c):
            return False
        if not self.verify:
            return True
        for arr in self.arrays:
            try:
                vals = self.root[arr][a:b]  # type: ignore[index]
            except (ValueError, RuntimeError, OSError):
                return False
            if _store.chunk_digest(np.asarray(vals)) != rec["sha256"][arr]:
                return False
        return True

    def write(self, c: int, a: int, b: int, values: dict, status: np.ndarray) -> None:
        digests = {}
        for k in self.names:
            self.root[f"outputs/{k}"][a:b] = values[k]  # type: ignore[index]
            digests[f"outputs/{k}"] = _store.chunk_digest(values[k])
        self.root["status"][a:b] = status  # type: ignore[index]
        digests["status"] = _store.chunk_digest(status)
        _store.write_record(
            self.path,
            c,
            dict(
                chunk=c,
                rows=[a, b],
                sha256=digests,
                process=jax.process_index(),
                n_processes=jax.process_count(),
                host=socket.gethostname(),
                pid=os.getpid(),
                written=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            ),
        )

    def read_status(self) -> tuple[np.ndarray, list[int]]:
        """All status codes, and the chunks whose status cannot be read back intact."""
        status = np.full((self.n,), -1, np.int32)
        bad = []
        for c in range(self.n_chunks):
            a, b = c * self.chunk_size, min((c + 1) * self.chunk_size, self.n)
            try:
                status[a:b] = self.root["status"][a:b]  # type: ignore[index]
            except (ValueError, RuntimeError, OSError):
                bad.append(c)
        return status, bad
