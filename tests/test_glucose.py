"""Glucose models: minimal model (IVGTT), UVA/Padova basal state, outcomes, closed loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import twinjax as tj
from twinjax.models import glucose as gl

TIGHT = tj.solvers.Diffrax(rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------- minimal model
def test_ivgtt_without_insulin_matches_the_analytic_solution():
    """gamma = 0, no first phase: I = Ib, X = 0, G = Gb + (G0 - Gb) exp(-Sg t)."""
    m = gl.MinimalModel()
    p = dict(Sg=0.021, Gb=88.0, V=1.6, gamma=0.0)
    ts = np.asarray(gl.IVGTT_TIMES, float)
    r = tj.simulate(m, p, gl.ivgtt(p["V"], dose=0.3), ts, solver=TIGHT)
    G0 = p["Gb"] + 300.0 / p["V"]
    want = p["Gb"] + (G0 - p["Gb"]) * np.exp(-p["Sg"] * ts)
    np.testing.assert_allclose(r.outputs["G"], want, rtol=1e-9)
    np.testing.assert_allclose(r.outputs["I"], 11.0, rtol=1e-12)


def test_ivgtt_against_scipy_radau():
    m = gl.MinimalModel()
    p, _ = m.complete(dict(Si=6e-4, gamma=0.005))
    p = {k: float(v) for k, v in p.items()}
    ts = np.asarray(gl.IVGTT_TIMES, float)
    r = tj.simulate(m, p, gl.ivgtt(p["V"], first_phase=50.0), ts, solver=TIGHT)

    def f(t, y):
        G, X, I = y
        return [
            -(p["Sg"] + X) * G + p["Sg"] * p["Gb"],
            -p["p2"] * X + p["p2"] * p["Si"] * (I - p["Ib"]),
            -p["n"] * (I - p["Ib"]) + p["gamma"] * max(G - p["h"], 0.0) * t,
        ]

    y0 = [p["Gb"] + 300.0 / p["V"], 0.0, p["Ib"] + 50.0]
    ref = scipy.integrate.solve_ivp(f, (0, 180), y0, "Radau", ts, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.outputs["G"], ref.y[0], rtol=1e-7)
    np.testing.assert_allclose(r.outputs["X"], ref.y[1], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(r.outputs["I"], ref.y[2], rtol=1e-7)


def test_minimal_model_defaults_and_ivgtt_are_in_published_normal_ranges():
    """Normal subjects (Bergman 1989; Pacini & Bergman 1986): Si 2-15e-4 /min per uU/mL,
    Sg 0.01-0.04 /min; FSIGT glucose ~250-300 mg/dL at 2 min, back near basal by 180 min,
    glucose disappearance K_G (slope of ln G, 10-19 min) above 1 %/min."""
    m = gl.MinimalModel()
    d = {q.name: q.value for q in m.params}
    assert 2e-4 <= d["Si"] <= 15e-4 and 0.01 <= d["Sg"] <= 0.04
    ts = np.asarray(gl.IVGTT_TIMES, float)
    r = tj.simulate(m, {}, gl.ivgtt(d["V"], first_phase=60.0), ts)
    G = np.asarray(r.outputs["G"])
    assert 230 < G[1] < 300
    assert abs(G[-1] - d["Gb"]) < 15
    sel = (ts >= 10) & (ts <= 19)
    kg = -100 * np.polyfit(ts[sel], np.log(G[sel]), 1)[0]
    assert 1.0 < kg < 4.0


def test_minimal_model_fit_recovers_si_and_sg():
    """Gauss-Newton on an FSIGT with forward-mode sensitivities recovers (Sg, Si)."""
    m = gl.MinimalModel()
    ts = np.asarray(gl.IVGTT_TIMES, float)
    true = dict(Sg=0.02, Si=7e-4)
    reg = gl.ivgtt(1.7, first_phase=60.0)
    sol = tj.solvers.Ensemble(rtol=1e-10, atol=1e-10)  # forward-mode differentiable

    def G(z):
        r = tj.simulate(m, dict(Sg=jnp.exp(z[0]), Si=jnp.exp(z[1])), reg, ts, solver=sol)
        return jnp.log(r.outputs["G"])

    y = G(jnp.log(jnp.array([true["Sg"], true["Si"]])))
    z = jnp.log(jnp.array([0.03, 3e-4]))
    for _ in range(8):
        J = jax.jacfwd(G)(z)
        res = G(z) - y
        z = z - jnp.linalg.lstsq(J, res)[0]
    np.testing.assert_allclose(jnp.exp(z), [true["Sg"], true["Si"]], rtol=1e-6)


# ---------------------------------------------------------------- UVA/Padova
def test_loader_and_basal_state_match_the_published_table():
    import csv
    import importlib.resources

    path = importlib.resources.files("twinjax.models.glucose") / "data/vpatient_params.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(gl.patient_names()) == 30
    p = gl.patient_params()
    m = gl.UvaPadova()
    y0 = m.init(m.complete(p)[0])
    cols = dict(
        qsto1="x0_ 1", qsto2="x0_ 2", qgut="x0_ 3", Gp="x0_ 4", Gt="x0_ 5", Ip="x0_ 6",
        X="x0_ 7", I1="x0_ 8", Id="x0_ 9", Il="x0_10", isc1="x0_11", isc2="x0_12", Gs="x0_13",
    )  # fmt: skip
    for s, c in cols.items():
        want = np.asarray([float(r[c]) for r in rows])
        np.testing.assert_allclose(y0[s], want, rtol=1e-6, atol=1e-9, err_msg=s)
    adults = gl.load_patients("adult")
    assert adults["Name"] == tuple(f"adult#{i:03d}" for i in range(1, 11))
    with pytest.raises(KeyError, match="unknown patient"):
        gl.load_patients(["adult#099"])


def test_basal_state_is_a_steady_state_for_all_patients():
    m = gl.UvaPadova()
    p, _ = m.complete(gl.patient_params())
    y = m.init(p)
    u = {s: jnp.zeros_like(p["BW"]) for s in m.state_names}
    d = m.rhs(0.0, y, p, u)
    for s in m.state_names:
        scale = jnp.maximum(jnp.abs(y[s]), 1.0)
        assert float(jnp.max(jnp.abs(d[s]) / scale)) < 1e-6, s
    r = tj.simulate(m, p, None, jnp.array([0.0, 1440.0]))
    np.testing.assert_allclose(r.outputs["G"][:, -1], p["Gb"], rtol=1e-6)


def test_meal_and_insulin_dose_helpers():
    m = gl.UvaPadova()
    p = {k: v[0] for k, v in gl.patient_params("adult#001").items()}
    ts = jnp.linspace(0.0, 600.0, 61)
    meal = tj.Regimen([gl.meal(60.0, 30.0)])
    r0 = tj.simulate(m, p, meal, ts)
    r1 = tj.simulate(m, p, meal + tj.Regimen([gl.insulin_bolus(6.0, 30.0, p["BW"])]), ts)
    assert float(r0.outputs["G"].max()) > float(r1.outputs["G"].max()) + 20
    # all ingested glucose is in the gut or has appeared (mass balance of the meal path)
    np.testing.assert_allclose(r0.states["Dmeal"][-1], 60_000.0, rtol=1e-9)


# ---------------------------------------------------------------- outcomes
def test_outcomes_on_a_hand_made_trace():
    bg = jnp.array([50.0, 60.0, 100.0, 150.0, 200.0, 300.0, 120.0, 110.0])
    o = gl.outcomes(bg)
    assert float(o["TIR"]) == pytest.approx(100 * 4 / 8)
    assert float(o["TBR70"]) == pytest.approx(100 * 2 / 8)
    assert float(o["TBR54"]) == pytest.approx(100 * 1 / 8)
    assert float(o["TAR180"]) == pytest.approx(100 * 2 / 8)
    assert float(o["TAR250"]) == pytest.approx(100 * 1 / 8)
    mean = float(np.mean(bg))
    assert float(o["GMI"]) == pytest.approx(3.31 + 0.02392 * mean)
    assert float(o["CV"]) == pytest.approx(100 * np.std(bg) / mean)
    f = 1.509 * (np.log(np.asarray(bg)) ** 1.084 - 5.381)
    r = 10 * f**2
    assert float(o["LBGI"]) == pytest.approx(np.sum(r[f < 0]) / 8)
    assert float(o["HBGI"]) == pytest.approx(np.sum(r[f > 0]) / 8)
    # the risk function is symmetric: about 112.5 mg/dL is zero risk
    rl, rh = gl.risk(jnp.array(112.5))
    assert float(rl + rh) < 1e-3
    # batched over patients
    assert gl.outcomes(jnp.stack([bg, bg + 10]))["TIR"].shape == (2,)
    # a failed patient's trace is NaN: every outcome of it is NaN, the others' intact
    two = gl.outcomes(jnp.stack([bg, bg.at[3].set(jnp.nan)]))
    for name, v in two.items():
        assert float(v[0]) == pytest.approx(float(o[name])), name
        assert np.isnan(float(v[1])), name


# ---------------------------------------------------------------- closed loop
@pytest.fixture(scope="module")
def adults3():
    names = ["adult#001", "adult#002", "adult#003"]
    return gl.patient_params(names), gl.therapy_params(names)


def test_open_loop_at_basal_stays_at_basal(adults3):
    p, _ = adults3
    r = gl.simulate_closed_loop(p, gl.OpenLoop(), duration=120.0)
    assert r.bg.shape == (3, 24) and np.all(np.asarray(r.status) == 0)
    np.testing.assert_allclose(r.bg, np.broadcast_to(p["Gb"][:, None], (3, 24)), rtol=1e-6)


def test_basal_bolus_lowers_the_meal_excursion_and_solvers_agree(adults3):
    p, q = adults3
    meals = gl.daily_meals(1)
    bb = gl.BasalBolus(CR=q["CR"], CF=q["CF"])
    open_ = gl.simulate_closed_loop(p, gl.OpenLoop(), meals=meals)
    closed = gl.simulate_closed_loop(p, bb, meals=meals)
    o_open, o_bb = open_.outcomes("bg"), closed.outcomes("bg")
    assert np.all(np.asarray(o_bb["mean"]) < np.asarray(o_open["mean"]) - 20)
    assert np.all(np.asarray(o_bb["TIR"]) > np.asarray(o_open["TIR"]))
    # boluses are given at the meal samples only: basal + meal / CR / sample_time
    k = 420 // 5
    basal = np.asarray(gl.basal_rate(p))
    np.testing.assert_allclose(closed.insulin[:, k - 1], basal, rtol=1e-12)
    assert np.all(np.asarray(closed.insulin[:, k]) >= basal + 50 / q["CR"] / 5 - 1e-12)
    np.testing.assert_allclose(np.sum(closed.cho, -1), 200.0, rtol=1e-12)
    ref = gl.simulate_closed_loop(p, bb, meals=meals, solver=tj.solvers.Diffrax(rtol=1e-9))
    np.testing.assert_allclose(closed.bg, ref.bg, rtol=1e-5)


def test_pid_brings_glucose_towards_target():
    p = gl.patient_params(["adult#001"])  # Gb 138.6 mg/dL
    r0 = gl.simulate_closed_loop(p, gl.OpenLoop(), duration=720.0)
    r = gl.simulate_closed_loop(p, gl.PID(P=2e-4, I=1e-7, D=1e-3, target=110.0), duration=720.0)
    assert float(r.bg[0, -1]) < float(r0.bg[0, -1]) - 10
    assert float(jnp.min(r.bg)) > 70


def test_cgm_noise_is_seeded_clipped_and_plausible():
    p = gl.patient_params(["adult#001", "adult#002"])
    kw = dict(duration=2880.0, sensor=gl.CGM())
    a = gl.simulate_closed_loop(p, key=jax.random.PRNGKey(0), **kw)
    b = gl.simulate_closed_loop(p, key=jax.random.PRNGKey(0), **kw)
    c = gl.simulate_closed_loop(p, key=jax.random.PRNGKey(1), **kw)
    np.testing.assert_array_equal(a.cgm, b.cgm)
    assert not np.allclose(a.cgm, c.cgm)
    err = np.asarray(a.cgm - a.bg)  # at basal, Gsub = G
    assert 3.0 < np.std(err) < 30.0 and abs(np.mean(err)) < 10.0
    # successive 5-min errors are strongly correlated (AR(1) at 15 min, interpolated)
    assert np.corrcoef(err[:, 1:].ravel(), err[:, :-1].ravel())[0, 1] > 0.6
    low = gl.simulate_closed_loop(p, sensor=gl.CGM(noise=False, lo=150.0), duration=60.0)
    assert float(jnp.min(low.cgm)) == 150.0
    with pytest.raises(ValueError, match="key"):
        gl.simulate_closed_loop(p, duration=60.0, sensor=gl.CGM())


def test_closed_loop_forward_mode_gradient_matches_finite_differences():
    """d(mean glucose)/d(carbohydrate ratio) through the compiled loop (jvp)."""
    p = gl.patient_params(["adult#001"])
    meals = (np.array([60.0]), np.array([60.0]))

    def mean_bg(cr):
        r = gl.simulate_closed_loop(p, gl.BasalBolus(CR=cr, CF=40.0), duration=360.0, meals=meals)
        return jnp.mean(r.bg)

    def value_and_derivative(cr):  # one compiled program (jvp) for both
        return jax.jvp(mean_bg, (jnp.array(cr),), (jnp.array(1.0),))

    _, got = value_and_derivative(10.0)
    h = 1e-3
    want = (value_and_derivative(10.0 + h)[0] - value_and_derivative(10.0 - h)[0]) / (2 * h)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    assert float(got) > 0  # a larger ratio gives less insulin


def test_closed_loop_rejects_incommensurate_times():
    p = gl.patient_params(["adult#001"])
    with pytest.raises(ValueError, match="multiple"):
        gl.simulate_closed_loop(p, duration=62.0)
    with pytest.raises(ValueError, match="bounds"):
        gl.simulate_closed_loop({**p, "Vg": -1.0}, duration=60.0)


def test_closed_loop_parts_refuse_a_run_they_were_not_built_for():
    """Meals, SensedController as a schedule and hook of simulate_controlled."""
    p = gl.patient_params(["adult#001", "adult#002"])
    model = gl.UvaPadova(basal_infusion=False)
    mt, mg = jnp.array([[10.0], [10.0]]), jnp.array([[50.0], [50.0]])
    err = gl.CGM(noise=False).error(None, 2, 4, 5.0, jnp.float64)
    hook = gl.SensedController(gl.OpenLoop(), gl.CGM(noise=False), err, mt, mg, 5.0)
    kw = dict(n_samples=4, sample_time=5.0)
    with pytest.raises(
        ValueError, match=r"Meals: its dt 1.0 differs from the run's sub-step dt 5.0"
    ):
        tj.solve.simulate_controlled(model, p, hook, schedule=gl.Meals(mt, mg, dt=1.0), **kw)
    slow = gl.SensedController(gl.OpenLoop(), gl.CGM(noise=False), err, mt, mg, 15.0)
    with pytest.raises(ValueError, match=r"sample_time 15.0 differs from the run's 5.0"):
        tj.solve.simulate_controlled(model, p, slow, schedule=gl.Meals(mt, mg), **kw)
    with pytest.raises(ValueError, match=r"err have shape \(2, 4\).*n_samples = 6"):
        tj.solve.simulate_controlled(
            model, p, hook, schedule=gl.Meals(mt, mg), n_samples=6, sample_time=5.0
        )
    # the meals' rate over a sub-step feeds what they record, whatever the run's dt
    meals = gl.Meals(mt, mg)
    t = jnp.zeros(2)
    state = meals.init({}, t, p)
    for t0, t1 in [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 20.0)]:
        state, rates, eaten = meals(state, t + t0, t + t1, p)
        np.testing.assert_allclose(rates["qsto1"] * (t1 - t0), 1000.0 * eaten, rtol=1e-12)
    assert float(eaten[0]) == 25.0  # 5 g/min over a 5-min step, from the 10-min meal
