"""The step loop before and after a change: the same programs timed on two source trees
in one run.

A refactor of the shared step loop (``solve/_ensemble_run.py``, ``_ensemble_loop.py``,
``_loop_parts.py``, ``_compaction.py``) must not slow it down. This script times four
cases on the working tree and on a checkout of an earlier commit (``--base``, e.g.
made with ``git worktree add /tmp/base <commit>``), each in a fresh process pinned to
one core, alternating base and current for ``--rounds`` rounds, and writes the best
time of each tree and the ratio current / base:

- ``lorenz_rk4``: Lorenz (sigma 10, beta 8/3, rho over [0, 21]), N = 65,536, t in
  [0, 1], ``Ensemble("rk4", dt=1e-3)`` (the lean fixed-step body);
- ``lorenz_tsit5``: the same, ``Ensemble("tsit5", rtol=atol=1e-8)``;
- ``lorenz_dopri5_compact``: ``Ensemble("dopri5", rtol=atol=1e-8, compact=0.25)``;
- ``pk2_cohort_8192``: a two-compartment oral PK cohort (log-normal IIV 30 %),
  N = 8,192, two doses, 97 saves, through ``twinjax.simulate`` with
  ``Ensemble("dopri5", rtol=1e-6, atol=1e-9)`` (events, saves, compaction).

Each case is compiled once and timed ``--repeats`` times (best kept). float64.

Run: ``python benchmarks/step_loop_ab.py --base /tmp/base``; writes
``benchmarks/results/step_loop_ab.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import twinjax as tj
from twinjax.models import pk

repeats = int(sys.argv[1])


def best(fn):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return min(ts)


def lorenz(t, y, args):
    rho, _ = args
    x, yy, z = y[:, 0], y[:, 1], y[:, 2]
    return jnp.stack([10.0 * (yy - x), x * (rho - z) - yy, x * yy - 8.0 / 3.0 * z], axis=1)


out = {}
N = 65536
rho = jnp.linspace(0.0, 21.0, N)
y0 = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0]), (N, 3))
t0, t1 = jnp.zeros(N), jnp.ones(N)
cases = {
    "lorenz_rk4": tj.solvers.Ensemble("rk4", dt=1e-3),
    "lorenz_tsit5": tj.solvers.Ensemble("tsit5", rtol=1e-8, atol=1e-8),
    "lorenz_dopri5_compact": tj.solvers.Ensemble("dopri5", rtol=1e-8, atol=1e-8, compact=0.25),
}
for name, sol in cases.items():
    g = jax.jit(lambda y0, rho, sol=sol: sol.integrate(lorenz, t0, t1, y0, None, (rho, None), None))
    out[name] = best(lambda g=g: g(y0, rho))
M = pk.two_compartment("first_order")
reg = tj.Regimen([tj.Dose(100.0, "depot", time=0.0), tj.Dose(100.0, "depot", time=12.0)])
n = 8192
key = jax.random.key(0)
d = M.defaults()
p = {
    k: float(d[k]) * jnp.exp(0.3 * jax.random.normal(jax.random.fold_in(key, i), (n,)))
    for i, k in enumerate(("CL", "V", "Q", "V2", "KA"))
}
times = jnp.linspace(0.0, 48.0, 97)
sol = tj.solvers.Ensemble("dopri5", rtol=1e-6, atol=1e-9)
out["pk2_cohort_8192"] = best(lambda: tj.simulate(M, p, reg, times, solver=sol)["C"])
print(json.dumps(out))
"""


def run_tree(tree: Path, repeats: int, core: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = ["taskset", "-c", core, sys.executable, "-c", CHILD, str(repeats)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if r.returncode:
        raise SystemExit(f"{tree}: the timing process failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="a checkout of the earlier commit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--core", default="0", help="the CPU core the processes are pinned to")
    a = ap.parse_args(argv)
    base = Path(a.base).resolve()
    if not (base / "twinjax" / "__init__.py").is_file():
        raise SystemExit(f"--base {base}: no twinjax/ package there")
    runs = {"base": [], "current": []}
    for _ in range(a.rounds):
        for label, tree in (("base", base), ("current", ROOT)):
            runs[label].append(run_tree(tree, a.repeats, a.core))
            print(label, runs[label][-1], flush=True)
    cases = list(runs["base"][0])
    best = {k: {c: min(r[c] for r in v) for c in cases} for k, v in runs.items()}
    ratio = {c: best["current"][c] / best["base"][c] for c in cases}
    commit = subprocess.run(
        ["git", "-C", str(base), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    here = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    payload = {
        "benchmark": "step_loop_ab",
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "machine": C.machine_info(),
        "base_commit": commit,
        "current_commit": here,
        "rounds": runs,
        "best_s": best,
        "ratio_current_over_base": ratio,
        "command": "python benchmarks/step_loop_ab.py " + " ".join(argv or sys.argv[1:]),
    }
    print("ratio current / base:", {k: round(v, 3) for k, v in ratio.items()})
    print("wrote", C.write_json("step_loop_ab.json", payload))


if __name__ == "__main__":
    main()
