"""CiPAORdv1.0: ORd 2011 with a dynamic hERG Markov model, CiPA scalings, and qNet.

Li Z, Dutta S, Sheng J, et al. Circ Arrhythm Electrophysiol 10:e004628, 2017 (IKr
Markov model with drug binding and trapping, :mod:`._herg`); Dutta S, Chang KC,
Beattie KA, et al. Front Physiol 8:616, 2017 (conductance optimisation and the qNet
metric). Facts (equations, parameters, protocol) were read from the FDA's reference
code, FDA/CiPA @ e881df6766d1067a08b65184d7a320804aef73d6 (``AP_simulation/models/
newordherg_qNet.c``, ``newordherg_pars.txt``, ``newordherg_states_CL2000.txt``,
``funs/get_pars.R``); this is an independent JAX implementation.

Changes from ORd 2011 (:class:`~twinjax.models.ep.ORd`, whose equations are reused):

- IKr = GKr sqrt(Ko / 5.4) O (V - EK) with O the open probability of the hERG
  Markov model (9 states, :mod:`._herg`), replacing the Hodgkin-Huxley gates xrf, xrs.
- Conductances (``get_pars.R``: optimised factors applied on top of a manual 1/1.1
  IKr adjustment): GKr 0.046 * 1.114 / 1.1 = 0.0465855, GNaL x 2.661, GKs x 1.870,
  GK1 x 1.698, PCa x 1.007 (PCa also scales ICaNa and ICaK, as in ORd).
- Drug: hERG binding by the Markov model (D, Kmax, Ku, n, halfmax, Vhalf, Kt); the
  other six currents (INa, INaL, ICaL, Ito, IKs, IK1) by conductance scaling
  ``1 / (1 + (D / IC50)^h)`` (:func:`compound_params`).
- Pacing: BCL 2000 ms by default, stimulus -80 A/F for 0.5 ms.

Integration (:func:`pace_cipa`): the second-order Rush-Larsen loop that ORd's pacing
runs (:func:`twinjax.solve._rush_larsen.integrate`; gates exact for frozen
coefficients, V and concentrations by the explicit midpoint rule, voltage-controlled
step), extended with an exponential step
for the linear hERG block: ``x(t + dt) = expm(dt Q(V_mid)) x(t)`` (exact for the
frozen midpoint voltage, second order overall); its midpoint stage uses a backward
Euler half step (L-stable; the hERG rates reach ~1e3 / ms). The block is the loop's
linear-block hook (``LinearBlock``).

qNet: integral of INaL + ICaL + Ito + IKr + IKs + IK1 over one beat, in C/F (A/F * ms
/ 1000), as ``ydot[49]`` of the FDA code.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...ode import Param, State
from ...ode._param import real
from ...solve._reductions import StepReduction
from ...solve._rush_larsen import LinearBlock, integrate, pack, unpack
from . import _biomarkers as bm
from . import _herg as herg
from . import _shard
from ._ord import ORd
from ._ord_tables import GATES, OTHER_STATES
from ._solver import PacingResult, RushLarsen, batched_inputs

FDA = "FDA/CiPA@e881df6766d1067a08b65184d7a320804aef73d6"
_REF = f"{FDA}:AP_simulation/funs/get_pars.R"

# CiPA factor on the ORd 2011 endocardial base value (get_pars.R, optimized=TRUE)
CIPA_SCALING = dict(GKr=1.114 / 1.1, GNaL=2.661, GKs=1.870, GK1=1.698, PCa=1.007)
# channel -> conductance parameter blocked by the Hill model (the FDA's *fc factors)
HILL_TARGETS = dict(INa="GNa", INaL="GNaL", ICaL="PCa", Ito="Gto", IKs="GKs", IK1="GK1")
HERG_PARAMS = ("Kmax", "Ku", "n", "halfmax", "Vhalf")
# default steps of pace_cipa: first-beat control qNet 0.0696694 vs 0.0696720 of a tight
# LSODA solve of the FDA code (dv_max 0.5 mV without dy_rel, the ORd default: 0.069355)


class CiPASteps(RushLarsen):
    """:class:`~twinjax.models.ep.RushLarsen` settings plus a relative-change limit.

    Arguments (besides ``dt_max``, ``dt_min``, ``dv_max``, ``max_steps``):
        dy_rel: largest relative change per step of the concentrations and CaMKt
            (``dt <= dy_rel |y| / |dy/dt|``), so that the Ca2+ transient, which
            outlasts the upstroke, is resolved too; ``inf`` disables it.
        rtol: None (:func:`pace_cipa`'s loop has no error controller).
    """

    dy_rel: float = 0.01
    rtol: float | None = None


CIPA_SOLVER = CiPASteps(dt_max=0.5, dt_min=0.001, dv_max=0.05, dy_rel=0.01)

_GATES_CIPA = tuple(g for g in GATES if g not in ("xrf", "xrs"))

# control state at CL 2000 ms, endocardial (FDA/CiPA@e881df6:
# AP_simulation/models/newordherg_states_CL2000.txt; ORd state names of twinjax)
CONTROL_CL2000 = dict(
    V=-88.0145,
    Na_i=6.46961,
    Na_ss=6.46967,
    K_i=145.501,
    K_ss=145.501,
    Ca_i=7.45321e-05,
    Ca_ss=7.30454e-05,
    Ca_nsr=1.37897,
    Ca_jsr=1.37944,
    m=0.00733485,
    hf=0.698542,
    hs=0.698542,
    j=0.698542,
    hsp=0.455526,
    jp=0.698541,
    mL=0.000187813,
    hL=0.513396,
    hLp=0.307923,
    a=0.00100025,
    iF=0.999555,
    iS=0.871715,
    ap=0.000509652,
    iFp=0.999555,
    iSp=0.905466,
    d=2.33382e-09,
    ff=1.0,
    fs=0.971897,
    fcaf=1.0,
    fcas=1.0,
    jca=1.0,
    nca=0.0015391,
    ffp=1.0,
    fcafp=1.0,
    xs1=0.130941,
    xs2=0.000192517,
    xk1=0.996756,
    Jrelnp=1.46507e-07,
    Jrelp=1.83132e-07,
    CaMKt=0.00325232,
    **herg.CONTROL_CL2000,
)

# geometry of ORd (Text S1 p. 2): Acap / (F vmyo), to convert IKr into dK_i/dt
_L, _RAD, _F = 0.01, 0.0011, 96485.0
_VCELL = 1000 * 3.14 * _RAD * _RAD * _L
_ACAP = 2 * (2 * 3.14 * _RAD * _RAD + 2 * 3.14 * _RAD * _L)
_AFC_VMYO = _ACAP / (_F * 0.68 * _VCELL)


class CiPAORd(ORd):
    """CiPAORdv1.0 (Li et al. 2017; Dutta et al. 2017): ORd 2011 with dynamic hERG.

    Arguments:
        celltype: ``"endo"`` (default; the CiPA protocol), ``"epi"`` or ``"M"`` (ORd
            transmural factors, also on GKr).

    States: ORd's 39 states without xrf, xrs, plus the 9 hERG Markov states
    (:data:`twinjax.models.ep._herg.STATES`). ``init`` returns the FDA's control
    state at CL 2000 ms (endocardial). Parameters: ORd's (with the CiPA conductance
    values and ``BCL`` 2000 ms) plus the drug's free concentration ``D`` (nM) and
    its hERG binding parameters ``Kmax, Ku, n, halfmax, Vhalf, Kt`` (``Kmax = 0``:
    no drug binding). Use :func:`pace_cipa` to pace it (the generic
    :func:`~twinjax.models.ep.pace` has no exponential step for the Markov block).
    """

    markov: ClassVar[tuple[str, ...]] = herg.STATES
    gates: ClassVar[tuple[str, ...]] = _GATES_CIPA
    reference = (
        "Li Z, et al. Circ Arrhythm Electrophysiol 10:e004628, 2017; "
        "Dutta S, et al. Front Physiol 8:616, 2017"
    )

    def __check_init__(self):
        if self.cipa:
            raise ValueError("CiPAORd has its own CiPA scalings; leave cipa=False")

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        keep = set(OTHER_STATES) | set(_GATES_CIPA)
        out = [s for s in super().states if s.name in keep]
        out += [State(s, "1", "hERG Markov state occupancy") for s in herg.STATES]
        return tuple(out)

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        out = []
        for q in super().params:
            if q.name in CIPA_SCALING:
                f = CIPA_SCALING[q.name]
                q = q.replace(value=q.value * f, source=f"{q.source}; x {f:.6g} ({_REF})")
            elif q.name == "BCL":
                q = q.replace(value=2000.0, source=f"{FDA}:AP_simulation/AP_simulation.R")
            out.append(q)
        src = f"{FDA}:hERG_fitting/results/<drug>/pars.txt"

        def nonneg(name, value, unit, doc, upper=1e12, source=src):
            return real(name, value, unit, lower=0.0, upper=upper, source=source, doc=doc)

        out += [
            nonneg("D", 0.0, "nM", "free drug concentration", source="protocol input"),
            nonneg("Kmax", 0.0, "1", "hERG binding: maximal drug effect (0: no binding)"),
            nonneg("Ku", 0.0, "1/ms", "hERG binding: unbinding rate of O-bound drug"),
            nonneg("n", 1.0, "1", "hERG binding: Hill coefficient of the binding rate", 10.0),
            nonneg("halfmax", 1.0, "nM^n", "hERG binding: D^n of half-maximal binding rate"),
            real(
                "Vhalf",
                1.0,
                "mV",
                lower=-500.0,
                upper=500.0,
                source=src,
                doc="hERG trapping: half-activation potential of the Cbound release",
            ),
            nonneg("Kt", herg.KT, "1/ms", "hERG trapping rate", 1.0, source=_REF),
        ]
        return tuple(out)

    def init(self, p):
        z = 0.0 * p["GNa"]
        return {k: jnp.asarray(CONTROL_CL2000[k], z.dtype) + z for k in self.state_names}

    def _key(self) -> str:
        return f"{self.celltype}-cipaord"

    def ikr(self, y, p):
        """IKr (A/F) = GKr sqrt(Ko/5.4) O (V - EK) with the Markov open probability."""
        ko = p["K_o"]
        EK = 8314.0 * 310.0 / 96485.0 * jnp.log(ko / y["K_i"])
        return self._fac("GKr") * p["GKr"] * jnp.sqrt(ko / 5.4) * y["O"] * (y["V"] - EK)

    def evaluate(self, t, y, p):
        V = y["V"]
        y_ord = dict(y, xrf=0.0 * V, xrs=0.0 * V)  # HH IKr off: ORd's IKr is exactly 0
        gates, d, cur = super().evaluate(t, y_ord, p)
        gates = {k: v for k, v in gates.items() if k not in ("xrf", "xrs")}
        IKr = self.ikr(y, p)
        d["V"] = d["V"] - IKr
        d["K_i"] = d["K_i"] - IKr * _AFC_VMYO
        d.update(herg.derivatives(V, {s: y[s] for s in herg.STATES}, p))
        cur = dict(cur, IKr=IKr, Iion=cur["Iion"] + IKr)
        return gates, d, cur


# ---------------------------------------------------------------------------- drugs
_FILE = pathlib.Path(__file__).with_name("cipa_compounds.csv")


@functools.cache
def _table():
    import pandas as pd

    return pd.read_csv(_FILE, comment="#").set_index("compound")


def compounds():
    """The CiPA training compounds (pandas DataFrame indexed by name).

    Columns: ``cmax_free_nM``, ``cipa_class`` (2 high, 1 intermediate, 0 low), the
    hERG binding parameters ``Kmax, Ku, n, halfmax, Vhalf``, ``<channel>_IC50``
    (nM, NaN = no block) and ``<channel>_h`` for INa, INaL, ICaL, Ito, IKs, IK1 (and
    the static hERG fit, unused by the dynamic model), ``source``.
    """
    return _table().copy()


def compound_params(model: CiPAORd, compound: str, conc_nM, params: dict | None = None) -> dict:
    """Parameters of ``model`` with a compound at free concentration ``conc_nM``.

    Sets ``D``, the hERG binding parameters and ``Kt`` (3.5e-5 / ms), and divides
    the conductance of each Hill-blocked current by ``1 + (D / IC50)^h`` (as the
    FDA's ``get_pars.R``). ``conc_nM`` may be a scalar or an ``(N,)`` array.

    Raises:
        KeyError: unknown compound.
    """
    tab = _table()
    key = compound.lower()
    if key not in tab.index:
        raise KeyError(f"unknown compound {compound!r}; known: {list(tab.index)}")
    row = tab.loc[key]
    out = dict(params or {})
    D = jnp.asarray(conc_nM, jnp.result_type(float))
    out["D"] = D
    for k in HERG_PARAMS:
        out[k] = jnp.zeros_like(D) + float(row[k])
    out["Kt"] = jnp.zeros_like(D) + herg.KT
    for ch, name in HILL_TARGETS.items():
        ic50, h = float(row[f"{ch}_IC50"]), float(row[f"{ch}_h"])
        if not np.isfinite(ic50):
            continue
        base = jnp.asarray(out.get(name, model.param(name).value))
        out[name] = base / (1.0 + (D / ic50) ** h)
    return out


# --------------------------------------------------------------------------- solver
def _propose(solver, y, d):
    """Every cell's step at the step start: ``dv_max / |dV/dt|``, at most a relative
    change ``dy_rel`` of each concentration, clipped to ``[dt_min, dt_max]`` (the loop
    lands it on the end of the stimulus and of the beat)."""
    dt = solver.dv_max / (jnp.abs(d["V"]) + 1e-12)
    dy_rel = getattr(solver, "dy_rel", math.inf)
    if math.isfinite(dy_rel):
        for k in OTHER_STATES[1:]:
            dt = jnp.minimum(dt, dy_rel * jnp.abs(y[k]) / (jnp.abs(d[k]) + 1e-30))
    return jnp.clip(dt, solver.dt_min, solver.dt_max)


def _markov_half(hQ, x0, eye):
    """Backward Euler step of ``dx/dt = Q x``: ``(I - h Q)^-1 x0`` (L-stable)."""
    return jnp.linalg.solve(eye - hQ, x0[..., None])[..., 0]


def _markov_full(hQ, x0, eye):
    """Exponential step of ``dx/dt = Q x``: ``expm(h Q) x0`` (exact for frozen Q)."""
    return jnp.einsum("nij,nj->ni", herg.expm_generator(hQ), x0)


def _beat(model, solver, p, y):
    """One beat of every cell (the scheme of the module docstring).

    The loop is :func:`twinjax.solve._rush_larsen.integrate` (the one ORd and LR1991
    run), with the hERG Markov block as its linear block: backward Euler to the
    midpoint in the first stage (inside a ``lax.cond``), the exponential full step
    after the stages (outside the conditional: inside the stage loop the steady beat
    of 64 cells was 15 % slower). Two stages around one call of ``model.evaluate``
    and packed carries: against two inlined stages with dict carries (2026-11-30,
    CPU seconds) program text 0.57 -> 0.40 MB, compile 8.7 -> 6.9 s for two cells,
    steady beat of 64 cells 3.8-3.9 -> 2.6-2.8 s; states and biomarkers within 2e-12.
    """
    bcl = p["BCL"]
    N = bcl.shape[0]
    acc0 = bm.init_acc(y["V"])
    eye = jnp.broadcast_to(jnp.eye(len(model.markov), dtype=bcl.dtype), (N, 9, 9))
    names, anames = tuple(model.state_names), tuple(acc0)
    iV = names.index("V")

    def evaluate(t, yk):
        g, d, cur = model.evaluate(t, yk, p)
        return g, d, sum(cur[n] for n in model.qnet_currents)

    def reduce(A, ok, t, dt, Y, Y_new, D0, D1, qn):
        acc = bm.update_acc(unpack(A, anames), ok, t, dt, Y[iV], Y_new[iV], D0[0], D1[0], qn)
        return pack(acc, anames)

    markov = LinearBlock(
        names=tuple(model.markov),
        keep=lambda yk: yk["V"],
        half=lambda h, V, x0: _markov_half(h[:, None, None] * herg.generator(V, p), x0, eye),
        full=lambda dt, V, x0: _markov_full(dt[:, None, None] * herg.generator(V, p), x0, eye),
    )
    o = integrate(
        evaluate,
        {k: y[k] for k in names},
        bcl,
        gates=tuple(model.gates),
        controlled=("V",),
        propose=lambda t, y, d, h_err: _propose(solver, y, d),
        t_disc=p["stim_dur"],
        max_steps=solver.max_steps,
        reduce=StepReduction(pack(acc0, anames), reduce),
        linear=markov,
    )
    bio = bm.finish(unpack(o.acc, anames), o.y["V"])
    bio["steps"] = jnp.broadcast_to(o.steps, (N,))
    return o.y, bio, o.status


@eqx.filter_jit
def _pace(model, solver, p, y0, n_beats):
    N = p["BCL"].shape[0]

    def one(carry, _):
        y, status = carry
        y, bio, st = _beat(model, solver, p, y)
        return (y, jnp.maximum(status, st)), bio

    (y, status), bio = jax.lax.scan(one, (y0, jnp.zeros((N,), jnp.int32)), None, length=n_beats)
    return y, bio, status


def pace_cipa(
    model: CiPAORd,
    params=None,
    n_beats: int = 1,
    *,
    y0=None,
    solver: RushLarsen | None = None,
    dtype=None,
    devices: int | None = None,
) -> PacingResult:
    """Pace CiPAORd (one cell or a batch) for ``n_beats`` beats.

    Arguments:
        model: a :class:`CiPAORd`.
        params: ``{name: value}`` (scalars or ``(N,)`` arrays), e.g. from
            :func:`compound_params`; missing entries take their defaults.
        n_beats: number of beats (static: every beat's biomarkers are returned).
        y0: initial state (default ``model.init``: the FDA control state at CL 2000
            ms with no drug bound).
        solver: step settings (:class:`~twinjax.models.ep.RushLarsen`; default
            :data:`CIPA_SOLVER`: ``dt_max`` 0.5 ms, ``dv_max`` 0.05 mV, ``dt_min``
            0.001 ms, ``dy_rel`` 0.01).
        dtype: floating dtype (default float64 under x64).
        devices: split a batch over this many devices (default: all of this
            process's devices; 1: one loop); results are the same for any count,
            as in :func:`~twinjax.models.ep.pace`.

    Returns:
        A :class:`~twinjax.models.ep.PacingResult` with per-beat biomarkers
        ``(n_beats, N)`` (``qNet`` in C/F, APDs, EAD, ...), no trace.
    """
    solver = solver or CIPA_SOLVER
    if solver.rtol is not None:
        raise ValueError(
            f"pace_cipa: solver.rtol = {solver.rtol}, but its step loop has no error "
            "controller; pass CiPASteps(...) or RushLarsen(..., rtol=None)"
        )
    if n_beats < 1:
        raise ValueError(f"n_beats must be >= 1, got {n_beats}")
    p, y0, n = batched_inputs(model, params, y0, dtype)
    nb = p["BCL"].shape[0]
    n_dev = _shard.device_count(devices, nb, n)
    if n_dev > 1:
        run = jax.tree_util.Partial(_pace, model, solver, n_beats=int(n_beats))
        y, bio, status = _shard.pace_split(run, p, y0, nb, n_dev)
    else:
        y, bio, status = _pace(model, solver, p, y0, int(n_beats))
    if n is None:
        y = {k: v[0] for k, v in y.items()}
        bio = {k: v[:, 0] for k, v in bio.items()}
        status = status[0]
    return PacingResult(y, bio, status, None, None)


def qnet(model: CiPAORd, params=None, n_beats: int = 1, **kw):
    """qNet (C/F) of the last of ``n_beats`` beats (shape of the batch)."""
    return pace_cipa(model, params, n_beats, **kw).biomarkers["qNet"][-1]
