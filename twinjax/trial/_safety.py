"""The in-silico cardiac safety trial: two protocols, ``[safety] protocol = ...``.

``"population"`` (the default): an ORd population x compounds x concentrations. Its
arms are compounds at multiples of their free Cmax and its engine is the batched
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
Pacing is at 1 Hz, the rate of the acceptance ranges and of the CiPA APD90 data. Its
risk class is an APD90 heuristic, not the CiPA metric.

``"cipa"``: the CiPA qNet protocol (Li et al. 2019 Clin Pharmacol Ther 105:466;
:mod:`twinjax.models.ep._cipa_protocol`): one endocardial CiPAORdv1.0 cell (dynamic
hERG binding) per compound and multiple of free Cmax (default 1, 2, 3, 4), CL 2000 ms,
``cipa_beats`` beats from the control state (the FDA: 1000), the beat of the last
``cipa_window`` (the FDA: 250) with the largest max dV/dt between 30 % and 90 %
repolarisation, depolarisation failures dropped, torsade metric score = mean qNet over
1-4 x Cmax, classified high (< 0.0579 C/F) / intermediate / low (>= 0.0689 C/F).
Compounds: the 28 CiPA compounds (``twinjax/models/ep/cipa_compounds.csv``). Outputs:

- ``qnet.csv``: qNet (C/F) of the kept beat per compound and concentration, with the
  kept beat, max dV/dt, APD90, depolarisation-failure and EAD beat counts;
- ``risk.csv``: torsade metric score, predicted and CiPA category per compound;
- ``confusion.csv``: CiPA category (rows) x predicted category (columns);
- ``safety.png`` (qNet against concentration per compound, the TMS per compound) and
  ``safety.json``.

With ``uncertainty = {samples = N, seed = S}`` the cipa protocol also runs the
uncertainty version (:mod:`twinjax.models.ep._uncertainty`): N samples of each
compound's drug parameters (the FDA's bootstrap hERG fits, bootstrap refits of the Hill
IC50 / h on the published block data), all samples x concentrations in one batch, and
writes ``uncertainty.csv`` (P(high), P(intermediate), P(low) and the TMS percentiles
per compound), ``uncertainty_samples.csv`` (each sample's parameters and TMS) and
``uncertainty.png`` (probability bars per compound).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence

from . import _spec
from ._check import SpecError
from ._safety_plots import plot, plot_exposure, plot_qnet

__all__ = ["SafetyTrial"]

CELL_TYPES = ("endo", "epi", "M")
PROTOCOLS = ("population", "cipa", "exposure")
# keys that only one protocol reads (a spec that sets them for another is refused)
_ONLY = {
    "population": ("n", "cell", "beats", "drug_beats", "sigma", "seed"),
    "cipa": ("cipa_beats", "cipa_window", "uncertainty"),
    "exposure": ("exposure",),
}
# [safety.exposure]: a one-compartment oral PK regimen driving CiPAORdv1.0 beat by beat
EXPOSURE_KEYS = {
    "dose_mg": "dose per administration (mg)",
    "interval_h": "dosing interval (h)",
    "n_doses": "number of doses (integer >= 1), the first at 0 h",
    "F": "oral bioavailability (0-1]",
    "KA_per_h": "absorption rate constant (1/h)",
    "CL_L_per_h": "clearance (L/h)",
    "V_L": "volume of distribution (L)",
    "fu": "fraction unbound in plasma (0-1]",
    "mw_g_per_mol": "molar mass (g/mol)",
    "hours": "exposure simulated (h)",
    "sample_every_h": "optional: pace windows of `window` beats every this many hours "
    "(quasi-static) instead of every beat",
    "window": "optional: beats per window (integer >= 1, default 1)",
}
_EXPOSURE_OPTIONAL = ("sample_every_h", "window")
# uncertainty = {samples = N, seed = S} (protocol = "cipa")
UNCERTAINTY_KEYS = {
    "samples": "uncertainty samples per compound (integer >= 1; the FDA: 2000)",
    "seed": "optional: seed of the samples (integer >= 0, default 0)",
}


@dataclasses.dataclass(frozen=True)
class SafetyTrial:
    """An in-silico drug safety trial on a population of O'Hara-Rudy ventricular models.

    Arguments:
        name: a title for the outputs.
        protocol: ``"population"`` (ORd population, APD90-based risk) or ``"cipa"``
            (the CiPA qNet protocol with CiPAORdv1.0, torsade metric score).
        compounds: names in the shipped CiPA table (``twinjax.models.ep.drugs``; for
            ``protocol = "cipa"`` the 28 compounds of ``cipa_compounds.csv``).
        multiples: concentrations as multiples of each compound's free Cmax (> 0);
            default 1, 10, 30 (population) or 1, 2, 3, 4 (cipa).
        n: candidate models sampled before acceptance (>= 1).
        cell: ORd cell type, ``"endo"``, ``"epi"`` or ``"M"``.
        beats: control beats paced before the acceptance check (>= 1).
        drug_beats: beats paced under each concentration (>= 1).
        sigma: SD of the log-normal conductance scale factors (0 < sigma <= 1).
        seed: seed of the population sample.
        cipa_beats: ``protocol = "cipa"``: beats paced per cell (the FDA: 1000).
        cipa_window: ``protocol = "cipa"``: final beats analysed (the FDA: 250).
        exposure: ``protocol = "exposure"``: the PK regimen, ``{key: value}`` with the
            keys of :data:`EXPOSURE_KEYS` (a ``[safety.exposure]`` table).
        uncertainty: ``protocol = "cipa"``: ``{"samples": N, "seed": S}`` also runs
            the uncertainty version (a probability per risk class; see the module
            docstring).
    """

    name: str = "Cardiac safety trial"
    compounds: tuple = ("dofetilide", "quinidine", "verapamil", "ranolazine")
    multiples: tuple | None = None
    n: int = 100
    cell: str = "endo"
    beats: int = 50
    drug_beats: int = 20
    sigma: float = 0.3
    seed: int = 0
    protocol: str = "population"
    cipa_beats: int = 1000
    cipa_window: int = 250
    exposure: Mapping | None = None
    uncertainty: Mapping | None = None

    def __post_init__(self):
        from ..models.ep import _cipa, drugs

        P = _spec.Problems()
        w = "[safety]"
        d = _spec.describe
        cipa = self.protocol in ("cipa", "exposure")  # both use the CiPAORd compound table
        if not isinstance(self.protocol, str) or self.protocol not in PROTOCOLS:
            P.add(
                f"{w}.protocol",
                f"protocol must be one of {list(PROTOCOLS)}, got {d(self.protocol)}",
            )
        if self.multiples is None:
            object.__setattr__(
                self, "multiples", (1.0, 2.0, 3.0, 4.0) if cipa else (1.0, 10.0, 30.0)
            )
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
            known = list((_cipa.compounds() if cipa else drugs.compounds()).index)
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
        for key in ("n", "beats", "drug_beats", "seed", "cipa_beats", "cipa_window"):
            v = getattr(self, key)
            low = 0 if key == "seed" else 1
            if not _spec.is_int(v) or not low <= v <= _spec.MAX_SEED:
                hint = " (fractional values are not rounded)" if _spec.is_number(v) else ""
                P.add(f"{w}.{key}", f"{key} must be an integer >= {low}, got {d(v)}{hint}")
        if not isinstance(self.cell, str) or self.cell not in CELL_TYPES:
            P.add(f"{w}.cell", f"cell must be one of {list(CELL_TYPES)}, got {d(self.cell)}")
        if not (_spec.is_number(self.sigma) and 0 < self.sigma <= 1):
            P.add(f"{w}.sigma", f"sigma must be a number in (0, 1], got {d(self.sigma)}")
        if self.protocol == "exposure":
            self._check_exposure(P)
        if self.uncertainty is not None:
            self._check_uncertainty(P)
        b, win = self.cipa_beats, self.cipa_window
        if _spec.is_int(b) and _spec.is_int(win) and b >= 1 and win > b:
            P.add(
                f"{w}.cipa_window",
                f"cipa_window must be <= cipa_beats = {b} (the beats paced), got {win}",
            )
        P.check()

    def _check_uncertainty(self, P):
        w = "[safety].uncertainty"
        d = _spec.describe
        u = self.uncertainty
        if not isinstance(u, Mapping):
            P.add(w, f"uncertainty must be a table {{samples = N, seed = S}}, got {d(u)}")
            return
        for k in u:
            if k not in UNCERTAINTY_KEYS:
                P.add(f"{w}.{k}", f"unknown key {k!r}; allowed: {list(UNCERTAINTY_KEYS)}")
        if "samples" not in u:
            P.add(f"{w}.samples", f"missing: {UNCERTAINTY_KEYS['samples']}")
        elif not (_spec.is_int(u["samples"]) and 1 <= u["samples"] <= 100_000):
            P.add(f"{w}.samples", f"samples must be an integer >= 1, got {d(u['samples'])}")
        if "seed" in u and not (_spec.is_int(u["seed"]) and 0 <= u["seed"] <= _spec.MAX_SEED):
            P.add(f"{w}.seed", f"seed must be an integer >= 0, got {d(u['seed'])}")
        object.__setattr__(self, "uncertainty", dict(u))  # JSON-ready

    def _check_exposure(self, P):
        w = "[safety.exposure]"
        d = _spec.describe
        if isinstance(self.compounds, tuple) and len(self.compounds) != 1:
            P.add("[safety].compounds", "protocol = 'exposure' doses exactly one compound")
        e = self.exposure
        if not isinstance(e, Mapping):
            P.add(
                w,
                f"protocol = 'exposure' needs a table [safety.exposure] with {list(EXPOSURE_KEYS)}",
            )
            return
        for k in e:
            if k not in EXPOSURE_KEYS:
                P.add(f"{w}.{k}", f"unknown key {k!r}; allowed: {list(EXPOSURE_KEYS)}")
        for k, what in EXPOSURE_KEYS.items():
            if k not in e:
                if k not in _EXPOSURE_OPTIONAL:
                    P.add(f"{w}.{k}", f"missing: {what}")
                continue
            v = e[k]
            if k in ("n_doses", "window"):
                if not (_spec.is_int(v) and 1 <= v <= 100_000):
                    P.add(f"{w}.{k}", f"{k} must be an integer >= 1, got {d(v)}")
            elif not (_spec.is_number(v) and 0 < v < math.inf):
                P.add(f"{w}.{k}", f"{k} must be a positive number ({what}), got {d(v)}")
            elif k in ("F", "fu") and v > 1:
                P.add(f"{w}.{k}", f"{k} must be in (0, 1], got {d(v)}")
        if "window" in e and "sample_every_h" not in e:
            P.add(f"{w}.window", "window is read only with sample_every_h")

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
        proto = overrides.get("protocol") or body.get("protocol", "population")
        given = set(body) | {k for k, v in overrides.items() if v is not None}
        for other, keys in _ONLY.items():
            if proto in PROTOCOLS and other != proto:
                for k in sorted(given & set(keys)):
                    P.add(
                        f"[safety].{k}",
                        f"{k} is read only by protocol = {other!r}, not by {proto!r}; remove it",
                    )
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
        from ..models.ep import cell_population

        out = claim(out, "safety")  # before any simulation
        if self.protocol == "cipa":
            return self._run_cipa(out, console)
        if self.protocol == "exposure":
            return self._run_exposure(out, console)
        t0 = time.perf_counter()
        model = ep.ORd(celltype=self.cell)

        def status(msg):
            return console.status(msg) if console is not None else contextlib.nullcontext()

        with status(f"pacing {self.n} ORd ({self.cell}) models for {self.beats} beats"):
            params, state, _, ok = cell_population.calibrate(
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
        multiples = tuple(self.multiples or ())  # resolved in __post_init__
        n_c, n_m = len(self.compounds), len(multiples)
        with status(f"{n_c} compounds x {n_m} concentrations"):
            trial = cell_population.drug_screen(
                model, params, state, list(self.compounds), multiples, n_beats=self.drug_beats
            )
        summary, risk = cell_population.summarise(trial)
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

    def _run_cipa(self, out, console) -> dict:
        """The CiPA qNet protocol (see the module docstring); ``out`` is claimed."""
        from ..models.ep import _cipa_protocol as cp

        t0 = time.perf_counter()
        multiples = tuple(self.multiples or ())  # resolved in __post_init__
        n_cells = 1 + len(self.compounds) * len(multiples)

        def progress(done, seconds, last):
            if console is not None:
                console.print(
                    f"beat {done}/{self.cipa_beats}: {seconds:.0f} s "
                    f"(control qNet {float(last['qNet'][0]):.6f} C/F)"
                )

        if console is not None:
            console.print(
                f"CiPA qNet protocol: {n_cells} CiPAORdv1.0 cells (control + "
                f"{len(self.compounds)} compounds x {len(multiples)} concentrations), "
                f"{self.cipa_beats} beats at CL 2000 ms, beat selection over the last "
                f"{self.cipa_window}"
            )
        res = cp.qnet_protocol(
            self.compounds,
            multiples,
            beats=self.cipa_beats,
            window=self.cipa_window,
            progress=progress,
        )
        confusion = res.confusion()
        res.doses.to_csv(out / "qnet.csv", index=False)
        res.scores.to_csv(out / "risk.csv", index=False)
        confusion.to_csv(out / "confusion.csv")
        plot_qnet(res.doses, res.scores, out / "safety.png", self.name)
        seconds = time.perf_counter() - t0
        sc = res.scores
        record = dict(
            spec=dataclasses.asdict(self),
            protocol="CiPA qNet (CiPAORdv1.0 endo, CL 2000 ms)",
            thresholds=dict(high_below=cp.THRESHOLDS[0], low_from=cp.THRESHOLDS[1]),
            control=res.control,
            correct=f"{int(sc['correct'].sum())}/{len(sc)}",
            seconds=seconds,
            outputs=["qnet.csv", "risk.csv", "confusion.csv", "safety.png"],
        )
        result = dict(
            qnet=res.doses,
            risk=res.scores,
            confusion=confusion,
            control=res.control,
            seconds=seconds,
        )
        if self.uncertainty is not None:
            result["uncertainty"] = self._run_uncertainty(out, console, record)
            result["seconds"] = record["seconds"] = time.perf_counter() - t0
        (out / "safety.json").write_text(json.dumps(record, indent=2))
        return result

    def _run_uncertainty(self, out, console, record):
        """The uncertainty version of the cipa protocol; adds to ``record``."""
        from ..models.ep import _uncertainty as unc

        assert self.uncertainty is not None
        n, seed = int(self.uncertainty["samples"]), int(self.uncertainty.get("seed", 0))
        multiples = tuple(self.multiples or ())
        if console is not None:
            console.print(
                f"uncertainty: {n} samples per compound, "
                f"{1 + n * len(self.compounds) * len(multiples)} cells in one batch"
            )

        def progress(done, seconds):
            if console is not None:
                console.print(f"uncertainty beat {done}/{self.cipa_beats}: {seconds:.0f} s")

        u = unc.qnet_uncertainty(
            self.compounds,
            n=n,
            seed=seed,
            multiples=multiples,
            beats=self.cipa_beats,
            window=self.cipa_window,
            progress=progress,
        )
        u.probabilities.to_csv(out / "uncertainty.csv", index=False)
        u.samples.to_csv(out / "uncertainty_samples.csv", index=False)
        unc.plot_probabilities(u.probabilities, out / "uncertainty.png", self.name)
        record["uncertainty"] = dict(
            samples=n,
            seed=seed,
            method="hERG: rows of the FDA bootstrap fits; Hill IC50/h: bootstrap refits of "
            "the published block data (the FDA used MCMC for these)",
            seconds=u.seconds,
            probabilities=u.probabilities.to_dict(orient="records"),
        )
        record["outputs"] += ["uncertainty.csv", "uncertainty_samples.csv", "uncertainty.png"]
        return u.probabilities

    def _run_exposure(self, out, console) -> dict:
        """A PK regimen driving one CiPAORdv1.0 cell beat by beat; ``out`` is claimed."""
        import jax.numpy as jnp
        import numpy as np
        import pandas as pd

        from ..dosing import Regimen
        from ..models.ep import CiPAORd
        from ..models.ep import _exposure as ex
        from ..models.ep._cipa import compounds as cipa_compounds
        from ..models.pk import one_compartment
        from ..solve import simulate

        t0 = time.perf_counter()
        e = dict(self.exposure or {})
        compound = self.compounds[0]
        pk = one_compartment("first_order")
        hours = float(e["hours"])
        times = np.linspace(0.0, hours, int(hours * 60) + 1)  # every minute
        regimen = Regimen.repeat(
            float(e["dose_mg"]), "depot", every=float(e["interval_h"]), n=int(e["n_doses"])
        )
        pk_params = dict(CL=e["CL_L_per_h"], V=e["V_L"], KA=e["KA_per_h"], F=e["F"])
        res = simulate(pk, {k: float(v) for k, v in pk_params.items()}, regimen, times)
        C = np.asarray(res.outputs["C"])  # mg/L
        free = ex.free_nM(C, float(e["mw_g_per_mol"]), float(e["fu"]))
        model = CiPAORd()
        bcl = float(model.param("BCL").value)
        tb, cb = ex.exposure_beats(
            times,
            free,
            bcl_ms=bcl,
            hours=hours - bcl / ex.MS_PER_H,
            sample_every_h=e.get("sample_every_h"),
            window=int(e.get("window", 1)),
        )
        if console is not None:
            console.print(
                f"{compound}: free Cmax {free.max():.3g} nM over {hours:g} h; pacing "
                f"{len(tb)} beats of CiPAORdv1.0 at CL {bcl:g} ms"
            )
        r = ex.pace_exposure(model, compound, cb, params={"BCL": jnp.asarray(bcl)})
        bio = r.biomarkers
        table = pd.DataFrame(
            dict(
                beat=np.arange(1, len(tb) + 1),
                time_h=tb,
                conc_nM=cb,
                qNet=np.asarray(bio["qNet"]),
                APD90=np.asarray(bio["APD90"]),
                max_dv=np.asarray(bio["max_dv"]),
                EAD=np.asarray(bio["EAD"]).astype(bool),
                DF=np.asarray(bio["DF"]).astype(bool),
            )
        )
        table.to_csv(out / "exposure.csv", index=False)
        pd.DataFrame(dict(time_h=times, C_mg_per_L=C, free_nM=free)).to_csv(
            out / "pk.csv", index=False
        )
        plot_exposure(times, free, table, out / "safety.png", f"{self.name} ({compound})")
        seconds = time.perf_counter() - t0
        cmax_cipa = float(cipa_compounds().loc[compound, "cmax_free_nM"])
        record = dict(
            spec=dataclasses.asdict(self),
            protocol="PK-driven exposure (one-compartment oral PK -> CiPAORdv1.0, per beat)",
            free_cmax_nM=float(free.max()),
            cipa_free_cmax_nM=cmax_cipa,
            beats_paced=len(tb),
            status=int(np.max(np.asarray(r.status))),
            seconds=seconds,
            outputs=["exposure.csv", "pk.csv", "safety.png"],
        )
        (out / "safety.json").write_text(json.dumps(record, indent=2))
        return dict(exposure=table, pk=res, seconds=seconds, free_cmax_nM=float(free.max()))
