"""The UVA/Padova type 1 diabetes simulator model (Dalla Man et al. 2007; Kovatchev et al. 2009).

The glucose-insulin system of a person with type 1 diabetes: oral glucose
absorption with nonlinear gastric emptying (Dalla Man, Camilleri & Cobelli 2006),
the glucose subsystem (plasma ``Gp`` and tissue ``Gt``, endogenous production
``EGP``, insulin-independent ``Uii`` and insulin-dependent ``Uid`` utilisation,
renal excretion ``E``), the insulin subsystem (plasma ``Ip`` and liver ``Il``),
subcutaneous insulin absorption (two compartments, ``isc1``, ``isc2``) and
subcutaneous (interstitial) glucose ``Gs`` measured by a CGM. These are the 13
states of the 2008 academic (FDA-accepted) simulator, in its order, plus the meal
memory ``Dmeal``.

Units follow the published simulator: time in min, glucose masses in mg/kg
(stomach and gut in mg), insulin masses in pmol/kg, concentrations in mg/dL and
pmol/L. Meals are doses of glucose (mg) into ``qsto1``, eaten at a rate (a
zero-order infusion); subcutaneous insulin is dosed into ``isc1`` in pmol/kg
(1 U = 6000 pmol: ``amt = U * 6000 / BW``). See ``docs/models/glucose.md``.

References:
    - Dalla Man C, Rizza RA, Cobelli C. Meal simulation model of the glucose-insulin
      system. IEEE Trans Biomed Eng 54:1740-1749, 2007.
    - Dalla Man C, Camilleri M, Cobelli C. A system model of oral glucose absorption:
      validation on gold standard data. IEEE Trans Biomed Eng 53:2472-2478, 2006.
    - Kovatchev BP, Breton M, Dalla Man C, Cobelli C. In silico preclinical trials: a
      proof of concept in closed-loop control of type 1 diabetes. J Diabetes Sci
      Technol 3:44-55, 2009.
    - Xie J. simglucose v0.2.1: a type-1 diabetes simulator (Python implementation of
      the UVA/Padova 2008 simulator), https://github.com/jxx123/simglucose, 2018
      (MIT licence): the 30 virtual patients' parameters in ``data/``.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ...dosing import Dose
from ...ode import Model, Param, State
from ...ode._param import fraction, positive

U_TO_PMOL = 6000.0  # pmol of insulin per unit (U)

_SRC = "simglucose vpatient_params.csv, adult#001 (UVA/Padova 2008 academic simulator)"

# name, unit, upper bound, doc (defaults: adult#001 of the academic simulator)
_TABLE = (
    ("BW", "kg", 300.0, "body weight"),
    ("kabs", "1/min", 5.0, "rate of intestinal absorption"),
    ("kmax", "1/min", 5.0, "maximal rate of gastric emptying"),
    ("kmin", "1/min", 5.0, "minimal rate of gastric emptying"),
    ("f", "1", 1.0, "fraction of intestinal absorption appearing in plasma"),
    ("b", "1", 1.0, "fraction of the meal at which kempt falls to (kmax + kmin)/2"),
    ("d", "1", 1.0, "fraction of the meal at which kempt rises back (c in Dalla Man 2006)"),
    ("Vg", "dL/kg", 10.0, "glucose distribution volume"),
    ("Gb", "mg/dL", 1000.0, "basal plasma glucose"),
    ("EGPb", "mg/kg/min", 50.0, "basal endogenous glucose production"),
    ("kp1", "mg/kg/min", 100.0, "extrapolated EGP at zero glucose and insulin"),
    ("kp2", "1/min", 5.0, "liver glucose effectiveness"),
    ("kp3", "mg/kg/min per pmol/L", 5.0, "amplitude of insulin action on the liver"),
    ("ki", "1/min", 5.0, "rate of delayed insulin action on EGP"),
    ("Fsnc", "mg/kg/min", 50.0, "insulin-independent glucose utilisation"),
    ("Vm0", "mg/kg/min", 100.0, "basal maximal insulin-dependent utilisation"),
    ("Vmx", "mg/kg/min per pmol/L", 5.0, "insulin action on maximal utilisation"),
    ("Km0", "mg/kg", 5000.0, "Michaelis constant of insulin-dependent utilisation"),
    ("k1", "1/min", 5.0, "plasma-to-tissue glucose transfer rate"),
    ("k2", "1/min", 5.0, "tissue-to-plasma glucose transfer rate"),
    ("ke1", "1/min", 1.0, "glomerular filtration rate (renal excretion)"),
    ("ke2", "mg/kg", 5000.0, "renal threshold of glucose"),
    ("Vi", "L/kg", 5.0, "insulin distribution volume"),
    ("Ib", "pmol/L", 5000.0, "basal plasma insulin"),
    ("m1", "1/min", 5.0, "liver-to-plasma insulin transfer rate"),
    ("m2", "1/min", 5.0, "plasma-to-liver insulin transfer rate"),
    ("m4", "1/min", 5.0, "peripheral insulin degradation rate"),
    ("m30", "1/min", 5.0, "basal hepatic insulin degradation rate"),
    ("p2u", "1/min", 5.0, "rate of insulin action on peripheral utilisation"),
    ("kd", "1/min", 5.0, "subcutaneous insulin: isc1 -> isc2 rate"),
    ("ka1", "1/min", 5.0, "subcutaneous insulin: absorption rate from isc1"),
    ("ka2", "1/min", 5.0, "subcutaneous insulin: absorption rate from isc2"),
    ("ksc", "1/min", 5.0, "plasma-to-interstitial glucose equilibration rate"),
    ("u2ss", "pmol/kg/min", 100.0, "basal insulin infusion rate (steady state)"),
)
_FRACTIONS = ("f", "b", "d")

PARAM_NAMES = tuple(row[0] for row in _TABLE)
"""The parameters of :class:`UvaPadova`, under the academic simulator's names."""

