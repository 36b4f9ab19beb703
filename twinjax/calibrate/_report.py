"""Run a fit specification and write its outputs: the HTML fit report and tables.

:func:`run_fit` fits (FOCE-I or MAP) and computes the diagnostics (CWRES, NPDE, VPC,
pcVPC); :func:`write_fit` writes into an output folder:

- ``report.html``: estimates with SE, RSE and 95 % CI, OFV, shrinkage, the NPDE test,
  the GOF panel, eta-covariate plots, VPC and pcVPC (embedded PNGs), and the run record
  (the specification's text and SHA-256, the data file's SHA-256, versions, time);
- ``estimates.csv``, ``individual.csv`` (per-subject parameters, etas, SEs), with
  inter-occasion variability ``occasions.csv`` (per subject and occasion: the kappas and
  the individual parameters), ``observations.csv`` (DV, PRED, IPRED, IWRES, CWRES,
  NPDE per record), ``fit.json`` (the run record and summary numbers) and the figures
  as PNG files.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import html
import io
import json
import math
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FitRun", "run_fit", "write_fit"]

Z95 = 1.959963984540054


@dataclasses.dataclass(eq=False)
class FitRun:
    """The result of :func:`run_fit`.

    Attributes:
        spec: the :class:`~twinjax.calibrate._fitspec.FitSpec`.
        result: a ``PopulationFitResult`` (foce-i) or ``FitResult`` (map).
        individual: the individual (post-hoc) ``FitResult``.
        estimates: DataFrame: parameter, estimate, se, rse_pct, ci95_lo, ci95_hi,
            ci_method, note.
        npde: an ``NpdeResult`` or None.
        record: the run record (dict).
        wall_s: seconds.
    """

    spec: Any
    result: Any
    individual: Any
    estimates: Any
    npde: Any
    record: dict
    wall_s: float
    ofv: float
    converged: bool
    message: str
    cwres: Any = None


class _Lines(io.TextIOBase):
    """A text stream that hands every complete line to a callback."""

    def __init__(self, callback: Callable[[str], None]):
        self.callback = callback
        self.buf = ""

    def write(self, s: str) -> int:  # type: ignore[override]
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            if line.strip():
                self.callback(line.strip())
        return len(s)


def _versions() -> dict:
    import jax
    import scipy

    from .. import __version__

    return dict(
        twinjax=__version__,
        jax=jax.__version__,
        numpy=np.__version__,
        scipy=scipy.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
    )


def _population_estimates(spec, res):
    """The population estimates with 95 % intervals (FOCE-I and SAEM).

    Each interval is symmetric on the scale the fit estimates the quantity on, mapped
    back (so it stays inside the bounds), with that scale's SE from the natural-scale
    SE by the delta method: typical values on their unconstrained coordinate
    (``log(x - lower)`` for log-transformed parameters), estimated covariate
    coefficients on their bounded transform (``_Coef``: identity, log, logit), variances
    of Omega and residual SDs on the log scale (FOCE-I estimates log Cholesky diagonals
    and log SDs); Omega covariances (full Omega): Wald.
    """
    import jax
    import jax.numpy as jnp

    model = spec.model
    est = res.estimates.copy()
    coef_bounds = {}
    for c in spec.population.covariates:
        if getattr(c, "estimate", False):
            for label in c.coefficients():
                coef_bounds[label] = c.coefficient_bounds()
    lo, hi, how = [], [], []
    for name, row in est.iterrows():
        name = str(name)
        x, s = float(row["estimate"]), float(row["se"])
        if name in model.param_names:

            def back(z, name=name):
                return model.from_unconstrained({name: z})[name]

            z = float(model.to_unconstrained({name: jnp.asarray(x)}, (name,))[name])
            sz = s / abs(float(jax.grad(back)(jnp.asarray(z, float))))
            lo.append(float(back(jnp.asarray(z - Z95 * sz))))
            hi.append(float(back(jnp.asarray(z + Z95 * sz))))
            how.append(f"{model.param(name).transform} scale")
        elif name in coef_bounds:
            a, b, h = _bounded_interval(x, s, *coef_bounds[name])
            lo.append(a)
            hi.append(b)
            how.append(h)
        elif (
            (name.startswith("OMEGA(") and _diagonal(name))
            or name.startswith("OMEGA_IOV(")
            or name.startswith("SIGMA")
        ):
            sl = s / x if x > 0 else float("nan")
            lo.append(x * math.exp(-Z95 * sl))
            hi.append(x * math.exp(Z95 * sl))
            how.append("log scale")
        else:
            lo.append(x - Z95 * s)
            hi.append(x + Z95 * s)
            how.append("Wald")
    est["ci95_lo"], est["ci95_hi"], est["ci_method"] = lo, hi, how
    notes = []
    for name in est.index:
        b = spec.bounds.get(name)
        x = float(est.loc[name, "estimate"])
        if b is None:
            notes.append("")
        elif not b[0] <= x <= b[1]:
            notes.append(f"OUTSIDE the bounds [{b[0]:g}, {b[1]:g}]")
        elif min(abs(x - b[0]), abs(b[1] - x)) <= 1e-3 * max(abs(x), 1e-12):
            notes.append(f"at a bound of [{b[0]:g}, {b[1]:g}]")
        else:
            notes.append("")
    est["note"] = notes
    return est


def _diagonal(label: str) -> bool:
    """``OMEGA(a,a)``: a variance."""
    inner = label[label.index("(") + 1 : label.rindex(")")]
    a, _, b = inner.partition(",")
    return a == b


def _bounded_interval(x: float, s: float, lo: float, hi: float):
    """95 % interval of a coefficient with natural-scale SE ``s`` estimated on
    ``_Coef``'s transform (identity, ``lo + e^z``, ``hi - e^z`` or a scaled logistic)."""
    if math.isfinite(lo) and math.isfinite(hi):
        u = (x - lo) / (hi - lo)
        z = math.log(u) - math.log1p(-u)
        sz = s / ((x - lo) * (hi - x) / (hi - lo))
        f = lambda t: lo + (hi - lo) / (1 + math.exp(-t))  # noqa: E731
        return f(z - Z95 * sz), f(z + Z95 * sz), "logit scale"
    if math.isfinite(lo):
        z, sz = math.log(x - lo), s / (x - lo)
        return lo + math.exp(z - Z95 * sz), lo + math.exp(z + Z95 * sz), "log scale"
    if math.isfinite(hi):
        z, sz = math.log(hi - x), s / (hi - x)
        return hi - math.exp(z + Z95 * sz), hi - math.exp(z - Z95 * sz), "log scale"
    return x - Z95 * s, x + Z95 * s, "Wald"


