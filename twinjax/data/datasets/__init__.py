"""Published pharmacokinetic datasets in NONMEM format.

Each loader returns a :class:`twinjax.data.Dataset` whose compartments match
``twinjax.models.pk.one_compartment``: oral theophylline is dosed to ``"depot"``
(``absorption="first_order"``), IV phenobarbital and indomethacin to ``"central"``
(``absorption="iv"``). Units: time in h, amounts in mg, concentrations in mg/L
(= µg/mL), weights in kg; the same as twinjax's PK models.

The CSV files were converted once from R's data frames (``_convert.py``); the
sources and every unit decision are in ``SOURCES.md`` beside this file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .._dataset import Dataset
from .._read import read_nonmem

NAMES = ("theophylline", "phenobarbital", "indomethacin")

_COMPARTMENTS = {
    "theophylline": {1: "depot", 2: "central"},
    "phenobarbital": {1: "central"},
    "indomethacin": {1: "central"},
}
_UNITS = {"TIME": "h", "AMT": "mg", "DV": "mg/L"}


def path(name: str) -> Path:
    """The path of the shipped CSV file ``name`` (one of :data:`NAMES`).

    Raises:
        ValueError: unknown name.
    """
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; shipped datasets are {list(NAMES)}")
    return Path(str(resources.files(__name__).joinpath(f"{name}.csv")))


def _load(name: str, units: dict) -> Dataset:
    ds = read_nonmem(path(name), compartments=_COMPARTMENTS[name], units=units)
    ds.source = name
    return ds


def theophylline() -> Dataset:
    """Theophylline after one oral dose: 12 subjects, 11 samples each over 25 h.

    Source: R ``datasets::Theoph`` (Dr. Robert A. Upton's data, as analysed in
    Boeckmann AJ, Sheiner LB, Beal SL. *NONMEM Users Guide, Part V*. NONMEM Project
    Group, UCSF, 1994; also Davidian & Giltinan 1995, sec. 5.5; Pinheiro & Bates 2000,
    App. A.29).

    Records: per subject one dose at TIME 0, ``AMT`` in mg = R's ``Dose`` (mg/kg) × ``Wt``
    (kg), about 320 mg (subject 9: 268 mg, as published), to CMT 1 = ``"depot"``; 11
    observations (CMT 2 = ``"central"``),
    DV in mg/L (µg/mL). 144 records, 132 observations. Covariate ``WT`` (kg). The
    concentrations at TIME 0 are as published (a few are above 0).

    Returns:
        A :class:`~twinjax.data.Dataset` for ``pk.one_compartment(absorption="first_order")``.
    """
    return _load("theophylline", {**_UNITS, "WT": "kg"})


def phenobarbital() -> Dataset:
    """Phenobarbital in neonates: 59 infants, repeated IV doses, 155 concentrations.

    Source: Grasela TH, Donn SM. Neonatal population pharmacokinetics of phenobarbital
    derived from routine clinical data. *Dev Pharmacol Ther* 8:374-383, 1985; as R
    ``nlme::Phenobarb`` (744 records; Boeckmann, Sheiner & Beal 1994; Davidian &
    Giltinan 1995, sec. 6.6; Pinheiro & Bates 2000, App. A.23).

    Records: 589 doses (IV boluses, CMT 1 = ``"central"``) and 155 observations.
    ``AMT`` is each dose in mg (the per-infant total, not per kg) and DV in mg/L
    (µg/mL): nlme's help page labels them µg/kg and µg/L, but the values are those of
    NONMEM's PHENO dataset (mg, µg/mL): loading doses are 10-30 × the weight in kg, and
    e.g. infant 1 (1.4 kg) has 17.3 mg/L 2 h after a 25 mg load (V ≈ 1 L/kg). See
    SOURCES.md. Covariates ``WT`` (birth weight, kg) and ``APGAR`` (5-minute Apgar
    score, 1-10).

    Returns:
        A :class:`~twinjax.data.Dataset` for ``pk.one_compartment()`` (IV).
    """
    return _load("phenobarbital", {**_UNITS, "WT": "kg"})


def indomethacin() -> Dataset:
    """Indomethacin after an IV bolus: 6 subjects, 11 samples each from 0.25 to 8 h.

    Source: Kwan KC, Breault GO, Umbenhauer ER, McMahon FG, Duggan DE. Kinetics of
    indomethacin absorption, elimination, and enterohepatic circulation in man.
    *J Pharmacokinet Biopharm* 4:255-280, 1976; as R ``datasets::Indometh`` (Davidian &
    Giltinan 1995, sec. 5.2.4).

    Records: one 25 mg IV bolus at TIME 0 (CMT 1 = ``"central"``; the R data carry no
    dose, the amount is the one commonly used with these data, see SOURCES.md for the
    caveat) and 11 observations, DV in mg/L (µg/mL). 72 records, 66 observations. No
    covariates.

    Returns:
        A :class:`~twinjax.data.Dataset` for ``pk.one_compartment()`` (IV; the data are
        biexponential, a two-compartment model fits them better).
    """
    return _load("indomethacin", dict(_UNITS))


__all__ = ["NAMES", "indomethacin", "path", "phenobarbital", "theophylline"]
