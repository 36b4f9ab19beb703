"""qNet and the torsade metric score of the 12 CiPA training drugs with CiPAORdv1.0.

Protocol (after FDA/CiPA@e881df6 ``AP_simulation/AP_simulation.R``): CL 2000 ms,
endocardial cell, start every cell from the FDA control state at CL 2000 ms (no drug
bound) with the drug at 1, 2, 3, 4 x free Cmax, pace ``--beats`` beats (the FDA runs
1000 and analyses the last 250), qNet of the last beat. The FDA keeps the beat of
the last 250 with the largest max dV/dt during repolarisation (an EAD detector);
here the last beat is used, and the qNet of every ``--chunk``-th beat is stored to
judge convergence. Torsade metric score (TMS) = mean qNet over the four doses;
categories by the Li 2019 thresholds (CPT 105:466; as quoted by Lei et al. 2023 BJP,
CardiacModelling/hERG-binding-mechanisms@4fdb8a3:src/compare-torsade-metric-scores.py):
TMS < 0.0579 high, 0.0579 - 0.0689 intermediate, >= 0.0689 low (C/F).

Run: ``python calibration/cipa_qnet.py --beats 100``; writes
``calibration/results/cipa_qnet.json`` after every chunk (so a partial run leaves
results).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from twinjax.models.ep._cipa import CiPAORd, compound_params, compounds, pace_cipa  # noqa: E402

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = (0.0579, 0.0689)
CLASS = {2: "high", 1: "intermediate", 0: "low"}
CONTROL_REFERENCE = {
    "ApPredict TestCipaQNetCalculator (Chaste/ApPredict@11ccea1f)": 0.06967,
    "ApPredict test/data/q_net.txt (Chaste/ApPredict@7200db3d)": 0.0696825,
    "Lei et al. 2023 (CardiacModelling/hERG-binding-mechanisms@4fdb8a3)": 0.06969,
}


def category(tms):
    if not np.isfinite(tms):
        return "n/a"
    return "high" if tms < THRESHOLDS[0] else ("intermediate" if tms < THRESHOLDS[1] else "low")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--beats", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--drugs", nargs="*", default=None)
    ap.add_argument("--doses", nargs="*", type=float, default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--out", default=str(RESULTS / "cipa_qnet.json"))
    args = ap.parse_args()
    model = CiPAORd()
    tab = compounds()
    drugs = args.drugs or list(tab.index)
    doses = np.asarray(args.doses)
    cells = [("control", 0.0)] + [(d, x) for d in drugs for x in doses]
    pieces = [model.complete({}, dtype=jnp.float64)[0]]
    for d in drugs:
        pieces.append(
            model.complete(compound_params(model, d, tab.loc[d, "cmax_free_nM"] * doses))[0]
        )
    n = len(cells)
    params = {
        k: jnp.concatenate(
            [jnp.broadcast_to(pc[k], (len(jnp.atleast_1d(pc["D"])),)) for pc in pieces]
        )
        for k in model.param_names
    }
    assert params["D"].shape == (n,)
    y = None
    history = []
    t0 = time.time()
    done = 0
    while done < args.beats:
        nb = min(args.chunk, args.beats - done)
        r = pace_cipa(model, params, nb, y0=y)
        y = r.state
        done += nb
        last = {k: np.asarray(v[-1]) for k, v in r.biomarkers.items()}
        history.append({"beat": done, "qNet": last["qNet"].tolist()})
        elapsed = time.time() - t0
        print(f"beat {done}: {elapsed:.0f} s, control qNet {last['qNet'][0]:.6f}", flush=True)
        out = {
            "protocol": (
                "CiPAORdv1.0 endo, CL 2000 ms, from the FDA control state, drug at k x free "
                f"Cmax; {done} beats (FDA: 1000); qNet of the last beat (C/F)"
            ),
            "beats": done,
            "elapsed_s": elapsed,
            "solver": "pace_cipa, CIPA_SOLVER (dt_max 0.5 ms, dv_max 0.05 mV, dy_rel 0.01)",
            "control": {
                "qNet": float(last["qNet"][0]),
                "APD90_ms": float(last["APD90"][0]),
                "references": CONTROL_REFERENCE,
            },
            "thresholds_li2019": {"high_below": THRESHOLDS[0], "low_from": THRESHOLDS[1]},
            "drugs": {},
        }
        for d in drugs:
            idx = [i for i, c in enumerate(cells) if c[0] == d]
            q = last["qNet"][idx]
            ok = ~(last["DF"][idx].astype(bool)) & (np.asarray(r.status)[idx] == 0)
            qv = np.where(ok, q, np.nan)
            prev = history[-2]["qNet"] if len(history) > 1 else None
            tms = float(np.mean(qv)) if np.all(ok) else float("nan")
            out["drugs"][d] = {
                "cipa_class": CLASS[int(tab.loc[d, "cipa_class"])],
                "cmax_free_nM": float(tab.loc[d, "cmax_free_nM"]),
                "doses_x_cmax": doses.tolist(),
                "qNet": qv.tolist(),
                "qNet_change_last_chunk": (
                    None if prev is None else [float(q[j] - prev[i]) for j, i in enumerate(idx)]
                ),
                "APD90_ms": last["APD90"][idx].tolist(),
                "EAD": last["EAD"][idx].astype(bool).tolist(),
                "DF": last["DF"][idx].astype(bool).tolist(),
                "TMS": tms,
                "predicted": category(tms),
            }
        out["history"] = [
            {"beat": h["beat"], "qNet": dict(zip([f"{c[0]}@{c[1]:g}" for c in cells], h["qNet"]))}
            for h in history
        ]
        agree = [v["predicted"] == v["cipa_class"] for v in out["drugs"].values()]
        out["correct"] = f"{sum(agree)}/{len(agree)}"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(
        json.dumps(
            {d: (v["TMS"], v["predicted"], v["cipa_class"]) for d, v in out["drugs"].items()},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
