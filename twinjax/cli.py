"""The ``twinjax`` command line: trials, single simulations, the model library."""

from __future__ import annotations

import contextlib
import pathlib
from typing import Optional, Required, TypedDict, cast

import typer

app = typer.Typer(add_completion=False, help="twinjax: differentiable digital twins in JAX.")

# set by the --debug option of the main callback (which runs before every command)
_STATE = {"debug": False}

# exit codes: 2 an error in the input (nothing was run), 1 an error while running,
# 3 a simulation that ran but where patients failed
EXIT_INPUT, EXIT_RUN, EXIT_FAILED = 2, 1, 3


class _DoseArgs(TypedDict, total=False):
    """Keyword arguments of :class:`~twinjax.dosing.Dose` from a ``--dose`` option."""

    amt: Required[float]
    cmt: Required[str]
    time: float
    ii: float
    addl: int


class _SafetyOverrides(TypedDict, total=False):
    """Fields of :class:`~twinjax.trial.SafetyTrial` given on the command line."""

    compounds: tuple[str, ...]
    multiples: tuple[float, ...]
    n: int
    cell: str
    beats: int
    drug_beats: int
    seed: int
    protocol: str
    cipa_beats: int
    cipa_window: int


def _x64():
    from .solve._devices import use_cpu_cores

    use_cpu_cores()  # one JAX CPU device per core: cohorts are sharded over them
    import jax

    jax.config.update("jax_enable_x64", True)
    from ._compile_cache import enable_compilation_cache

    # compiled programs kept between runs (TWINJAX_CACHE_DIR: the folder, or "off")
    enable_compilation_cache()


def _error(con, err, where=None):
    """Print an error; its text is not markup (spec errors name tables like [arms])."""
    from rich.markup import escape

    head = f"error in {escape(str(where))}:" if where else "error:"
    # soft_wrap: the message is never broken into lines at the console width (a long
    # path in it moved the breaks, and a wrapped message cannot be searched or copied)
    con.print(f"[red]{head}[/] {escape(str(err))}", soft_wrap=True)


@contextlib.contextmanager
def _user_errors(con, where=None, code: int = EXIT_INPUT):
    """Turn a user error (a bad specification, option, file or data set) into a message.

    SpecError, the data reader's DatasetError and other ValueErrors, and OSErrors (a
    missing file, a folder that cannot be written) print their message and exit with
    ``code``, without a traceback; ``twinjax --debug ...`` re-raises them instead.
    """
    try:
        yield
    except (ValueError, OSError) as err:
        if _STATE["debug"]:
            raise
        _error(con, err, where)
        raise typer.Exit(code) from None


def _out_folder(out: pathlib.Path, kind: str) -> None:
    """Claim the output folder before anything runs: new, empty, or twinjax's own output
    of the same kind; a folder with files twinjax did not write is refused."""
    from ._outdir import claim

    claim(out, kind)


def _version(value: bool):
    if value:
        from . import __version__

        typer.echo(f"twinjax {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(  # noqa: UP045
        None, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an error instead of its message."
    ),
):
    """twinjax: virtual cohorts, virtual trials and calibrated twins."""
    _STATE["debug"] = debug


