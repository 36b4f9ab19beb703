"""The CiPA qNet protocol and torsade metric score (TMS) with CiPAORdv1.0.

Protocol (FDA/CiPA@e881df6766d1067a08b65184d7a320804aef73d6
``AP_simulation/AP_simulation.R``): an endocardial CiPAORdv1.0 cell at CL 2000 ms starts
from the control state at CL 2000 ms with the drug at a fixed free concentration, is
paced ``beats`` beats (the FDA: 1000), and of the last ``window`` beats (the FDA: 250)
the beat with the largest ``max_dv`` (max dV/dt between 30 % and 90 % repolarisation,
:mod:`._biomarkers`; an EAD detector) is kept; when no beat of the window depolarises
(``max_dv`` NaN in every beat) the last beat is kept and the dose counts as a
depolarisation failure. Depolarisation failures are dropped
(FDA/CiPA@4bfb160dd393a8431aab05bd4b4c332aafc18003 ``LOOCV/mycompute_TdP_error.R``:
``df[!is.na(df$max_dv),]``) and the torsade metric score is the mean qNet (C/F) of
the kept beats over the remaining doses of 1, 2, 3, 4 x free Cmax.

Classification with the Li et al. 2019 (Clin Pharmacol Ther 105:466) thresholds for
manual patch-clamp data, 0.0579 and 0.0689 C/F (as used by Lei et al. 2023 BJP,
CardiacModelling/hERG-binding-mechanisms@4fdb8a3 ``src/compare-torsade-metric-scores.py``):
TMS < 0.0579 high, 0.0579 <= TMS < 0.0689 intermediate, TMS >= 0.0689 low.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

THRESHOLDS = (0.0579, 0.0689)  # C/F (Li et al. 2019, manual patch-clamp data)
CLASSES = {2: "high", 1: "intermediate", 0: "low"}
ORDER = ("high", "intermediate", "low")
DOSES = (1.0, 2.0, 3.0, 4.0)  # x free Cmax, the TMS doses


def classify(tms: float) -> str:
    """Risk category of a torsade metric score (C/F); ``"n/a"`` when not finite."""
    if not np.isfinite(tms):
        return "n/a"
    if tms < THRESHOLDS[0]:
        return "high"
    return "intermediate" if tms < THRESHOLDS[1] else "low"


def select_beat(biomarkers: dict, window: int) -> dict:
    """The FDA beat selection over the last ``window`` beats, per cell.

    Arguments:
        biomarkers: per-beat biomarkers ``{name: (B, N)}`` (``pace_cipa`` output),
            with at least ``window`` beats.
        window: number of final beats analysed.

    Returns:
        ``{name: (N,)}``: every biomarker of the kept beat, plus ``kept_beat``
        (0-based index into the B beats), ``depol_failures`` (beats of the window with
        ``max_dv`` NaN), ``ead_beats`` (beats with ``max_dv > 0``) and ``dropped``
        (every beat of the window failed: the dose is a depolarisation failure).
    """
    mdv = np.asarray(biomarkers["max_dv"], float)
    B = mdv.shape[0]
    if not 1 <= window <= B:
        raise ValueError(f"window must be in [1, {B}] (the beats paced), got {window}")
    w = mdv[B - window :]
    nan = np.isnan(w)
    dropped = nan.all(axis=0)
    best = np.argmax(np.where(nan, -np.inf, w), axis=0)
    keep = np.where(dropped, B - 1, B - window + best)
    cols = np.arange(mdv.shape[1])
    out = {k: np.asarray(v)[keep, cols] for k, v in biomarkers.items()}
    out["kept_beat"] = keep
    out["depol_failures"] = nan.sum(axis=0)
    out["ead_beats"] = (np.where(nan, -np.inf, w) > 0).sum(axis=0)
    out["dropped"] = dropped
    return out


@dataclasses.dataclass
class QNetResult:
    """Output of :func:`qnet_protocol`.

    Attributes:
        doses: one row per compound and multiple of Cmax (``compound, set,
            cipa_category, multiple, conc_nM, qNet, kept_beat, max_dv, APD90,
            depol_failures, ead_beats, dropped, status``).
        scores: one row per compound (``compound, set, cipa_category, TMS,
            predicted, correct, doses_used``).
        control: qNet and APD90 of the drug-free cell (kept beat).
        beats, window, seconds: what was run and how long it took (``seconds``:
            the sum over every process that worked on a checkpointed run).
        chunks: one entry per compiled call, ``{beat, seconds, run, load}``:
            beats done after it, its wall time, which process (0, 1, ... for a run
            resumed from a checkpoint) and the 1-min load average after it; the
            first chunk of each process includes compilation.
    """

    doses: Any
    scores: Any
    control: dict
    beats: int
    window: int
    seconds: float
    chunks: list = dataclasses.field(default_factory=list)

    def confusion(self, subset: str | None = None):
        """Confusion matrix (rows: CiPA category, columns: predicted), optionally of
        the ``"training"`` or ``"validation"`` compounds only."""
        return confusion_matrix(self.scores, subset)


def confusion_matrix(scores, subset: str | None = None):
    """Counts of CiPA category (rows) x predicted category (columns, plus ``n/a``)."""
    import pandas as pd

    s = scores if subset is None else scores[scores["set"] == subset]
    cols = list(ORDER) + (["n/a"] if (s["predicted"] == "n/a").any() else [])
    m = pd.crosstab(s["cipa_category"], s["predicted"]).reindex(
        index=list(ORDER), columns=cols, fill_value=0
    )
    m.index.name, m.columns.name = "CiPA", "predicted"
    return m.fillna(0).astype(int)


def check_inputs(compounds: Sequence[str], multiples, beats: int, window: int, chunk) -> list:
    """Validate the protocol inputs (before any compilation); returns lower-case names."""
    from ._cipa import compounds as table

    known = list(table().index)
    names = [str(c).lower() for c in compounds]
    unknown = [c for c in names if c not in known]
    if not names or unknown:
        raise ValueError(f"compounds: unknown {unknown or 'none given'}; known: {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"compounds must be unique, got {list(compounds)}")
    m = list(multiples)
    if not m or not all(isinstance(x, (int, float)) and 0 < x < math.inf for x in m):
        raise ValueError(f"multiples must be positive numbers (x free Cmax), got {m}")
    if not (isinstance(beats, int) and beats >= 1):
        raise ValueError(f"beats must be an integer >= 1, got {beats!r}")
    if not (isinstance(window, int) and 1 <= window <= beats):
        raise ValueError(f"window must be an integer in [1, beats = {beats}], got {window!r}")
    if chunk is not None and not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    return names


def qnet_protocol(
    compounds: Sequence[str],
    multiples: Sequence[float] = DOSES,
    *,
    beats: int = 1000,
    window: int = 250,
    chunk: int | None = None,
    solver=None,
    progress: Callable[[int, float, dict], None] | None = None,
    interim: Callable[[QNetResult], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> QNetResult:
    """Run the CiPA qNet protocol for ``compounds`` at ``multiples`` x free Cmax.

    One batch: a drug-free control cell plus one cell per compound and multiple, all
    paced together by :func:`~twinjax.models.ep.pace_cipa` (float64).

    Arguments:
        compounds: names in the CiPA table (:func:`twinjax.models.ep._cipa.compounds`).
        multiples: multiples of the free Cmax (the TMS uses 1, 2, 3, 4; other
            multiples are reported but the TMS is the mean over those of 1-4 present,
            or over all given when none of 1-4 is).
        beats: beats paced (the FDA: 1000).
        window: final beats analysed by the beat selection (the FDA: 250).
        chunk: beats per compiled call (default ``min(beats, 50)``); ``progress`` is
            called after each with ``(beats_done, seconds, last_beat_biomarkers)``.
        solver: step settings (default :data:`twinjax.models.ep._cipa.CIPA_SOLVER`).
        interim: called after each chunk but the last with the result so far (beat
            selection over the last ``min(window, beats done)`` beats), e.g. to save
            partial results of a long run.
        checkpoint: a ``.npz`` file. After every chunk the whole run's state (every
            cell's state vector, the biomarkers of the last ``window`` beats, status,
            timings) is written there (to a temporary file, then renamed); a later
            call with the same arguments resumes from it and gives the same numbers
            as an uninterrupted run (each chunk starts from the saved state either
            way). A checkpoint of a different run (compounds, multiples, beats,
            window, chunk, solver, dtype) is refused, naming what differs, and is
            never overwritten; so is a file that is not a twinjax qNet checkpoint, and
            one written by another version of twinjax or its libraries (its numbers
            would not continue the same computation).

    Returns:
        A :class:`QNetResult`.
    """
    import jax.numpy as jnp

    from ...solve._fingerprint import environment_hash
    from ._cipa import CiPAORd, compound_params, pace_cipa
    from ._cipa import compounds as table

    names = check_inputs(compounds, multiples, beats, window, chunk)
    mult = np.asarray([float(x) for x in multiples])
    chunk = chunk or min(beats, 50)
    tab = table()
    model = CiPAORd()
    cells = [("control", 0.0, 0.0)]
    pieces = [model.complete({}, dtype=jnp.float64)[0]]
    for c in names:
        conc = float(tab.loc[c, "cmax_free_nM"]) * mult
        pieces.append(model.complete(compound_params(model, c, conc), dtype=jnp.float64)[0])
        cells += [(c, float(x), float(k)) for x, k in zip(mult, conc)]
    params = {
        k: jnp.concatenate([jnp.broadcast_to(pc[k], (jnp.size(pc["D"]),)) for pc in pieces])
        for k in model.param_names
    }
    key = dict(
        format=_CHECKPOINT_FORMAT,
        compounds=names,
        multiples=[float(x) for x in mult],
        beats=int(beats),
        window=int(window),
        chunk=int(chunk),
        solver=repr(solver),
        dtype=str(params["D"].dtype),
        code=environment_hash(),  # library versions and twinjax's sources
    )
    y, done, kept, status, chunks, spent = None, 0, [], None, [], 0.0
    if checkpoint is not None:
        saved = _load_checkpoint(checkpoint, key)
        if saved is not None:
            y = {k: jnp.asarray(v) for k, v in saved["state"].items()}
            done, status, chunks = saved["done"], saved["status"], saved["chunks"]
            kept = [saved["kept"]] if saved["kept"] else []
            spent = sum(c["seconds"] for c in chunks)
    run = 1 + max((c["run"] for c in chunks), default=-1)
    t0 = time.perf_counter()
    res = None
    if done >= beats:  # a finished run's checkpoint: just the result
        last = {k: v[-window:] for k, v in kept[0].items()}
        res = _result(cells, names, mult, tab, last, status, done, spent)
        res.chunks = chunks
    while done < beats:
        nb = min(chunk, beats - done)
        tc = time.perf_counter()
        r = pace_cipa(model, params, nb, y0=y, solver=solver)
        y = r.state
        done += nb
        st = np.asarray(r.status)
        status = st if status is None else np.maximum(status, st)
        bio = {k: np.asarray(v) for k, v in r.biomarkers.items()}
        chunks.append(dict(beat=done, seconds=time.perf_counter() - tc, run=run, load=_loadavg()))
        kept.append(bio)
        # keep only the beats that can still enter the final window
        kept = [{k: np.concatenate([c[k] for c in kept])[-window:] for k in kept[0]}]
        elapsed = spent + time.perf_counter() - t0
        if checkpoint is not None:
            _save_checkpoint(checkpoint, key, y, done, status, kept[0], chunks)
        if done < beats and interim is None:
            if progress is not None:
                progress(done, elapsed, {k: v[-1] for k, v in bio.items()})
            continue
        res = _result(cells, names, mult, tab, kept[0], status, done, elapsed)
        res.chunks = list(chunks)
        if progress is not None:
            progress(done, res.seconds, {k: v[-1] for k, v in bio.items()})
        if interim is not None and done < beats:
            interim(res)
    assert res is not None
    return res


_CHECKPOINT_FORMAT = "twinjax-cipa-qnet-checkpoint-1"


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:  # pragma: no cover - not Linux
        return None


def _load_checkpoint(path, key: dict) -> dict | None:
    """The saved run at ``path`` (None when there is none); refuses another run's."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: np.asarray(z[k]) for k in z.files if k != "meta"}
    except Exception as e:  # not an npz, or no meta entry
        raise ValueError(
            f"checkpoint {path!r} exists but is not a twinjax qNet checkpoint ({e}); "
            "it is left as it is: give a new path"
        ) from e
    if meta.get("key", {}).get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path!r} exists but is not a twinjax qNet checkpoint "
            f"(format {meta.get('key', {}).get('format')!r}); it is left as it is"
        )
    differ = {k: (meta["key"].get(k), v) for k, v in key.items() if meta["key"].get(k) != v}
    if differ:
        what = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"checkpoint {path!r} is from a different run ({what}); it is left as it "
            "is: give a new path or the same arguments"
        )
    state = {k[6:]: v for k, v in arrays.items() if k.startswith("state:")}
    kept = {k[5:]: v for k, v in arrays.items() if k.startswith("kept:")}
    return dict(
        state=state,
        done=int(meta["done"]),
        status=arrays["status"],
        kept=kept,
        chunks=meta["chunks"],
    )


