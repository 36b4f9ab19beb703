"""Dynamic hERG (IKr) Markov model with drug binding and trapping (CiPA).

Li Z, Dutta S, Sheng J, et al. Improving the in silico assessment of proarrhythmia risk
by combining hERG channel-drug binding kinetics and multichannel pharmacology. Circ
Arrhythm Electrophysiol 10:e004628, 2017 (model structure: Milnes-protocol fits of
the drug-free gating, then of the drug binding per compound).

Nine states: ``IC1, IC2, C1, C2, O, IO`` (drug-free gating) and ``IObound, Obound,
Cbound`` (drug bound). Every drug-free rate is ``A exp(B V) q^((T - 20) / 10)``
(V in mV, rates in 1/ms, T = 37 degC). Transitions (forward / backward rate names):

=========  =================  ===========
from, to   forward            backward
=========  =================  ===========
IC1, IC2   k11                k21
C1, C2     k1                 k2
C2, O      k31                k41
IC2, IO    k3                 k4
C1, IC1    k51                k61
C2, IC2    k52                k62
O, IO      k53                k63
=========  =================  ===========

Drug binding (concentration ``D`` in nM): ``O -> Obound`` and ``IO -> IObound`` at
``Kmax Ku D^n / (D^n + halfmax)``; ``Obound -> O`` at ``Ku``; ``IObound -> IO`` at
``Ku k53 / k63`` (detailed balance with the drug-free O/IO equilibrium); trapping
``Cbound -> Obound`` and ``Cbound -> IObound`` each at ``Kt / (1 + exp(-(V - Vhalf) /
6.789))``, ``Obound -> Cbound`` and ``IObound -> Cbound`` at ``Kt``.

The base rates (A, B, q) were read from FDA/CiPA @ e881df6
(``AP_simulation/models/newordherg_pars.txt``; the same values are in
``hERG_fitting/models/hergmod_pars.txt``); the transition structure from the model's
published equations (Li et al. 2017, Supplement) as coded in
``AP_simulation/models/newordherg_qNet.c`` of that commit. The code here is an
independent implementation that assembles the generator matrix ``Q(V)`` with
``dx/dt = Q(V) x``, so that a time step at frozen V can be taken exactly with a
matrix exponential.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SOURCE = (
    "FDA/CiPA@e881df6766d1067a08b65184d7a320804aef73d6:AP_simulation/models/newordherg_pars.txt"
)
STATES = ("IC1", "IC2", "C1", "C2", "O", "IO", "IObound", "Obound", "Cbound")
_IX = {s: i for i, s in enumerate(STATES)}
TEMPERATURE = 37.0  # degC
KT = 3.5e-5  # 1/ms, trapping rate (FDA/CiPA@e881df6:AP_simulation/funs/get_pars.R)

# name: (A [1/ms], B [1/mV], q [1])
BASE_RATES = {
    "k1": (0.0264, 4.631e-05, 4.843),
    "k2": (4.986e-06, -0.004226, 4.23),
    "k3": (0.001214, 0.008516, 4.962),
    "k4": (1.854e-05, -0.04641, 3.769),
    "k11": (0.0007868, 1.535e-08, 4.942),
    "k21": (5.455e-06, -0.1688, 4.156),
    "k31": (0.005509, 7.771e-09, 4.22),
    "k41": (0.001416, -0.02877, 1.459),
    "k51": (0.4492, 0.008595, 5.0),
    "k52": (0.3181, 3.613e-08, 4.663),
    "k53": (0.149, 0.004668, 2.412),
    "k61": (0.01241, 0.1725, 5.568),
    "k62": (0.3226, -0.0006575, 5.0),
    "k63": (0.008978, -0.02215, 5.682),
}
# (from, to, forward rate) and the backward rate of the same pair
_PAIRS = (
    ("IC1", "IC2", "k11", "k21"),
    ("C1", "C2", "k1", "k2"),
    ("C2", "O", "k31", "k41"),
    ("IC2", "IO", "k3", "k4"),
    ("C1", "IC1", "k51", "k61"),
    ("C2", "IC2", "k52", "k62"),
    ("O", "IO", "k53", "k63"),
)

# drug-free initial state at CL 2000 ms (FDA/CiPA@e881df6:
# AP_simulation/models/newordherg_states_CL2000.txt)
CONTROL_CL2000 = dict(
    IC1=0.999637,
    IC2=6.83208e-05,
    C1=1.80145e-08,
    C2=8.26619e-05,
    O=0.00015551,
    IO=5.67623e-05,
    IObound=0.0,
    Obound=0.0,
    Cbound=0.0,
)


def rates(V, T=TEMPERATURE) -> dict:
    """The drug-free transition rates (1/ms) at potential ``V`` (mV)."""
    fT = (T - 20.0) / 10.0
    return {k: A * jnp.exp(B * V) * q**fT for k, (A, B, q) in BASE_RATES.items()}


def binding_rate(D, Kmax, Ku, n, halfmax):
    """``Kmax Ku D^n / (D^n + halfmax)`` (1/ms), 0 at ``D = 0`` (smooth in the parameters)."""
    pos = D > 0
    Dn = jnp.where(pos, jnp.exp(n * jnp.log(jnp.where(pos, D, 1.0))), 0.0)
    return Kmax * Ku * Dn / (Dn + halfmax)


def generator(V, p) -> jax.Array:
    """The generator ``Q(V)`` (shape ``V.shape + (9, 9)``) with ``dx/dt = Q x``.

    Arguments:
        V: membrane potential (mV), any shape.
        p: parameters ``D`` (nM), ``Kmax`` (1), ``Ku`` (1/ms), ``n`` (1), ``halfmax``
            (nM^n), ``Vhalf`` (mV), ``Kt`` (1/ms), broadcastable with ``V``.

    Columns sum to zero (probability is conserved).
    """
    k = rates(V)
    kb = binding_rate(p["D"], p["Kmax"], p["Ku"], p["n"], p["halfmax"])
    kt = p["Kt"] / (1.0 + jnp.exp(-(V - p["Vhalf"]) / 6.789))
    trans = [(a, b, k[f], k[r]) for a, b, f, r in _PAIRS]
    trans += [
        ("O", "Obound", kb, p["Ku"]),
        ("IO", "IObound", kb, p["Ku"] * k["k53"] / k["k63"]),
        ("Cbound", "Obound", kt, p["Kt"]),
        ("Cbound", "IObound", kt, p["Kt"]),
    ]
    shape = jnp.broadcast_shapes(jnp.shape(V), *(jnp.shape(p[q]) for q in ("D", "Kmax", "Kt")))
    zero = jnp.zeros(shape, jnp.result_type(V, float))
    Q = [[zero for _ in STATES] for _ in STATES]
    for a, b, fwd, bwd in trans:
        i, j = _IX[a], _IX[b]
        Q[j][i] = Q[j][i] + fwd
        Q[i][i] = Q[i][i] - fwd
        Q[i][j] = Q[i][j] + bwd
        Q[j][j] = Q[j][j] - bwd
    return jnp.stack([jnp.stack(row, axis=-1) for row in Q], axis=-2)


def derivatives(V, x: dict, p) -> dict:
    """``{state: dx/dt}`` of the nine states ``x`` (for reference solvers)."""
    Q = generator(V, p)
    xv = jnp.stack([x[s] for s in STATES], axis=-1)
    dx = jnp.einsum("...ij,...j->...i", Q, xv)
    return {s: dx[..., i] for i, s in enumerate(STATES)}


def expm_generator(M, squarings: int = 12):
    """``exp(M)`` for a batch of 9x9 matrices ``M`` (``(..., 9, 9)``), jit and AD friendly.

    Scaling and squaring with a fixed number of squarings (``2^squarings`` scaling)
    and an order-8 Taylor polynomial of the scaled matrix, evaluated in Horner form.
    For the generators here ``|M| <= ~2e3`` (rates up to ~1e3/ms times dt <= 1 ms),
    so the scaled norm stays below ~0.5 and the truncation error is below 1e-13.
    Both loops are ``lax.fori_loop`` (not unrolled): this keeps the compiled beat loop
    small, and the compile time of its forward-mode derivative 5x shorter.
    """
    A = M / 2.0**squarings
    eye = jnp.broadcast_to(jnp.eye(M.shape[-1], dtype=M.dtype), M.shape)

    def horner(i, E):  # E <- I + A E / k for k = 8, 7, ..., 1
        return eye + (A @ E) / (8.0 - i)

    E = jax.lax.fori_loop(0, 8, horner, eye)
    return jax.lax.fori_loop(0, squarings, lambda i, E: E @ E, E)
