"""Extract the data of the CiPA uncertainty option from the mirrored FDA/CiPA repository.

Writes (the committed copies the package reads; CI has no network):

- ``twinjax/models/ep/cipa_data/hill_block.csv``: the raw per-concentration percent
  block of the six non-hERG currents (INa, INaL, ICaL, Ito, IKs, IK1) for the 28 CiPA
  compounds, the data that the Hill fits of ``cipa_compounds.csv`` were made from:
  12 training compounds from FDA/CiPA @ e881df6766d1067a08b65184d7a320804aef73d6
  ``Hill_fitting/data/drug_block.csv`` (Crumb et al. 2016 manual patch clamp, the
  default input of that commit's ``Hill_fitting/IC50_mcmc.R``, which wrote the
  ``IC50_optimal.csv`` values in the table); 16 validation compounds from FDA/CiPA
  branch Model-Validation-2018 @ a0924b591941ac3e216c498b9fe1fa8f729901b6
  ``Hill_Fitting/data/manual_validationdrug_block.csv`` (manual patch clamp, ICaL,
  INaL, INa: the currents of the Li et al. 2019 supplement). Rows with a missing block
  are dropped (as ``IC50_mcmc.R``: ``expdf[!is.na(expdf$block),]``); only currents
  with a Hill fit in the table are kept.
- ``twinjax/models/ep/cipa_data/herg_boot.csv.gz``: the FDA's 2000 bootstrap fits of
  the dynamic hERG parameters (Kmax, Ku, n, halfmax, Vhalf) per compound, in file
  order: training compounds from e881df6 ``hERG_fitting/results/<drug>/boot_pars.csv``
  (the bootstrap of the ``pars.txt`` fits in the table), validation compounds from
  a0924b5 ``hERG_fitting/hERG_fitting_results.zip`` member ``<drug>_boot_pars.csv``
  (Li et al. 2019). Values as published (4 significant digits).

Run: ``python calibration/cipa_uncertainty_sources.py --mirror DIR`` (``DIR`` = a git
directory of FDA/CiPA with both commits, e.g. from ``git clone --mirror``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import subprocess
import zipfile
from pathlib import Path

M = "e881df6766d1067a08b65184d7a320804aef73d6"
V = "a0924b591941ac3e216c498b9fe1fa8f729901b6"
OUT = Path(__file__).resolve().parent.parent / "twinjax" / "models" / "ep" / "cipa_data"
TABLE = OUT.parent / "cipa_compounds.csv"
CHANNELS = ("INa", "INaL", "ICaL", "Ito", "IKs", "IK1")
HERG = ("Kmax", "Ku", "n", "halfmax", "Vhalf")


def _show(gitdir, commit, path, text=True):
    return subprocess.run(
        ["git", "--git-dir", str(gitdir), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
        text=text,
    ).stdout


def _table():
    lines = [ln for ln in TABLE.read_text().splitlines() if not ln.startswith("#")]
    return {r["compound"]: r for r in csv.DictReader(lines)}


def extract(mirror):
    tab = _table()
    training = [c for c, r in tab.items() if r["set"] == "training"]
    validation = [c for c, r in tab.items() if r["set"] == "validation"]
    src = {
        "training": (M, "Hill_fitting/data/drug_block.csv"),
        "validation": (V, "Hill_Fitting/data/manual_validationdrug_block.csv"),
    }
    block = []
    for s, names in (("training", training), ("validation", validation)):
        commit, path = src[s]
        for r in csv.DictReader(io.StringIO(_show(mirror, commit, path))):
            c, ch = r["drug"], r["channel"]
            if c not in names or ch not in CHANNELS or r["block"] in ("", "NA"):
                continue
            if tab[c][f"{ch}_IC50"] in ("", "NA", "nan"):
                continue  # no Hill fit in the table: the current is not blocked
            if r["units"] != "nM":
                raise ValueError(f"{path}: {c} {ch}: units {r['units']!r}, expected nM")
            block.append(
                dict(
                    compound=c,
                    channel=ch,
                    conc_nM=r["conc"],
                    block_pct=r["block"],
                    source=f"FDA/CiPA@{commit[:7]}:{path}",
                )
            )
    herg = []
    zf = zipfile.ZipFile(
        io.BytesIO(_show(mirror, V, "hERG_fitting/hERG_fitting_results.zip", False))
    )
    for c in training + validation:
        if c in training:
            text = _show(mirror, M, f"hERG_fitting/results/{c}/boot_pars.csv")
            where = f"FDA/CiPA@{M[:7]}:hERG_fitting/results/{c}/boot_pars.csv"
        else:
            text = zf.read(f"{c}_boot_pars.csv").decode()
            where = f"FDA/CiPA@{V[:7]}:hERG_fitting/hERG_fitting_results.zip:{c}_boot_pars.csv"
        rows = list(csv.DictReader(io.StringIO(text)))
        for i, r in enumerate(rows):
            herg.append(dict(compound=c, boot=i, **{k: r[k] for k in HERG}, source=where))
    return block, herg


def write(block, herg):
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "hill_block.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(block[0]))
        w.writeheader()
        w.writerows(block)
    # one source line per compound (not per row) keeps the file small
    fields = ["compound", "boot", *HERG]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    sources = dict.fromkeys(r["source"] for r in herg)
    for s in sources:
        buf.write(f"# {s}\n")
    w.writeheader()
    w.writerows(herg)
    with gzip.GzipFile(OUT / "herg_boot.csv.gz", "wb", mtime=0) as g:
        g.write(buf.getvalue().encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", required=True, help="git directory of FDA/CiPA")
    args = ap.parse_args()
    block, herg = extract(args.mirror)
    write(block, herg)
    print(f"{len(block)} block rows, {len(herg)} hERG bootstrap rows -> {OUT}")


if __name__ == "__main__":
    main()
