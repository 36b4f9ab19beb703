"""Data layer: NONMEM-format datasets (read, validate, write) and shipped example data.

``read_nonmem`` reads a NONMEM CSV into a :class:`Dataset`, collecting every problem
(with its line number, the header being line 1, and its column) into one
:class:`DatasetError`. A :class:`Dataset` gives each subject's observations, its
doses as a :class:`twinjax.Regimen`, baseline covariates, padded arrays for batched
fitting, and writes itself back to CSV.

Conventions (NONMEM's):

- ``EVID`` absent or ``.``: 1 on records with ``AMT > 0``, else 0. ``MDV`` absent or
  ``.``: 0 on observation records (EVID 0) with a DV, else 1.
- A record "has a DV" when DV is neither ``.`` (missing) nor 0: ``MDV 1`` with any other
  DV is an error (0 is accepted on non-observation records, as NONMEM files often
  write it).
- EVID 1 -> ``Dose``; EVID 4 -> ``Dose(evid=4)`` (reset, then dose); EVID 3 ->
  ``Reset``; EVID 2 records are kept but neither doses nor observations.
- CMT numbers are named with ``compartments``; a dose without CMT (or CMT 0) goes to
  compartment 1 (NONMEM's default dose compartment for ADVAN1/2/3/4).
- SS 1 and SS 2 (bolus, infusions shorter or longer than II, constant infusions
  with II 0), several SS records per subject (see ``docs/nonmem.md``).
- RATE -1/-2: rate/duration modelled by the compartment's Rn/Dn parameter (see
  ``Model.with_dose_modifiers``).
- Refused: RATE -1/-2 into a compartment without Rn/Dn, SS 3, negative CMT, time going back
  within a subject (also at resets), a covariate that changes within a subject.

Shipped data: :mod:`twinjax.data.datasets` (theophylline, phenobarbital,
indomethacin).
"""

from . import datasets as datasets
from ._dataset import Dataset as Dataset
from ._dataset import Padded as Padded
from ._dataset import Subject as Subject
from ._nonmem import DatasetError as DatasetError
from ._nonmem import Problem as Problem
from ._read import read_nonmem as read_nonmem

__all__ = ["Dataset", "DatasetError", "Padded", "Problem", "Subject", "datasets", "read_nonmem"]
