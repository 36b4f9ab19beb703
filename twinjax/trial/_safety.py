"""The in-silico cardiac safety trial: an ORd population x compounds x concentrations.

Its arms are compounds at multiples of their free Cmax and its engine is the batched
Rush-Larsen beat loop (:func:`twinjax.models.ep.pace`), not ``simulate_cohort``, so it
has its own specification (``[safety]`` in a TOML file, or the ``twinjax safety``
options) and its own outputs:

- ``models.csv``: per accepted model, compound and concentration, APD90 and its change,
  EAD, repolarisation failure, qNet;
- ``summary.csv``: incidence of abnormalities and median APD90 change per compound and
  concentration;
- ``risk.csv``: a risk class per compound beside its CiPA category;
- ``safety.png`` and ``safety.json`` (the specification run, acceptance, timings).

The method follows Passini et al. (2017), Front Physiol 8:668: sample conductances
log-normally, accept the models whose control biomarkers fall in the experimental
ranges, then pace the accepted population under each compound's multi-channel block.
Pacing is at 1 Hz, the rate of the acceptance ranges and of the CiPA APD90 data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence

from . import _spec
from ._spec import SpecError

__all__ = ["SafetyTrial"]

CELL_TYPES = ("endo", "epi", "M")


@dataclasses.dataclass(frozen=True)
class SafetyTrial:
    """An in-silico drug safety trial on a population of O'Hara-Rudy ventricular models.

    Arguments:
        name: a title for the outputs.
        compounds: names in the shipped CiPA table (``twinjax.models.ep.drugs``).
        multiples: concentrations as multiples of each compound's free Cmax (> 0).
        n: candidate models sampled before acceptance (>= 1).
        cell: ORd cell type, ``"endo"``, ``"epi"`` or ``"M"``.
        beats: control beats paced before the acceptance check (>= 1).
        drug_beats: beats paced under each concentration (>= 1).
        sigma: SD of the log-normal conductance scale factors (0 < sigma <= 1).
        seed: seed of the population sample.
    """

    name: str = "Cardiac safety trial"
    compounds: tuple = ("dofetilide", "quinidine", "verapamil", "ranolazine")
    multiples: tuple = (1.0, 10.0, 30.0)
    n: int = 100
    cell: str = "endo"
    beats: int = 50
    drug_beats: int = 20
    sigma: float = 0.3
    seed: int = 0

    def __post_init__(self):
        from ..models.ep import drugs

        P = _spec.Problems()
        w = "[safety]"
        d = _spec.describe
        if not isinstance(self.name, str) or not self.name.strip():
            P.add(f"{w}.name", f"name must be a non-empty string, got {d(self.name)}")
        comps = self.compounds
        if (
            isinstance(comps, (str, Mapping))
            or not isinstance(comps, Sequence)
            or not comps
            or not all(isinstance(c, str) for c in comps)
        ):
            P.add(f"{w}.compounds", f"compounds must be a non-empty list of names, got {comps!r}")
        else:
            known = list(drugs.compounds().index)
            unknown = [c for c in comps if c.lower() not in known]
            if unknown:
                P.add(f"{w}.compounds", f"unknown {unknown}; known: {known}")
            elif len({c.lower() for c in comps}) != len(comps):
                P.add(f"{w}.compounds", f"compounds must be unique, got {list(comps)}")
            else:
                object.__setattr__(self, "compounds", tuple(c.lower() for c in comps))
        mult = self.multiples
        if (
            isinstance(mult, (str, Mapping))
            or not isinstance(mult, Sequence)
            or not mult
            or not all(_spec.is_number(m) and 0 < m < math.inf for m in mult)
        ):
            P.add(
                f"{w}.multiples",
                "multiples must be a non-empty list of positive numbers (multiples of free "
                f"Cmax), got {mult!r}",
            )
        else:
            object.__setattr__(self, "multiples", tuple(float(m) for m in mult))
        for key in ("n", "beats", "drug_beats", "seed"):
            v = getattr(self, key)
            low = 0 if key == "seed" else 1
            if not _spec.is_int(v) or not low <= v <= _spec.MAX_SEED:
                hint = " (fractional values are not rounded)" if _spec.is_number(v) else ""
                P.add(f"{w}.{key}", f"{key} must be an integer >= {low}, got {d(v)}{hint}")
        if not isinstance(self.cell, str) or self.cell not in CELL_TYPES:
            P.add(f"{w}.cell", f"cell must be one of {list(CELL_TYPES)}, got {d(self.cell)}")
        if not (_spec.is_number(self.sigma) and 0 < self.sigma <= 1):
            P.add(f"{w}.sigma", f"sigma must be a number in (0, 1], got {d(self.sigma)}")
        P.check()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping, **overrides) -> SafetyTrial:
        """From a parsed specification ``{"safety": {...}}``; ``overrides`` win (None skipped)."""
        P = _spec.Problems()
        if not isinstance(d, Mapping):
            raise SpecError(f"a safety specification is a table, got {_spec.describe(d)}")
        _spec.unknown_keys(d, "the top level", {"safety"}, P)
        if "safety" not in d:
            P.add("", "missing table [safety]")
        body = d.get("safety", {})
        if _spec.table(body, "[safety]", P) is _spec.INVALID:
            body = {}
        fields = [f.name for f in dataclasses.fields(cls)]
        _spec.unknown_keys(body, "[safety]", set(fields), P)
        kw = {k: v for k, v in body.items() if k in fields}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            st = cls(**kw)  # lists become tuples in __post_init__
        except SpecError as err:
            P.absorb(err)
        P.check()
        return st

    @classmethod
    def from_toml(cls, path, **overrides) -> SafetyTrial:
        """Read a ``[safety]`` specification; ``overrides`` (not None) replace its values."""
        return cls.from_dict(_spec.load_toml(path), **overrides)

    # ------------------------------------------------------------------ running
    def run(self, out, console=None) -> dict:
        """Sample, accept, pace under each compound and write the outputs to ``out``.

        Returns:
            ``dict(models, summary, risk, accepted, seconds)`` (pandas tables).

        Raises:
            RuntimeError: no sampled model passes the acceptance ranges.
        """
        import jax
        import numpy as np

        from .._outdir import claim
        from ..models import ep
        from ..models.ep import population

        out = claim(out, "safety")  # before any simulation
        t0 = time.perf_counter()
        model = ep.ORd(celltype=self.cell)

        def status(msg):
            return console.status(msg) if console is not None else contextlib.nullcontext()

        with status(f"pacing {self.n} ORd ({self.cell}) models for {self.beats} beats"):
            params, state, _, ok = population.calibrate(
                model,
                jax.random.key(self.seed),
                self.n,
                n_beats=self.beats,
                sigma=self.sigma,
            )
        ok = np.asarray(ok)
        if console is not None:
            console.print(
                f"accepted {int(ok.sum())} of {self.n} models against the experimental ranges"
            )
        if not ok.any():
            raise RuntimeError(
                f"none of the {self.n} sampled models passed the acceptance ranges; "
                "sample more (n) or lower sigma"
            )
        keep = np.flatnonzero(ok)
        params = {k: np.asarray(v)[keep] if np.ndim(v) else v for k, v in params.items()}
        state = {k: np.asarray(v)[keep] for k, v in state.items()}
        n_c, n_m = len(self.compounds), len(self.multiples)
        with status(f"{n_c} compounds x {n_m} concentrations"):
            trial = population.drug_trial(
                model, params, state, list(self.compounds), self.multiples, n_beats=self.drug_beats
            )
        summary, risk = population.summarise(trial)
        trial.to_csv(out / "models.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        risk.to_csv(out / "risk.csv")
        plot(summary, out / "safety.png", self.name)
        seconds = time.perf_counter() - t0
        record = dict(
            spec=dataclasses.asdict(self),
            n_accepted=int(ok.sum()),
            seconds=seconds,
            outputs=["models.csv", "summary.csv", "risk.csv", "safety.png"],
        )
        (out / "safety.json").write_text(json.dumps(record, indent=2))
        n_ok = int(ok.sum())
        return dict(models=trial, summary=summary, risk=risk, accepted=n_ok, seconds=seconds)


def plot(summary, path, title: str = ""):
    """APD90 change and incidence of abnormalities against concentration, per compound."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, t in summary.groupby("compound"):
        axes[0].semilogx(t["multiple"], t["dAPD90_median_pct"], "o-", label=c)
        axes[1].semilogx(t["multiple"], t["abnormal_pct"], "o-", label=c)
    axes[0].set_ylabel("median APD90 change (%)")
    axes[1].set_ylabel("models with EAD, RF or DF (%)")
    for ax in axes:
        ax.set_xlabel("concentration (x free Cmax)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