def _map_estimates(spec, ind):
    """MAP fits: the prior (fixed) and the distribution of the individual estimates."""
    import pandas as pd

    pop = ind.population
    rows = []
    for name in spec.model.param_names:
        if name not in pop.typical:
            continue
        v = np.asarray(ind.params[name], float) if name in ind.names else None
        rows.append(
            dict(
                parameter=name,
                estimate=float(pop.typical[name]),
                se=float("nan"),
                rse_pct=float("nan"),
                ci95_lo=float("nan"),
                ci95_hi=float("nan"),
                ci_method="",
                note=(
                    f"prior; individual MAP median {np.nanmedian(v):.4g} "
                    f"(range {np.nanmin(v):.4g}-{np.nanmax(v):.4g})"
                    if v is not None
                    else "fixed (no IIV)"
                ),
            )
        )
    for a, name in enumerate(pop.iiv):
        rows.append(
            dict(
                parameter=f"OMEGA({name},{name})",
                estimate=float(np.asarray(pop.omega)[a, a]),
                note="prior",
            )
        )
    for o, e in (ind.errors or {ind.output: ind.error}).items():
        for n, s in zip(e.names, np.asarray(e.sigma())):
            lab = f"SIGMA_{n}" if len(spec.errors) == 1 else f"SIGMA_{o}_{n}"
            rows.append(dict(parameter=lab, estimate=float(s), note="fixed"))
    return pd.DataFrame(rows).set_index("parameter")


