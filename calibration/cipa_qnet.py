"""The CiPA qNet protocol on the 28 CiPA compounds with CiPAORdv1.0, and the confusion matrix.

Protocol (:mod:`twinjax.models.ep._cipa_protocol`, after FDA/CiPA@e881df6
``AP_simulation/AP_simulation.R``): endocardial CiPAORdv1.0 at CL 2000 ms, every cell
from the FDA control state at CL 2000 ms with the drug at 1, 2, 3, 4 x free Cmax;
``--beats`` beats (the FDA: 1000), of the last ``--window`` (the FDA: 250) the beat with
the largest max dV/dt between 30 % and 90 % repolarisation is kept; depolarisation
failures are dropped; torsade metric score (TMS) = mean qNet over the doses; Li et
al. 2019 thresholds: TMS < 0.0579 high, 0.0579 - 0.0689 intermediate, >= 0.0689 low.

Run: ``python calibration/cipa_qnet.py --beats 1000 --window 250``; writes
``calibration/results/cipa_qnet.json`` (every dose and compound, the command, the
time) and ``calibration/results/cipa_confusion.txt`` (confusion matrices), and after
every chunk ``calibration/results/cipa_qnet_progress.json`` (last-beat qNet per cell);
with ``--interim`` also the result so far after every chunk (``*_interim.*``).

A 1000-beat run takes hours on a 2-core machine: with ``--checkpoint PATH.npz`` the
run's state is saved after every chunk and the same command resumes from it (the
numbers are those of an uninterrupted run; ``qnet_protocol``'s ``checkpoint``). The
per-chunk timings, with the process and load average of each, are kept in the result.
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

from twinjax.models.ep._cipa import compounds  # noqa: E402
from twinjax.models.ep._cipa_protocol import THRESHOLDS, qnet_protocol  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CONTROL_REFERENCE = {
    "ApPredict TestCipaQNetCalculator (Chaste/ApPredict@11ccea1f)": 0.06967,
    "ApPredict test/data/q_net.txt (Chaste/ApPredict@7200db3d)": 0.0696825,
    "Lei et al. 2023 (CardiacModelling/hERG-binding-mechanisms@4fdb8a3)": 0.06969,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--beats", type=int, default=1000)
    ap.add_argument("--window", type=int, default=250)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--compounds", nargs="*", default=None)
    ap.add_argument("--doses", nargs="*", type=float, default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--out", default=str(RESULTS / "cipa_qnet.json"))
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="a .npz file: save the run after every chunk and resume from it",
    )
    ap.add_argument(
        "--interim",
        action="store_true",
        help="after every chunk, write <out>_interim.json and cipa_confusion_interim.txt",
    )
    args = ap.parse_args()
    names = args.compounds or list(compounds().index)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prog_path = out.with_name(out.stem + "_progress.json")
    cells = ["control"] + [f"{c}@{x:g}" for c in names for x in args.doses]
    history = []
    argv = ["calibration/cipa_qnet.py"] + sys.argv[1:]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.checkpoint and prog_path.exists():  # resuming: keep the earlier chunks' record
        earlier = json.loads(prog_path.read_text())
        if earlier.get("command") == command and earlier.get("cells") == cells:
            history, started = earlier["history"], earlier["started"]

    def progress(done, seconds, last):
        history[:] = [h for h in history if h["beat"] < done]
        history.append(dict(beat=done, seconds=round(seconds, 1), qNet=last["qNet"].tolist()))
        print(f"beat {done}: {seconds:.0f} s, control qNet {last['qNet'][0]:.6f}", flush=True)
        prog_path.write_text(
            json.dumps(dict(command=command, started=started, cells=cells, history=history))
        )

    def write(res, final):
        # convergence: change of each cell's last-beat qNet over the last chunk
        change = (
            np.asarray(history[-1]["qNet"]) - np.asarray(history[-2]["qNet"])
            if len(history) > 1
            else np.full(len(cells), np.nan)
        )
        doses = res.doses.assign(qNet_change_last_chunk=change[1:])
        sc = res.scores
        summary = {
            s: f"{int(sc[sc['set'] == s]['correct'].sum())}/{int((sc['set'] == s).sum())}"
            for s in ("training", "validation")
        }
        state = "final" if final else f"INTERIM: {res.beats} of {args.beats} beats done"
        record = dict(
            command=command,
            state=state,
            started=started,
            finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            elapsed_s=round(res.seconds, 1),
            machine=f"{platform.machine()}, {platform.processor() or 'cpu'}; "
            f"jax {jax.__version__} {jax.default_backend()}",
            protocol=(
                f"CiPAORdv1.0 endo, CL 2000 ms, from the FDA control state; {res.beats} beats "
                f"(FDA: 1000), beat of the last {res.window} (FDA: 250) with the largest "
                "max_dv (max dV/dt between 30 % and 90 % repolarisation); depolarisation "
                "failures dropped; TMS = mean qNet (C/F) over 1-4 x free Cmax"
            ),
            solver="pace_cipa, CIPA_SOLVER (dt_max 0.5 ms, dv_max 0.05 mV, dy_rel 0.01), float64",
            thresholds_li2019=dict(high_below=THRESHOLDS[0], low_from=THRESHOLDS[1]),
            control=dict(res.control, references=CONTROL_REFERENCE),
            correct=summary,
            scores=sc.to_dict(orient="records"),
            doses=doses.to_dict(orient="records"),
            confusion={
                k: res.confusion(None if k == "all" else k).to_dict()
                for k in ("all", "training", "validation")
            },
            chunk_history=[dict(beat=h["beat"], seconds=h["seconds"]) for h in history],
            chunks=[
                dict(
                    c,
                    seconds=round(c["seconds"], 2),
                    first_of_process=k == 0 or c["run"] != res.chunks[k - 1]["run"],
                )
                for k, c in enumerate(res.chunks)
            ],
            processes=1 + max((c["run"] for c in res.chunks), default=0),
        )
        target = out if final else out.with_name(out.stem + "_interim.json")
        target.write_text(json.dumps(record, indent=1))
        lines = [
            f"# {command}",
            f"# {state}",
            f"# {started} - {record['finished']}, {res.seconds:.0f} s; {res.beats} beats, "
            f"window {res.window}",
            f"# control qNet {res.control['qNet']:.6f} C/F",
            f"# correct: training {summary['training']}, validation {summary['validation']}",
            "",
        ]
        for k in ("all", "training", "validation"):
            lines += [f"## {k} (rows: CiPA category, columns: predicted)", ""]
            lines += [res.confusion(None if k == "all" else k).to_string(), ""]
        cols = ["compound", "set", "cipa_category", "TMS", "predicted", "correct", "doses_used"]
        lines += ["## torsade metric scores (C/F)", "", sc[cols].to_string(index=False), ""]
        name = "cipa_confusion.txt" if final else "cipa_confusion_interim.txt"
        target.with_name(name).write_text("\n".join(lines))
        return lines

    res = qnet_protocol(
        names,
        args.doses,
        beats=args.beats,
        window=args.window,
        chunk=args.chunk,
        progress=progress,
        interim=(lambda r: write(r, False)) if args.interim else None,
        checkpoint=args.checkpoint,
    )
    lines = write(res, True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
