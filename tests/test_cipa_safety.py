"""The CiPA qNet protocol (issue #19 item 3) in `twinjax safety`: beat selection, torsade
metric score, classification, confusion matrix, spec checks, and a short end-to-end run.

The full 28-compound classification is the committed calibration result
(calibration/results/cipa_qnet.json, made by calibration/cipa_qnet.py), not a test: it
takes hours. Here the machinery is checked on synthetic inputs and on a 2-beat run.
"""

import json
import pathlib
import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest

from twinjax.models.ep import _cipa_protocol as cp
from twinjax.trial import SafetyTrial, SpecError

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "cardiac_safety_cipa.toml"


def test_classify_uses_the_li2019_thresholds():
    assert cp.THRESHOLDS == (0.0579, 0.0689)
    assert cp.classify(0.0578) == "high"
    assert cp.classify(0.0579) == "intermediate"  # high only below 0.0579
    assert cp.classify(0.0688) == "intermediate"
    assert cp.classify(0.0689) == "low"  # low from 0.0689
    assert cp.classify(float("nan")) == "n/a"


def test_select_beat_keeps_the_largest_max_dv_of_the_window_and_drops_failures():
    nan = np.nan
    # 5 beats x 3 cells; window = last 3 beats
    max_dv = np.array(
        [
            [9.0, 9.0, 9.0],  # outside the window: ignored
            [-0.4, nan, nan],
            [0.5, nan, nan],  # cell 0: an EAD beat (max_dv > 0) is the one kept
            [-0.3, -0.2, nan],  # cell 1: the only beat that repolarised
            [-0.35, nan, nan],  # cell 2: no beat of the window depolarised
        ]
    )
    qnet = np.arange(15.0).reshape(5, 3)
    sel = cp.select_beat({"max_dv": max_dv, "qNet": qnet}, window=3)
    assert sel["kept_beat"].tolist() == [2, 3, 4]  # cell 2: the last beat
    assert sel["qNet"].tolist() == [6.0, 10.0, 14.0]
    assert sel["dropped"].tolist() == [False, False, True]
    assert sel["depol_failures"].tolist() == [0, 2, 3]
    assert sel["ead_beats"].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="window must be in \\[1, 5\\]"):
        cp.select_beat({"max_dv": max_dv, "qNet": qnet}, window=6)


def test_confusion_matrix_counts_categories():
    scores = pd.DataFrame(
        dict(
            compound=list("abcde"),
            set=["training"] * 3 + ["validation"] * 2,
            cipa_category=["high", "high", "low", "intermediate", "low"],
            predicted=["high", "intermediate", "low", "intermediate", "n/a"],
        )
    )
    m = cp.confusion_matrix(scores)
    assert list(m.index) == ["high", "intermediate", "low"]
    assert list(m.columns) == ["high", "intermediate", "low", "n/a"]
    assert m.loc["high", "high"] == 1 and m.loc["high", "intermediate"] == 1
    assert m.loc["low", "n/a"] == 1 and int(m.values.sum()) == 5
    t = cp.confusion_matrix(scores, "training")
    assert int(t.values.trace()) == 2 and "n/a" not in t.columns


def _spec(**change):
    d = tomllib.loads(EXAMPLE.read_text())
    d["safety"].update(change)
    return d


def test_cipa_spec_reads_the_example():
    st = SafetyTrial.from_toml(EXAMPLE)
    assert st.protocol == "cipa" and st.multiples == (1.0, 2.0, 3.0, 4.0)
    assert (st.cipa_beats, st.cipa_window) == (1000, 250)
    st = SafetyTrial.from_dict({"safety": {"protocol": "cipa", "compounds": ["Astemizole"]}})
    assert st.compounds == ("astemizole",) and st.multiples == (1.0, 2.0, 3.0, 4.0)
    assert SafetyTrial().multiples == (1.0, 10.0, 30.0)  # the population default


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(protocol="qnet"), "protocol must be one of \\['population', 'cipa', 'exposure'\\]"),
        (dict(compounds=["aspirinx"]), "unknown \\['aspirinx'\\]"),
        (dict(cipa_beats=0), "cipa_beats must be an integer >= 1"),
        (dict(cipa_window=1001), "cipa_window must be <= cipa_beats = 1000"),
        (dict(cipa_window=2.5), "cipa_window must be an integer"),
        (dict(n=10), "\\[safety\\].n: n is read only by protocol = 'population'"),
        (dict(drug_beats=10), "drug_beats is read only by protocol = 'population'"),
    ],
)
def test_cipa_spec_errors_name_the_key(change, match):
    with pytest.raises(SpecError, match=match):
        SafetyTrial.from_dict(_spec(**change))