def _save_checkpoint(path, key, y, done, status, kept, chunks) -> None:
    path = os.fspath(path)
    meta = dict(key=key, done=int(done), chunks=chunks)
    arrays = {f"state:{k}": np.asarray(v) for k, v in y.items()}
    arrays.update({f"kept:{k}": np.asarray(v) for k, v in kept.items()})
    arrays["status"] = np.asarray(status)
    tmp = f"{path}.partial-{os.getpid()}"
    arrays["meta"] = np.asarray(json.dumps(meta))
    savez: Any = np.savez  # its stub types every keyword as allow_pickle's bool
    with open(tmp, "wb") as f:
        savez(f, **arrays)
    os.replace(tmp, path)


def _result(cells, names, mult, tab, last, status, done, seconds) -> QNetResult:
    """Beat selection over ``last`` (the final beats paced so far) and the scores."""
    import pandas as pd

    window = len(last["qNet"])
    sel = select_beat(last, window)
    rows = []
    for i, (c, x, conc) in enumerate(cells[1:], start=1):
        rows.append(
            dict(
                compound=c,
                set=str(tab.loc[c, "set"]),
                cipa_category=CLASSES[int(tab.loc[c, "cipa_class"])],
                multiple=x,
                conc_nM=conc,
                qNet=float(sel["qNet"][i]),
                kept_beat=done - window + int(sel["kept_beat"][i]) + 1,  # 1-based
                max_dv=float(sel["max_dv"][i]),
                APD90=float(sel["APD90"][i]),
                depol_failures=int(sel["depol_failures"][i]),
                ead_beats=int(sel["ead_beats"][i]),
                dropped=bool(sel["dropped"][i]) or int(status[i]) != 0,
                status=int(status[i]),
            )
        )
    doses = pd.DataFrame(rows)
    scores = []
    tms_doses = [x for x in mult if x in DOSES] or list(mult)
    for c in names:
        d = doses[(doses["compound"] == c) & doses["multiple"].isin(tms_doses) & ~doses["dropped"]]
        tms = float(d["qNet"].mean()) if len(d) else float("nan")
        cat = CLASSES[int(tab.loc[c, "cipa_class"])]
        pred = classify(tms)
        scores.append(
            dict(
                compound=c,
                set=str(tab.loc[c, "set"]),
                cipa_category=cat,
                TMS=tms,
                predicted=pred,
                correct=pred == cat,
                doses_used=len(d),
            )
        )
    control = dict(
        qNet=float(sel["qNet"][0]),
        APD90=float(sel["APD90"][0]),
        status=int(status[0]),
    )
    return QNetResult(
        doses=doses,
        scores=pd.DataFrame(scores),
        control=control,
        beats=done,
        window=window,
        seconds=seconds,
    )