@app.command()
def trial(
    spec: pathlib.Path = typer.Argument(..., help="trial specification (TOML)"),
    out: pathlib.Path = typer.Option(pathlib.Path("trial_output"), "--out", help="output folder"),
    progress: bool = typer.Option(True, help="show progress bars"),
    n: Optional[int] = typer.Option(  # noqa: UP045
        None, "--n", help="patients per arm, overriding the specification (e.g. a quick run)"
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="on a rerun into the same --out, read every stored chunk back and check its "
        "checksum (damaged chunks are recomputed)",
    ),
):
    """Run a virtual clinical trial and write its report, tables and results store."""
    from rich.console import Console

    from .trial import SpecError, Trial

    con = Console()
    _x64()
    with _user_errors(con, spec):
        t = Trial.from_toml(spec)
        if n is not None:
            try:
                t = t.with_sample_size(n)
            except SpecError as err:
                raise SpecError(f"--n {n}: {err}") from None
        _out_folder(out, "trial")
    if t.dropped_power_sizes:
        con.print(
            f"[yellow]warning:[/] power-curve sizes {list(t.dropped_power_sizes)} exceed "
            f"--n {n} patients per arm and are left out"
            + ("" if t.power_sizes else "; no power curve")
        )
    con.print(f"[bold]{t.name}[/]: {t.n_patients} virtual patients in {len(t.arms)} arms")
    with _user_errors(con, code=EXIT_RUN):
        res = t.run(out=out, progress=progress, verify=verify)
        report = res.write(out)
    from .trial._stats import format_p

    shown = res.comparisons.copy()
    cols = ["endpoint", "arm", "diff", "ci_low", "ci_high", "p_value"]
    if "p_adjusted" in shown:
        cols.append("p_adjusted")
    for c in ("p_value", "p_adjusted"):
        if c in shown:
            shown[c] = shown[c].map(format_p)
    con.print(shown[cols].to_string(index=False))
    failed = int((res.table["status"] != 0).sum())
    if failed:
        con.print(
            f"[yellow]warning:[/] {failed} of {len(res.table)} patients failed to simulate "
            "(status != 0 in endpoints.csv) and are left out of the statistics"
        )
    # the report's sample-size warnings (the --n one was printed before the run)
    from rich.markup import escape

    shown_warnings = res.warnings[1:] if t.dropped_power_sizes else res.warnings
    for w in shown_warnings:
        con.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if res.sensitivity and t.sensitivity is not None:
        for note in res.sensitivity["notes"]:
            con.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
        con.print(
            f"sensitivity analysis of {escape(t.sensitivity.endpoint)}: see the report's "
            "Sensitivity section and summary.json",
            highlight=False,
        )
    con.print(f"simulated in {res.seconds:.1f} s; report: [bold]{report.resolve()}[/]")