def test_population_spec_refuses_cipa_keys():
    with pytest.raises(SpecError, match="cipa_beats is read only by protocol = 'cipa'"):
        SafetyTrial.from_dict({"safety": {"cipa_beats": 10}})


def test_validation_compound_is_not_in_the_population_table():
    with pytest.raises(SpecError, match="unknown \\['astemizole'\\]"):
        SafetyTrial.from_dict({"safety": {"compounds": ["astemizole"]}})


@pytest.mark.slow
def test_cli_cipa_protocol_writes_qnet_risk_and_confusion(tmp_path):
    """`twinjax safety --protocol cipa`: a 2-beat run of one compound at two multiples."""

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "twinjax.cli", "safety", *a],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip

    bad = run(str(EXAMPLE), "--n", "5", "--out", str(tmp_path / "bad"))
    said = " ".join(bad.stdout.split())  # the console wraps long lines
    assert bad.returncode == 2 and "n is read only by protocol" in said, bad.stdout
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "c"
    r = run(str(EXAMPLE), "--compounds", "chlorpromazine", "--multiples", "1,4",
            "--cipa-beats", "2", "--cipa-window", "1", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    q = pd.read_csv(out / "qnet.csv")
    assert q["multiple"].tolist() == [1.0, 4.0] and (q["kept_beat"] == 2).all()
    # chlorpromazine blocks hERG: qNet below the control's and falling with dose
    rec = json.loads((out / "safety.json").read_text())
    control = rec["control"]["qNet"]
    assert control == pytest.approx(0.0697, rel=0.01)
    assert control > q["qNet"][0] > q["qNet"][1] > 0.06
    risk = pd.read_csv(out / "risk.csv")
    assert risk.loc[0, "TMS"] == pytest.approx(q["qNet"].mean(), rel=1e-12)
    assert risk.loc[0, "predicted"] == cp.classify(risk.loc[0, "TMS"])
    m = pd.read_csv(out / "confusion.csv", index_col=0)
    assert int(m.values.sum()) == 1 and m.loc["intermediate"].sum() == 1
    assert rec["spec"]["cipa_beats"] == 2 and rec["spec"]["protocol"] == "cipa"
    assert (out / "safety.png").stat().st_size > 1000


class _Stop(Exception):
    pass


def test_qnet_protocol_resumes_from_its_checkpoint_with_the_same_numbers(tmp_path):
    """A long protocol run interrupted after a chunk resumes from the checkpoint and
    gives exactly the numbers of an uninterrupted run; another run's checkpoint and
    a file that is not a checkpoint are refused and left as they are."""
    kw = dict(multiples=[1.0, 4.0], beats=4, window=2, chunk=2)
    whole = cp.qnet_protocol(["dofetilide"], **kw)

    ck = tmp_path / "run.npz"

    def stop_after_first_chunk(done, seconds, last):
        raise _Stop

    with pytest.raises(_Stop):
        cp.qnet_protocol(["dofetilide"], checkpoint=ck, progress=stop_after_first_chunk, **kw)
    assert ck.exists()
    seen = []
    resumed = cp.qnet_protocol(
        ["dofetilide"], checkpoint=ck, progress=lambda d, s, last: seen.append(d), **kw
    )
    assert seen == [4]  # only the second chunk was paced
    assert [c["run"] for c in resumed.chunks] == [0, 1]
    assert [c["beat"] for c in resumed.chunks] == [2, 4]
    cols = ["qNet", "APD90", "max_dv", "kept_beat", "status"]
    np.testing.assert_array_equal(resumed.doses[cols].to_numpy(), whole.doses[cols].to_numpy())
    assert resumed.control == whole.control
    # a finished checkpoint gives the result without pacing
    again = cp.qnet_protocol(["dofetilide"], checkpoint=ck, **kw)
    np.testing.assert_array_equal(again.doses[cols].to_numpy(), whole.doses[cols].to_numpy())

    before = ck.read_bytes()
    with pytest.raises(ValueError, match=r"different run \(window: saved 2, now 3"):
        cp.qnet_protocol(["dofetilide"], checkpoint=ck, **{**kw, "window": 3})
    assert ck.read_bytes() == before
    from twinjax.solve import _fingerprint

    real = _fingerprint.environment_hash
    _fingerprint.environment_hash = lambda: "another twinjax"
    try:
        with pytest.raises(ValueError, match=r"different run \(code: saved"):
            cp.qnet_protocol(["dofetilide"], checkpoint=ck, **kw)
    finally:
        _fingerprint.environment_hash = real
    assert ck.read_bytes() == before
    notes = tmp_path / "notes.npz"
    notes.write_text("my notes")
    with pytest.raises(ValueError, match="not a twinjax qNet checkpoint"):
        cp.qnet_protocol(["dofetilide"], checkpoint=notes, **kw)
    assert notes.read_text() == "my notes"
