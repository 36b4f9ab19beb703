"""ORd population: twinjax's batched Rush-Larsen loop vs Myokit's CVODE, one run.

Both sides, timed in the same process on the same machine, on the same models:

* **Population**: ``ep.cell_population.sample(ep.ORd(), jax.random.key(0), N, sigma=0.3)``
  (11 conductances log-normal around the endocardial ORd values, as
  ``benchmarks/ep_population.py``), paced at 1 Hz (BCL 1000 ms, -80 A/F x 0.5 ms from
  the start of each cycle) for B beats from twinjax's shipped 1 Hz control steady state.
* **Myokit** (Clerx et al. 2016; the tool most cardiac modellers run): ORd as
  ``ohara-2011.mmt`` (M. Clerx's transcription of the authors' Matlab code,
  repository CardiacModelling/tailored-ipsc-models; GPL-3, so not shipped: pass its
  path with ``--mmt`` or ``TWINJAX_ORD_MMT``), the model twinjax ships as plain
  ``ep.ORd()`` (docs/models/ep.md). Each population parameter becomes a literal
  constant of the Myokit model (Jrel_scale multiplies ``ryr.Jrel_inf`` and
  ``ryr.Jrel_infp``, Jup_scale is ``serca.f``), so one compiled ``myokit.Simulation``
  (CVODE, rel 1e-6, abs 1e-8, no maximum step) serves every model: per model
  ``reset``, ``set_state`` (twinjax's initial state), ``set_constant`` x 11, ``pre``
  B beats (timed); then, untimed, the last beat again from its saved start state,
  logging V every 0.01 ms for APD90 (fine logging is Python-side work that twinjax's
  on-the-fly biomarkers do not pay). One model after another on one core;
  model-beats per second = k B / timed wall time (compilation timed apart). Before
  timing, the script checks that the two models are the same equations: Myokit's
  ``evaluate_derivatives`` vs ``ORd.rhs`` at the initial state of the first model.
* **twinjax**: ``ep.pace(ORd, population, B, record="last")`` (RushLarsen defaults:
  dt_max 5, dt_min 0.005 ms, dv_max 0.5 mV, error controller rtol 1e-3, float64) for
  the whole population in one compiled program, split over one JAX device per core
  (the script sets ``--xla_force_host_platform_device_count``; each device paces its
  own share of the models, no communication per step); the first k models are those
  Myokit ran. Compilation is timed with a 1-beat call (``record="last"`` takes the beat count
  as a traced value, so the B-beat call reuses the program), then the B-beat call is
  timed steady. CPU time
  (``time.process_time``) is recorded beside the wall time, so "per core" can be read
  both as per wall-second per available core and per CPU-second. Also one model alone.
* **Agreement**: APD90 (``ep.from_trace`` on Myokit's last beat; twinjax's on-the-fly
  biomarkers) of the k shared models at beat B; target: within 1 %. Also APD50 and
  qNet (Myokit: the six currents logged every 0.01 ms, trapezoidal rule).

Run: ``python benchmarks/ord_vs_myokit.py --mmt PATH`` (N = 1,000, B = 10, k = 20;
writes benchmarks/results/ord_vs_myokit.json), ``--quick`` (N = 50, B = 3, k = 3;
written to the temp dir only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BCL, STIM_AMP, STIM_DUR = 1000.0, 80.0, 0.5
LOG_STEP = 0.01  # ms

# twinjax ORd state -> ohara-2011.mmt state (the mmt lists the Matlab names beside each)
STATE_MAP = dict(
    V="membrane.V",
    Na_i="sodium.Nai",
    Na_ss="sodium.Na_ss",
    K_i="potassium.Ki",
    K_ss="potassium.K_ss",
    Ca_i="calcium.Cai",
    Ca_ss="calcium.Ca_ss",
    Ca_nsr="calcium.Ca_nsr",
    Ca_jsr="calcium.Ca_jsr",
    m="ina.m",
    hf="ina.hf",
    hs="ina.hs",
    j="ina.j",
    hsp="ina.hsp",
    jp="ina.jp",
    mL="inal.m",
    hL="inal.h",
    hLp="inal.hp",
    a="ito.a",
    iF="ito.if",
    iS="ito.is",
    ap="ito.ap",
    iFp="ito.ifp",
    iSp="ito.isp",
    d="ical.d",
    ff="ical.ff",
    fs="ical.fs",
    fcaf="ical.fcaf",
    fcas="ical.fcas",
    jca="ical.jca",
    nca="ical.nca",
    ffp="ical.ffp",
    fcafp="ical.fcafp",
    xrf="ikr.xf",
    xrs="ikr.xs",
    xs1="iks.x1",
    xs2="iks.x2",
    xk1="ik1.x",
    Jrelnp="ryr.Jrelnp",
    Jrelp="ryr.Jrelp",
    CaMKt="camk.CaMKt",
)
# the currents summed in qNet (Dutta et al. 2017), as the mmt names them
QNET_VARS = ("inal.INaL", "ical.ICaL", "ito.Ito", "ikr.IKr", "iks.IKs", "ik1.IK1")

# population parameter -> the mmt variable it replaces (endocardial cell, cell.mode = 0)
PARAM_MAP = dict(
    GNa="ina.GNa",
    GNaL="inal.GNaL",
    Gto="ito.Gto",
    PCa="ical.PCa",
    GKr="ikr.GKr",
    GKs="iks.GKs",
    GK1="ik1.GK1",
    Gncx="inaca.Gncx",
    Pnak="inak.Pnak",
    Jup_scale="serca.f",
)


def myokit_model(path: str, defaults: dict):
    """ohara-2011.mmt with the population parameters as literal constants ``tj.*``."""
    import myokit

    m = myokit.load_model(path)
    if m.get("cell.mode").eval() != 0:
        raise ValueError(f"{path}: expected cell.mode = 0 (endocardial)")
    tj = m.add_component("tj")
    for name, qname in PARAM_MAP.items():
        tj.add_variable(name).set_rhs(float(defaults[name]))
        m.get(qname).set_rhs(myokit.Name(tj.get(name)))
    tj.add_variable("Jrel_scale").set_rhs(float(defaults["Jrel_scale"]))
    for qname in ("ryr.Jrel_inf", "ryr.Jrel_infp"):  # endo: if(mode == 2, 1.7 base, base)
        v = m.get(qname)
        v.set_rhs(myokit.Multiply(myokit.Name(tj.get("Jrel_scale")), myokit.Name(v.get("base"))))
    m.get("stimulus.amplitude").set_rhs(-STIM_AMP)
    m.validate()
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmt", default=os.environ.get("TWINJAX_ORD_MMT"), help="ohara-2011.mmt")
    ap.add_argument("--quick", action="store_true", help="N = 50, B = 3, k = 3 (smoke test)")
    ap.add_argument("--n", type=int, default=None, help="twinjax population size")
    ap.add_argument("--beats", type=int, default=None, help="beats per model (both sides)")
    ap.add_argument("--k", type=int, default=None, help="models run by Myokit")
    a = ap.parse_args(argv)
    if not a.mmt or not Path(a.mmt).is_file():
        raise SystemExit(
            f"--mmt {a.mmt!r}: need the path of ohara-2011.mmt (CardiacModelling/"
            "tailored-ipsc-models), or TWINJAX_ORD_MMT"
        )
    n = a.n or (50 if a.quick else 1000)
    B = a.beats or (3 if a.quick else 10)
    k = a.k or (3 if a.quick else 20)
    if not 1 <= k <= n:
        raise SystemExit(f"--k {k}: between 1 and --n {n}")
    n_dev = C.use_all_cpu_cores()  # one JAX device per core: ep.pace splits the population
    C.setup_precision(False)

    import jax
    import myokit
    import numpy as np

    from twinjax.models import ep

    con = C.console()
    load_before = os.getloadavg()
    model = ep.ORd()
    pop = ep.cell_population.sample(model, jax.random.key(0), n, sigma=0.3)
    pop_np = {name: np.asarray(v) for name, v in pop.items()}
    p_full, _ = model.complete({name: v[0] for name, v in pop_np.items()})
    y0 = {s: float(v) for s, v in model.init(p_full).items()}

    # ---- Myokit: the same equations?
    defaults = {name: float(model.defaults()[name]) for name in pop_np}
    mm = myokit_model(a.mmt, defaults)
    states = [s.qname() for s in mm.states()]
    inv = {q: s for s, q in STATE_MAP.items()}
    missing = sorted(set(states) - set(inv))
    if missing:
        raise SystemExit(f"{a.mmt}: states without a twinjax name: {missing}")
    y0_list = [y0[inv[q]] for q in states]
    mm_check = mm.clone()
    for name in pop_np:
        mm_check.get(f"tj.{name}").set_rhs(float(pop_np[name][0]))
    d_myo = np.asarray(mm_check.evaluate_derivatives(y0_list, inputs={"pace": 0.0}))
    d_tj = model.rhs(300.0, y0, p_full, None)  # t mid-beat: no stimulus
    d_tj = np.asarray([float(d_tj[inv[q]]) for q in states])
    deriv_rel = float(np.max(np.abs(d_myo - d_tj) / np.maximum(np.abs(d_myo), 1e-300)))
    con.print(f"derivatives at the initial state: max relative difference {deriv_rel:.2e}")

    # ---- Myokit CVODE, one model after another
    proto = myokit.Protocol()
    proto.schedule(1.0, 0.0, STIM_DUR, BCL, 0)
    t = time.perf_counter()
    sim = myokit.Simulation(mm, proto)
    myokit_compile_s = time.perf_counter() - t
    sim.set_tolerance(abs_tol=1e-8, rel_tol=1e-6)
    myo_apd, myo_apd50, myo_qnet, myo_wall, myo_cpu = [], [], [], 0.0, 0.0
    for i in range(k):
        w, c = time.perf_counter(), time.process_time()
        sim.reset()
        sim.set_state(y0_list)
        for name in pop_np:
            sim.set_constant(f"tj.{name}", float(pop_np[name][i]))
        if B > 1:
            sim.pre((B - 1) * BCL)
        before_last = sim.state()
        sim.pre(BCL)
        myo_wall += time.perf_counter() - w
        myo_cpu += time.process_time() - c
        # untimed: the last beat again, logged finely for APD90 (logging costs Python time)
        sim.set_time((B - 1) * BCL)
        sim.set_state(before_last)
        d = sim.run(BCL, log=["engine.time", "membrane.V", *QNET_VARS], log_interval=LOG_STEP)
        tt = np.asarray(d["engine.time"]) - (B - 1) * BCL
        bio = ep.from_trace(tt, np.asarray(d["membrane.V"]))
        myo_apd.append(float(bio["APD90"]))
        myo_apd50.append(float(bio["APD50"]))
        inet = sum(np.asarray(d[v]) for v in QNET_VARS)  # A/F; qNet in C/F (ms -> s)
        myo_qnet.append(float(np.sum(0.5 * (inet[1:] + inet[:-1]) * np.diff(tt))) / 1000.0)
    myo_rate = k * B / myo_wall
    con.print(
        f"Myokit CVODE: {k} models x {B} beats in {myo_wall:.2f} s: {myo_rate:.1f} "
        f"model-beats/s ({1000 * myo_wall / (k * B):.1f} ms per beat); compile "
        f"{myokit_compile_s:.1f} s"
    )

    # ---- twinjax: the population in one program, then one model alone
    solver = ep.RushLarsen()

    def timed(params, beats):
        w, c = time.perf_counter(), time.process_time()
        r = ep.pace(model, params, beats, record="last", solver=solver)
        C.block(r.biomarkers)
        return r, time.perf_counter() - w, time.process_time() - c

    _, first_w, _ = timed(pop, 1)  # trace + compile + 1 beat
    res, wall, cpu = timed(pop, B)
    tj_rate = n * B / wall
    tj_compile = max(first_w - wall / B, 0.0)
    apd = np.asarray(res.biomarkers["APD90"][-1])
    steps = np.asarray(res.biomarkers["steps"][-1])
    status = np.asarray(res.status)
    con.print(
        f"twinjax: {n} models x {B} beats in {wall:.1f} s (CPU {cpu:.1f} s): {tj_rate:.1f} "
        f"model-beats/s; compile ~{tj_compile:.1f} s; {float(np.max(steps)):.0f} steps/beat"
    )
    one = {name: v[0] for name, v in pop_np.items()}
    _, first1, _ = timed(one, 1)
    res1, wall1, cpu1 = timed(one, B)
    tj1_rate = B / wall1
    con.print(f"twinjax one model: {tj1_rate:.2f} beats/s (CPU {cpu1:.1f} s for {B} beats)")

    # ---- agreement on the shared models
    rel = np.abs(apd[:k] / np.asarray(myo_apd) - 1.0)
    apd50 = np.asarray(res.biomarkers["APD50"][-1])[:k]
    qnet = np.asarray(res.biomarkers["qNet"][-1])[:k]
    rel50 = np.abs(apd50 / np.asarray(myo_apd50) - 1.0)
    relq = np.abs(qnet / np.asarray(myo_qnet) - 1.0)
    agree_rows = [
        dict(
            model=i,
            apd90_twinjax=float(apd[i]),
            apd90_myokit=myo_apd[i],
            rel_diff=float(rel[i]),
            apd50_twinjax=float(apd50[i]),
            apd50_myokit=myo_apd50[i],
            qnet_twinjax=float(qnet[i]),
            qnet_myokit=myo_qnet[i],
        )
        for i in range(k)
    ]
    apd1 = float(np.asarray(res1.biomarkers["APD90"]).ravel()[-1])

    cores = os.cpu_count() or 1
    myo_per_cpu = k * B / myo_cpu
    tj_per_cpu = n * B / cpu
    payload = dict(
        benchmark="ord_vs_myokit",
        command="python benchmarks/ord_vs_myokit.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        description=__doc__,
        quick=a.quick,
        protocol=dict(
            model="ep.ORd(celltype='endo') / ohara-2011.mmt (cell.mode = 0)",
            population=f"ep.cell_population.sample(model, jax.random.key(0), {n}, sigma=0.3)",
            pacing="BCL 1000 ms, -80 A/F x 0.5 ms from t = 0 of each cycle, from twinjax's "
            "shipped 1 Hz control steady state",
            beats=B,
            twinjax_solver=f"ep.RushLarsen(dt_max={solver.dt_max}, dt_min={solver.dt_min}, "
            f"dv_max={solver.dv_max}, rtol={solver.rtol}), float64",
            myokit_solver="myokit.Simulation (CVODE), rel_tol 1e-6, abs_tol 1e-8, "
            "no maximum step; timed without logging; the last beat re-run untimed with V "
            "and the qNet currents logged every 0.01 ms for APD90, APD50 and qNet "
            "(trapezoidal rule)",
        ),
        derivative_check=dict(max_rel_diff=deriv_rel, at="twinjax's initial state, model 0"),
        myokit=dict(
            version=myokit.__version__,
            k_models=k,
            compile_s=myokit_compile_s,
            wall_s=myo_wall,
            cpu_s=myo_cpu,
            model_beats_per_s=myo_rate,
            ms_per_beat=1000 * myo_wall / (k * B),
            model_beats_per_cpu_s=myo_per_cpu,
        ),
        twinjax=dict(
            n_models=n,
            devices=jax.local_device_count(),
            devices_asked=n_dev,
            compile_s_approx=tj_compile,
            first_call_1beat_s=first_w,
            wall_s=wall,
            cpu_s=cpu,
            cores_busy=cpu / wall,
            model_beats_per_s=tj_rate,
            model_beats_per_s_per_core=tj_rate / cores,
            model_beats_per_cpu_s=tj_per_cpu,
            steps_per_beat_max=float(np.max(steps)),
            status_counts={str(s): int(c) for s, c in zip(*np.unique(status, return_counts=True))},
            apd90_median=float(np.nanmedian(apd)),
            single=dict(
                first_call_1beat_s=first1,
                wall_s=wall1,
                cpu_s=cpu1,
                beats_per_s=tj1_rate,
                steps_per_beat=float(np.asarray(res1.biomarkers["steps"]).ravel()[-1]),
                apd90=apd1,
            ),
        ),
        ratios=dict(
            population_per_core_wall=(tj_rate / cores) / myo_rate,
            population_per_cpu_s=tj_per_cpu / myo_per_cpu,
            population_wall=tj_rate / myo_rate,
            single_model_per_beat=tj1_rate / myo_rate,
            target_population_per_core=10.0,
            target_single_model=1.0,
        ),
        agreement=dict(
            apd90_max_rel_diff=float(np.max(rel)),
            apd90_median_rel_diff=float(np.median(rel)),
            target_rel=0.01,
            passed=bool(np.max(rel) < 0.01),
            apd50_max_rel_diff=float(np.max(rel50)),
            qnet_max_rel_diff=float(np.max(relq)),
            qnet_median_rel_diff=float(np.median(relq)),
            qnet_max_abs_diff=float(np.max(np.abs(qnet - np.asarray(myo_qnet)))),
            rows=agree_rows,
        ),
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        peak_rss_gib=C.peak_rss_gib(),
        machine=C.machine_info(),
    )
    out_dir = Path(tempfile.gettempdir()) if a.quick else None
    path = C.write_json("ord_vs_myokit.json", payload, out_dir)
    r = payload["ratios"]
    con.print(
        f"ratios: population per core {r['population_per_core_wall']:.2f}x (per CPU-second "
        f"{r['population_per_cpu_s']:.2f}x; target 10x); one model "
        f"{r['single_model_per_beat']:.2f}x (target 1x); APD90 max rel diff "
        f"{payload['agreement']['apd90_max_rel_diff']:.2e} (target 1e-2), APD50 "
        f"{payload['agreement']['apd50_max_rel_diff']:.2e}, qNet "
        f"{payload['agreement']['qnet_max_rel_diff']:.2e}"
    )
    con.print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.1f} s")