STATE_NAMES = (
    "qsto1",
    "qsto2",
    "qgut",
    "Gp",
    "Gt",
    "Ip",
    "X",
    "I1",
    "Id",
    "Il",
    "isc1",
    "isc2",
    "Gs",
    "Dmeal",
)


@functools.lru_cache(maxsize=1)
def _patient_rows() -> tuple[dict, ...]:
    path = importlib.resources.files(__package__).joinpath("data/vpatient_params.csv")
    with path.open() as fh:
        return tuple(dict(r) for r in csv.DictReader(fh))


@functools.lru_cache(maxsize=1)
def _quest_rows() -> dict:
    path = importlib.resources.files(__package__).joinpath("data/quest.csv")
    with path.open() as fh:
        return {r["Name"]: r for r in csv.DictReader(fh)}


def patient_names() -> tuple[str, ...]:
    """Names of the 30 shipped virtual patients (``adolescent#001`` ... ``child#010``)."""
    return tuple(r["Name"] for r in _patient_rows())


def _defaults() -> dict:
    row = next(r for r in _patient_rows() if r["Name"] == "adult#001")
    return {k: float(row[k]) for k in PARAM_NAMES}


def params_from_table(rows: Sequence[dict]) -> dict:
    """Model parameters from rows of a patient table under the academic simulator's names.

    Arguments:
        rows: mappings (e.g. ``csv.DictReader`` rows or ``DataFrame.to_dict("records")``)
            holding at least the columns in :data:`PARAM_NAMES`. Other columns of the
            published table (``Name``, ``x0_*``, ``isc1ss``, ``isc2ss``, ``Gpb``, ``Ipb``,
            ``CL``, ``HEb``...) are accepted and ignored: the basal state is recomputed
            from the parameters by :meth:`UvaPadova.init`.

    Returns:
        ``{name: (N,) float64 array}``, ``N = len(rows)``.

    Raises:
        ValueError: naming the row and the missing or non-numeric column.
    """
    out: dict[str, list[float]] = {k: [] for k in PARAM_NAMES}
    for i, r in enumerate(rows):
        for k in PARAM_NAMES:
            if k not in r:
                raise ValueError(f"patient row {i}: missing column {k!r}")
            try:
                out[k].append(float(r[k]))
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"patient row {i}: column {k!r} = {r[k]!r} is not a number"
                ) from err
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def load_patients(names: str | Sequence[str] | None = None, path=None) -> dict:
    """Load virtual patients of the UVA/Padova academic simulator.

    Arguments:
        names: a patient name (``"adult#001"``), a list of names, a prefix such as
            ``"adult"`` (all ten adults), or None (all patients of the table).
        path: a CSV file with the published columns (default: the 30 patients
            shipped with simglucose, copied in ``twinjax/models/glucose/data`` under
            its MIT licence).

    Returns:
        ``{name: (N,) array}`` parameters for :class:`UvaPadova`, with an extra
        ``"Name"`` entry (a tuple of patient names) that ``simulate`` does not take:
        pop it first, or use :func:`patient_params`.

    Raises:
        KeyError: an unknown patient name, listing the valid ones.
    """
    if path is None:
        rows = list(_patient_rows())
    else:
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
    all_names = [r.get("Name", str(i)) for i, r in enumerate(rows)]
    if names is None:
        pick = list(range(len(rows)))
    else:
        if isinstance(names, str):
            names = [names] if names in all_names else [n for n in all_names if n.startswith(names)]
            if not names:
                raise KeyError(f"no patient matches; valid names: {all_names}")
        pick = []
        for n in names:
            if n not in all_names:
                raise KeyError(f"unknown patient {n!r}; valid names: {all_names}")
            pick.append(all_names.index(n))
    p = params_from_table([rows[i] for i in pick])
    p["Name"] = tuple(all_names[i] for i in pick)
    return p