def run_fit(spec, dataset, *, data_sha256: str = "", data_source: str = "", progress=None):
    """Fit a dataset as the specification says, then compute the diagnostics.

    Arguments:
        spec: a validated ``FitSpec``.
        dataset: the :class:`~twinjax.data.Dataset` (checked by ``load_data``).
        data_sha256, data_source: for the run record.
        progress: ``callback(stage, detail)`` called as the fit goes (stages: ``fit``,
            ``outer`` with the OFV line of each outer evaluation, ``covariance``,
            ``diagnostics``).

    Returns:
        A :class:`FitRun`.
    """
    import jax

    from ._diagnostics import cwres
    from ._map import fit_individual
    from ._nlme import fit_population
    from ._npde import npde as compute_npde

    say = progress or (lambda stage, detail="": None)
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    single = len(spec.errors) == 1
    kw: dict[str, Any] = dict(
        output=spec.outputs[0] if single else None,
        censoring=spec.censoring,
        lloq=spec.lloq,
        dvid=spec.dvid,
    )
    res: Any
    ind: Any
    # inter-occasion variability (foce-i, saem, map)
    iov_kw: dict[str, Any] = (
        dict(iov=dict(spec.iov), occasion_column=spec.occasion) if spec.iov else {}
    )
    n_coef = sum(
        len(c.coefficients()) for c in spec.population.covariates if getattr(c, "estimate", False)
    )
    coefs = f", {n_coef} covariate coefficient(s)" if n_coef else ""
    if spec.method in ("foce-i", "saem"):
        fitter: Callable[..., Any]
        extra: dict[str, Any]
        if spec.method == "foce-i":
            held = {k: b for k, b in spec.bounds.items() if k in spec.estimate}
            fitter, tag, extra = fit_population, "outer", {"bounds": held} if held else {}
            say("fit", f"FOCE-I: {len(spec.estimate)} typical values{coefs}, Omega {spec.omega}")
        else:
            from ._saem import saem

            held = {k: b for k, b in spec.bounds.items() if k in spec.estimate}
            fitter, tag, extra = saem, "iteration", dict(spec.saem)
            if held:
                extra["bounds"] = held
            say("fit", f"SAEM: {len(spec.estimate)} typical values, Omega {spec.omega}")

        def line(s: str):
            say(tag, s)

        with contextlib.redirect_stdout(_Lines(line)):
            res = fitter(
                spec.model,
                dataset,
                spec.population,
                spec.error_arg(),
                estimate=spec.estimate,
                omega=spec.omega,
                verbose=True,
                **extra,
                **iov_kw,
                **kw,
            )
        ind = res.individual
        est = _population_estimates(spec, res)
        ofv, converged, message = float(res.ofv), bool(res.converged), res.message
        if spec.method == "saem" and not message:
            message = f"OFV by importance sampling +- {res.ofv_se:.3f}"
    else:
        say("fit", "MAP: individual fits with the specification's population as the prior")
        res = fit_individual(spec.model, dataset, spec.population, spec.error_arg(), **iov_kw, **kw)
        ind = res
        est = _map_estimates(spec, ind)
        ofv = float(np.nansum(ind.objective))
        converged = bool(np.all(ind.converged))
        message = f"{int(np.sum(ind.converged))} of {ind.n} subjects converged"
    say("diagnostics", "CWRES")
    cw = res.cwres if spec.method != "map" else cwres(ind)
    nres = None
    if spec.npde:
        say("diagnostics", f"NPDE ({spec.n_sim} simulated replicates)")
        nres = compute_npde(ind, spec.n_sim, jax.random.key(spec.seed))
    record = dict(
        name=spec.name,
        method=spec.method,
        model=spec.model_name,
        spec_file=str(spec.path) if spec.path else None,
        spec_sha256=spec.sha256,
        data=data_source,
        data_sha256=data_sha256,
        started_utc=started,
        command=" ".join(sys.argv),
        versions=_versions(),
    )
    run = FitRun(
        spec=spec,
        result=res,
        individual=ind,
        estimates=est,
        npde=nres,
        record=record,
        wall_s=time.perf_counter() - t0,
        ofv=ofv,
        converged=converged,
        message=message,
        cwres=cw,
    )
    run.record["wall_s"] = run.wall_s
    return run


