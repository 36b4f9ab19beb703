"""Quasi-static multi-scale coupling above the organ models: a drug's PK driving the
circulation's periodic steady states.

When the drug kinetics (hours) is much slower than the organ's own dynamics (a few
beats), the organ is, at every time, at the periodic steady state of its parameters
modified by the current concentration. This module sits above both the circulation
(:mod:`twinjax.models.circulation`, which never imports it) and the PK machinery
(``couple``, ``simulate_cohort``): :func:`steady_state_cohort` solves a cohort's
periodic steady states (Anderson-accelerated), and :class:`QuasiStaticTwin` runs
virtual-trial arms with them. The organ-level ``circulation.quasi_static`` (steady
states at the concentrations of a given PK result) lives with the circulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Coupled, Link, Model
from ..solve._periodic import first_failure, solve_fixed_point
from .circulation import METRIC_UNITS, Circulation, blood_volume, final_beat


# ---------------------------------------------------------------------------------
# fast periodic steady states for large cohorts (Anderson-accelerated beat map)
# ---------------------------------------------------------------------------------
@eqx.filter_jit
def _anderson_core(model, solver, p, Y0, tol, max_beats, memory, n_save):
    # each patient's last beat (its metrics: a per-step reduction, or saves) in the
    # same loop, once it stops (final: one integration in the program)
    G, embed, x0, zeros, finish = final_beat(model, solver, p, Y0, n_save)
    w = 1.0 / (1.0 + jnp.abs(x0))  # the scale of the convergence test (as the model's)
    fp = solve_fixed_point(
        G,
        x0,
        method="anderson",
        tol=tol,
        max_iter=max_beats,
        scale=w,
        memory=memory,
        final=zeros,
    )
    Y = embed(fp.x)
    status = first_failure(fp.status, fp.final_status)
    _, metrics, _ = finish(Y, fp.final, status)
    return Y, fp.iterations, fp.converged, fp.residual, metrics, status


@eqx.filter_jit
def _anderson_sharded(model, solver, p, Y0, tol, max_beats, memory, n_save, n_dev: int):
    """``_anderson_core`` with each device iterating its own share of the patients."""
    from ..solve._devices import per_device

    def local(p, Y0, tol, max_beats):
        return _anderson_core(model, solver, p, Y0, tol, max_beats, memory, n_save)

    return per_device(local, n_dev, (p, Y0), (tol, max_beats))


def steady_state_cohort(
    model: Circulation,
    params: Mapping,
    y0: Mapping | None = None,
    solver=None,
    *,
    tol: float = 1e-4,
    max_beats: int = 60,
    memory: int = 4,
    n_save: int | None = None,
    dtype=None,
    devices: int | None = None,
) -> dict:
    """Periodic steady states of a cohort of circulations, Anderson-accelerated.

    The beat map ``x -> G(x)`` (the non-cumulative state at the start of a beat to
    the state one beat later, integrated in the phase as in
    :func:`~twinjax.models.circulation.to_periodic_steady_state`) has a few slow
    modes (blood redistributing between compartments; about 0.85 per beat), so plain
    beat-by-beat iteration needs tens of beats. Anderson acceleration (type II,
    ``memory`` previous residuals; Walker & Ni, SIAM J Numer Anal 49:1715, 2011)
    mixes the last iterates so that those modes are solved for, typically in under
    ten beats from a nearby state. It is an affine combination of beat-map values,
    so the total blood volume (a linear invariant) is kept exactly. A patient has
    converged when the largest scaled beat-map residual ``|G(x) - x| / (1 + |x0|)``
    is below ``tol``; then one more beat gives the metrics: by a per-step reduction
    of its integration (``n_save`` None, the default, with a solver that has
    ``step_reductions``, ``Ensemble``: the extremes of each step's cubic Hermite
    interpolant, no saved beat), else from ``n_save`` (default 201) saves. The
    iteration is :func:`twinjax.solve._periodic.solve_fixed_point` (``"anderson"``).

    Arguments:
        model: a :class:`~twinjax.models.circulation.Circulation`.
        params: ``{name: (N,)}`` (missing names take their defaults).
        y0: start state ``{state: (N,) or scalar}`` (default ``model.init``), e.g. the
            typical patient's periodic steady state (a warm start). The total blood
            volume is an invariant of the model, and the periodic steady state depends
            on it: the warm start is shifted (in ``p_VEN_SYS``) to the volume of
            ``model.init(params)``, so the result is the steady state a cold start
            (:func:`~twinjax.models.circulation.to_periodic_steady_state`) reaches.
        solver: default ``solvers.Ensemble("rk4", dt=1/400)`` (400 steps per beat,
            in the phase).
        tol, max_beats, memory, n_save: as above.
        dtype: floating dtype (default float64 with x64 on).
        devices: split the patients over this many devices (default: all of
            ``jax.devices()`` when ``N`` divides evenly; each device iterates its own
            patients, so the results do not depend on the split).

    Returns:
        ``{"state", "beats", "converged", "residual", "metrics", "status"}``, each
        ``(N,)`` (``state`` and ``metrics`` are dicts). ``status`` is a
        :class:`~twinjax.Status` code: ``NOT_CONVERGED`` for a patient still above
        ``tol`` after ``max_beats`` beats; the metrics of a patient whose status is not
        OK are NaN (its ``state`` is its last iterate).
    """
    from ..ode._model import default_float
    from ..solve._batch import batch_params, initial_state, stack_initial
    from ..solve._ensemble import Ensemble

    dtype = dtype or default_float()
    solver = solver if solver is not None else Ensemble("rk4", dt=1.0 / 400.0)
    p, _, nb = batch_params(model, params, dtype)
    y = model.init(p)
    if y0 is not None:  # keep the blood volume of model.init: it selects the orbit
        target = blood_volume(y, p)
        y = initial_state(model, p, y0, nb, dtype)
        y["p_VEN_SYS"] = y["p_VEN_SYS"] + (target - blood_volume(y, p)) / p["C_VEN_SYS"]
    Y0 = stack_initial(model, p, y, nb, dtype)
    n_dev = len(jax.devices()) if devices is None else int(devices)
    core_args = (jnp.asarray(tol, dtype), jnp.asarray(max_beats, jnp.int32), int(memory),
                 None if n_save is None else int(n_save))  # fmt: skip
    if n_dev > 1 and nb % n_dev == 0:
        from ..solve._devices import shard

        p, Y0 = shard((p, Y0), n_dev)
        Y, beats, conv, res, metrics, status = _anderson_sharded(
            model, solver, p, Y0, *core_args, n_dev
        )
    else:
        Y, beats, conv, res, metrics, status = _anderson_core(model, solver, p, Y0, *core_args)
    state = {k: Y[:, i] for i, k in enumerate(model.state_names)}
    return dict(
        state=state, beats=beats, converged=conv, residual=res, metrics=metrics, status=status
    )


# ---------------------------------------------------------------------------------
# a PK -> circulation twin for virtual trials
# ---------------------------------------------------------------------------------
BEAT_METRICS = ("MAP", "SBP", "DBP", "SV", "EF", "CO", "EDV", "ESV", "HR")


class QuasiStaticTwin(Model):
    """A drug's PK (hours) driving a circulation (seconds), coupled quasi-statically.

    The parameters are those of ``couple({"pk": pk, "circ": Circulation()}, links)``
    (``pk.*``, ``circ.*`` and each link's own, e.g. ``drug.Emax``, ``drug.EC50``), so
    a :class:`~twinjax.Population` varies any of them. A virtual trial simulates the
    PK on its save grid (doses go to ``"pk.<compartment>"``) and, at the *beat
    times* it asks for, runs every patient's circulation to its periodic steady state
    at the concentration of that time (the links applied as in ``couple``), with
    :func:`steady_state_cohort`. Outputs: the PK model's outputs (``pk.C``) and the
    per-beat hemodynamics ``circ.MAP, circ.SBP, circ.DBP, circ.SV, circ.EF, circ.CO,
    circ.EDV, circ.ESV, circ.HR`` (NaN at times that are not beat times).

    Warm start: each patient's drug-free steady state starts from the typical
    patient's periodic steady state (computed once, to 1e-9); each on-drug steady
    state starts from the patient's own drug-free one. Every (patient, time) whose
    concentration is exactly zero (placebo, before the first dose) shares the
    drug-free steady state.

    Time units, on purpose two: the twin's time axis (save times, beat times, doses)
    is the PK model's (:attr:`pk_time_unit`, hours for the shipped PK models; an
    undeclared PK model is taken to be in hours), and the circulation runs in its own
    seconds (:attr:`organ_time_unit`): a periodic steady state is a function of the
    concentration only, never of the PK's clock.

    Structure: the twin *holds* the :class:`~twinjax.Coupled` model
    ``couple(..., time_unit=pk unit)`` (:attr:`coupled`, the circulation converted
    exactly to the PK's unit) and takes its states, parameters, dosing and equations
    from it (its ``rhs`` is not used by trials); it declares the trial capabilities of
    :class:`~twinjax.Model` (:attr:`runs_own_trials` and the per-beat outputs).
    """

    coupled: Coupled
    tol: float = 1e-4
    max_beats: int = 60
    chunk: int = 1024
    dt_beat: float = 1.0 / 400.0

    #: the circulation's own time unit (beats, ``dt_beat``, the steady states)
    organ_time_unit: ClassVar[str] = "s"
    #: a trial runs an arm with :meth:`trial_simulate` (PK, then steady states)
    runs_own_trials: ClassVar[bool] = True

    def __init__(self, pk_model, links, *, tol=1e-4, max_beats=60, chunk=1024, dt_beat=1 / 400):
        circ = Circulation()
        if circ.time_unit != self.organ_time_unit:
            raise ValueError(
                f"QuasiStaticTwin: the circulation's time unit is {circ.time_unit}, expected "
                f"{self.organ_time_unit} (dt_beat and the beat metrics are in it)"
            )
        unit = pk_model.time_unit or "h"
        self.coupled = Coupled({"pk": pk_model, "circ": circ}, links, time_unit=unit)
        for ln in self.coupled.links:
            if not (ln.source.startswith("pk.") and ln.target.startswith("circ.")):
                raise ValueError(f"QuasiStaticTwin links go from pk.* to circ.*, got {ln}")
        self.tol = float(tol)
        self.max_beats = int(max_beats)
        self.chunk = int(chunk)
        self.dt_beat = float(dt_beat)

    # ---- the coupled model's structure and equations ------------------------------
    @property
    def models(self) -> tuple[tuple[str, Model], ...]:
        """``(("pk", pk_model), ("circ", Circulation()))``, as :attr:`Coupled.models`."""
        return self.coupled.models

    @property
    def links(self) -> tuple[Link, ...]:
        return self.coupled.links

    @property
    def states(self):
        return self.coupled.states

    @property
    def params(self):
        return self.coupled.params

    @property
    def stiff(self):  # type: ignore[override]
        return self.coupled.stiff

    @property
    def time_unit(self):  # type: ignore[override]
        """The twin's time axis: the PK model's unit (its declared one, else ``"h"``)."""
        return self.coupled.time_unit

    @property
    def time_scales(self) -> dict[str, float]:
        return self.coupled.time_scales

    def dose_parameters(self):
        return self.coupled.dose_parameters()

    def rhs(self, t, y, p, u):
        return self.coupled.rhs(t, y, p, u)

    def init(self, p):
        return self.coupled.init(p)

    def observe(self, t, y, p):
        return self.coupled.observe(t, y, p)

    # ---- the parts ----------------------------------------------------------------
    @property
    def pk_model(self):
        return dict(self.models)["pk"]

    @property
    def pk_time_unit(self) -> str:
        """The twin's time axis: the PK model's unit (save and beat times, doses)."""
        return cast(str, self.time_unit)

    @property
    def circulation(self) -> Circulation:
        return cast(Circulation, dict(self.models)["circ"])  # a Circulation(), see __init__

    # ---- trial capabilities (see Model) -------------------------------------------
    @property
    def beat_output_names(self) -> tuple[str, ...]:
        return tuple(f"circ.{k}" for k in BEAT_METRICS)

    @property
    def trial_output_names(self) -> tuple[str, ...]:
        """What a trial can read: PK outputs and states, and the per-beat metrics."""
        pk = self.pk_model
        return (
            tuple(f"pk.{k}" for k in pk.output_names)
            + tuple(f"pk.{k}" for k in pk.state_names)
            + self.beat_output_names
        )

    @property
    def default_trial_outputs(self) -> tuple[str, ...]:
        """The drug concentrations the links read (``pk.C``) and the per-beat metrics."""
        sources = tuple(dict.fromkeys(ln.source for ln in self.links))
        return sources + self.beat_output_names

    @property
    def output_units(self) -> dict[str, str]:
        """The per-beat metrics' units (``circ.MAP``: mmHg, ...)."""
        return {f"circ.{k}": METRIC_UNITS[k] for k in BEAT_METRICS}

    def varies_in_time(self, name: str) -> bool:
        """Only ``pk.*`` parameters: the circulation's beats are computed in their own
        loop, where parameters cannot change between visits."""
        return name.startswith("pk.")

    def _typical_state(self, p_typ):
        key = tuple(sorted((k, float(v)) for k, v in p_typ.items()))
        cache = _TYPICAL_CACHE.get(key)
        if cache is None:
            from ..solve._ensemble import Ensemble

            one = {k: jnp.full((1,), v) for k, v in p_typ.items()}
            ss = steady_state_cohort(
                self.circulation, one, None, Ensemble("dopri5", rtol=1e-9, atol=1e-9),
                tol=1e-9, max_beats=400,
            )  # fmt: skip
            cache = {k: float(v[0]) for k, v in ss["state"].items()}
            _TYPICAL_CACHE[key] = cache
        return cache

    def trial_simulate(self, params, regimen, times, *, beat_times, solver=None, outputs=(),
                       progress=True, store=None, verify=False):  # fmt: skip
        """Simulate a trial arm: ``({output: (N, T)}, status (N,), info)``.

        Arguments:
            params: ``{name: (N,)}``, every parameter of this model.
            regimen: the arm's :class:`~twinjax.Regimen` (doses to ``pk.*``) or None.
            times: ``(T,)`` save times (in :attr:`pk_time_unit`, hours for the shipped
                PK models); ``beat_times`` must be among them.
            beat_times: times at which the per-beat metrics are computed.
            solver: the solver of the PK simulation.
            outputs: the outputs to return.
            progress: show a progress bar.
            store: a Zarr folder for the PK simulation.
        """
        from ..ode._couple import couple
        from ..solve._cohort import simulate_cohort
        from ..solve._ensemble import Ensemble

        times = np.asarray(times, float)
        # a pk.* parameter may change in time (a Piecewise, e.g. inter-occasion
        # variability): the PK simulation applies it; circulation parameters may not
        bad = [k for k, v in params.items() if not k.startswith("pk.") and np.ndim(v) != 1]
        if bad:
            raise ValueError(
                f"QuasiStaticTwin.trial_simulate: parameter(s) {bad} must be (N,) arrays; "
                "only pk.* parameters may change in time"
            )
        N = int(np.shape(next(v for k, v in params.items() if not k.startswith("pk.")))[0])
        pkm = couple({"pk": self.pk_model})
        pk_params = {k: v for k, v in params.items() if k.startswith("pk.")}
        pk_out = [o for o in outputs if o.startswith("pk.")]
        needed = sorted({ln.source for ln in self.links} | set(pk_out))
        status = np.zeros(N, np.int64)
        if regimen is None:
            pk_vals = {o: np.zeros((N, times.size)) for o in needed}
        else:
            res = simulate_cohort(pkm, pk_params, regimen, times, solver=solver, store=store,
                                  outputs=needed, progress=progress, verify=verify)  # fmt: skip
            pk_vals = {o: np.asarray(res[o]) for o in needed}
            status = np.maximum(status, np.asarray(res.status))
        cols = np.array([int(np.argmin(np.abs(times - b))) for b in beat_times])
        K = cols.size
        circ = self.circulation
        sub = lambda pre: {k[len(pre):]: np.asarray(v) for k, v in params.items()  # noqa: E731
                           if k.startswith(pre)}  # fmt: skip
        base = sub("circ.")
        full, _ = circ.complete({k: v for k, v in base.items()}, dtype=jnp.float64)
        full = {k: np.broadcast_to(np.asarray(v), (N,)) for k, v in full.items()}

        def effective(conc):  # conc {source: (M,)}, rows -> circulation params (M,)
            p = dict(conc["_base"])
            for ln in self.links:
                q = {x.name: conc["_link"][f"{ln.name}.{x.name}"] for x in ln.param_table()}
                tp = ln.target.split(".", 1)[1]
                p[tp] = np.asarray(ln.apply(jnp.asarray(conc[ln.source]), jnp.asarray(p[tp]), q))
            return p

        link_p = {
            f"{ln.name}.{x.name}": np.asarray(params[f"{ln.name}.{x.name}"])
            for ln in self.links
            for x in ln.param_table()
        }
        typ = self._typical_state({k: float(np.median(v)) for k, v in full.items()})
        ens = Ensemble("rk4", dt=self.dt_beat)
        C = {s: pk_vals[s][:, cols] for s in {ln.source for ln in self.links}}  # (N, K)
        on = np.zeros((N, K), bool)
        for s in C:
            on |= C[s] != 0.0
        n_drug = int(on.sum())
        total = N + n_drug
        bar = _progress(progress, total, "steady states")
        # drug-free steady states (links at zero concentration)
        zero = {s: np.zeros(N) for s in C}
        p0 = effective({"_base": full, "_link": link_p, **zero})
        st0, met0, ok0 = self._solve(p0, {k: np.full(N, v) for k, v in typ.items()}, ens, bar)
        status = np.maximum(status, ok0)
        metrics = {k: np.repeat(met0[k][:, None], K, axis=1) for k in BEAT_METRICS}
        if n_drug:
            ii, kk = np.nonzero(on)
            pd_ = effective({
                "_base": {k: v[ii] for k, v in full.items()},
                "_link": {k: v[ii] for k, v in link_p.items()},
                **{s: C[s][ii, kk] for s in C},
            })  # fmt: skip
            st1, met1, ok1 = self._solve(pd_, {k: v[ii] for k, v in st0.items()}, ens, bar)
            for k in BEAT_METRICS:
                metrics[k][ii, kk] = met1[k]
            np.maximum.at(status, ii, ok1)
        if bar is not None:
            bar.stop()
        vals = {}
        for o in outputs:
            if o in pk_vals:
                vals[o] = pk_vals[o]
            elif o.startswith("circ."):
                a = np.full((N, times.size), np.nan)
                a[:, cols] = metrics[o.split(".", 1)[1]]
                vals[o] = a
        return vals, status

    def _solve(self, p, y0, solver, bar):
        """Steady states of ``M`` rows in fixed-size chunks (one compilation)."""
        M = int(np.shape(next(iter(p.values())))[0])
        B = min(self.chunk, max(16, 1 << (M - 1).bit_length()))  # few distinct shapes
        states = {k: np.empty(M) for k in self.circulation.state_names}
        mets = {k: np.empty(M) for k in BEAT_METRICS}
        status = np.zeros(M, np.int64)
        for a in range(0, M, B):
            idx = np.minimum(np.arange(a, a + B), M - 1)  # pad the last chunk
            n_real = min(B, M - a)
            out = steady_state_cohort(
                self.circulation,
                {k: jnp.asarray(np.broadcast_to(v, (M,))[idx]) for k, v in p.items()},
                {k: jnp.asarray(np.broadcast_to(v, (M,))[idx]) for k, v in y0.items()},
                solver, tol=self.tol, max_beats=self.max_beats,
            )  # fmt: skip
            sl = slice(a, a + n_real)
            for k in states:
                states[k][sl] = np.asarray(out["state"][k])[:n_real]
            for k in BEAT_METRICS:
                mets[k][sl] = np.asarray(out["metrics"][k])[:n_real]
            status[sl] = np.asarray(out["status"])[:n_real]  # NOT_CONVERGED included
            if bar is not None:
                bar.advance(bar.task_ids[0], n_real)
        return states, mets, status


_TYPICAL_CACHE: dict = {}


def _progress(show, total, what):
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        f"[bold]{what}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )
    bar.add_task(what, total=total)
    bar.start()
    return bar
