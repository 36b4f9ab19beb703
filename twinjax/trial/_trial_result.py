"""The result of a trial run: per-patient endpoints, per-arm bands, the statistics
(summaries, comparisons with Holm's adjustment, subgroups, power curves) and its files
(``summary.json``, ``endpoints.csv``, ``report.html``)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._outdir import claim
from . import _stats
from ._trial_table import baseline_column
from ._variability import Variability

if TYPE_CHECKING:
    from ._trial import Trial


@dataclasses.dataclass
class TrialResult:
    """Per-patient endpoints, per-arm percentile bands and the statistics of a trial."""

    trial: Trial
    table: pd.DataFrame
    bands: dict
    times: np.ndarray
    seconds: float
    #: the :class:`Sensitivity` analyses (``{}``: none asked for; see ``run_sensitivity``)
    sensitivity: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        tr = self.trial
        ok = self.table[self.table["status"] == 0]
        dropout = tr.variability.dropout if tr.variability is not None else None
        if dropout is not None:
            if dropout.analysis == "completers":
                ok = ok[~ok["dropped"].to_numpy(bool)]
            self.dropout = _dropout_table(self.table, [a.name for a in tr.arms], dropout)
        else:
            self.dropout = pd.DataFrame()
        arms = [a.name for a in tr.arms]
        summ, comp, subs, powers = [], [], [], []
        rng = np.random.default_rng(tr.seed)
        all_ok = ok
        skipped = []
        for e in tr.endpoints:
            ok = all_ok
            if dropout is not None:  # LOCF: window endpoints after a dropout are missing
                ok = ok[np.isfinite(ok[e.name].to_numpy(float))]
            for a in arms:
                v = ok.loc[ok["arm"] == a, e.name].to_numpy(float)
                summ.append(
                    {"endpoint": e.name, "arm": a, **_stats.summarize(v, e.binary, tr.alpha)}
                )
            x = ok.loc[ok["arm"] == tr.control, e.name].to_numpy(float)
            bcol = baseline_column(e, tr.endpoints)
            has_base = bcol is not None and bcol in ok
            bx = ok.loc[ok["arm"] == tr.control, bcol].to_numpy(float) if has_base else None
            for a in arms:
                if a == tr.control:
                    continue
                y = ok.loc[ok["arm"] == a, e.name].to_numpy(float)
                by = ok.loc[ok["arm"] == a, bcol].to_numpy(float) if bx is not None else None
                comp.append(
                    {
                        "endpoint": e.name,
                        "arm": a,
                        "control": tr.control,
                        **_stats.compare(x, y, e.binary, tr.alpha, bx, by),
                    }
                )
                if tr.power_sizes:
                    avail = int(min(np.isfinite(x).sum(), np.isfinite(y).sum()))
                    skipped += [
                        {"endpoint": e.name, "arm": a, "n_per_arm": s, "available": avail}
                        for s in tr.power_sizes
                        if s > avail
                    ]
                    pc = _stats.power_curve(
                        x, y, tr.power_sizes, tr.replicates, e.binary, tr.alpha, rng
                    )
                    if len(pc):
                        pc.insert(0, "arm", a)
                        pc.insert(0, "endpoint", e.name)
                        powers.append(pc)
            if tr.subgroup_covariates:
                subs.append(
                    _stats.subgroups(
                        ok, e.name, e.binary, tr.control, arms, tr.subgroup_covariates, tr.alpha
                    )
                )
        self.summary = pd.DataFrame(summ)
        self.comparisons = _stats.adjust(pd.DataFrame(comp))  # Holm over arms vs control
        self.subgroups = pd.concat(subs, ignore_index=True) if subs else pd.DataFrame()
        self.power = pd.concat(powers, ignore_index=True) if powers else pd.DataFrame()
        #: power-curve sizes left out because an endpoint had fewer analysable patients
        #: in an arm (or the control) than the size (failures, dropout, missing values)
        self.power_skipped = pd.DataFrame(
            skipped, columns=["endpoint", "arm", "n_per_arm", "available"]
        )
        self.patients = _patients_table(self.table, arms, tr.endpoints[0].name, dropout)

    @property
    def warnings(self) -> list[str]:
        """Sample-size problems the report states (rather than dropping sizes silently)."""
        tr = self.trial
        out = []
        if tr.dropped_power_sizes:
            out.append(
                f"Power-curve sizes {list(tr.dropped_power_sizes)} per arm exceed the "
                f"{tr.n_per_arm} patients simulated per arm and were left out"
                + ("; there is no power curve." if not tr.power_sizes else ".")
            )
        for (ep, arm), g in self.power_skipped.groupby(["endpoint", "arm"], sort=False):
            out.append(
                f"{ep}, {arm} vs {tr.control}: power-curve sizes "
                f"{[int(s) for s in g['n_per_arm']]} per arm exceed the "
                f"{int(g['available'].iloc[0])} patients with an analysable value and "
                "were left out."
            )
        return out

    def to_json(self) -> dict:
        tr = self.trial
        return {
            "name": tr.name,
            "model": type(tr.model).__name__,
            "seed": tr.seed,
            "n_patients": int(len(self.table)),
            "n_failed": int((self.table["status"] != 0).sum()),
            "arms": [
                {"name": a.name, "n": a.n or tr.n_per_arm, "placebo": a.placebo} for a in tr.arms
            ],
            "control": tr.control,
            "seconds": self.seconds,
            "summary": self.summary.to_dict(orient="records"),
            "comparisons": self.comparisons.to_dict(orient="records"),
            "subgroups": self.subgroups.to_dict(orient="records"),
            "power": self.power.to_dict(orient="records"),
            "patients": self.patients.to_dict(orient="records"),
            "warnings": self.warnings,
            **({"dropout": self.dropout.to_dict(orient="records")} if len(self.dropout) else {}),
            **({"variability": _variability_json(tr.variability)} if tr.variability else {}),
            **({"sensitivity": self.sensitivity_json()} if self.sensitivity else {}),
        }

    def sensitivity_json(self) -> dict:
        """The sensitivity analyses' settings and numbers (for ``summary.json``)."""
        s, r = self.trial.sensitivity, self.sensitivity
        assert s is not None
        out: dict = {"endpoint": s.endpoint, "arm": s.arm, "notes": list(r["notes"])}
        loc, summ = r.get("local"), r.get("local_summary")
        if loc is not None:
            out["local"] = {
                "patients": loc.n_patients,
                "failed": int((loc.status != 0).sum()),
                "parameters": list(loc.parameters),
                "statistic": "d log endpoint / d log parameter over the patients",
                "summary": []
                if summ is None
                else [{"parameter": k, **row} for k, row in summ.to_dict(orient="index").items()],
            }
        sob = r.get("sobol")
        if sob is not None:
            fr = sob.to_frame()
            out["sobol"] = {
                "n": sob.n,
                "runs": int(sob.samples.shape[0]),
                "seed": sob.seed,
                "n_bootstrap": sob.n_bootstrap,
                "confidence": sob.confidence,
                "n_dropped": sob.n_dropped,
                "bounds": {k: list(v) for k, v in sob.bounds.items()},
                "fixed": r.get("typical", {}),
                "indices": [
                    {"parameter": k, "lower": sob.bounds[k][0], "upper": sob.bounds[k][1], **row}
                    for k, row in fr.to_dict(orient="index").items()
                ],
            }
        return out

    def write(self, out) -> pathlib.Path:
        """Write ``summary.json``, ``endpoints.csv`` and ``report.html`` to ``out``."""
        from ._report import write_report

        out = claim(out, "trial")
        self.table.to_csv(out / "endpoints.csv", index=False)
        (out / "summary.json").write_text(json.dumps(_clean(self.to_json()), indent=2))
        return write_report(self, out / "report.html")