@app.command()
def simulate(
    model: str = typer.Argument(..., help="a registered model name (see `twinjax models`)"),
    dose: list[str] = typer.Option([], "--dose", help="AMT:CMT[:TIME[:II:ADDL]], repeatable"),
    param: list[str] = typer.Option([], "--param", "-p", help="NAME=VALUE, repeatable"),
    duration: float = typer.Option(24.0, help="simulated time"),
    step: float = typer.Option(0.25, help="save interval"),
    out: pathlib.Path = typer.Option(pathlib.Path("simulation"), "--out", help="output folder"),
):
    """Simulate one patient of a model under a regimen: CSV and a plot."""
    import numpy as np
    from rich.console import Console

    from . import Dose, Regimen
    from . import simulate as sim
    from .models._registry import get_model
    from .solve._status import Status
    from .trial import SpecError, _spec

    con = Console()
    _x64()
    with _user_errors(con):
        probs = _spec.Problems()
        _spec.number(duration, "--duration", probs, lo=0, lo_open=True)
        _spec.number(step, "--step", probs, lo=0, lo_open=True)
        if not probs and step > duration:
            probs.add("--step", f"{step:g} is longer than --duration {duration:g}")
        try:
            m = get_model(model)
        except ValueError as err:
            probs.add("", str(err))
            probs.check("the options")
        p = {}
        for kv in param:
            k, eq, v = kv.partition("=")
            try:
                p[k.strip()] = float(v)
            except ValueError:
                raise ValueError(f"--param {kv!r}: expected NAME=VALUE with a number") from None
            if not eq or not k.strip():
                raise ValueError(f"--param {kv!r}: expected NAME=VALUE with a number")
        for name, value in p.items():
            problem = _spec.param_problem(m, name, value)
            if problem is not None:
                probs.add(f"--param {name}={value:g}", problem)
        probs.check("the options")
        doses = []
        for d in dose:
            f = d.split(":")
            if len(f) not in (2, 3, 5):
                raise ValueError(f"--dose {d!r}: expected AMT:CMT[:TIME[:II:ADDL]]")
            try:
                kw: _DoseArgs = {"amt": float(f[0]), "cmt": f[1]}
                if len(f) >= 3:
                    kw["time"] = float(f[2])
                if len(f) == 5:
                    kw.update({"ii": float(f[3]), "addl": int(f[4])})
            except ValueError:
                raise ValueError(
                    f"--dose {d!r}: AMT, TIME and II must be numbers and ADDL an integer "
                    "(AMT:CMT[:TIME[:II:ADDL]])"
                ) from None
            doses.append(Dose(**kw))
        regimen = Regimen(doses) if doses else None
        if regimen is not None:
            regimen.validate(m)
        n_steps = int(round(duration / step))
        if n_steps > 10_000_000:
            raise SpecError(f"--duration / --step = {n_steps} saved times; at most 10,000,000")
        times = np.arange(0.0, duration + step / 2, step)
        _out_folder(out, "simulation")  # every option checked; nothing simulated yet
        r = sim(m, p, regimen, times)  # checks the inputs before compiling
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with _user_errors(con, code=EXIT_RUN):
        out.mkdir(parents=True, exist_ok=True)
        df = r.to_dataframe()
        df.to_csv(out / "simulation.csv", index=False)
        outs = list(r.outputs)
        fig, axes = plt.subplots(len(outs), 1, figsize=(7, 2.6 * len(outs)), squeeze=False)
        for ax, o in zip(axes[:, 0], outs):
            ax.plot(times, np.asarray(r.outputs[o]))
            ax.set_ylabel(o)
        axes[-1, 0].set_xlabel("time")
        fig.tight_layout()
        fig.savefig(out / "simulation.png", dpi=110)
        plt.close(fig)
    code = int(r.status)
    con.print(f"status {code}; wrote {out / 'simulation.csv'} and {out / 'simulation.png'}")
    if code != 0:
        try:
            why = Status(code).message
        except ValueError:
            why = "unknown status"
        _error(con, f"the simulation failed (status {code}: {why}); the outputs are incomplete")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def models(name: Optional[str] = typer.Argument(None, help="show one model's parameters")):  # noqa: UP045
    """List the shipped models, or one model's parameter table and source."""
    from rich.console import Console
    from rich.table import Table

    from .models._registry import get_model, registered

    con = Console()
    if name is None:
        t = Table("model", "description", title="registered models")
        for k, v in registered().items():
            t.add_row(k, v)
        con.print(t)
        return
    with _user_errors(con):
        m = get_model(name)
    t = Table(
        "parameter",
        "value",
        "unit",
        "lower",
        "upper",
        "transform",
        "source",
        title=f"{name}: {type(m).__name__}",
    )
    for q in m.params:
        t.add_row(
            q.name, f"{q.value:g}", q.unit, f"{q.lower:g}", f"{q.upper:g}", q.transform, q.source
        )
    con.print(t)
    con.print(f"states: {', '.join(m.state_names)}")
    con.print(f"outputs: {', '.join(m.output_names)}")


