"""Strict trial specifications: every value checked before anything is simulated, all
problems reported at once, safe arm names, and command-line errors without tracebacks."""

import copy
import os
import pathlib
import time
import tomllib

import pytest
from typer.testing import CliRunner

import twinjax
import twinjax.cli as cli
from twinjax.trial import Arm, Endpoint, Inclusion, SafetyTrial, SpecError, Trial, _spec

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pkpd_trial.toml"
SAFETY = ROOT / "examples" / "cardiac_safety.toml"
BASE = tomllib.loads(EXAMPLE.read_text())


def _spec_dict(**small):
    spec = copy.deepcopy(BASE)
    spec["population"]["n_per_arm"] = 10
    spec["statistics"]["power_sizes"] = [3, 6]
    return spec


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if anything is simulated."""
    import twinjax.trial._trial as tmod
    from twinjax.models import _multiscale

    def boom(*a, **k):
        raise AssertionError("simulated despite a malformed specification")

    monkeypatch.setattr(tmod, "simulate_cohort", boom)
    monkeypatch.setattr(_multiscale, "steady_state_cohort", boom)
    monkeypatch.setattr(twinjax, "simulate", boom)


def _refused(spec, match, n=None):
    """``from_dict`` raises a SpecError matching ``match`` (quickly: nothing is run)."""
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=match) as info:
        Trial.from_dict(spec)
    assert time.perf_counter() - t0 < 30
    if n is not None:
        assert len(info.value.problems) == n, info.value
    return info.value


def test_examples_pass():
    for path in sorted((ROOT / "examples").glob("*_trial.toml")):
        Trial.from_toml(path)


# ------------------------------------------------------------------ types
def test_string_false_placebo_is_refused(no_simulation):
    spec = _spec_dict()
    spec["arms"][1]["placebo"] = "false"
    _refused(
        spec, r'\[arms\]\[1\]\.placebo: expected a boolean \(true/false\), got the string "false"'
    )


def test_string_demographics_is_refused(no_simulation):
    spec = _spec_dict()
    spec["population"]["demographics"] = "no"
    _refused(spec, r'\[population\]\.demographics: expected a boolean .* the string "no"')


@pytest.mark.parametrize(
    "table,key,value,match",
    [
        ("population", "n_per_arm", 7.9,
         r"\[population\]\.n_per_arm: expected an integer, got the number 7\.9"),
        ("trial", "seed", 1.7, r"\[trial\]\.seed: expected an integer, got the number 1\.7"),
        ("population", "n_per_arm", True,
         r"\[population\]\.n_per_arm: expected an integer, got the boolean true"),
        ("statistics", "replicates", "20",
         r"\[statistics\]\.replicates: expected an integer, got the string"),
    ],
)  # fmt: skip
def test_fractional_and_boolean_integers_are_not_truncated(no_simulation, table, key, value, match):
    spec = _spec_dict()
    spec[table][key] = value
    _refused(spec, match)


def test_threshold_given_as_a_string_is_refused(no_simulation):
    spec = _spec_dict()
    spec["endpoints"][1]["threshold"] = "20"
    _refused(spec, r'\[endpoints\]\[1\]\.threshold: expected a number, got the string "20"')


@pytest.mark.parametrize(
    "value,match",
    [
        ("one week", r'\[trial\]\.duration: expected a number, got the string "one week"'),
        (-5, r"\[trial\]\.duration: must be > 0, got -5"),
        (0, r"\[trial\]\.duration: must be > 0"),
        (float("inf"), r"\[trial\]\.duration: must be a finite number"),
    ],
)
def test_bad_duration_is_refused(no_simulation, value, match):
    spec = _spec_dict()
    spec["trial"]["duration"] = value
    _refused(spec, match)


def test_missing_duration_and_model(no_simulation):
    spec = _spec_dict()
    del spec["trial"]["duration"]
    del spec["population"]["model"]
    err = _refused(spec, r"\[trial\]: needs a duration")
    assert any("[population]: needs a model name" in p for p in err.problems)


# ------------------------------------------------------------------ ranges
@pytest.mark.parametrize("n", [0, -5, 1])
def test_n_per_arm_below_two_is_refused(no_simulation, n):
    spec = _spec_dict()
    spec["population"]["n_per_arm"] = n
    _refused(spec, rf"\[population\]\.n_per_arm: must be >= 2, got {n}")


def test_arm_n_below_two_is_refused(no_simulation):
    spec = _spec_dict()
    spec["arms"][0]["n"] = 1
    _refused(spec, r"\[arms\]\[0\]\.n: must be >= 2, got 1")


def test_save_every_longer_than_the_trial_is_refused(no_simulation):
    spec = _spec_dict()
    spec["trial"]["save_every"] = 500
    _refused(spec, r"\[trial\]\.save_every: 500 is longer than the trial \(duration 168\)")


def test_save_every_must_divide_duration(no_simulation):
    spec = _spec_dict()
    spec["trial"]["save_every"] = 50
    _refused(spec, r"\[trial\]\.save_every: 50 does not divide duration 168 into whole steps")


def test_endpoint_window_without_saved_times_is_refused(no_simulation):
    spec = _spec_dict()
    spec["endpoints"][2]["window"] = [157.0, 157.5]  # the grid is every 2 h
    _refused(spec, r"\[endpoints\]\[2\]: endpoint 'Cmax_day7': its window \[157.0, 157.5\] holds 0")


def test_endpoint_time_outside_the_trial_is_refused(no_simulation):
    spec = _spec_dict()
    spec["endpoints"][0]["time"] = 200.0
    _refused(spec, r"\[endpoints\]\[0\]: endpoint 'change_R_day7': time 200.0 is outside")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("alpha", 2.0, r"\[statistics\]\.alpha: must be in \(0, 1\), got 2"),
        ("alpha", 0, r"\[statistics\]\.alpha: must be in \(0, 1\), got 0"),
        ("replicates", -1, r"\[statistics\]\.replicates: must be >= 1, got -1"),
        ("power_sizes", [-5], r"\[statistics\]\.power_sizes\[0\]: must be >= 2, got -5"),
        ("power_sizes", [3.5], r"\[statistics\]\.power_sizes\[0\]: expected an integer"),
        ("power_sizes", [3, 40], r"\[statistics\]\.power_sizes: \[40\] exceed the smallest arm"),
        ("subgroups", ["SEX", "RACE"],
         r"\[statistics\]\.subgroups: unknown covariate\(s\) \['RACE'\]"),
        ("control", "nobody", r"control arm 'nobody' is not one of the arms"),
    ],
)  # fmt: skip
def test_statistics_are_checked(no_simulation, key, value, match):
    spec = _spec_dict()
    spec["statistics"][key] = value
    _refused(spec, match)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("rtol", 0, r"\[trial\]\.rtol: must be > 0"),
        ("atol", -1e-6, r"\[trial\]\.atol: must be > 0"),
        ("solver", "rk45", r"\[trial\]\.solver: 'rk45' is not one of \['ensemble', 'diffrax'\]"),
        ("seed", -1, r"\[trial\]\.seed: must be in \[0, "),
        ("name", "", r"\[trial\]\.name: must not be empty"),
    ],
)
def test_trial_table_is_checked(no_simulation, key, value, match):
    spec = _spec_dict()
    spec["trial"][key] = value
    _refused(spec, match)


# ------------------------------------------------------------------ covariates
def test_inclusion_covariate_typo_is_a_message(no_simulation):
    spec = _spec_dict()
    spec["population"]["inclusion"][0]["covariate"] = "AEG"
    _refused(spec, r"\[population\.inclusion\]\[0\]\.covariate: unknown covariate 'AEG'")


def test_covariate_effect_needs_a_known_covariate(no_simulation):
    spec = _spec_dict()
    spec["population"]["covariates"][0]["covariate"] = "WEIGHT"
    _refused(spec, r"\[population\.covariates\]\[0\]\.covariate: unknown covariate 'WEIGHT'")
    spec = _spec_dict()
    spec["population"]["demographics"] = False  # then there are no covariates at all
    err = _refused(spec, r"unknown covariate 'WT'.*no covariates")
    assert any("[statistics].subgroups" in p for p in err.problems)
    assert any("[population.inclusion][0].covariate" in p for p in err.problems)


def test_endpoint_named_like_a_column_is_refused(no_simulation):
    spec = _spec_dict()
    spec["endpoints"][0]["name"] = "AGE"
    _refused(spec, r"endpoint name\(s\) \['AGE'\] are columns of the endpoint table")


def test_placebo_arm_with_doses_is_refused(no_simulation):
    spec = _spec_dict()
    spec["arms"][1]["placebo"] = True
    _refused(spec, r"\[arms\]\[1\]: arm '3 mg q12h' is a placebo arm with doses")


# ------------------------------------------------------------------ all at once
def test_every_problem_is_reported_at_once(no_simulation):
    spec = _spec_dict()
    spec["arms"][1]["placebo"] = "false"
    spec["population"]["n_per_arm"] = 7.9
    spec["trial"]["seed"] = 1.7
    spec["statistics"]["alpha"] = 2.0
    spec["endpoints"][1]["threshold"] = "20"
    spec["trial"]["speed"] = 3
    err = _refused(spec, r"^6 problems in the specification:\n  - ", n=6)
    text = str(err)
    for where in (
        "[arms][1].placebo",
        "[population].n_per_arm",
        "[trial].seed",
        "[statistics].alpha",
        "[endpoints][1].threshold",
        "unknown key 'speed' in [trial]",
    ):
        assert where in text, text


# ------------------------------------------------------------------ arm names
@pytest.mark.parametrize(
    "name",
    ["../../victim", "a/b", "a\\b", "..", ".hidden", "", "   ", " padded", "dot.", "a:b", "a*b",
     "tab\tname", "x" * 101, 3],
)  # fmt: skip
def test_unsafe_arm_names_are_refused(no_simulation, name):
    spec = _spec_dict()
    spec["arms"][1]["name"] = name
    _refused(spec, r"\[arms\]\[1\]\.name: ")
    with pytest.raises(SpecError):
        Arm(name, placebo=True)


def test_safe_arm_names_pass():
    for name in ["bolus +30 %", "Child-Pugh C (70 mg)", "dose_1.5 mg", "Bolus x2", "élan"]:
        assert Arm(name, placebo=True).name == name


def test_duplicate_arm_names_are_refused(no_simulation):
    spec = _spec_dict()
    spec["arms"][1]["name"] = "Placebo"  # the same folder on a case-insensitive disk
    _refused(spec, r"\[\[arms\]\]: arm names must be unique .* \['Placebo', 'placebo'\]")


def test_store_path_stays_inside_out(tmp_path):
    root = (tmp_path / "results.zarr").resolve()
    assert _spec.store_path(tmp_path, "placebo") == root / "placebo"
    with pytest.raises(SpecError, match="path separator"):
        _spec.store_path(tmp_path, "../../victim")
    # second guard: a folder that resolves elsewhere (a planted link)
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "linked")
    with pytest.raises(SpecError, match="would be outside"):
        _spec.store_path(tmp_path, "linked")


def test_run_refuses_an_unsafe_store_before_simulating(no_simulation, tmp_path):
    t = Trial.from_dict(_spec_dict())
    object.__setattr__(t.arms[2], "name", "../../victim")  # bypassing Arm's own check
    with pytest.raises(SpecError, match="path separator"):
        t.run(out=tmp_path / "out", progress=False)
    assert not (tmp_path / "victim").exists()


# ------------------------------------------------------------------ Python arguments
def _python_trial(**kw):
    base = Trial.from_dict(_spec_dict())
    args = dict(duration=168.0, save_every=2.0, n_per_arm=10)
    args.update(kw)
    return Trial(base.model, base.population, base.arms, base.endpoints, **args)


def test_python_arguments_use_the_same_checks(no_simulation):
    assert _python_trial().n_per_arm == 10
    with pytest.raises(SpecError) as info:
        _python_trial(duration="168", n_per_arm=True, alpha=1.5, seed=1.7, power_sizes=[0])
    text = str(info.value)
    assert len(info.value.problems) == 5, text
    assert 'duration: expected a number, got the string "168"' in text
    assert "n_per_arm: expected an integer, got the boolean true" in text
    assert "alpha: must be in (0, 1)" in text and "seed: expected an integer" in text
    assert "power_sizes[0]: must be >= 2" in text
    with pytest.raises(SpecError, match="subgroup_covariates: unknown covariate"):
        _python_trial(subgroup_covariates=["RACE"])
    with pytest.raises(SpecError, match="inclusion\\[0\\].covariate: unknown covariate 'AEG'"):
        _python_trial(inclusion=[Inclusion(covariate="AEG", min=1)])


def test_python_objects_check_their_fields():
    with pytest.raises(SpecError, match=r"Arm\('x'\)\.placebo: expected a boolean"):
        Arm("x", placebo="false")
    with pytest.raises(SpecError, match=r"Arm\('x'\)\.n: expected an integer"):
        Arm("x", placebo=True, n=7.9)
    with pytest.raises(ValueError, match=r"threshold: expected a number"):
        Endpoint("r", "responder", "pd.R", time=1.0, threshold="20")
    with pytest.raises(ValueError, match=r"percent: expected a boolean"):
        Endpoint("c", "change", "pd.R", time=1.0, percent="yes")
    with pytest.raises(SpecError, match="no patient can be included"):
        Inclusion(covariate="AGE", min=80, max=20)


def test_with_sample_size_checks_and_reports_dropped_power_sizes():
    t = Trial.from_dict(_spec_dict()).with_sample_size(4)
    assert t.power_sizes == [3] and t.dropped_power_sizes == (6,)
    for bad in (1, True, 2.5):
        with pytest.raises(SpecError, match="n_per_arm"):
            t.with_sample_size(bad)


# ------------------------------------------------------------------ safety spec
def test_safety_spec_reports_every_problem():
    d = tomllib.loads(SAFETY.read_text())
    d["safety"].update(n=True, seed=-1, sigma="0.3", cell="atrial", drug_beat=3)
    with pytest.raises(SpecError) as info:
        SafetyTrial.from_dict(d)
    text = str(info.value)
    assert len(info.value.problems) == 5, text
    assert "[safety].n: n must be an integer >= 1, got the boolean true" in text
    assert "[safety].seed: seed must be an integer >= 0" in text
    assert '[safety].sigma: sigma must be a number in (0, 1], got the string "0.3"' in text
    assert "[safety].cell: cell must be one of" in text
    assert "unknown key 'drug_beat' in [safety]" in text


# ------------------------------------------------------------------ command line
@pytest.fixture
def runner(monkeypatch):
    monkeypatch.setattr(cli, "_x64", lambda: None)  # keep XLA_FLAGS and x64 as the suite has them
    return CliRunner()


def _cli(runner, *args):
    r = runner.invoke(cli.app, list(args))
    text = " ".join(r.output.split())  # undo rich's line wrapping
    assert "Traceback" not in r.output
    return r, text


def test_cli_trial_bad_spec_is_a_message(runner, no_simulation, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("placebo = true", 'placebo = "false"'))
    r, text = _cli(runner, "trial", str(bad), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2, text
    assert '[arms][0].placebo: expected a boolean (true/false), got the string "false"' in text
    assert not (tmp_path / "o").exists()
    # --debug shows the traceback (the exception propagates)
    r = runner.invoke(cli.app, ["--debug", "trial", str(bad), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, SpecError)


def test_cli_trial_missing_file_and_bad_n(runner, no_simulation, tmp_path):
    r, text = _cli(runner, "trial", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "No such file" in text, text
    r, text = _cli(runner, "trial", str(EXAMPLE), "--n", "1", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--n 1: n_per_arm: must be >= 2" in text, text
    notatoml = tmp_path / "bin.toml"
    notatoml.write_bytes(b"\xff\xfe\x00")
    r, text = _cli(runner, "trial", str(notatoml), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "not a text (UTF-8) file" in text, text
    afile = tmp_path / "afile"
    afile.write_text("")
    r, text = _cli(runner, "trial", str(EXAMPLE), "--n", "4", "--out", str(afile))
    assert r.exit_code == 2 and "exists and is not a folder" in text, text


@pytest.mark.parametrize(
    "args,msg",
    [
        (("--step", "0"), "--step: must be > 0, got 0"),
        (("--step", "-1"), "--step: must be > 0"),
        (("--duration", "-5"), "--duration: must be > 0, got -5"),
        (("--duration", "nan"), "--duration: must be a finite number"),
        (("--step", "30", "--duration", "12"), "--step: 30 is longer than --duration 12"),
        (("--param", "V=0"), "parameter 'V' = 0 must be greater than its lower bound 0"),
        (("--param", "V=-3"), "'V' = -3.0 is outside its bounds"),
        (("--param", "F=2"), "'F' = 2.0 is outside its bounds"),
        (("--param", "QQ=2"), "unknown parameter 'QQ'"),
        (("--dose", "100:gut"), "unknown compartment 'gut'"),
    ],
)
def test_cli_simulate_refuses_bad_input_before_simulating(
    runner, no_simulation, tmp_path, args, msg
):
    r, text = _cli(runner, "simulate", "pk1_oral", *args, "--out", str(tmp_path / "s"))
    assert r.exit_code == 2 and msg in text, text
    assert not (tmp_path / "s").exists()


def test_cli_simulate_failure_exits_non_zero(runner, tmp_path, monkeypatch):
    import equinox as eqx
    import jax.numpy as jnp

    real = twinjax.simulate

    def failing(*a, **k):
        r = real(*a, **k)
        return eqx.tree_at(lambda x: x.status, r, jnp.asarray(1))

    monkeypatch.setattr(twinjax, "simulate", failing)
    r, text = _cli(runner, "simulate", "pk1_oral", "--dose", "100:depot", "--duration", "4",
                   "--step", "1", "--out", str(tmp_path / "s"))  # fmt: skip
    assert r.exit_code == 3, text
    assert "status 1" in text and "the simulation failed" in text and "max_steps" in text


def test_cli_safety_bad_options(runner, tmp_path):
    r, text = _cli(runner, "safety", "--n", "0", "--seed", "-2", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2, text
    assert "[safety].n: n must be an integer >= 1" in text and "[safety].seed" in text
    assert not (tmp_path / "o").exists()


def test_cli_models_unknown_name(runner):
    r, text = _cli(runner, "models", "heart9")
    assert r.exit_code == 2 and "unknown model 'heart9'" in text


def test_cli_simulate_reports_every_problem(runner, no_simulation, tmp_path):
    r, text = _cli(runner, "simulate", "pk1_oral", "--step", "0", "--param", "V=0",
                   "--param", "F=3", "--out", str(tmp_path / "s"))  # fmt: skip
    assert r.exit_code == 2 and "3 problems in the options:" in text, text
    assert "--step: must be > 0" in text and "--param V=0" in text and "--param F=3" in text
