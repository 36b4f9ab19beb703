"""Extract the 16 CiPA validation compounds' inputs from the mirrored source repositories.

Writes ``tests/data/cipa_validation16_li2019.csv``, the committed reference copy that
``tests/test_cipa_table.py`` checks ``twinjax/models/ep/cipa_compounds.csv`` against
(CI has no network). Sources, read with ``git show <commit>:<path>`` from local mirrors:

- X = CardiacModelling/hERG-binding-mechanisms @ 4fdb8a37ef45631e177068aba8f3d9119b1cec52,
  ``methods/parameters.py``: ``binding_li`` (Li et al. 2019 Clin Pharmacol Ther 105:466,
  supplement S2 p. 13: Kt, Kmax, Ku, halfmax (EC50^n), n, Vhalf) and
  ``non_hERG_ic50_li`` / ``non_hERG_hill_li`` (supplement S2 p. 14: INaL, ICaL, INa
  IC50 (uM x 1e3 = nM) and Hill coefficients); the dict literals are evaluated as
  arithmetic only (``2*4.473e+02``, ``1.47*1e3``).
- V = FDA/CiPA branch Model-Validation-2018 @ a0924b591941ac3e216c498b9fe1fa8f729901b6,
  ``AP_simulation/data/newCiPA.csv``: ``therapeutic`` (free Cmax, nM), ``CiPA`` (2 high,
  1 intermediate, 0 low), ``hERGIC50`` / ``hERGh`` (the static hERG Hill fit, unused
  by the dynamic model), and the absence of Ito, IK1, IKs fits (0 = none) for these 16.

Run: ``python calibration/cipa_validation_sources.py --mirror-x DIR --mirror-v DIR``
(``DIR`` = a git directory of each repository, e.g. from ``git clone --mirror``).
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import subprocess
from pathlib import Path

X_COMMIT = "4fdb8a37ef45631e177068aba8f3d9119b1cec52"
V_COMMIT = "a0924b591941ac3e216c498b9fe1fa8f729901b6"
VALIDATION = (
    "ibutilide vandetanib azimilide disopyramide domperidone droperidol pimozide astemizole "
    "clozapine clarithromycin risperidone metoprolol tamoxifen loratadine nitrendipine "
    "nifedipine"
).split()
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "cipa_validation16_li2019.csv"


def _show(gitdir, commit, path):
    return subprocess.run(
        ["git", "--git-dir", str(gitdir), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _arith(node):
    """Evaluate a literal made of numbers, None, lists, dicts, + - * / only."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_arith(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_arith(k): _arith(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arith(node.operand)
    if isinstance(node, ast.BinOp):
        a, b = _arith(node.left), _arith(node.right)
        ops = {ast.Mult: a * b, ast.Add: a + b, ast.Sub: a - b}
        if isinstance(node.op, ast.Div):
            return a / b
        return ops[type(node.op)]
    raise ValueError(f"not an arithmetic literal: {ast.dump(node)}")


def _dicts(source, names):
    out = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            if stmt.targets[0].id in names:
                out[stmt.targets[0].id] = _arith(stmt.value)
    return out


def extract(mirror_x, mirror_v):
    par = _dicts(
        _show(mirror_x, X_COMMIT, "methods/parameters.py"),
        {"binding_li", "non_hERG_ic50_li", "non_hERG_hill_li"},
    )
    newcipa = {
        r["drug"]: r
        for r in csv.DictReader(
            io.StringIO(_show(mirror_v, V_COMMIT, "AP_simulation/data/newCiPA.csv"))
        )
    }
    rows = []
    for drug in VALIDATION:
        kt, kmax, ku, halfmax, n, vhalf = par["binding_li"][drug]
        ic50 = par["non_hERG_ic50_li"][drug]  # INaL, ICaL, INa, Ito, IK1, IKs
        hill = par["non_hERG_hill_li"][drug]
        v = newcipa[drug]
        for col in ("ItoIC50", "IK1IC50", "IKsIC50"):  # no fit for the validation drugs
            assert float(v[col]) == 0.0, (drug, col, v[col])
        assert ic50[3:] == [None, None, None] and hill[3:] == [None, None, None], drug
        rows.append(
            dict(
                compound=drug,
                cmax_free_nM=float(v["therapeutic"]),
                cipa_class=int(v["CiPA"]),
                Kt=kt,
                Kmax=kmax,
                Ku=ku,
                n=n,
                halfmax=halfmax,
                Vhalf=vhalf,
                INaL_IC50=ic50[0],
                INaL_h=hill[0],
                ICaL_IC50=ic50[1],
                ICaL_h=hill[1],
                INa_IC50=ic50[2],
                INa_h=hill[2],
                hERG_IC50=float(v["hERGIC50"]),
                hERG_h=float(v["hERGh"]),
            )
        )
    return rows


HEADER = (
    "# Reference copy for tests/test_cipa_table.py: inputs of the 16 CiPA validation compounds\n"
    "# (Li et al. 2019 Clin Pharmacol Ther 105:466), numbers only, extracted by\n"
    "# calibration/cipa_validation_sources.py (git show) from:\n"
    f"#   CardiacModelling/hERG-binding-mechanisms@{X_COMMIT}:methods/parameters.py\n"
    "#     binding_li (Li 2019 supplement S2 p.13: Kt 1/ms, Kmax, Ku 1/ms, halfmax nM^n, n,\n"
    "#     Vhalf mV; disopyramide's halfmax is written there as 2*4.473e+02 = 894.6),\n"
    "#     non_hERG_ic50_li / non_hERG_hill_li (supplement S2 p.14: INaL, ICaL, INa IC50 in nM\n"
    "#     and Hill coefficients; no Ito, IK1, IKs fits for these drugs)\n"
    f"#   FDA/CiPA@{V_COMMIT}:AP_simulation/data/newCiPA.csv\n"
    "#     (branch Model-Validation-2018) therapeutic = free Cmax nM, CiPA = 2 high /\n"
    "#     1 intermediate / 0 low, hERGIC50/hERGh = static hERG Hill fit (unused)\n"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror-x", required=True)
    ap.add_argument("--mirror-v", required=True)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = extract(args.mirror_x, args.mirror_v)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()}
        )
    Path(args.out).write_text(HEADER + buf.getvalue())
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
