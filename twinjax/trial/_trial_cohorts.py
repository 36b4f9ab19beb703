"""The patients of a trial arm: drawn from the population until enough pass the
inclusion criteria (deterministic given the key)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._spec import SpecError


def draw_patients(population, model, inclusion, key, n):
    """``n`` patients passing the inclusion criteria (deterministic given the key)."""
    chosen = []
    start = 0
    batch = max(2 * n, 64)
    total = 0
    while total < n:
        c = population.sample(key, batch, start=start)
        ok = np.ones(c.n, bool)
        for inc in inclusion:
            if inc.covariate is not None:
                if inc.covariate not in c.covariates:
                    raise SpecError(
                        f"inclusion: unknown covariate {inc.covariate!r}; have "
                        f"{list(c.covariates.columns)}"
                    )
                v = np.asarray(c.covariates[inc.covariate])
            else:
                y0 = model.init(c.params)
                v = np.asarray(model.observe(0.0, y0, c.params)[inc.output])
            ok &= (v >= inc.min) & (v <= inc.max)
        idx = np.flatnonzero(ok)[: n - total]
        if idx.size:
            chosen.append(c.subset(idx))
            total += idx.size
        start += batch
        if start > 1000 * n:
            raise SpecError("inclusion criteria reject almost every virtual patient")
    out = chosen[0]
    if len(chosen) > 1:
        from ..population._population import Cohort

        out = Cohort(
            params={
                k: np.concatenate([np.asarray(x.params[k]) for x in chosen]) for k in out.params
            },
            covariates=pd.concat([x.covariates for x in chosen]),
            etas=np.concatenate([np.asarray(x.etas) for x in chosen]),
            iiv=out.iiv,
            typical={
                k: np.concatenate([np.asarray(x.typical[k]) for x in chosen]) for k in out.typical
            },
            index=np.concatenate([np.asarray(x.index) for x in chosen]),
        )
    return out
