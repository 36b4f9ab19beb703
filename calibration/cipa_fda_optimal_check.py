"""Which dynamic hERG parameters are the centre for the 16 CiPA validation compounds?

Compares the validation rows of ``twinjax/models/ep/cipa_compounds.csv`` (Li et al. 2019
Clin Pharmacol Ther 105:466, supplement S2 p. 13, as transcribed in
CardiacModelling/hERG-binding-mechanisms @ 4fdb8a3 ``methods/parameters.py``) with every
dynamic-hERG fit the FDA published, read with ``git show`` from local mirrors:

- V = FDA/CiPA branch Model-Validation-2018 @ a0924b5 (the Li 2019 code and data):
  ``hERG_fitting/hERG_fitting_results.zip`` (2000 bootstrap fits per drug, no optimal
  fit), ``AP_simulation/funs/get_pars.R`` (where a fixed-input run reads its point values),
  ``hERG_fitting/models/hergmod_drug_param_bounds.txt`` (fit bounds);
- M = FDA/CiPA master @ e881df6 (Li 2017, 12 training drugs): ``hERG_fitting/results/
  <drug>/pars.txt`` (optimal fit) and ``boot_pars.csv`` (its bootstrap), used here as the
  baseline of where an optimal fit sits inside a bootstrap distribution;
- L = FDA/CiPA branch Lab_Specific_Validation_Calibration_2020 @ 4bfb160 (Han et al. 2020,
  Milnes data re-filtered to cells with < 20 % background current): the only published
  ``pars.txt`` of the validation drugs, with their ``boot_pars.csv``;
- X = CardiacModelling/hERG-binding-mechanisms @ 4fdb8a3 ``methods/parameters.py``
  (``binding_li``; checked equal to our table).

It also searches every commit of the FDA mirror for a ``pars.txt`` of a validation drug.

The parameters are compared through the quantity that sets hERG block at a concentration
D: the ratio of the binding to the unbinding rate of open channels,
``r(D) = Kmax * D^n / (D^n + halfmax)`` (binding ``Kmax*Ku*D^n/(D^n+halfmax)``, unbinding
``Ku``; equilibrium bound fraction of open channels ``r/(1+r)``), at 1x and 4x free Cmax,
and by the percentile of our value among the bootstrap fits. Nothing is simulated.

With ``--pace C1,C2,...`` it also paces, by the CiPA qNet protocol (``--beats`` /
``--window``, default 200 / 50 as ``calibration/results/cipa_qnet_200.json``), those compounds
twice: with our table's hERG parameters and with the *central bootstrap fit*, the one of
the 2000 FDA 2018 bootstrap fits (a coherent parameter set, unlike a vector of
per-parameter medians) closest to the bootstrap medians of log r(D) at 1-4x Cmax, log Ku
and Vhalf (Vhalf scaled by its interquartile range); the Hill block is the table's in both.

Run: ``python calibration/cipa_fda_optimal_check.py --mirror DIR --mirror-x DIR``
(``DIR`` = git directories of FDA/CiPA with all branches and of
CardiacModelling/hERG-binding-mechanisms, e.g. from ``git clone --mirror``). Writes
``calibration/results/cipa_fda_optimal_check.{json,txt}``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "calibration"))
from cipa_validation_sources import _dicts  # noqa: E402  (arithmetic-only literal reader)

V = "a0924b591941ac3e216c498b9fe1fa8f729901b6"
M = "e881df6766d1067a08b65184d7a320804aef73d6"
L = "4bfb160dd393a8431aab05bd4b4c332aafc18003"
X = "4fdb8a37ef45631e177068aba8f3d9119b1cec52"
README_CITATION_COMMIT = "79d49db"  # Model-Validation-2018: "Added citation" (cpt.1184)
TABLE = ROOT / "twinjax" / "models" / "ep" / "cipa_compounds.csv"
QNET = ROOT / "calibration" / "results" / "cipa_qnet_200.json"  # the 200-beat run
OUT = ROOT / "calibration" / "results" / "cipa_fda_optimal_check"
HERG = ("Kmax", "Ku", "n", "halfmax", "Vhalf")
MULTIPLES = (1.0, 4.0)


def _git(gitdir, *args, text=True):
    return subprocess.run(
        ["git", "--git-dir", str(gitdir), *args], check=True, capture_output=True, text=text
    ).stdout


def _show(gitdir, commit, path, text=True):
    return _git(gitdir, "show", f"{commit}:{path}", text=text)


def _table():
    lines = [ln for ln in TABLE.read_text().splitlines() if not ln.startswith("#")]
    return {r["compound"]: r for r in csv.DictReader(lines)}


def _boot_csv(text):
    rows = list(csv.DictReader(io.StringIO(text.replace("\r", ""))))
    return np.array([[float(r[k]) for k in HERG] for r in rows])


def _pars_txt(text):
    vals = {}
    for ln in text.split("\n"):
        parts = ln.split()
        if len(parts) == 2:
            vals[parts[0]] = float(parts[1])
    if "Kf" in vals and "Kmax" not in vals:  # HERGMMCMAES naming (get_pars.R)
        vals["Kmax"] = vals.pop("Kf")
    return np.array([vals[k] for k in HERG])


def ratio(p, conc):
    """r(D) = Kmax D^n / (D^n + halfmax) for parameter rows p (..., 5)."""
    p = np.asarray(p, float)
    dn = conc ** p[..., 2]
    return p[..., 0] * dn / (dn + p[..., 3])


def pct_rank(samples, value):
    """Percent of samples below value (ties count half)."""
    s = np.asarray(samples)
    return float(100.0 * (np.sum(s < value) + 0.5 * np.sum(s == value)) / s.size)


def _q(a):
    return [float(x) for x in np.percentile(a, [2.5, 50, 97.5])]


def _fmt(x):
    return f"{x:.4g}"


def provenance(mirror):
    """Facts about where the FDA kept optimal fits, read from the mirror."""
    tree_v = _git(mirror, "ls-tree", "-r", "--name-only", V).split()
    zbytes = _show(mirror, V, "hERG_fitting/hERG_fitting_results.zip", text=False)
    z = zipfile.ZipFile(io.BytesIO(zbytes))
    members = {i.filename: "{:04d}-{:02d}-{:02d}".format(*i.date_time[:3]) for i in z.infolist()}
    get_pars = _show(mirror, V, "AP_simulation/funs/get_pars.R").split("\n")
    lines = [
        ln.strip()
        for ln in get_pars
        if "pars.txt" in ln or "boot_pars.csv" in ln or "optimal" in ln or "Kf" in ln
    ]
    cite = _git(mirror, "log", "-1", "--format=%h %ad %s", "--date=short", README_CITATION_COMMIT)
    zip_commit = _git(
        mirror, "log", "-1", "--format=%h %ad %s", "--date=short", V, "--", "hERG_fitting"
    )
    bounds = _show(mirror, V, "hERG_fitting/models/hergmod_drug_param_bounds.txt")
    return z, {
        "V_pars_txt_files": [p for p in tree_v if p.endswith("pars.txt") and "results" in p],
        "V_zip_members": len(members),
        "V_zip_member_kinds": sorted({m.split("_", 1)[1] for m in members}),
        "V_zip_member_dates": [min(members.values()), max(members.values())],
        "V_zip_commit": zip_commit.strip(),
        "V_citation_commit": cite.strip(),
        "V_get_pars_R_lines": lines,
        "V_fit_bounds": bounds.strip().split("\n"),
    }


def validation_pars_in_history(mirror, drugs):
    """Every (commit, path) in the mirror's history holding a validation drug's pars.txt."""
    found = {}
    commits = _git(mirror, "rev-list", "--all").split()
    for c in commits:
        for p in _git(mirror, "ls-tree", "-r", "--name-only", c).split("\n"):
            parts = p.split("/")
            if p.endswith("pars.txt") and not p.endswith("_pars.txt") and len(parts) >= 2:
                if parts[-2] in drugs:
                    blob = _git(mirror, "rev-parse", f"{c}:{p}").strip()
                    found.setdefault(p, set()).add(blob)
    return {p: sorted(b) for p, b in sorted(found.items())}


def central_fit(boot, cmax):
    """Index of the bootstrap row closest to the medians of log r(1-4x), log Ku, Vhalf."""
    feats = [np.log(np.maximum(ratio(boot, m * cmax), 1e-300)) for m in (1, 2, 3, 4)]
    feats.append(np.log(boot[:, 1]))
    q1, q3 = np.percentile(boot[:, 4], [25, 75])
    feats.append(boot[:, 4] / max(q3 - q1, 1e-9))
    f = np.stack(feats, axis=1)
    return int(np.argmin(np.sum((f - np.median(f, axis=0)) ** 2, axis=1)))


def pace(compounds, boots, beats, window):
    """TMS of each compound with the table's hERG row and with its central bootstrap fit."""
    import jax

    jax.config.update("jax_enable_x64", True)  # the CiPA protocol runs in float64
    from twinjax.models.ep._uncertainty import point_samples, qnet_uncertainty

    samples = point_samples(compounds, 2)  # sample 0: table, sample 1: central fit
    picks = {}
    for c in compounds:
        i = central_fit(boots[c][0], boots[c][1])
        picks[c] = i
        sel = (samples["compound"] == c) & (samples["sample"] == 1)
        for j, k in enumerate(HERG):
            samples.loc[sel, k] = boots[c][0][i, j]
    res = qnet_uncertainty(samples=samples, beats=beats, window=window, chunk=25)
    out = []
    for c in compounds:
        s = res.samples[res.samples["compound"] == c].set_index("sample")
        d = res.doses[res.doses["compound"] == c]
        row = {"compound": c, "central_boot_row": picks[c] + 1}
        for smp, name in ((0, "table"), (1, "central_fit")):
            row[name] = {
                "hERG": {k: float(s.loc[smp, k]) for k in HERG},
                "qNet_1_2_3_4x": [float(v) for v in d[d["sample"] == smp]["qNet"]],
                "TMS": float(s.loc[smp, "TMS"]),
                "predicted": str(s.loc[smp, "predicted"]),
            }
        out.append(row)
    return {
        "command_args": f"--pace {','.join(compounds)} --beats {beats} --window {window}",
        "beats": beats,
        "window": window,
        "seconds": res.seconds,
        "control_qNet": res.control["qNet"],
        "rows": out,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", required=True, help="git dir of FDA/CiPA (all branches)")
    ap.add_argument("--mirror-x", required=True, help="git dir of hERG-binding-mechanisms")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--pace", default="", help="comma-separated compounds to pace (optional)")
    ap.add_argument("--beats", type=int, default=200)
    ap.add_argument("--window", type=int, default=50)
    args = ap.parse_args()

    tab = _table()
    training = [c for c, r in tab.items() if r["set"] == "training"]
    validation = [c for c, r in tab.items() if r["set"] == "validation"]
    z, prov = provenance(args.mirror)
    history = validation_pars_in_history(args.mirror, set(validation))
    binding_li = _dicts(_show(args.mirror_x, X, "methods/parameters.py"), {"binding_li"})[
        "binding_li"
    ]
    qnet = json.loads(QNET.read_text())
    tms = {s["compound"]: s for s in qnet["scores"]}

    out = {
        "command": "python calibration/cipa_fda_optimal_check.py --mirror DIR --mirror-x DIR",
        "sources": {"V": f"FDA/CiPA@{V}", "M": f"FDA/CiPA@{M}", "L": f"FDA/CiPA@{L}"}
        | {"X": f"CardiacModelling/hERG-binding-mechanisms@{X}"},
        "metric": "r(D) = Kmax*D^n/(D^n+halfmax) at 1x and 4x free Cmax; pct = percent of "
        "bootstrap fits with a smaller r",
        "provenance": prov,
        "validation_pars_txt_in_fda_history": history,
        "training_baseline": [],
        "validation": [],
    }

    # Baseline: the 12 training drugs' optimal fits (M pars.txt) inside their own 2017
    # bootstrap (M boot_pars.csv) and inside the 2018 re-run (V zip).
    for c in training:
        opt = _pars_txt(_show(args.mirror, M, f"hERG_fitting/results/{c}/pars.txt"))
        table_row = np.array([float(tab[c][k]) for k in HERG])
        boot_m = _boot_csv(_show(args.mirror, M, f"hERG_fitting/results/{c}/boot_pars.csv"))
        boot_v = _boot_csv(z.read(f"{c}_boot_pars.csv").decode())
        cmax = float(tab[c]["cmax_free_nM"])
        med_m = np.median(boot_m, axis=0)
        row = {"compound": c, "table_equals_M_pars_txt": bool(np.array_equal(opt, table_row))}
        for m in MULTIPLES:
            r0 = float(ratio(opt, m * cmax))
            rm = ratio(boot_m, m * cmax)
            row[f"r_{m:g}x"] = r0
            row[f"pct_in_M_boot_{m:g}x"] = pct_rank(rm, r0)
            row[f"pct_in_V_boot_{m:g}x"] = pct_rank(ratio(boot_v, m * cmax), r0)
            row[f"M_marginal_median_vector_pct_in_M_boot_{m:g}x"] = pct_rank(
                rm, float(ratio(med_m, m * cmax))
            )
        out["training_baseline"].append(row)

    for c in validation:
        ours = np.array([float(tab[c][k]) for k in HERG])
        kt, kmax, ku, halfmax, n, vhalf = binding_li[c]
        x = np.array([kmax, ku, n, halfmax, vhalf])
        boot_v = _boot_csv(z.read(f"{c}_boot_pars.csv").decode())
        opt_l = _pars_txt(_show(args.mirror, L, f"hERG_fitting/results/{c}/pars.txt"))
        boot_l = _boot_csv(_show(args.mirror, L, f"hERG_fitting/results/{c}/boot_pars.csv"))
        cmax = float(tab[c]["cmax_free_nM"])
        row = {
            "compound": c,
            "cipa": {"2": "high", "1": "intermediate", "0": "low"}[tab[c]["cipa_class"]],
            "cmax_free_nM": cmax,
            "ours": dict(zip(HERG, map(float, ours))),
            "ours_equals_X_binding_li": bool(np.allclose(ours, x, rtol=1e-12, atol=0)),
            "V_boot_median": dict(zip(HERG, map(float, np.median(boot_v, axis=0)))),
            "ours_pct_in_V_boot_marginal": {
                k: pct_rank(boot_v[:, i], ours[i]) for i, k in enumerate(HERG)
            },
            "V_boot_n_at_upper_bound_2": int(np.sum(boot_v[:, 2] >= 1.999)),
            "V_boot_Vhalf_at_bound_-1": int(np.sum(boot_v[:, 4] >= -1.0001)),
            "L_pars_txt": dict(zip(HERG, map(float, opt_l))),
            "L_over_ours": dict(zip(HERG, map(float, opt_l / ours))),
        }
        med_v, med_l = np.median(boot_v, axis=0), np.median(boot_l, axis=0)
        for m in MULTIPLES:
            d = m * cmax
            r_ours = float(ratio(ours, d))
            rv, rl = ratio(boot_v, d), ratio(boot_l, d)
            row[f"{m:g}x"] = {
                "r_ours": r_ours,
                "occupancy_ours": r_ours / (1 + r_ours),
                "r_V_boot_p2.5_p50_p97.5": _q(rv),
                "occupancy_V_boot_median": float(np.median(rv / (1 + rv))),
                "ours_pct_in_V_boot": pct_rank(rv, r_ours),
                "r_V_median_over_ours": float(np.median(rv) / r_ours),
                "r_L_pars_txt": float(ratio(opt_l, d)),
                "L_pars_txt_pct_in_L_boot": pct_rank(rl, float(ratio(opt_l, d))),
                "ours_pct_in_L_boot": pct_rank(rl, r_ours),
                "V_marginal_median_vector_pct_in_V_boot": pct_rank(rv, float(ratio(med_v, d))),
                "L_marginal_median_vector_pct_in_L_boot": pct_rank(rl, float(ratio(med_l, d))),
            }
        if c == "disopyramide":
            # bimodal bootstrap: the n < 1.5 mode is the one near the supplement's n 0.789
            mode = boot_v[boot_v[:, 2] < 1.5]
            row["V_boot_mode_n_below_1.5"] = {
                "count": int(len(mode)),
                "Kmax_p2.5_p50_p97.5": _q(mode[:, 0]),
                "n_p2.5_p50_p97.5": _q(mode[:, 2]),
                "halfmax_p2.5_p50_p97.5": _q(mode[:, 3]),
                "pct_of_halfmax_894.6": pct_rank(mode[:, 3], 894.6),
                "pct_of_halfmax_44730": pct_rank(mode[:, 3], 44730.0),
            }
            # fits near the supplement's Kmax and n: the halfmax they pair with
            near = boot_v[
                (np.abs(boot_v[:, 2] - ours[2]) < 0.05)
                & (boot_v[:, 0] > ours[0] / 1.5)
                & (boot_v[:, 0] < ours[0] * 1.5)
            ]
            row["V_boot_near_Kmax_n"] = {
                "rule": "|n - 0.7894| < 0.05 and Kmax within 1.5x of 3.685",
                "count": int(len(near)),
                "halfmax_min_p2.5_p50_p97.5_max": [
                    float(v) for v in np.percentile(near[:, 3], [0, 2.5, 50, 97.5, 100])
                ],
            }
            row["r_pct_in_V_boot_by_halfmax"] = {}
            for hm in (447.3, 894.6, 44730.0):
                alt = ours.copy()
                alt[3] = hm
                row["r_pct_in_V_boot_by_halfmax"][str(hm)] = [
                    pct_rank(ratio(boot_v, m * cmax), float(ratio(alt, m * cmax)))
                    for m in MULTIPLES
                ]
        s = tms.get(c, {})
        row["TMS_ours_200_beats"] = s.get("TMS")
        row["predicted_ours"] = s.get("predicted")
        row["TMS_FDA_published"] = None  # not in any stored source (see the docs)
        out["validation"].append(row)

    if args.pace:
        names = [c.strip().lower() for c in args.pace.split(",") if c.strip()]
        bad = [c for c in names if c not in validation]
        if bad:
            raise SystemExit(f"--pace: {bad} are not validation compounds ({validation})")
        boots = {
            c: (_boot_csv(z.read(f"{c}_boot_pars.csv").decode()), float(tab[c]["cmax_free_nM"]))
            for c in names
        }
        out["pacing"] = pace(names, boots, args.beats, args.window)
        out["command"] += " " + out["pacing"]["command_args"]
    Path(args.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    Path(args.out + ".txt").write_text(render(out))
    print(render(out))


def render(out):
    p = out["provenance"]
    lines = [
        "Which dynamic hERG parameters are the centre? (calibration/cipa_fda_optimal_check.py)",
        f"sources: {out['sources']}",
        f"metric: {out['metric']}",
        "",
        f"V (Model-Validation-2018) pars.txt files under results/: {p['V_pars_txt_files']}",
        f"V hERG_fitting_results.zip: {p['V_zip_members']} members of kinds "
        f"{p['V_zip_member_kinds']}, dated {p['V_zip_member_dates'][0]} to "
        f"{p['V_zip_member_dates'][1]}; committed {p['V_zip_commit']}",
        f"V citation of Li 2019 (cpt.1184) added to README: {p['V_citation_commit']}",
        "V AP_simulation/funs/get_pars.R, lines on the hERG point values:",
        *[f"    {ln}" for ln in p["V_get_pars_R_lines"]],
        "validation-drug pars.txt anywhere in FDA/CiPA history (path: blobs):",
        *[
            f"    {k}: {len(v)} version(s)"
            for k, v in out["validation_pars_txt_in_fda_history"].items()
        ],
        "",
        "Baseline, 12 training drugs: where the optimal fit (M pars.txt = our table) sits",
        "(percent of bootstrap r below it) in its own 2017 bootstrap (M) and in the 2018 re-run",
        "(V zip); Mmed = the vector of per-parameter medians of the M bootstrap, same measure",
        f"{'compound':15s} {'=table':>6s} {'M 1x':>6s} {'M 4x':>6s} {'V 1x':>6s} {'V 4x':>6s}"
        f" {'Mmed 1x':>7s} {'Mmed 4x':>7s}",
    ]
    for r in out["training_baseline"]:
        lines.append(
            f"{r['compound']:15s} {str(r['table_equals_M_pars_txt']):>6s} "
            f"{r['pct_in_M_boot_1x']:6.1f} {r['pct_in_M_boot_4x']:6.1f} "
            f"{r['pct_in_V_boot_1x']:6.1f} {r['pct_in_V_boot_4x']:6.1f} "
            f"{r['M_marginal_median_vector_pct_in_M_boot_1x']:7.1f} "
            f"{r['M_marginal_median_vector_pct_in_M_boot_4x']:7.1f}"
        )
    lines += [
        "",
        "16 validation drugs: our row (Li 2019 supplement via X; '=X' our row equals X) vs the",
        "FDA 2018 bootstrap (V zip) and the 2020 refit (L pars.txt); r = Kmax D^n/(D^n+halfmax);",
        "occ = r/(1+r); pctV = percent of V bootstrap fits with smaller r;",
        "V/ours = median r ratio;",
        "L/ours = r of L pars.txt over ours; pctL = L pars.txt inside its own L bootstrap;",
        "Vmed, Lmed = the per-parameter median vector of the V / L bootstrap inside it",
        f"{'compound':14s} {'cipa':5s} {'=X':>3s} {'D':>3s} {'r ours':>9s} {'occ':>5s} "
        f"{'V p50':>9s} {'occV':>5s} {'pctV':>5s} {'V/ours':>6s} {'Vmed':>5s} {'L/ours':>7s} "
        f"{'pctL':>5s} {'Lmed':>5s} {'TMS ours':>8s} {'pred':>5s}",
    ]
    for r in out["validation"]:
        for m in MULTIPLES:
            k = f"{m:g}x"
            d = r[k]
            lines.append(
                f"{r['compound'] if m == 1 else '':14s} {r['cipa'][:5] if m == 1 else '':5s} "
                f"{('y' if r['ours_equals_X_binding_li'] else 'NO') if m == 1 else '':>3s} "
                f"{k:>3s} {_fmt(d['r_ours']):>9s} {d['occupancy_ours']:5.2f} "
                f"{_fmt(d['r_V_boot_p2.5_p50_p97.5'][1]):>9s} {d['occupancy_V_boot_median']:5.2f} "
                f"{d['ours_pct_in_V_boot']:5.1f} {d['r_V_median_over_ours']:6.2f} "
                f"{d['V_marginal_median_vector_pct_in_V_boot']:5.1f} "
                f"{d['r_L_pars_txt'] / d['r_ours']:7.3g} {d['L_pars_txt_pct_in_L_boot']:5.1f} "
                f"{d['L_marginal_median_vector_pct_in_L_boot']:5.1f} "
                + (
                    f"{r['TMS_ours_200_beats']:8.5f} {r['predicted_ours'][:5]:>5s}"
                    if m == 1
                    else ""
                )
            )
    lines += ["", "Per-parameter: our value's percentile in the V bootstrap marginal; V median"]
    lines.append(
        f"{'compound':14s} " + " ".join(f"{k:>18s}" for k in HERG) + "  n=2 bound  Vhalf=-1"
    )
    for r in out["validation"]:
        cells = [
            f"{_fmt(r['ours'][k])}@{r['ours_pct_in_V_boot_marginal'][k]:.0f}%|{_fmt(r['V_boot_median'][k])}"
            for k in HERG
        ]
        lines.append(
            f"{r['compound']:14s} "
            + " ".join(f"{c:>18s}" for c in cells)
            + f"  {r['V_boot_n_at_upper_bound_2']:9d} {r['V_boot_Vhalf_at_bound_-1']:9d}"
        )
    d = next(r for r in out["validation"] if r["compound"] == "disopyramide")
    mode = d["V_boot_mode_n_below_1.5"]
    lines += [
        "",
        f"disopyramide, V bootstrap fits with n < 1.5: {mode['count']} of 2000; Kmax "
        f"{[_fmt(v) for v in mode['Kmax_p2.5_p50_p97.5']]}, n "
        f"{[_fmt(v) for v in mode['n_p2.5_p50_p97.5']]}, halfmax "
        f"{[_fmt(v) for v in mode['halfmax_p2.5_p50_p97.5']]} (p2.5, p50, p97.5); halfmax "
        f"894.6 at the {mode['pct_of_halfmax_894.6']:.1f}th, 44730 at the "
        f"{mode['pct_of_halfmax_44730']:.1f}th percentile of that mode",
        f"disopyramide, V bootstrap fits with {d['V_boot_near_Kmax_n']['rule']}: "
        f"{d['V_boot_near_Kmax_n']['count']}, halfmax (min, p2.5, p50, p97.5, max) "
        f"{[_fmt(v) for v in d['V_boot_near_Kmax_n']['halfmax_min_p2.5_p50_p97.5_max']]}",
        "disopyramide, percentile of r (1x, 4x Cmax) in the V bootstrap with the supplement's "
        "Kmax, n and halfmax = "
        + "; ".join(
            f"{k}: {v[0]:.1f}, {v[1]:.1f}" for k, v in d["r_pct_in_V_boot_by_halfmax"].items()
        ),
        "",
        "TMS published by the FDA for the validation drugs: not in any stored source "
        "(TMS_FDA_published = null).",
    ]
    pc = out.get("pacing")
    if pc:
        lines += [
            "",
            f"Pacing ({pc['command_args']}; {pc['seconds']:.0f} s; control qNet "
            f"{pc['control_qNet']:.6f}): TMS with our table's hERG row vs the central FDA "
            "2018 bootstrap fit (Hill block as the table)",
            f"{'compound':14s} {'boot row':>8s} {'TMS table':>10s} {'pred':>12s} "
            f"{'TMS central':>11s} {'pred':>12s}  central fit Kmax, Ku, n, halfmax, Vhalf",
        ]
        for r in pc["rows"]:
            t, cf = r["table"], r["central_fit"]
            lines.append(
                f"{r['compound']:14s} {r['central_boot_row']:8d} {t['TMS']:10.5f} "
                f"{t['predicted']:>12s} {cf['TMS']:11.5f} {cf['predicted']:>12s}  "
                + ", ".join(_fmt(cf["hERG"][k]) for k in HERG)
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