# ============================================================================ writing
CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table.t{border-collapse:collapse;margin:.5em 0;font-size:.92em}
table.t td,table.t th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
table.t td:first-child,table.t th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:.9em;color:#555}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
.warn{color:#a40}.ok{color:#070}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v, sig: int = 4) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return "–" if math.isnan(v) else str(v)
    return f"{v:.{sig}g}"


def _table(header, rows) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='t'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _save(fig, path: pathlib.Path) -> str:
    """Save ``fig`` as a PNG file and return it base64-encoded for the report."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return base64.b64encode(data).decode()


def _figure(b64: str, caption: str) -> str:
    return (
        f"<figure><img alt='{_esc(caption)}' src='data:image/png;base64,{b64}'/>"
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def write_fit(run: FitRun, out, *, progress=None) -> pathlib.Path:
    """Write the report, tables and figures of a fit into ``out`` (claimed already).

    Returns:
        The path of ``report.html``.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    from ..plot import eta_covariates, gof_panel, pcvpc, vpc

    say = progress or (lambda stage, detail="": None)
    out = pathlib.Path(out)
    spec, ind = run.spec, run.individual
    est = run.estimates
    est.to_csv(out / "estimates.csv")
    ind.to_dataframe().to_csv(out / "individual.csv")
    if getattr(ind, "occasions", None) is not None:  # IOV: kappa and parameter per occasion
        ind.occasions.to_csv(out / "occasions.csv", index=False)
    obs = ind.observations()
    rows = np.nonzero(ind.mask)
    obs["CWRES"] = np.asarray(run.cwres)[rows]
    if run.npde is not None:
        obs["NPDE"] = np.asarray(run.npde.npde)[rows]
    obs.to_csv(out / "observations.csv", index=False)

    say("figures", "GOF panel")
    method = spec.method.upper()
    # the method in brackets unless the specification's name already says it
    title = spec.name if method in spec.name.upper() else f"{spec.name} ({method})"
    gof = _save(gof_panel(run.result, run.npde, log=spec.log_y, title=title), out / "gof.png")
    etac = _save(eta_covariates(run.result), out / "eta_covariates.png")
    say("figures", f"VPC and pcVPC ({spec.n_sim} replicates)")
    key = jax.random.key(spec.seed + 1)
    fig, vtab = vpc(run.result, spec.n_sim, key, bins=spec.vpc_bins, log_y=spec.log_y)
    vpc_b64 = _save(fig, out / "vpc.png")
    fig, ptab = pcvpc(run.result, spec.n_sim, key, bins=spec.vpc_bins, log_y=spec.log_y)
    pc_b64 = _save(fig, out / "pcvpc.png")
    vtab.to_csv(out / "vpc.csv", index=False)
    ptab.to_csv(out / "pcvpc.csv", index=False)

    res = run.result
    summary: dict[str, Any] = dict(
        ofv=run.ofv,
        converged=run.converged,
        message=run.message,
        n_subjects=int(ind.n),
        n_obs=int(np.sum(ind.mask & ~np.asarray(ind.censored))),
        n_censored=int(np.sum(ind.censored)),
        shrinkage={k: float(v) for k, v in ind.shrinkage.items()},
        estimates={
            k: {
                c: (float(v) if isinstance(v, (int, float, np.floating)) else v)
                for c, v in r.items()
            }
            for k, r in est.to_dict(orient="index").items()
        },
    )
    if spec.method != "map":
        summary.update(minus2ll=float(res.minus2ll), aic=float(res.aic), bic=float(res.bic))
    if run.npde is not None:
        summary["npde_test"] = run.npde.test
    (out / "fit.json").write_text(
        json.dumps(dict(record=run.record, summary=summary), indent=2, default=float)
    )

    # ---- HTML
    erows = [
        [
            str(name),
            _fmt(r["estimate"]),
            _fmt(r.get("se", float("nan"))),
            _fmt(r.get("rse_pct", float("nan")), 3),
            f"{_fmt(r.get('ci95_lo', float('nan')))} – {_fmt(r.get('ci95_hi', float('nan')))}",
            str(r.get("ci_method", "") or ""),
            str(r.get("note", "") or ""),
        ]
        for name, r in est.iterrows()
    ]
    conv = (
        "<span class='ok'>converged</span>"
        if run.converged
        else "<span class='warn'>NOT converged</span>"
    )
    head = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_esc(spec.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(spec.name)}</h1>",
        f"<p>Model <b>{_esc(spec.model_name)}</b>, method <b>{_esc(spec.method.upper())}</b>, "
        f"{ind.n} subjects, {summary['n_obs']} observations"
        + (
            f", {summary['n_censored']} censored ({_esc(ind.censoring)})"
            if summary["n_censored"]
            else ""
        )
        + f"; {conv} ({_esc(run.message)}); {run.wall_s:.1f} s.</p>",
    ]
    parts = head + ["<h2 id='estimates'>Estimates</h2>"]
    if spec.method == "saem":
        parts.append(
            f"<p>SAEM (Kuhn &amp; Lavielle 2005); OFV by importance sampling (NONMEM "
            f"convention, without n·log 2π) <b>{run.ofv:.3f}</b> ± {res.ofv_se:.3f}; "
            f"−2LL {res.minus2ll:.3f}; AIC {res.aic:.3f}; BIC {res.bic:.3f}. SE from "
            "Louis' observed information.</p>"
        )
    elif spec.method == "foce-i":
        parts.append(
            f"<p>OFV (NONMEM convention, without n·log 2π) <b>{run.ofv:.3f}</b>; "
            f"−2LL {res.minus2ll:.3f}; AIC {res.aic:.3f}; BIC {res.bic:.3f}.</p>"
        )
        if res.laplacian:
            parts.append(
                "<p>The fit has censored records, so the objective's curvature is the exact "
                "second derivative in eta (the Laplace objective, NONMEM's METHOD=COND "
                "LAPLACIAN), not FOCE-I's first-order one.</p>"
            )
        parts.append(
            "<p>SE from the inverse of the finite-difference Hessian of the OFV (R matrix), "
            "natural scale by the delta method; OMEGA are variances of eta, SIGMA residual "
            "SDs.</p>"
        )
    else:
        parts.append(
            f"<p>MAP fits: the population is the prior (not estimated). Sum of the "
            f"individual objectives {run.ofv:.3f}.</p>"
        )
    parts.append(_table(["parameter", "estimate", "SE", "RSE %", "95 % CI", "CI", "note"], erows))
    shr = [[k, f"{100 * v:.1f} %"] for k, v in ind.shrinkage.items()]
    parts += ["<h3>Eta-shrinkage</h3>", _table(["parameter", "shrinkage"], shr)]
    if run.npde is not None and run.npde.test:
        t = run.npde.test
        parts += [
            "<h2 id='npde'>NPDE</h2>",
            f"<p>{run.npde.n_sim} replicates simulated from the fitted model; decorrelated "
            "per subject by the Cholesky factor of the simulated covariance (Brendel et al. "
            "2006; Comets et al. 2008). Censored records: "
            f"{_esc(run.npde.censored)}.</p>",
            _table(
                [
                    "n",
                    "mean",
                    "variance",
                    "skewness",
                    "kurtosis",
                    "p mean (Wilcoxon)",
                    "p variance (Fisher)",
                    "p normality (Shapiro-Wilk)",
                    "p global",
                    "p KS",
                ],
                [
                    [
                        str(t["n"]),
                        _fmt(t["mean"], 3),
                        _fmt(t["variance"], 3),
                        _fmt(t["skewness"], 3),
                        _fmt(t["kurtosis"], 3),
                        _fmt(t["p_mean"], 3),
                        _fmt(t["p_variance"], 3),
                        _fmt(t["p_normality"], 3),
                        _fmt(t["p_global"], 3),
                        _fmt(t["p_ks"], 3),
                    ]
                ],
            ),
        ]
    parts += [
        "<h2 id='gof'>Goodness of fit</h2>",
        _figure(gof, "GOF panel: DV vs PRED/IPRED, CWRES and NPDE vs TIME and PRED, QQ plots"),
        _figure(etac, "Empirical Bayes etas vs covariates"),
        "<h2 id='vpc'>Visual predictive checks</h2>",
        _figure(
            vpc_b64, f"VPC: observed 5/50/95th percentiles and {spec.n_sim}-replicate 90 % bands"
        ),
        _figure(pc_b64, "Prediction-corrected VPC (Bergstrand et al. 2011)"),
        "<h2 id='record'>Run record</h2>",
        _table(
            ["item", "value"],
            [[k, str(v)] for k, v in run.record.items() if k != "versions"]
            + [[f"version {k}", str(v)] for k, v in run.record["versions"].items()],
        ),
    ]
    if spec.text:
        parts += ["<h3>Specification</h3>", f"<pre>{_esc(spec.text)}</pre>"]
    parts.append("</body></html>")
    report = out / "report.html"
    report.write_text("\n".join(parts), encoding="utf-8")
    return report
