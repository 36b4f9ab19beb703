"""The ``twinjax`` command line: trials, single simulations, the model library."""

from __future__ import annotations

import pathlib
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help="twinjax: differentiable digital twins in JAX.")


def _x64():
    from .solve._devices import use_cpu_cores

    use_cpu_cores()  # one JAX CPU device per core: cohorts are sharded over them
    import jax

    jax.config.update("jax_enable_x64", True)


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
):
    """twinjax: virtual cohorts, virtual trials and calibrated twins."""


@app.command()
def trial(
    spec: pathlib.Path = typer.Argument(..., help="trial specification (TOML)"),
    out: pathlib.Path = typer.Option(pathlib.Path("trial_output"), "--out", help="output folder"),
    progress: bool = typer.Option(True, help="show progress bars"),
    n: Optional[int] = typer.Option(  # noqa: UP045
        None, "--n", help="patients per arm, overriding the specification (e.g. a quick run)"
    ),
):
    """Run a virtual clinical trial and write its report, tables and results store."""
    from rich.console import Console

    from .trial import SpecError, Trial

    con = Console()
    _x64()
    try:
        t = Trial.from_toml(spec)
        if n is not None:
            t = t.with_sample_size(n)
    except (SpecError, FileNotFoundError) as err:
        con.print(f"[red]error in {spec}:[/] {err}")
        raise typer.Exit(2) from None
    con.print(f"[bold]{t.name}[/]: {t.n_patients} virtual patients in {len(t.arms)} arms")
    res = t.run(out=out, progress=progress)
    report = res.write(out)
    con.print(
        res.comparisons[["endpoint", "arm", "diff", "ci_low", "ci_high", "p_value"]].to_string(
            index=False
        )
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

    con = Console()
    _x64()
    try:
        m = get_model(model)
        p = {}
        for kv in param:
            k, _, v = kv.partition("=")
            p[k] = float(v)
        doses = []
        for d in dose:
            f = d.split(":")
            if len(f) not in (2, 3, 5):
                raise ValueError(f"--dose {d!r}: expected AMT:CMT[:TIME[:II:ADDL]]")
            kw = dict(amt=float(f[0]), cmt=f[1])
            if len(f) >= 3:
                kw["time"] = float(f[2])
            if len(f) == 5:
                kw.update(ii=float(f[3]), addl=int(f[4]))
            doses.append(Dose(**kw))
        times = np.arange(0.0, duration + step / 2, step)
        r = sim(m, p, Regimen(doses) if doses else None, times)
    except ValueError as err:
        con.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    df = r.to_dataframe()
    df.to_csv(out / "simulation.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outs = list(r.outputs)
    fig, axes = plt.subplots(len(outs), 1, figsize=(7, 2.6 * len(outs)), squeeze=False)
    for ax, o in zip(axes[:, 0], outs):
        ax.plot(times, np.asarray(r.outputs[o]))
        ax.set_ylabel(o)
    axes[-1, 0].set_xlabel("time")
    fig.tight_layout()
    fig.savefig(out / "simulation.png", dpi=110)
    con.print(
        f"status {int(r.status)}; wrote {out / 'simulation.csv'} and {out / 'simulation.png'}"
    )


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
    try:
        m = get_model(name)
    except ValueError as err:
        con.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
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
    out: pathlib.Path = typer.Option(pathlib.Path("safety_output"), "--out", help="output folder"),
    compounds: str = typer.Option(
        "dofetilide,quinidine,verapamil,ranolazine",
        help="comma-separated compounds of the shipped CiPA table (twinjax.models.ep.drugs)",
    ),
    multiples: str = typer.Option("1,10,30", help="concentrations, multiples of free Cmax"),
    n: int = typer.Option(100, help="candidate models sampled before acceptance"),
    cell: str = typer.Option("endo", help="ORd cell type: endo | epi | M"),
    beats: int = typer.Option(50, help="control beats paced before acceptance (1 Hz)"),
    drug_beats: int = typer.Option(20, help="beats paced under each drug concentration"),
    seed: int = typer.Option(0, help="population seed"),
):
    """In-silico cardiac safety trial: an ORd population x compounds x concentrations.

    Samples ``n`` O'Hara-Rudy models (log-normal conductances), keeps those whose
    control biomarkers fall in the experimental ranges (Passini et al. 2017), paces
    them under each compound's multi-channel block and writes the per-model table,
    the incidence of repolarisation abnormalities, APD90 prolongation, a risk class
    per compound and a plot.
    """
    _x64()
    import time

    import jax
    import numpy as np
    from rich.console import Console

    from .models import ep
    from .models.ep import drugs, population

    con = Console()
    names = [c.strip() for c in compounds.split(",") if c.strip()]
    table = drugs.compounds()
    unknown = [c for c in names if c.lower() not in table.index]
    if unknown:
        raise typer.BadParameter(f"unknown compound(s) {unknown}; known: {list(table.index)}")
    try:
        mult = tuple(float(x) for x in multiples.split(","))
    except ValueError:
        raise typer.BadParameter(f"--multiples {multiples!r}: give numbers like 1,10,30") from None
    if not mult or min(mult) <= 0:
        raise typer.BadParameter("--multiples must be positive")
    if cell not in ("endo", "epi", "M"):
        raise typer.BadParameter(f"--cell {cell!r}: use endo, epi or M")
    if n < 1 or beats < 1 or drug_beats < 1:
        raise typer.BadParameter("--n, --beats and --drug-beats must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = ep.ORd(celltype=cell)
    with con.status(f"pacing {n} ORd ({cell}) models for {beats} beats"):
        params, state, bio, ok = population.calibrate(model, jax.random.key(seed), n, n_beats=beats)
    ok = np.asarray(ok)
    con.print(f"accepted {int(ok.sum())} of {n} models against the experimental ranges")
    if not ok.any():
        raise typer.Exit(code=1)
    keep = np.flatnonzero(ok)
    params = {k: np.asarray(v)[keep] if np.ndim(v) else v for k, v in params.items()}
    state = {k: np.asarray(v)[keep] for k, v in state.items()}
    with con.status(f"{len(names)} compounds x {len(mult)} concentrations"):
        trial = population.drug_trial(model, params, state, names, mult, n_beats=drug_beats)
    summary, risk = population.summarise(trial)
    trial.to_csv(out / "models.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    risk.to_csv(out / "risk.csv")
    _safety_plot(summary, out / "safety.png")
    con.print(summary.to_string(index=False))
    con.print(risk.to_string())
    con.print(f"done in {time.perf_counter() - t0:.0f} s; tables and safety.png in {out}")


def _safety_plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, t in summary.groupby("compound"):
        axes[0].semilogx(t["multiple"], t["dAPD90_median_pct"], "o-", label=c)
        axes[1].semilogx(t["multiple"], t["abnormal_pct"], "o-", label=c)
    axes[0].set(xlabel="concentration (x free Cmax)", ylabel="median APD90 change (%)")
    axes[1].set(xlabel="concentration (x free Cmax)", ylabel="models with EAD/RF (%)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