def patient_params(names=None, path=None) -> dict:
    """:func:`load_patients` without the ``"Name"`` entry (ready for ``simulate``)."""
    p = load_patients(names, path)
    p.pop("Name")
    return p


def therapy_params(names) -> dict:
    """Carbohydrate ratio ``CR`` (g/U) and correction factor ``CF`` (mg/dL/U) per patient.

    From the academic simulator's patient questionnaire (simglucose ``Quest.csv``).

    Returns:
        ``{"CR": (N,), "CF": (N,)}``.
    """
    names = [names] if isinstance(names, str) else list(names)
    q = _quest_rows()
    missing = [n for n in names if n not in q]
    if missing:
        raise KeyError(f"no therapy parameters for {missing}; valid names: {list(q)}")
    return {
        "CR": np.asarray([float(q[n]["CR"]) for n in names]),
        "CF": np.asarray([float(q[n]["CF"]) for n in names]),
    }


def _param(name, value, unit, upper, doc) -> Param:
    if name in _FRACTIONS:
        return fraction(name, value, unit=unit, source=_SRC, doc=doc)
    return positive(name, value, unit, upper=upper, source=_SRC, doc=doc)


class UvaPadova(Model):
    """The UVA/Padova T1D model: meal absorption, glucose, insulin, s.c. insulin, CGM.

    Arguments:
        basal_infusion: if True (default), the patient's basal insulin ``u2ss`` is
            infused into ``isc1`` all the time, so :meth:`init` is a steady state and
            insulin doses are additional to it (open-loop use with ``simulate``). Set
            False when all insulin is given by doses or a controller
            (:func:`simulate_closed_loop` does this itself).

    States: ``qsto1``, ``qsto2`` (solid and liquid stomach, mg), ``qgut`` (mg), ``Gp``,
    ``Gt`` (mg/kg), ``Ip`` (pmol/kg), ``X``, ``I1``, ``Id`` (pmol/L), ``Il``, ``isc1``,
    ``isc2`` (pmol/kg), ``Gs`` (mg/kg), and ``Dmeal`` (mg), the size of the meal in
    the stomach that sets gastric emptying. ``Dmeal`` integrates what is eaten; with
    :func:`simulate` it therefore holds the sum of all meals since time 0 (exact for
    one meal), while :func:`simulate_closed_loop` resets it at each meal start to
    the stomach content, as the academic simulator does.

    Outputs: ``G`` plasma glucose (mg/dL), ``Gsub`` subcutaneous glucose (mg/dL),
    ``I`` plasma insulin (pmol/L), ``EGP``, ``Ra``, ``Uid`` (mg/kg/min).

    Equations (Dalla Man et al. 2007, with the T1D simulator's s.c. routes)::

        kempt = kmin + (kmax - kmin)/2 [tanh(a (qsto - b D)) - tanh(c (qsto - d D)) + 2]
        a = 5 / (2 D (1 - b)),  c = 5 / (2 D d)
        dqsto1 = -kmax qsto1 + meal
        dqsto2 = kmax qsto1 - kempt qsto2
        dqgut  = kempt qsto2 - kabs qgut,          Ra = f kabs qgut / BW
        EGP = kp1 - kp2 Gp - kp3 Id,  E = ke1 max(Gp - ke2, 0)
        Uid = (Vm0 + Vmx X) Gt / (Km0 + Gt)
        dGp = max(EGP, 0) + Ra - Fsnc - E - k1 Gp + k2 Gt
        dGt = -Uid + k1 Gp - k2 Gt
        dIp = -(m2 + m4) Ip + m1 Il + ka1 isc1 + ka2 isc2,  I = Ip / Vi
        dX  = -p2u X + p2u (I - Ib)
        dI1 = -ki (I1 - I),  dId = -ki (Id - I1)
        dIl = -(m1 + m30) Il + m2 Ip
        disc1 = -(kd + ka1) isc1 + insulin,  disc2 = kd isc1 - ka2 isc2
        dGs = -ksc Gs + ksc Gp
    """

    basal_infusion: bool = True

    time_unit = "min"
    reference = (
        "Dalla Man, Rizza & Cobelli 2007 IEEE TBME 54:1740; Dalla Man, Camilleri & Cobelli "
        "2006 IEEE TBME 53:2472; Kovatchev et al. 2009 J Diabetes Sci Technol 3:44"
    )

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        return (
            State("qsto1", "mg", "glucose in the stomach, solid phase"),
            State("qsto2", "mg", "glucose in the stomach, liquid phase"),
            State("qgut", "mg", "glucose in the intestine"),
            State("Gp", "mg/kg", "glucose mass in plasma and rapidly equilibrating tissues"),
            State("Gt", "mg/kg", "glucose mass in slowly equilibrating tissues"),
            State("Ip", "pmol/kg", "insulin mass in plasma"),
            State("X", "pmol/L", "insulin in the interstitial fluid (action on Uid)"),
            State("I1", "pmol/L", "delayed insulin, first compartment"),
            State("Id", "pmol/L", "delayed insulin signal acting on EGP"),
            State("Il", "pmol/kg", "insulin mass in the liver"),
            State("isc1", "pmol/kg", "subcutaneous insulin, non-monomeric"),
            State("isc2", "pmol/kg", "subcutaneous insulin, monomeric"),
            State("Gs", "mg/kg", "subcutaneous glucose (mass per kg, Gsub = Gs / Vg)"),
            State("Dmeal", "mg", "meal size D that scales gastric emptying", cumulative=True),
        )

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        d = _defaults()
        return tuple(_param(n, d[n], u, up, doc) for n, u, up, doc in _TABLE)

    def init(self, p):
        """The basal steady state, computed from the parameters (no meal in the gut).

        ``Gp = Gb Vg``; ``Gt`` from ``dGp = 0`` at basal (``EGPb = Fsnc + k1 Gp - k2 Gt``,
        below the renal threshold); ``Ip = Ib Vi``; ``Il = m2 Ip / (m1 + m30)``;
        ``isc1 = u2ss / (kd + ka1)``, ``isc2 = kd isc1 / ka2``; ``X = 0``,
        ``I1 = Id = Ib``; ``Gs = Gp``.
        """
        Gp = p["Gb"] * p["Vg"]
        Gt = (p["Fsnc"] - p["EGPb"] + p["k1"] * Gp) / p["k2"]
        Ip = p["Ib"] * p["Vi"]
        isc1 = p["u2ss"] / (p["kd"] + p["ka1"])
        zero = jnp.zeros_like(Gp)
        return {
            "qsto1": zero,
            "qsto2": zero,
            "qgut": zero,
            "Gp": Gp,
            "Gt": Gt,
            "Ip": Ip,
            "X": zero,
            "I1": p["Ib"] + zero,
            "Id": p["Ib"] + zero,
            "Il": p["m2"] * Ip / (p["m1"] + p["m30"]),
            "isc1": isc1,
            "isc2": p["kd"] * isc1 / p["ka2"],
            "Gs": Gp,
            "Dmeal": zero,
        }

    def rhs(self, t, y, p, u):
        # gastric emptying (Dalla Man, Camilleri & Cobelli 2006, eq. 5)
        qsto = y["qsto1"] + y["qsto2"]
        D = y["Dmeal"]
        fed = D > 0
        Ds = jnp.where(fed, D, 1.0)
        alpha = 5.0 / (2.0 * Ds * (1.0 - p["b"]))
        beta = 5.0 / (2.0 * Ds * p["d"])
        kempt_fed = p["kmin"] + (p["kmax"] - p["kmin"]) / 2.0 * (
            jnp.tanh(alpha * (qsto - p["b"] * Ds)) - jnp.tanh(beta * (qsto - p["d"] * Ds)) + 2.0
        )
        kempt = jnp.where(fed, kempt_fed, p["kmax"])
        Ra = p["f"] * p["kabs"] * y["qgut"] / p["BW"]

        # glucose subsystem (Dalla Man, Rizza & Cobelli 2007, eqs. 1-14)
        EGP = p["kp1"] - p["kp2"] * y["Gp"] - p["kp3"] * y["Id"]
        E = p["ke1"] * jnp.maximum(y["Gp"] - p["ke2"], 0.0)
        Uii = p["Fsnc"]
        Uid = (p["Vm0"] + p["Vmx"] * y["X"]) * y["Gt"] / (p["Km0"] + y["Gt"])
        I = y["Ip"] / p["Vi"]

        insulin_basal = p["u2ss"] if self.basal_infusion else 0.0
        return {
            "qsto1": -p["kmax"] * y["qsto1"],
            "qsto2": p["kmax"] * y["qsto1"] - kempt * y["qsto2"],
            "qgut": kempt * y["qsto2"] - p["kabs"] * y["qgut"],
            "Gp": jnp.maximum(EGP, 0.0) + Ra - Uii - E - p["k1"] * y["Gp"] + p["k2"] * y["Gt"],
            "Gt": -Uid + p["k1"] * y["Gp"] - p["k2"] * y["Gt"],
            "Ip": -(p["m2"] + p["m4"]) * y["Ip"]
            + p["m1"] * y["Il"]
            + p["ka1"] * y["isc1"]
            + p["ka2"] * y["isc2"],
            "X": -p["p2u"] * y["X"] + p["p2u"] * (I - p["Ib"]),
            "I1": -p["ki"] * (y["I1"] - I),
            "Id": -p["ki"] * (y["Id"] - y["I1"]),
            "Il": -(p["m1"] + p["m30"]) * y["Il"] + p["m2"] * y["Ip"],
            "isc1": insulin_basal - (p["kd"] + p["ka1"]) * y["isc1"],
            "isc2": p["kd"] * y["isc1"] - p["ka2"] * y["isc2"],
            "Gs": -p["ksc"] * y["Gs"] + p["ksc"] * y["Gp"],
            "Dmeal": u["qsto1"],  # the meal memory integrates what is eaten
        }

    def observe(self, t, y, p):
        Uid = (p["Vm0"] + p["Vmx"] * y["X"]) * y["Gt"] / (p["Km0"] + y["Gt"])
        return {
            "G": y["Gp"] / p["Vg"],
            "Gsub": y["Gs"] / p["Vg"],
            "I": y["Ip"] / p["Vi"],
            "EGP": jnp.maximum(p["kp1"] - p["kp2"] * y["Gp"] - p["kp3"] * y["Id"], 0.0),
            "Ra": p["f"] * p["kabs"] * y["qgut"] / p["BW"],
            "Uid": Uid,
        }


