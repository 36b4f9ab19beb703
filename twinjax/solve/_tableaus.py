"""Butcher tableaus of twinjax's explicit Runge-Kutta methods (validated on creation).

- Dormand & Prince 5(4): Dormand JR, Prince PJ. A family of embedded Runge-Kutta
  formulae. J Comput Appl Math 6:19-26, 1980; dense output coefficients from
  Hairer, Norsett & Wanner, *Solving ODEs I*, 2nd ed., 1993, sec. II.6 (DOPRI5).
- Tsitouras 5(4): Tsitouras C. Runge-Kutta pairs of order 5(4) satisfying only the
  first column simplifying assumption. Comput Math Appl 62:770-775, 2011.
- Classic RK4 (Kutta 1901).
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
