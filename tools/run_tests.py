"""Run the test suite one file per pytest process, then print one combined summary.

XLA keeps every compiled program of a process; hundreds of them in one long pytest
process crashed the compiler twice in clean CI runs (a segfault and an abort, in
different tests, each of which passes on its own). A fresh process per test file
keeps each process small. Extra arguments are passed to every pytest call.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    files = sorted((ROOT / "tests").glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "deselected": 0}
    bad = []
    t0 = time.time()
    for f in files:
        t = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(f), *argv],
            cwd=ROOT, capture_output=True, text=True,
        )
        out = proc.stdout + proc.stderr
        tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        counts = {k: 0 for k in totals}
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0]):
            counts["errors" if word.startswith("error") else word] += int(n)
        for k in totals:
            totals[k] += counts[k]
        ok = proc.returncode in (0, 5)
        print(f"{f.name}: {tail[0]} [{time.time() - t:.0f} s]", flush=True)
        if not ok:
            bad.append(f.name)
            if not (counts["failed"] or counts["errors"]):
                totals["errors"] += 1  # a crash: count it
            print(out[-6000:], flush=True)
    print(f"total time {time.time() - t0:.0f} s; files with failures: {bad or 'none'}")
    failed = totals["failed"] + totals["errors"]
    print(f"{totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