def meal(grams, time, *, eat_rate: float = 5.0) -> Dose:
    """A meal of ``grams`` of carbohydrate at ``time`` (min), eaten at ``eat_rate`` g/min.

    Returns:
        A zero-order infusion of ``1000 * grams`` mg into ``qsto1`` (the academic
        simulator eats 5 g/min).
    """
    return Dose(1000.0 * grams, "qsto1", time, rate=1000.0 * eat_rate)


def insulin_bolus(units, time, BW) -> Dose:
    """A subcutaneous insulin bolus of ``units`` U at ``time`` (min) for body weight ``BW``.

    Returns:
        A bolus of ``units * 6000 / BW`` pmol/kg into ``isc1``.
    """
    return Dose(units * U_TO_PMOL / BW, "isc1", time)


PERTURBED = (
    "BW", "kabs", "kmax", "kmin", "Vg", "Vmx", "Km0", "k1", "k2", "kp2", "kp3", "ki",
    "Vi", "m1", "m2", "m4", "m30", "p2u", "kd", "ka1", "ka2", "ksc",
)  # fmt: skip
"""Parameters that :func:`virtual_patients` perturbs; the others are kept or derived."""


def basal_consistent(p: dict) -> dict:
    """Recompute the parameters fixed by the basal steady state (Dalla Man et al. 2007).

    Given ``Gb``, ``EGPb``, ``Fsnc``, ``Ib`` and the rate constants: ``Gt`` from
    ``dGp = 0``, then ``Vm0 = (EGPb - Fsnc)(Km0 + Gt) / Gt`` (``dGt = 0``),
    ``kp1 = EGPb + kp2 Gp + kp3 Ib`` (``EGP = EGPb``), and the basal insulin rate
    ``u2ss = Ib Vi (m2 + m4 - m1 m2 / (m1 + m30))`` (``dIp = dIl = 0``).

    Returns:
        A copy of ``p`` with ``Vm0``, ``kp1`` and ``u2ss`` replaced.
    """
    p = dict(p)
    Gp = p["Gb"] * p["Vg"]
    Gt = (p["Fsnc"] - p["EGPb"] + p["k1"] * Gp) / p["k2"]
    p["Vm0"] = (p["EGPb"] - p["Fsnc"]) * (p["Km0"] + Gt) / Gt
    p["kp1"] = p["EGPb"] + p["kp2"] * Gp + p["kp3"] * p["Ib"]
    p["u2ss"] = p["Ib"] * p["Vi"] * (p["m2"] + p["m4"] - p["m1"] * p["m2"] / (p["m1"] + p["m30"]))
    return p


