"""Closed-loop 0-D circulation: four time-varying-elastance chambers, smooth valves,
systemic and pulmonary R-L-C arterial and venous compartments, and an optional
short-term arterial baroreflex.

The circulation is the 0-D part of Regazzoni et al. (2022), with its published
default parameters, in the units of the paper: volumes in mL, pressures in mmHg,
flows in mL/s, **time in seconds**. With ``V`` chamber volumes, ``p`` pressures,
``Q`` flows and ``C, R, L`` compliances, resistances and inertances:

```
p_X   = E_X(phi) (V_X - V0_X),   E_X = EB_X + EA_X e_X(phi)       X in LA, LV, RA, RV
dV_LA = Q_VEN_PUL - Q_MV          dV_LV = Q_MV - Q_AV
dV_RA = Q_VEN_SYS - Q_TV          dV_RV = Q_TV - Q_PV
C_AR_SYS  dp_AR_SYS/dt  = Q_AV - Q_AR_SYS
C_VEN_SYS dp_VEN_SYS/dt = Q_AR_SYS - Q_VEN_SYS
C_AR_PUL  dp_AR_PUL/dt  = Q_PV - Q_AR_PUL
C_VEN_PUL dp_VEN_PUL/dt = Q_AR_PUL - Q_VEN_PUL
L_AR_SYS  dQ_AR_SYS/dt  = p_AR_SYS - p_VEN_SYS - R_AR_SYS Q_AR_SYS
L_VEN_SYS dQ_VEN_SYS/dt = p_VEN_SYS - p_RA - R_VEN_SYS Q_VEN_SYS
L_AR_PUL  dQ_AR_PUL/dt  = p_AR_PUL - p_VEN_PUL - R_AR_PUL Q_AR_PUL
L_VEN_PUL dQ_VEN_PUL/dt = p_VEN_PUL - p_LA - R_VEN_PUL Q_VEN_PUL
```

**Activation by phase.** Regazzoni drives the activation ``e_X`` by ``t mod T_HB``.
Here it is driven by a phase state ``phi`` (in beats), ``dphi/dt = HR/60``, so
that the heart rate may change continuously (baroreflex, drugs) without a jump in
the activation. The contraction onset ``tC``, contraction ``TC`` and relaxation
``TR`` durations are therefore fractions of the beat: Regazzoni's seconds at his
heart rate of 60 bpm (``T_HB = 1 s``), so that at 60 bpm the model is his.

**Smooth valves.** Regazzoni's valve is ``Q = (p1 - p2) / R(p1, p2)`` with
``R = R_min`` when ``p1 > p2`` and ``R_max`` otherwise: a kink at ``p1 = p2``. We
use the smooth diode

```
Q = dp / R_max + (1/R_min - 1/R_max) * dp_valve * softplus(dp / dp_valve),   dp = p1 - p2
```

which tends to Regazzoni's valve as ``dp_valve -> 0`` (``dp_valve softplus(dp /
dp_valve) -> max(dp, 0)``), is infinitely differentiable, never regurgitates more
than ``dp / R_max``, and at ``dp = 0`` leaks forward ``ln 2 dp_valve / R_min``
(9 mL/s for 0.1 mmHg, briefly, while a valve opens or closes).

**Blood volume.** The model is closed: the total volume ``V_total`` (four chamber
volumes plus the stressed volumes ``C p`` of the four vascular compartments; their
unstressed volumes are constant and not represented, as in Regazzoni) is an exact
linear invariant of the equations, kept to round-off by every Runge-Kutta method.

**Per-beat outputs.** The cumulative states ``int_p_AR_SYS`` (``int p_AR_SYS dt``,
mmHg s) and ``int_Q_AV`` (``int Q_AV dt``, mL) give the mean arterial pressure and
the cardiac output of any beat exactly from their values at the beat's start and
end; :func:`beat_metrics` reduces the last complete beat of a saved trajectory;
:func:`to_periodic_steady_state` runs beat by beat (in the phase, exactly one beat
per step) until the state at beat start stops changing, then reduces one densely
saved beat; :func:`pv_loop` returns the pressure-volume loop.

**Baroreflex** (``Circulation(baroreflex=True)``). The short-term arterial
baroreflex of Ursino (1998), simplified: a first-order filter of arterial pressure
(``tau_p``), Ursino's sigmoidal carotid-sinus afferent firing ``f_as``, his
sympathetic ``f_es`` and vagal ``f_ev`` efferent firing, and first-order effectors
(time constants ``tau_R, tau_E, tau_Ts, tau_Tv``) on the systemic arterial
resistance, the ventricular active elastances and the heart period:

```
R_AR_SYS,eff = R_AR_SYS (1 + x_R),  EA_V,eff = EA_V (1 + x_E),  T = 60/HR (1 + x_Ts + x_Tv)
dx_R/dt  = (G_R  [s(f_es) - s_n] - x_R)  / tau_R        s(f) = ln(f - f_es_min + 1)
dx_E/dt  = (G_E  [s(f_es) - s_n] - x_E)  / tau_E
dx_Ts/dt = (G_Ts [s(f_es) - s_n] - x_Ts) / tau_Ts
dx_Tv/dt = (G_Tv [f_ev - f_ev_n] - x_Tv) / tau_Tv
```

The gains are Ursino's absolute gains divided by his baseline values of the
effected quantity (fractional gains), and the effects are measured from the set
point ``P_n`` (``s_n, f_ev_n``: the firing at ``P_tilde = P_n``), so that the reflex
is neutral at rest. Ursino's pure delays (0.2-2 s) are omitted (an ODE has none).

References:
    - Regazzoni F, Salvador M, Africa PC, Fedele M, Dede' L, Quarteroni A. A cardiac
      electromechanical model coupled with a lumped-parameter model for closed-loop
      blood circulation. J Comput Phys 457:111083, 2022 (arXiv:2011.15040).
    - Ursino M. Interaction between carotid baroregulation and the pulsating heart: a
      mathematical model. Am J Physiol 275:H1733-H1747, 1998.

Layout: ``_model.py`` holds the model (states, parameters, equations); ``_beats.py``
the beat-level results (per-beat metrics, the periodic steady state, the
pressure-volume loop, :func:`quasi_static`). The Anderson-accelerated cohort steady
states and the PK-driven :class:`~twinjax.models._multiscale.QuasiStaticTwin` sit
above the organ, in ``models/_multiscale.py``, which this package never imports.
"""

from ._beats import METRIC_UNITS as METRIC_UNITS
from ._beats import METRICS as METRICS
from ._beats import SteadyState as SteadyState
from ._beats import beat_map as beat_map
from ._beats import beat_metrics as beat_metrics
from ._beats import beat_reduction as beat_reduction
from ._beats import final_beat as final_beat
from ._beats import pv_loop as pv_loop
from ._beats import quasi_static as quasi_static
from ._beats import reduce_beat as reduce_beat
from ._beats import reduce_metrics as reduce_metrics
from ._beats import saved_beat_zeros as saved_beat_zeros
from ._beats import to_periodic_steady_state as to_periodic_steady_state
from ._model import CHAMBERS as CHAMBERS
from ._model import INITIAL as INITIAL
from ._model import REGAZZONI as REGAZZONI
from ._model import URSINO as URSINO
from ._model import URSINO_FRAC as URSINO_FRAC
from ._model import VALVES as VALVES
from ._model import VESSELS as VESSELS
from ._model import Circulation as Circulation
from ._model import activation as activation
from ._model import blood_volume as blood_volume
from ._model import valve_flow as valve_flow