def _patients_table(table, arms, primary: str, dropout) -> pd.DataFrame:
    """Per arm: patients simulated, failed simulations, dropouts, and patients analysed
    for the primary endpoint (a finite value in the analysis population)."""
    rows = []
    for a in arms:
        t = table[table["arm"] == a]
        ok = t["status"].to_numpy() == 0
        dropped = t["dropped"].to_numpy(bool) if "dropped" in t else np.zeros(len(t), bool)
        analysed = ok & np.isfinite(t[primary].to_numpy(float))
        if dropout is not None and dropout.analysis == "completers":
            analysed &= ~dropped
        rows.append(
            {
                "arm": a,
                "simulated": len(t),
                "failed": int((~ok).sum()),
                "dropped_out": int((dropped & ok).sum()),
                "analysed_primary": int(analysed.sum()),
            }
        )
    return pd.DataFrame(rows)


def _dropout_table(table, arms, dropout) -> pd.DataFrame:
    """Per arm: patients, dropped, the fraction and the analysis population."""
    rows = []
    for a in arms:
        t = table[table["arm"] == a]
        n, d = len(t), int(t["dropped"].sum())
        rows.append(
            {
                "arm": a,
                "n": n,
                "dropped": d,
                "fraction": d / n if n else np.nan,
                "analysis": dropout.analysis,
                "analysed": n - d if dropout.analysis == "completers" else n,
            }
        )
    return pd.DataFrame(rows)


def _variability_json(v: Variability) -> dict:
    return {
        "errors": [dataclasses.asdict(e) for e in v.errors],
        "placebo": [dataclasses.asdict(p) for p in v.placebo],
        "dropout": None if v.dropout is None else dataclasses.asdict(v.dropout),
        "adherence": v.adherence,
        "iov": [
            {"param": o.param, "sd": o.kappa_sd, "occasions": list(o.occasions)} for o in v.iov
        ],
    }


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