def virtual_patients(seed: int, n: int, base: str = "adult", omega: float = 0.1):
    """A cohort made by perturbing published virtual patients log-normally.

    Patient ``i`` copies base patient ``i mod B`` (B = number of base patients), and
    each parameter in :data:`PERTURBED` is multiplied by ``exp(omega z)``, ``z ~ N(0, 1)``
    independent; ``Gb``, ``EGPb``, ``Fsnc``, ``Ib``, ``b``, ``d``, ``f``, ``ke1``, ``ke2``
    are kept, and ``Vm0``, ``kp1``, ``u2ss`` are recomputed by :func:`basal_consistent`
    so each patient starts at its own steady state. Patients whose recomputed tissue
    glucose or ``Vm0`` would not be positive are drawn again.

    Arguments:
        seed: seed of a NumPy generator (the cohort is reproducible).
        n: number of patients.
        base: a prefix or list of names for :func:`load_patients` (default the 10 adults).
        omega: the log-normal standard deviation (0.1: a CV of about 10 %).

    Returns:
        ``(params, names)``: ``{name: (n,)}`` parameters and the ``(n,)`` base names
        (for :func:`therapy_params`).
    """
    src = load_patients(base)
    names = np.asarray(src.pop("Name"))
    B = len(names)
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % B
    out = {k: v[idx].copy() for k, v in src.items()}
    todo = np.ones(n, bool)
    while todo.any():
        m = int(todo.sum())
        for k in PERTURBED:
            out[k][todo] = src[k][idx[todo]] * np.exp(omega * rng.standard_normal(m))
        q = basal_consistent(out)
        Gt = (q["Fsnc"] - q["EGPb"] + q["k1"] * q["Gb"] * q["Vg"]) / q["k2"]
        todo = ~((Gt > 0) & (q["Vm0"] > 0))
    return basal_consistent(out), names[idx]
