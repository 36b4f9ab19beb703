"""Cross-check CiPAORd against the FDA's reference C code (derivatives and qNet per beat).

Needs a local clone of github.com/FDA/CiPA (commit e881df6) and a C compiler. The
FDA file ``AP_simulation/models/newordherg_qNet.c`` (written for R's deSolve) is
compiled unchanged into a temporary shared library with stub R headers, and

1. its derivatives are compared with ``CiPAORd.rhs`` at the control state and at
   perturbed states with drugs (largest relative difference printed);
2. it is integrated by SciPy's LSODA at rtol 1e-8 (the FDA uses lsoda at 1e-6) for
   ``--beats`` beats from the FDA control state at CL 2000 ms, and its qNet per beat
   is compared with :func:`twinjax.models.ep.pace_cipa` (default steps).

Run: ``python calibration/cipa_fda_crosscheck.py --repo /path/to/FDA/CiPA --beats 3``;
writes ``calibration/results/cipa_fda_crosscheck.json``. Nothing of the FDA code is
stored in twinjax.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from twinjax.models.ep._cipa import (  # noqa: E402
    CONTROL_CL2000,
    HILL_TARGETS,
    CiPAORd,
    compound_params,
    compounds,
    pace_cipa,
)

COMMIT = "e881df6766d1067a08b65184d7a320804aef73d6"
RESULTS = Path(__file__).parent / "results"
# state order of the FDA C model (y[0..48]), twinjax names where they differ
C_STATES = (
    "v nai nass ki kss cai cass cansr cajsr m hf hs j hsp jp mL hL hLp a iF iS ap iFp iSp d ff "
    "fs fcaf fcas jca nca ffp fcafp xs1 xs2 xk1 Jrelnp Jrelp CaMKt IC1 IC2 C1 C2 O IO IObound "
    "Obound Cbound D"
).split()
RENAME = dict(
    v="V", nai="Na_i", nass="Na_ss", ki="K_i", kss="K_ss", cai="Ca_i", cass="Ca_ss"
) | dict(cansr="Ca_nsr", cajsr="Ca_jsr")
FC = dict(INa="GNafc", INaL="GNaLfc", ICaL="PCafc", Ito="Gtofc", IKs="GKsfc", IK1="GK1fc")


def git_show(repo, path):
    cmd = ["git", "-C", repo, "show", f"{COMMIT}:{path}"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


class FDAModel:
    def __init__(self, repo):
        self.dir = Path(tempfile.mkdtemp())
        (self.dir / "m.c").write_text(git_show(repo, "AP_simulation/models/newordherg_qNet.c"))
        for h in ("R.h", "Rinternals.h", "Rdefines.h"):
            (self.dir / h).write_text("")
        (self.dir / "R_ext").mkdir()
        (self.dir / "R_ext" / "Rdynload.h").write_text(
            "#include <stdio.h>\n#include <stdlib.h>\n"
            'static void error(const char* s){ fprintf(stderr, "%s\\n", s); abort(); }\n'
        )
        so = self.dir / "m.so"
        subprocess.run(
            ["gcc", "-O2", "-shared", "-fPIC", "-I", str(self.dir), "-include", "math.h",
             "-o", str(so), str(self.dir / "m.c"), "-lm"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.lib = ctypes.CDLL(str(so))
        rows = [ln.split() for ln in git_show(repo, "AP_simulation/models/newordherg_pars.txt")
                .strip().splitlines()]  # fmt: skip
        self.base = {k: float(v) for k, v in rows}
        states = git_show(repo, "AP_simulation/models/newordherg_states_CL2000.txt")
        self.y0 = dict((k, float(v)) for k, v in (ln.split() for ln in states.strip().splitlines()))
        self._Y = (ctypes.c_double * 50)()
        self._YD = (ctypes.c_double * 50)()
        self._out = (ctypes.c_double * 8)()
        self._ip = (ctypes.c_int * 1)(8)
        self._n = ctypes.c_int(50)

    def set_params(self, drug=None, D=0.0):
        """``get_pars.R`` logic: GKrfc 1.1, optimised factors, drug IC50 scalings."""
        p = dict(self.base)
        p.update(T=37.0, Kmax=0.0, Kt=0.0, GKrfc=1.1)
        if drug is not None:
            row = compounds().loc[drug]
            for k in ("Kmax", "Ku", "n", "halfmax", "Vhalf"):
                p[k] = float(row[k])
            p["Kt"] = 3.5e-5
            for ch, fc in FC.items():
                if np.isfinite(row[f"{ch}_IC50"]) and D > 0:
                    p[fc] = 1.0 + (D / row[f"{ch}_IC50"]) ** row[f"{ch}_h"]
        for fc, f in dict(GKrfc=1.114, GNaLfc=2.661, GKsfc=1.870, GK1fc=1.698, PCafc=1.007).items():
            p[fc] = p[fc] / f
        arr = (ctypes.c_double * 59)(*p.values())
        proto = ctypes.CFUNCTYPE(
            None, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)
        )

        def fill(n, out):
            for i in range(59):
                out[i] = arr[i]

        self._cb = proto(fill)
        self.lib.initmod(self._cb)

    def f(self, t, y):
        self._Y[:] = list(map(float, y))
        t_ = ctypes.c_double(t)
        self.lib.derivs(ctypes.byref(self._n), ctypes.byref(t_), self._Y, self._YD, self._out,
                        self._ip)  # fmt: skip
        return np.frombuffer(self._YD, dtype=np.float64).copy()

    def beats(self, D, n, rtol=1e-8):
        y = np.array([self.y0[k] for k in C_STATES[:-1]] + [D, 0.0])
        out = []
        for _ in range(n):
            y = y.copy()
            y[49] = 0.0
            kw = dict(method="LSODA", rtol=rtol, atol=rtol * 1e-2)
            s1 = solve_ivp(self.f, (0.0, 0.5), y, max_step=0.05, **kw)
            s2 = solve_ivp(self.f, (0.5, 2000.0), s1.y[:, -1], first_step=1e-4, **kw)
            y = s2.y[:, -1]
            out.append(float(y[49]) / 1000.0)
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="local git clone of github.com/FDA/CiPA")
    ap.add_argument("--beats", type=int, default=3)
    args = ap.parse_args()
    fda = FDAModel(args.repo)
    model = CiPAORd()
    rng = np.random.default_rng(0)
    cases = [("control", None, 0.0), ("chlorpromazine", "chlorpromazine", 152.0),
             ("quinidine", "quinidine", 3 * 3237.0), ("dofetilide", "dofetilide", 8.0)]  # fmt: skip
    report = {"fda_commit": COMMIT, "derivatives": {}, "qnet_per_beat": {}}
    for name, drug, D in cases:
        fda.set_params(drug, D)
        # the FDA control run sets Kmax = Kt = 0 (get_pars.R); with a drug Kt = 3.5e-5 / ms
        p = model.complete(compound_params(model, drug, D) if drug else {"Kt": 0.0})[0]
        worst = 0.0
        for trial in range(5):
            y = dict(CONTROL_CL2000)
            if trial:
                y = {k: v * (1 + 0.2 * rng.standard_normal()) for k, v in y.items()}
                y["V"] = float(rng.uniform(-90.0, 40.0))
                for k in ("IObound", "Obound", "Cbound"):
                    y[k] = 0.01 * rng.random()
            cy = np.array([y[RENAME.get(k, k)] for k in C_STATES[:-1]] + [D, 0.0])
            cd = fda.f(10.0, cy)
            ours = model.rhs(jnp.asarray(10.0), {k: jnp.asarray(y[k]) for k in y}, p, None)
            for i, k in enumerate(C_STATES[:-1]):
                a, b = float(ours[RENAME.get(k, k)]), cd[i]
                worst = max(worst, abs(a - b) / (abs(b) + 1e-10))
        report["derivatives"][name] = {"max_rel_diff": worst}
        ref = fda.beats(D, args.beats)
        res = pace_cipa(model, p, args.beats)
        ours = np.asarray(res.biomarkers["qNet"]).tolist()
        report["qnet_per_beat"][name] = {"fda_lsoda_1e-8": ref, "twinjax": ours}
        print(name, f"deriv max rel diff {worst:.2e}", "fda", ref, "ours", ours, flush=True)
    report["hill_targets"] = HILL_TARGETS
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cipa_fda_crosscheck.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
