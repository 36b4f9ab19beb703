"""Butcher tableaus of twinjax's explicit Runge-Kutta methods (validated on creation).

- Dormand & Prince 5(4): Dormand JR, Prince PJ. A family of embedded Runge-Kutta
  formulae. J Comput Appl Math 6:19-26, 1980; dense output coefficients from
  Hairer, Norsett & Wanner, *Solving ODEs I*, 2nd ed., 1993, sec. II.6 (DOPRI5).
- Tsitouras 5(4): Tsitouras C. Runge-Kutta pairs of order 5(4) satisfying only the
  first column simplifying assumption. Comput Math Appl 62:770-775, 2011.
- Classic RK4 (Kutta 1901).
- Rodas5P (Rosenbrock, 5th order with an embedded 4th-order error estimate and a
  continuous extension for dense output): Steinebach G. Construction of Rosenbrock-Wanner method
  Rodas5P and numerical benchmarks within the Julia differential equations package.
  BIT Numer Math 63:27, 2023. The coefficients (in the transformed, W-form variables
  of Hairer & Wanner, *Solving ODEs II*, 2nd ed., 1996, sec. IV.7, eq. (7.25)) are the
  values published with OrdinaryDiffEq.jl's ``Rodas5PTableau``
  (SciML/OrdinaryDiffEq.jl, ``rosenbrock_tableaus.jl``), which the author of the
  paper contributed there.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tableau:
    name: str
    a: tuple[tuple[float, ...], ...]  # lower-triangular rows for stages 2..s
    b: tuple[float, ...]
    c: tuple[float, ...]  # nodes of stages 1..s
    b_err: tuple[float, ...] | None  # b - b_hat (None: fixed step)
    order: int
    fsal: bool
    dense: tuple[float, ...] | None = None  # DOPRI5 dense-output coefficients

    def __post_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s - 1:
            raise ValueError(f"{self.name}: inconsistent tableau sizes")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"{self.name}: weights b must sum to 1, got {sum(self.b)}")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i + 1]) > 1e-12:
                raise ValueError(f"{self.name}: row {i + 2} of a does not sum to c")
        if self.b_err is not None and abs(sum(self.b_err)) > 1e-12:
            raise ValueError(f"{self.name}: error weights must sum to 0")


DOPRI5 = Tableau(
    "dopri5",
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    b_err=tuple(
        np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0])
        - np.array(
            [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
        )
    ),
    order=5,
    fsal=True,
    dense=(
        -12715105075 / 11282082432,
        0.0,
        87487479700 / 32700410799,
        -10690763975 / 1880347072,
        701980252875 / 199316789632,
        -1453857185 / 822651844,
        69997945 / 29380423,
    ),
)

_T = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
)
_THAT = (
    0.09468075576583945,
    0.009183565540343254,
    0.4877705284247616,
    1.234297566930479,
    -2.707712349983525,
    1.866628418170587,
    1 / 66,
)

TSIT5 = Tableau(
    "tsit5",
    a=(
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        _T,
    ),
    b=_T + (0.0,),
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    b_err=tuple(np.array(_T + (0.0,)) - np.array(_THAT)),
    order=5,
    fsal=True,
)

RK4 = Tableau(
    "rk4",
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
    b_err=None,
    order=4,
    fsal=False,
)

TABLEAUS = {"dopri5": DOPRI5, "tsit5": TSIT5, "rk4": RK4}


@dataclasses.dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock(-Wanner) method in the transformed variables ``U_i`` (Hairer &
    Wanner II, sec. IV.7): with ``gamma`` the diagonal coefficient,

    ``(I/(h gamma) - J) U_i = f(t + c_i h, y + sum_j a_ij U_j) + sum_j (C_ij / h) U_j
    + d_i h df/dt``,

    ``y1 = y + sum_i m_i U_i``, error estimate ``sum_i e_i U_i``, and dense output
    ``y(t + theta h) = (1 - theta) y0 + theta (y1 + (1 - theta) (K1 + theta (K2 +
    theta K3)))`` with ``K_r = sum_i H_ri U_i``.
    """

    name: str
    gamma: float
    a: tuple[tuple[float, ...], ...]  # rows for stages 2..s (strictly lower)
    C: tuple[tuple[float, ...], ...]  # rows for stages 2..s (strictly lower)
    c: tuple[float, ...]  # nodes of stages 1..s
    d: tuple[float, ...]  # time-derivative coefficients of stages 1..s
    m: tuple[float, ...]  # solution weights
    e: tuple[float, ...]  # error-estimate weights
    H: tuple[tuple[float, ...], ...]  # dense-output rows
    order: int

    # the explicit-method fields the solver reads
    fsal = False

    @property
    def b_err(self):
        return self.e

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s - 1 or len(self.C) != s - 1 or len(self.d) != s:
            raise ValueError(f"{self.name}: inconsistent tableau sizes")
        if len(self.m) != s or len(self.e) != s or any(len(r) != s for r in self.H):
            raise ValueError(f"{self.name}: inconsistent weight sizes")
        for i, (ra, rc) in enumerate(zip(self.a, self.C)):
            if len(ra) != i + 1 or len(rc) != i + 1:
                raise ValueError(f"{self.name}: row {i + 2} of a or C has the wrong length")
        # Back to Hairer & Wanner's untransformed coefficients: Gamma = (I/gamma -
        # C)^-1, alpha = a Gamma, b = m Gamma. Check the nodes c_i = sum_j alpha_ij,
        # the time coefficients d_i = sum_j gamma_ij, and the conditions of orders 1
        # and 2 (sum b = 1, sum_ij b_i (alpha_ij + gamma_ij) = 1/2).
        Cm = np.zeros((s, s))
        Am = np.zeros((s, s))
        for i, (ra, rc) in enumerate(zip(self.a, self.C)):
            Am[i + 1, : i + 1] = ra
            Cm[i + 1, : i + 1] = rc
        G = np.linalg.inv(np.eye(s) / self.gamma - Cm)
        one = np.ones(s)
        b = np.asarray(self.m) @ G
        checks = {
            "nodes c": np.max(np.abs(Am @ G @ one - np.asarray(self.c))),
            "time coefficients d": np.max(np.abs(G @ one - np.asarray(self.d))),
            "order 1": abs(b @ one - 1.0),
            "order 2": abs(b @ (Am @ G + G) @ one - 0.5),
        }
        for what, dev in checks.items():
            if dev > 1e-10:
                raise ValueError(f"{self.name}: tableau fails the {what} condition ({dev:.2e})")