@app.command()
def safety(
    spec: Optional[pathlib.Path] = typer.Argument(  # noqa: UP045
        None,
        help="safety trial specification (TOML, e.g. examples/cardiac_safety.toml); "
        "options override it",
    ),
    out: pathlib.Path = typer.Option(pathlib.Path("safety_output"), "--out", help="output folder"),
    compounds: Optional[str] = typer.Option(  # noqa: UP045
        None,
        help="comma-separated compounds of the shipped CiPA table (twinjax.models.ep.drugs); "
        "default dofetilide,quinidine,verapamil,ranolazine",
    ),
    multiples: Optional[str] = typer.Option(  # noqa: UP045
        None, help="concentrations, multiples of free Cmax; default 1,10,30"
    ),
    n: Optional[int] = typer.Option(  # noqa: UP045
        None, help="candidate models sampled before acceptance; default 100"
    ),
    cell: Optional[str] = typer.Option(None, help="ORd cell type: endo | epi | M; default endo"),  # noqa: UP045
    beats: Optional[int] = typer.Option(  # noqa: UP045
        None, help="control beats paced before acceptance (1 Hz); default 50"
    ),
    drug_beats: Optional[int] = typer.Option(  # noqa: UP045
        None, help="beats paced under each drug concentration; default 20"
    ),
    seed: Optional[int] = typer.Option(None, help="population seed; default 0"),  # noqa: UP045
    protocol: Optional[str] = typer.Option(  # noqa: UP045
        None,
        help="population (ORd population, APD90 risk) | cipa (CiPA qNet protocol with "
        "CiPAORdv1.0, torsade metric score) | exposure (a PK regimen from the spec's "
        "[safety.exposure] paced beat by beat); default population",
    ),
    cipa_beats: Optional[int] = typer.Option(  # noqa: UP045
        None, help="cipa: beats paced per cell at CL 2000 ms; default 1000 (the FDA's)"
    ),
    cipa_window: Optional[int] = typer.Option(  # noqa: UP045
        None, help="cipa: final beats analysed by the beat selection; default 250"
    ),
):
    """In-silico cardiac safety trial: the ORd population protocol or the CiPA qNet protocol.

    ``population``: samples ``n`` O'Hara-Rudy models (log-normal conductances), keeps
    those whose control biomarkers fall in the experimental ranges (Passini et al.
    2017), paces them under each compound's multi-channel block and writes the
    per-model table, the incidence of repolarisation abnormalities, APD90
    prolongation, a risk class per compound, a plot and safety.json (what was run).

    ``cipa``: the CiPA qNet protocol (Li et al. 2019): CiPAORdv1.0 with dynamic hERG
    binding at CL 2000 ms, qNet of the selected beat at each multiple of free Cmax,
    torsade metric score (mean qNet over 1-4 x Cmax) classified high / intermediate /
    low, and the confusion matrix against the CiPA categories (qnet.csv, risk.csv,
    confusion.csv, safety.png, safety.json).
    """
    from rich.console import Console

    from .trial import SafetyTrial, SpecError

    con = Console()
    given = dict(
        n=n,
        cell=cell,
        beats=beats,
        drug_beats=drug_beats,
        seed=seed,
        protocol=protocol,
        cipa_beats=cipa_beats,
        cipa_window=cipa_window,
    )
    over = cast(_SafetyOverrides, {k: v for k, v in given.items() if v is not None})
    with _user_errors(con, spec):
        if compounds is not None:
            over["compounds"] = tuple(c.strip() for c in compounds.split(",") if c.strip())
        if multiples is not None:
            try:
                over["multiples"] = tuple(float(x) for x in multiples.split(","))
            except ValueError:
                raise SpecError(f"--multiples {multiples!r}: give numbers like 1,10,30") from None
        if spec is not None:
            st = SafetyTrial.from_toml(spec, **over)
        else:
            st = SafetyTrial.from_dict({"safety": {}}, **over)
        _out_folder(out, "safety")
    _x64()
    n_mult = len(st.multiples or ())
    if st.protocol == "cipa":
        con.print(
            f"[bold]{st.name}[/]: CiPA qNet protocol, {len(st.compounds)} compounds x "
            f"{n_mult} concentrations, {st.cipa_beats} beats"
        )
    elif st.protocol == "exposure":
        con.print(f"[bold]{st.name}[/]: PK-driven exposure of CiPAORdv1.0 to {st.compounds[0]}")
    else:
        con.print(
            f"[bold]{st.name}[/]: {st.n} ORd ({st.cell}) models x {len(st.compounds)} "
            f"compounds x {n_mult} concentrations"
        )
    try:
        with _user_errors(con, code=EXIT_RUN):
            res = st.run(out, console=con)
    except RuntimeError as err:  # no sampled model passed the acceptance ranges
        if _STATE["debug"]:
            raise
        _error(con, err)
        raise typer.Exit(EXIT_RUN) from None
    if st.protocol == "exposure":
        tab = res["exposure"]
        con.print(tab.iloc[:: max(1, len(tab) // 24)].to_string(index=False))
        con.print(f"free Cmax {res['free_cmax_nM']:.3g} nM")
    elif st.protocol == "cipa":
        cols = ["compound", "cipa_category", "TMS", "predicted", "correct"]
        con.print(res["risk"][cols].to_string(index=False))
        con.print(res["confusion"].to_string())
        con.print(f"control qNet {res['control']['qNet']:.6f} C/F")
    else:
        con.print(res["summary"].to_string(index=False))
        con.print(res["risk"].to_string())
    con.print(f"done in {res['seconds']:.0f} s; tables and safety.png in {out}")


@app.command()
def fit(
    spec: pathlib.Path = typer.Argument(
        ..., help="fit specification (TOML, e.g. examples/fit_theophylline.toml)"
    ),
    data: Optional[pathlib.Path] = typer.Argument(  # noqa: UP045
        None, help="NONMEM-format data (CSV); default: the specification's [fit].data dataset"
    ),
    out: pathlib.Path = typer.Option(pathlib.Path("fit_output"), "--out", help="output folder"),
    progress: bool = typer.Option(True, help="show the progress of the fit"),
):
    """Fit a model to data (FOCE-I or SAEM population fit, or MAP twins); write the report.

    Writes report.html (estimates with SE, RSE and 95 % CI, OFV, shrinkage, NPDE, the
    GOF panel, eta-covariate plots, VPC and pcVPC, run record), estimates.csv,
    individual.csv, observations.csv, fit.json and the figures. The specification and
    the data are checked before anything is fitted.
    """
    from rich.console import Console

    from .calibrate._fitspec import load_data, load_fit_spec

    con = Console()
    _x64()
    with _user_errors(con, spec):
        fs = load_fit_spec(spec)
    with _user_errors(con, data if data is not None else spec):
        ds, sha, source = load_data(fs, data)
    with _user_errors(con):
        _out_folder(out, "fit")
    con.print(
        f"[bold]{fs.name}[/]: {fs.model_name}, {fs.method.upper()}, {len(ds)} subjects "
        f"from {source}",
        highlight=False,
    )
    from rich.status import Status

    from .calibrate._report import run_fit, write_fit

    status = Status("fitting...", console=con) if progress else None
    t_fit = [0.0]

    def say(stage: str, detail: str = "") -> None:
        import time as _time

        if stage in ("outer", "iteration"):
            # "outer N OFV x" lines of the FOCE-I outer loop, SAEM's iteration lines
            head = "FOCE-I" if stage == "outer" else "SAEM"
            text = f"{head} {detail.strip()} ({_time.perf_counter() - t_fit[0]:.0f} s)"
        else:
            text = f"{stage}: {detail}"
            if stage == "fit":
                t_fit[0] = _time.perf_counter()
                con.print(text, highlight=False)
        if status is not None:
            status.update(text)

    with (
        _user_errors(con, code=EXIT_RUN),
        status if status is not None else contextlib.nullcontext(),
    ):
        run = run_fit(fs, ds, data_sha256=sha, data_source=source, progress=say)
        report = write_fit(run, out, progress=say)
    con.print(run.estimates[["estimate", "se", "rse_pct", "ci95_lo", "ci95_hi"]].to_string())
    if fs.method != "map":
        con.print(f"OFV {run.ofv:.3f}; {run.message}", highlight=False)
    if run.npde is not None and run.npde.test:
        t = run.npde.test
        con.print(
            f"NPDE: mean {t['mean']:.3f}, variance {t['variance']:.3f}, "
            f"global p {t['p_global']:.3g}",
            highlight=False,
        )
    con.print(f"fitted in {run.wall_s:.1f} s; report: [bold]{report.resolve()}[/]")
    if not run.converged:
        _error(con, f"the fit did not converge ({run.message}); see the report")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def bench(
    which: str = typer.Argument("cohort", help="cohort | lorenz"),
    quick: bool = typer.Option(True, help="small sizes (a smoke run)"),
):
    """Run a benchmark script from benchmarks/ (in a source checkout)."""
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    script = {"cohort": "cohort_throughput.py", "lorenz": "lorenz_ensemble.py"}.get(which)
    if script is None or not (root / script).exists():
        typer.echo(f"no benchmark {which!r} (needs a source checkout with benchmarks/)")
        raise typer.Exit(2)
    raise typer.Exit(
        subprocess.call([sys.executable, str(root / script)] + (["--quick"] if quick else []))
    )


if __name__ == "__main__":  # pragma: no cover
    app()
