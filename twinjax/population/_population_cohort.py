"""A sampled virtual cohort (part of :mod:`._population`): per-patient parameters,
covariates and etas, with subsetting and a table view."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Cohort:
    """A sampled virtual cohort: one parameter set and one covariate row per patient.

    Arguments:
        params: ``{name: (N,) array}`` with every model parameter, ready for
            ``twinjax.simulate(model, cohort.params, ...)``.
        covariates: a pandas DataFrame with ``N`` rows, indexed by the global patient
            index (``ID``).
        etas: ``(N, n_iiv)`` random effects, in the order of ``iiv``.
        iiv: the names of the parameters with IIV.
        typical: ``{name: (N,) array}``, the covariate-adjusted typical values.
        index: ``(N,)`` global patient indices (equal to ``covariates.index``).
    """

    params: dict
    covariates: Any
    etas: jax.Array
    iiv: tuple[str, ...] = ()
    typical: dict = dataclasses.field(default_factory=dict)
    index: np.ndarray | None = None

    def __post_init__(self):
        n = int(self.etas.shape[0])
        for k, v in self.params.items():
            if jnp.shape(v) != (n,):
                raise ValueError(f"Cohort: parameter {k!r} has shape {jnp.shape(v)}, need ({n},)")
        if len(self.covariates) != n:
            raise ValueError(f"Cohort: covariate table has {len(self.covariates)} rows, need {n}")
        if self.etas.ndim != 2 or self.etas.shape[1] != len(self.iiv):
            raise ValueError(
                f"Cohort: etas have shape {self.etas.shape}, need ({n}, {len(self.iiv)})"
            )
        if self.index is None:
            object.__setattr__(self, "index", np.asarray(self.covariates.index))

    @property
    def n(self) -> int:
        """The number of patients."""
        return int(self.etas.shape[0])

    def __len__(self) -> int:
        return self.n

    def subset(self, idx) -> Cohort:
        """The cohort restricted to ``idx`` (positions, a slice, or a boolean mask).

        Arguments:
            idx: integer positions (0-based, within this cohort), a slice, or a boolean
                mask of length ``n``.

        Returns:
            A new :class:`Cohort`; global patient indices are kept.

        Raises:
            IndexError: for a mask of the wrong length or positions out of range.
        """
        if isinstance(idx, slice):
            pos = np.arange(self.n)[idx]
        else:
            arr = np.asarray(idx)
            if arr.dtype == bool:
                if arr.shape != (self.n,):
                    raise IndexError(f"boolean mask has shape {arr.shape}, need ({self.n},)")
                pos = np.flatnonzero(arr)
            else:
                pos = np.atleast_1d(arr).astype(np.int64)
                if pos.size and (pos.min() < -self.n or pos.max() >= self.n):
                    raise IndexError(f"cohort positions out of range for {self.n} patients")
                pos = np.where(pos < 0, pos + self.n, pos)
        take = lambda v: jnp.asarray(np.asarray(v)[pos])  # host gather: no recompilation
        assert self.index is not None  # set in __post_init__
        return Cohort(
            params={k: take(v) for k, v in self.params.items()},
            covariates=self.covariates.iloc[pos],
            etas=take(self.etas),
            iiv=self.iiv,
            typical={k: take(v) for k, v in self.typical.items()},
            index=self.index[pos],
        )

    def __getitem__(self, idx) -> Cohort:
        """``cohort[idx]`` is :meth:`subset` (an integer gives a one-patient cohort)."""
        return self.subset(idx)

    def chunk(self, start: int, stop: int) -> Cohort:
        """Patients at positions ``[start, stop)`` of this cohort."""
        return self.subset(slice(start, stop))

    def to_dataframe(self):
        """One row per patient: covariates, parameters, and etas (``ETA_<name>``).

        Returns:
            A pandas DataFrame indexed by the global patient index ``ID``.
        """
        import pandas as pd

        df = self.covariates.copy()
        for k, v in self.params.items():
            df[k] = np.asarray(v)
        e = np.asarray(self.etas)
        for i, k in enumerate(self.iiv):
            df[f"ETA_{k}"] = e[:, i]
        df.index = pd.Index(self.index, name="ID")
        return df

    def __repr__(self) -> str:
        return f"Cohort(n={self.n}, params={list(self.params)}, iiv={list(self.iiv)})"
