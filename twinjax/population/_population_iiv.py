"""Inter-individual variability (part of :mod:`._population`): Omega and correlation
parsing and checks, its factor, and the per-patient eta draws."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def float_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


@jax.jit
def patient_subkeys(keys):
    """Per-patient keys for the demographics (``fold_in(k, 0)``) and the etas (1)."""
    return (
        jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys),
        jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
    )


@jax.jit
def draw_etas(keys, factor):
    """``eta_i = L z_i`` with ``z_i ~ N(0, I)`` drawn from patient ``i``'s key."""
    m = factor.shape[0]
    z = jax.vmap(lambda k: jax.random.normal(k, (m,), factor.dtype))(keys)
    # explicit elementwise sum (not a matmul): the same rounding whatever the batch size
    eta = z[:, 0:1] * factor[None, :, 0]
    for j in range(1, m):
        eta = eta + z[:, j : j + 1] * factor[None, :, j]
    return eta


def parse_omega(omega, iiv, names) -> tuple[tuple[str, ...], np.ndarray]:
    """Validate Omega; return ``(iiv names, (n, n) float64 matrix)``."""
    if omega is None:
        if iiv:
            raise ValueError(f"Population: iiv={list(iiv)} given without omega")
        return (), np.zeros((0, 0))
    if isinstance(omega, Mapping):
        keys_s = [k for k in omega if isinstance(k, str)]
        keys_t = [k for k in omega if isinstance(k, tuple)]
        other = [k for k in omega if not isinstance(k, (str, tuple))]
        if other:
            raise ValueError(f"omega dict keys must be names or (name, name) pairs, got {other}")
        order = tuple(iiv) if iiv is not None else tuple(keys_s)
        _check_names(order, names)
        missing = [k for k in order if k not in keys_s]
        if missing:
            raise ValueError(f"omega: no variance given for {missing}")
        extra = [k for k in keys_s if k not in order]
        if extra:
            raise ValueError(f"omega: variances for {extra} which are not in iiv={list(order)}")
        pos = {k: i for i, k in enumerate(order)}
        m = np.zeros((len(order), len(order)))
        for k in keys_s:
            m[pos[k], pos[k]] = float(omega[k])
        for pair in keys_t:
            if len(pair) != 2 or any(p not in pos for p in pair):
                raise ValueError(
                    f"omega: covariance key {pair!r} must be a pair of iiv names {list(order)}"
                )
            a, b = pos[pair[0]], pos[pair[1]]
            if a == b:
                raise ValueError(f"omega: covariance key {pair!r} repeats one name")
            m[a, b] = m[b, a] = float(omega[pair])
    else:
        if iiv is None:
            raise ValueError("Population: an omega matrix needs iiv=[names] in its order")
        order = tuple(iiv)
        _check_names(order, names)
        m = np.asarray(omega, dtype=np.float64)
        if m.ndim == 1:
            raise ValueError(
                f"omega has shape {m.shape}: give a full ({len(order)}, {len(order)}) "
                "covariance matrix, or a dict {name: variance} for a diagonal Omega"
            )
    _check_omega(m, order)
    return order, m


def _check_names(order, names):
    if len(order) == 0:
        raise ValueError("Population: iiv is empty; use omega=None for no IIV")
    unknown = [k for k in order if k not in names]
    if unknown:
        raise ValueError(
            f"Population: iiv names unknown parameter(s) {unknown}; valid: {list(names)}"
        )
    dup = sorted({k for k in order if order.count(k) > 1})
    if dup:
        raise ValueError(f"Population: iiv repeats {dup}")


def _check_omega(m: np.ndarray, order) -> None:
    k = len(order)
    if m.shape != (k, k):
        raise ValueError(
            f"omega has shape {m.shape} but iiv has {k} names {list(order)}: Omega must be "
            f"({k}, {k})"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("omega has non-finite entries")
    scale = max(1.0, float(np.max(np.abs(m))))
    asym = float(np.max(np.abs(m - m.T)))
    if asym > 1e-10 * scale:
        i, j = np.unravel_index(np.argmax(np.abs(m - m.T)), m.shape)
        raise ValueError(
            f"omega is not symmetric: Omega[{order[i]}, {order[j]}] = {m[i, j]} but "
            f"Omega[{order[j]}, {order[i]}] = {m[j, i]}"
        )
    neg = [order[i] for i in range(k) if m[i, i] < 0]
    if neg:
        raise ValueError(f"omega has negative variances for {neg}")
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    if w.min() < -1e-10 * scale:
        raise ValueError(
            f"omega is not positive semi-definite (smallest eigenvalue {w.min():.4g}): the "
            "covariances imply correlations that cannot coexist (|rho| > 1 or inconsistent)"
        )


def omega_factor(m: np.ndarray) -> np.ndarray:
    """``L`` with ``L @ L.T == Omega`` (Cholesky, or eigen-factor if singular)."""
    if m.size == 0:
        return m
    try:
        return np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(0.5 * (m + m.T))
        return v * np.sqrt(np.clip(w, 0.0, None))[None, :]


def parse_corr(corr, names) -> np.ndarray:
    k = len(names)
    if corr is None:
        return np.eye(k)
    if isinstance(corr, Mapping):
        r = np.eye(k)
        pos = {n: i for i, n in enumerate(names)}
        for pair, rho in corr.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(p in pos for p in pair)):
                raise ValueError(f"corr key {pair!r} must be a pair of names from {list(names)}")
            a, b = pos[pair[0]], pos[pair[1]]
            if a == b:
                raise ValueError(f"corr key {pair!r} repeats one name")
            if not -1.0 <= float(rho) <= 1.0:
                raise ValueError(f"correlation {pair} = {rho} outside [-1, 1]")
            r[a, b] = r[b, a] = float(rho)
        return r
    r = np.asarray(corr, dtype=np.float64)
    if r.shape != (k, k):
        raise ValueError(f"corr has shape {r.shape}, need ({k}, {k}) for {list(names)}")
    if not np.allclose(np.diag(r), 1.0):
        raise ValueError(f"corr must have a unit diagonal, got {np.diag(r)}")
    if np.any(np.abs(r) > 1.0):
        raise ValueError("corr has entries outside [-1, 1]")
    return r
