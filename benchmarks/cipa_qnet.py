"""Benchmark: the CiPA qNet protocol, 28 compounds x 4 concentrations in one batched run.

Protocol (``twinjax.models.ep._cipa_protocol.qnet_protocol``, after FDA/CiPA@e881df6
``AP_simulation/AP_simulation.R``): 113 endocardial CiPAORdv1.0 cells (a drug-free
control plus the 28 CiPA compounds at 1, 2, 3, 4 x free Cmax, dynamic hERG binding and
Hill block of the other currents) paced together at CL 2000 ms from the FDA control
state by ``pace_cipa`` (second-order Rush-Larsen + exponential Markov step, float64,
``CIPA_SOLVER``), ``--beats`` beats (the FDA: 1000), beat selection over the last
``--window`` (the FDA: 250), torsade metric score and classification.

Timing: wall time of the batched run (compilation included; the first chunk's excess
over the mean later chunk is reported as the compile estimate) and the steady time per
model-beat. Baseline, in the same process: the same pacing one model at a time
(``pace_cipa`` on one cell, the same compiled program for every model) on
``--baseline-models`` cells of the batch for ``--baseline-beats`` beats each, compile
timed apart; its steady time per model-beat is extrapolated to 113 models x
``--beats`` beats (stated as extrapolated in the JSON). The classification is compared
with ``calibration/results/cipa_qnet.json`` (the committed 28-compound run).

The 2-core CPU is shared with other work while this runs: numbers are indicative.

A 1000-beat run takes hours here: ``--checkpoint PATH.npz`` saves the batched run
after every chunk and resumes it (``qnet_protocol(checkpoint=...)``); the batched
timing is then the sum over the processes that ran it, from the per-chunk record
(each process's first chunk includes its compilation; steady time per model-beat
from the other chunks). The same checkpoint as ``calibration/cipa_qnet.py
--checkpoint`` can be given (same compounds, doses, beats, window, chunk): a finished
one is read, not re-run, and its chunk timings are used.

Usage: python benchmarks/cipa_qnet.py [--beats 1000 --window 250] [--checkpoint F] [--quick]
(--quick: 2 compounds, 4 beats, printed only; otherwise writes
benchmarks/results/cipa_qnet.json)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _common import machine_info, setup_precision, write_json

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "calibration" / "results" / "cipa_qnet.json"


def _load():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:  # pragma: no cover
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beats", type=int, default=1000)
    ap.add_argument("--window", type=int, default=250)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--baseline-models", type=int, default=3)
    ap.add_argument("--baseline-beats", type=int, default=3)
    ap.add_argument("--checkpoint", default=None, help="a .npz file to save to / resume from")
    ap.add_argument("--quick", action="store_true", help="2 compounds, 4 beats, printed only")
    args = ap.parse_args()
    dtype_name = setup_precision(False)

    import jax.numpy as jnp
    import numpy as np

    from twinjax.models.ep._cipa import CIPA_SOLVER, CiPAORd, compound_params, pace_cipa
    from twinjax.models.ep._cipa import compounds as table
    from twinjax.models.ep._cipa_protocol import DOSES, THRESHOLDS, qnet_protocol

    tab = table()
    names = ["dofetilide", "verapamil"] if args.quick else list(tab.index)
    beats, window = (4, 2) if args.quick else (args.beats, args.window)
    chunk = min(args.chunk, beats)
    argv = ["benchmarks/cipa_qnet.py"] + sys.argv[1:]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = _load()
    model = CiPAORd()

    # ---- baseline: one model at a time (same cells as the batch, same steps)
    cells = [("control", 0.0)] + [
        (c, float(tab.loc[c, "cmax_free_nM"]) * m) for c in names for m in DOSES
    ]
    pick = np.linspace(0, len(cells) - 1, max(1, args.baseline_models)).round().astype(int)
    base_rows = []
    for i in pick:
        c, conc = cells[i]
        p = {} if c == "control" else compound_params(model, c, jnp.asarray(conc))
        t = time.perf_counter()
        r = pace_cipa(model, p, 1)  # trace + compile + one beat
        float(r.biomarkers["qNet"][-1])
        first = time.perf_counter() - t
        t = time.perf_counter()
        qs, steps = [], []
        for _ in range(args.baseline_beats):  # the compiled 1-beat program, beat by beat
            r = pace_cipa(model, p, 1, y0=r.state)
            qs.append(float(r.biomarkers["qNet"][-1]))
            steps.append(float(r.biomarkers["steps"][-1]))
        q = np.asarray(qs)
        steady = time.perf_counter() - t
        base_rows.append(
            dict(
                cell=f"{c}@{conc:g} nM",
                first_call_1_beat_s=first,
                beats=args.baseline_beats,
                steady_s=steady,
                s_per_model_beat=steady / args.baseline_beats,
                steps_per_beat=float(np.mean(steps)),
                qNet_last=float(q[-1]),
            )
        )
        print("baseline", base_rows[-1], flush=True)
    base_per = float(np.mean([r["s_per_model_beat"] for r in base_rows]))

    # ---- batched: every cell in one batch
    def progress(done, seconds, last):
        print(f"beat {done}/{beats}: {seconds:.0f} s, load {_load()}", flush=True)

    res = qnet_protocol(
        names,
        DOSES,
        beats=beats,
        window=window,
        chunk=chunk,
        progress=progress,
        checkpoint=None if args.quick else args.checkpoint,
    )
    n_models = len(cells)
    wall = res.seconds
    # per-chunk record: each process's first chunk includes its compilation
    chunks = res.chunks
    first = [k == 0 or c["run"] != chunks[k - 1]["run"] for k, c in enumerate(chunks)]
    beats_in = [c["beat"] - (chunks[k - 1]["beat"] if k else 0) for k, c in enumerate(chunks)]
    steady = [(c["seconds"], b) for c, b, f in zip(chunks, beats_in, first) if not f]
    if steady:
        steady_pb = sum(s for s, _ in steady) / sum(b for _, b in steady)
    else:
        steady_pb = chunks[0]["seconds"] / beats_in[0]
    compile_est = sum(
        max(c["seconds"] - steady_pb * b, 0.0) for c, b, f in zip(chunks, beats_in, first) if f
    )
    steady_total = wall - compile_est
    batch_per = steady_total / (n_models * beats)
    loads = [c["load"] for c in chunks if c.get("load") is not None]
    base_extrap = base_per * n_models * beats

    # ---- classification against the committed 28-compound run
    sc = res.scores
    match = None
    if not args.quick and REFERENCE.exists():
        ref = json.loads(REFERENCE.read_text())
        ref_pred = {s["compound"]: s["predicted"] for s in ref["scores"]}
        ref_tms = {s["compound"]: s["TMS"] for s in ref["scores"]}
        diff = [c for c, p in zip(sc["compound"], sc["predicted"]) if ref_pred.get(c) != p]
        match = dict(
            reference=str(REFERENCE.relative_to(ROOT)),
            reference_command=ref.get("command"),
            same_protocol=ref.get("command", "").find(f"--beats {beats} --window {window}") >= 0,
            identical_predictions=not diff,
            differing_compounds=diff,
            max_abs_TMS_difference=float(
                max(abs(t - ref_tms[c]) for c, t in zip(sc["compound"], sc["TMS"]))
            ),
        )
    summary_correct = {
        s: f"{int(sc[sc['set'] == s]['correct'].sum())}/{int((sc['set'] == s).sum())}"
        for s in ("training", "validation")
    }
    payload = dict(
        benchmark="cipa_qnet",
        command=command,
        started=started,
        finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        protocol=dict(
            model="ep.CiPAORd(celltype='endo') (CiPAORdv1.0, dynamic hERG binding)",
            cells=f"control + {len(names)} compounds x multiples {list(DOSES)} of free Cmax "
            f"= {n_models} models in one batch",
            beats=beats,
            window=window,
            fda_protocol="1000 beats, last 250 analysed",
            beats_note=(
                "as the FDA"
                if beats == 1000
                else f"{beats} beats (not the FDA's 1000): chosen to fit the time on the "
                "loaded 2-core development machine"
            ),
            chunk_beats=chunk,
            solver=f"pace_cipa, CIPA_SOLVER (dt_max {CIPA_SOLVER.dt_max} ms, dv_max "
            f"{CIPA_SOLVER.dv_max} mV, dy_rel {CIPA_SOLVER.dy_rel}), float64",
            baseline=f"pace_cipa on one model at a time: {len(pick)} of the {n_models} "
            f"models, {args.baseline_beats} beats each after a 1-beat compile call; "
            "its mean steady time per model-beat x models x beats is an EXTRAPOLATION, "
            "not a measured full run",
            note="2-core CPU shared with concurrent work: indicative numbers",
        ),
        quick=args.quick,
        dtype=dtype_name,
        machine=machine_info(),
        load_average_1min=dict(before=load_before, after=_load()),
        batched=dict(
            n_models=n_models,
            beats=beats,
            wall_s=wall,
            compile_estimate_s=compile_est,
            steady_s=steady_total,
            s_per_model_beat=batch_per,
            model_beats_per_s=1.0 / batch_per,
            processes=1 + max(c["run"] for c in chunks),
            load_average_1min_over_chunks=dict(
                min=min(loads, default=None),
                median=float(np.median(loads)) if loads else None,
                max=max(loads, default=None),
            ),
            chunks=[
                dict(c, seconds=round(c["seconds"], 2), first_of_process=f)
                for c, f in zip(chunks, first)
            ],
        ),
        baseline_one_at_a_time=dict(
            rows=base_rows,
            s_per_model_beat=base_per,
            extrapolated_s=base_extrap,
            extrapolated_for=f"{n_models} models x {beats} beats",
        ),
        speedup_batched_vs_one_at_a_time=base_per / batch_per,
        control=res.control,
        thresholds_li2019=dict(high_below=THRESHOLDS[0], low_from=THRESHOLDS[1]),
        correct=summary_correct,
        classification_vs_committed=match,
        confusion={
            k: res.confusion(None if k == "all" else k).to_dict()
            for k in ("all", "training", "validation")
        },
        scores=sc.to_dict(orient="records"),
    )
    print(
        f"batched: {wall:.0f} s for {n_models} x {beats} model-beats "
        f"({batch_per * 1e3:.1f} ms per model-beat steady); one at a time: "
        f"{base_per * 1e3:.1f} ms per model-beat; ratio {base_per / batch_per:.1f}"
    )
    print("correct", summary_correct, "match", match)
    if args.quick:
        return
    print(write_json("cipa_qnet.json", payload))


if __name__ == "__main__":
    main()
