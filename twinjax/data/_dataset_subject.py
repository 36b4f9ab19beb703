"""What a :class:`~._dataset.Dataset` hands out: one :class:`Subject`'s records, and
every subject's observations padded to a common length (:class:`Padded`)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from ..dosing import Regimen


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
    """One subject's records.

    Attributes:
        id: the subject's ID.
        times: times of its observation records (EVID 0), in file order, shape ``(T,)``.
        dv: their DV values (NaN where missing), shape ``(T,)``.
        mdv: their MDV flags (0: a real observation; 1: no observation, e.g. a
            prediction-only record), shape ``(T,)``.
        regimen: its doses and resets as a :class:`twinjax.Regimen`, or None when the
            dataset's compartments are unnamed (see :func:`read_nonmem`).
        covariates: baseline covariates (the values on its first record).
        lines: file line numbers of its records (all of them, in order).
        cens: censoring flag of each observation record, shape ``(T,)``: 0 observed,
            1 left-censored (below the LLOQ), -1 right-censored (above the ULOQ in DV);
            see :class:`Dataset` for the columns read.
        lloq: the censoring limit of each observation record (the LLOQ for ``cens``
            1, the upper limit of quantification for -1; NaN where not censored).
        limit: the other end of a censoring interval (nlmixr2's / Monolix's
            ``LIMIT``; NaN: none), shape ``(T,)``.
        dvid: the output tag of each observation record (the ``DVID`` column; None
            entries without one), an object array ``(T,)``.
        cmt: the CMT of each observation record, an object array ``(T,)``.
        obs_lines: file line numbers of the observation records, shape ``(T,)``.
        pre_dose: per observation record, True when a dose or reset record at the same
            time comes after it in the file: NONMEM then observes the state before
            that dose (the left limit), shape ``(T,)``.
    """

    id: Any
    times: np.ndarray
    dv: np.ndarray
    mdv: np.ndarray
    regimen: Regimen | None
    covariates: dict[str, Any]
    lines: np.ndarray
    cens: np.ndarray | None = None
    lloq: np.ndarray | None = None
    limit: np.ndarray | None = None
    dvid: np.ndarray | None = None
    cmt: np.ndarray | None = None
    obs_lines: np.ndarray | None = None
    pre_dose: np.ndarray | None = None


class Padded(NamedTuple):
    """Observations of every subject padded to a common length (see :meth:`Dataset.padded`).

    Attributes:
        ids: subject IDs, length ``N``.
        times: ``(N, T)`` observation times; padding repeats the subject's last time so
            each row stays non-decreasing.
        dv: ``(N, T)`` observed values; 0 where ``mask`` is False (never NaN).
        mask: ``(N, T)`` bool, True for real observations (EVID 0, MDV 0, or a
            censored record whose MDV was left to the default).
        regimens: one :class:`twinjax.Regimen` per subject.
        cens: ``(N, T)`` int8 censoring flags (0 observed, 1 below the LLOQ, -1 above
            the ULOQ; 0 in the padding).
        lloq: ``(N, T)`` the censoring limit of censored records (NaN elsewhere).
        limit: ``(N, T)`` the other end of a censoring interval (NaN: none).
        dvid: ``(N, T)`` object array of output tags (``DVID``; None where absent).
        cmt: ``(N, T)`` object array of the CMT of observation records.
        lines: ``(N, T)`` file line numbers of the observation records (0 in the
            padding).
        pre_dose: ``(N, T)`` bool, True for an observation record placed before a dose
            or reset record at the same time (pass it to ``simulate(pre_dose=...)``).
    """

    ids: list
    times: np.ndarray
    dv: np.ndarray
    mask: np.ndarray
    regimens: list[Regimen]
    cens: np.ndarray | None = None
    lloq: np.ndarray | None = None
    limit: np.ndarray | None = None
    dvid: np.ndarray | None = None
    cmt: np.ndarray | None = None
    lines: np.ndarray | None = None
    pre_dose: np.ndarray | None = None
