"""The uncertainty version of the CiPA classification: a probability per risk class.

Two parts (``twinjax.models.ep._uncertainty``):

1. Hill refit check: every (compound, current) Hill fit of ``cipa_compounds.csv`` is
   refitted by least squares (the FDA's model and bounds) to the published block data
   it came from (``twinjax/models/ep/cipa_data/hill_block.csv``), without resampling.
   Writes ``calibration/results/cipa_hill_refit.csv``: table vs refit IC50 / h and
   the block (%) each gives at 1 and 4 x free Cmax.
2. Uncertainty run: ``--samples`` samples per compound (rows of the FDA's bootstrap
   hERG fits; bootstrap refits of the Hill IC50 / h), all samples x 1-4 x Cmax (plus a
   control) in one batch, ``--beats`` beats, beat selection over the last
   ``--window``; and the point protocol (table values) on the same compounds with the
   same beats, for comparison. Writes ``calibration/results/cipa_uncertainty.json``
   (command, time, probabilities, point TMS), ``cipa_uncertainty.csv``
   (probabilities and TMS percentiles per compound), ``cipa_uncertainty_samples.csv``
   and ``cipa_uncertainty.png`` (probability bars).

Run: ``python calibration/cipa_uncertainty.py --compounds dofetilide clarithromycin
--samples 10 --beats 100 --window 25`` (``--refit-only`` for part 1 alone; ``--tag T``
writes ``cipa_uncertainty_T.*``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from twinjax.models.ep import _uncertainty as U  # noqa: E402
from twinjax.models.ep._cipa import compounds  # noqa: E402
from twinjax.models.ep._cipa_protocol import THRESHOLDS, qnet_protocol  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def refit_check():
    tab = compounds()
    data = U.block_data()
    fits = U.hill_bootstrap(data, 0)
    rows = []
    for (c, ch), (ic50, h) in fits.items():
        ti, th = float(tab.loc[c, f"{ch}_IC50"]), float(tab.loc[c, f"{ch}_h"])
        cmax = float(tab.loc[c, "cmax_free_nM"])
        row = dict(
            compound=c,
            set=tab.loc[c, "set"],
            channel=ch,
            n_points=int(((data["compound"] == c) & (data["channel"] == ch)).sum()),
            IC50_table_nM=ti,
            h_table=th,
            IC50_refit_nM=float(ic50[0]),
            h_refit=float(h[0]),
        )
        for m in (1, 4):
            x = m * cmax
            row[f"block_pct_{m}x_table"] = 100 * (1 - 1 / (1 + (x / ti) ** th))
            row[f"block_pct_{m}x_refit"] = 100 * (1 - 1 / (1 + (x / ic50[0]) ** h[0]))
        rows.append(row)
    df = pd.DataFrame(rows)
    df["IC50_rel_diff"] = df["IC50_refit_nM"] / df["IC50_table_nM"] - 1
    df["h_diff"] = df["h_refit"] - df["h_table"]
    df["block_pp_max_diff"] = np.maximum(
        (df["block_pct_1x_refit"] - df["block_pct_1x_table"]).abs(),
        (df["block_pct_4x_refit"] - df["block_pct_4x_table"]).abs(),
    )
    df.to_csv(RESULTS / "cipa_hill_refit.csv", index=False, float_format="%.6g")
    summary = {}
    for s in ("training", "validation"):
        d = df[df["set"] == s]
        summary[s] = dict(
            fits=len(d),
            max_abs_IC50_rel_diff=float(d["IC50_rel_diff"].abs().max()),
            max_abs_h_diff=float(d["h_diff"].abs().max()),
            max_block_pp_diff_1_4x_cmax=float(d["block_pp_max_diff"].max()),
            fits_IC50_within_1pct=int((d["IC50_rel_diff"].abs() < 0.01).sum()),
        )
    print(json.dumps(summary, indent=1))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compounds", nargs="*", default=None)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beats", type=int, default=1000)
    ap.add_argument("--window", type=int, default=250)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--refit-only", action="store_true")
    ap.add_argument("--tag", default="", help="write cipa_uncertainty_<tag>.* instead")
    ap.add_argument(
        "--point-from",
        default=None,
        help="take the point TMS from this cipa_qnet.py result (same beats and window "
        "required) instead of running the point protocol",
    )
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    refit = refit_check()
    if args.refit_only:
        return
    names = args.compounds or list(compounds().index)
    argv = ["calibration/cipa_uncertainty.py"] + sys.argv[1:]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    stem = "cipa_uncertainty" + (f"_{args.tag}" if args.tag else "")

    def progress(done, seconds):
        print(f"uncertainty beat {done}/{args.beats}: {seconds:.0f} s", flush=True)

    t = time.perf_counter()
    samples = U.draw_samples(names, args.samples, args.seed)
    draw_s = time.perf_counter() - t
    u = U.qnet_uncertainty(
        samples=samples,
        beats=args.beats,
        window=args.window,
        chunk=args.chunk,
        progress=progress,
    )
    if args.point_from:
        ref = json.loads(Path(args.point_from).read_text())
        if f"--beats {args.beats} --window {args.window}" not in ref["command"]:
            raise SystemExit(f"{args.point_from} was run as {ref['command']!r}")
        point_scores = pd.DataFrame(ref["scores"])
        point_s, point_src = None, f"{args.point_from} ({ref['command']})"
    else:
        point = qnet_protocol(names, beats=args.beats, window=args.window, chunk=args.chunk)
        point_scores, point_s, point_src = point.scores, point.seconds, "run here"
    probs = u.probabilities.merge(
        point_scores[["compound", "TMS", "predicted"]].rename(
            columns={"TMS": "TMS_point", "predicted": "predicted_point"}
        ),
        on="compound",
    )
    probs.to_csv(RESULTS / f"{stem}.csv", index=False, float_format="%.6g")
    u.samples.to_csv(RESULTS / f"{stem}_samples.csv", index=False, float_format="%.6g")
    U.plot_probabilities(
        probs,
        RESULTS / f"{stem}.png",
        f"CiPA uncertainty: {args.samples} samples/compound, {args.beats} beats",
    )
    record = dict(
        command=command,
        started=started,
        finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        machine=f"{platform.machine()}; jax {jax.__version__} {jax.default_backend()}",
        protocol=(
            f"CiPAORdv1.0 endo, CL 2000 ms, {args.beats} beats (FDA: 1000), beat selection "
            f"over the last {args.window} (FDA: 250); TMS = mean qNet over 1-4 x free Cmax; "
            f"{args.samples} samples per compound (FDA: 2000), seed {args.seed}"
        ),
        method=U.__doc__,
        thresholds_li2019=dict(high_below=THRESHOLDS[0], low_from=THRESHOLDS[1]),
        cells_in_batch=1 + len(samples) * 4,
        seconds=dict(draw_samples=draw_s, uncertainty_run=u.seconds, point_run=point_s),
        point_protocol=point_src,
        control=u.control,
        hill_refit_check=refit,
        probabilities=probs.to_dict(orient="records"),
        dropped_doses=int(u.doses["dropped"].sum()),
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    cols = ["compound", "cipa_category", "P_high", "P_intermediate", "P_low", "TMS_p2.5",
            "TMS_p50", "TMS_p97.5", "TMS_point", "predicted_point"]  # fmt: skip
    print(probs[cols].to_string(index=False))


if __name__ == "__main__":
    main()