def _rodas5p() -> RosenbrockTableau:
    # a_ij of stages 2..6; stages 7 and 8 evaluate at y + sum_j a_6j U_j + U_6 (+ U_7)
    # and the solution is y + sum_j a_6j U_j + U_6 + U_7 + U_8 (stiffly accurate; the
    # error estimate is U_8)
    a6 = (
        -7.502846399306121,
        2.561846144803919,
        -11.627539656261098,
        -0.18268767659942256,
        0.030198172008377946,
    )
    a = (
        (3.0,),
        (2.849394379747939, 0.45842242204463923),
        (-6.954028509809101, 2.489845061869568, -10.358996098473584),
        (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
        a6,
        a6 + (1.0,),
        a6 + (1.0, 1.0),
    )
    C = (
        (-14.155112264123755,),
        (-17.97296035885952, -2.859693295451294),
        (147.12150275711716, -1.41221402718213, 71.68940251302358),
        (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
        (
            24.854864614690072,
            -3.0009227002832186,
            47.4931110020768,
            5.5814197821558125,
            -0.6610691825249471,
        ),
        (
            30.91273214028599,
            -3.1208243349937974,
            77.79954646070892,
            34.28646028294783,
            -19.097331116725623,
            -28.087943162872662,
        ),
        (
            37.80277123390563,
            -3.2571969029072276,
            112.26918849496327,
            66.9347231244047,
            -40.06618937091002,
            -54.66780262877968,
            -9.48861652309627,
        ),
    )
    gamma = 0.21193756319429014
    return RosenbrockTableau(
        "rodas5p",
        gamma=gamma,
        a=a,
        C=C,
        c=(0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716)
        + (0.4288403609558664, 1.0, 1.0, 1.0),
        d=(
            0.21193756319429014,
            -0.42387512638858027,
            -0.3384627126235924,
            1.8046452872882734,
            2.325825639765069,
            0.0,
            0.0,
            0.0,
        ),
        m=a6 + (1.0, 1.0, 1.0),
        e=(0.0,) * 7 + (1.0,),
        H=(
            (
                25.948786856663858,
                -2.5579724845846235,
                10.433815404888879,
                -2.3679251022685204,
                0.524948541321073,
                1.1241088310450404,
                0.4272876194431874,
                -0.17202221070155493,
            ),
            (
                -9.91568850695171,
                -0.9689944594115154,
                3.0438037242978453,
                -24.495224566215796,
                20.176138334709044,
                15.98066361424651,
                -6.789040303419874,
                -6.710236069923372,
            ),
            (
                11.419903575922262,
                2.8879645146136994,
                72.92137995996029,
                80.12511834622643,
                -52.072871366152654,
                -59.78993625266729,
                -0.15582684282751913,
                4.883087185713722,
            ),
        ),
        order=5,
    )


RODAS5P = _rodas5p()

ROSENBROCK = {"rodas5p": RODAS5P}
