"""Virtual demographics: age, sex, weight, height, serum creatinine and derived covariates.

Each patient's covariates are drawn from a key of its own, ``fold_in(key, index)``, so
that patient ``i`` is the same whatever the number of patients drawn with it or the
chunk it falls in.

References:
    - Fryar CD, Carroll MD, Gu Q, Afful J, Ogden CL. Anthropometric reference data for
      children and adults: United States, 2015-2018. National Center for Health
      Statistics, Vital Health Stat 3(46), 2021 (NHANES 2015-2018; adults aged 20 and
      over).
    - Du Bois D, Du Bois EF. A formula to estimate the approximate surface area if
      height and weight be known. Arch Intern Med 17:863-871, 1916.
    - Cockcroft DW, Gault MH. Prediction of creatinine clearance from serum creatinine.
      Nephron 16:31-41, 1976.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COLUMNS",
    "Demographics",
    "SexGroup",
    "body_surface_area",
    "cockcroft_gault",
    "key_blocks",
    "patient_keys",
]

COLUMNS = ("AGE", "SEX", "WT", "HT", "BMI", "BSA", "SCR", "CRCL")
"""Columns of a demographics table: age (y), sex (0 male, 1 female), weight (kg),
height (cm), body-mass index (kg/m2), body surface area (m2), serum creatinine
(mg/dL), creatinine clearance (mL/min)."""

_NHANES = "NHANES 2015-2018, adults 20+ (Fryar et al. 2021, Vital Health Stat 3(46))"


def float64_draws():
    """A context in which random numbers are drawn in float64, whatever ``jax_enable_x64``.

    The same key must give the same patients in float32 and float64 programs: a
    float32 draw uses other random bits than a float64 one (``jax.random.normal``
    in float32 and float64 are different samples, not roundings of each other). So
    every sampler of :mod:`twinjax.population` draws, and computes the patients, in
    float64 and casts the result to the working dtype at the end: a float32 cohort
    is the float64 cohort rounded to float32.

    With x64 on this does nothing (the float64 path is the plain one). With x64 off
    it enables x64 *locally* (JAX's thread-local ``enable_x64`` context, not the
    global flag): arrays made inside may be float64, so samplers turn them into
    NumPy before leaving the context and cast them to the working dtype after it.
    """
    if jax.config.jax_enable_x64:  # type: ignore[attr-defined]
        return contextlib.nullcontext()
    ctx = getattr(jax, "enable_x64", None)  # jax >= 0.4.36: a config context manager
    if callable(ctx):
        return ctx(True)
    from jax.experimental import enable_x64  # type: ignore[attr-defined]  # older jax

    return enable_x64(True)


def patient_keys(key, n: int, start: int = 0):
    """One PRNG key per patient: ``fold_in(key, start + i)`` for ``i < n``.

    Arguments:
        key: a JAX PRNG key (``jax.random.key`` or the legacy ``jax.random.PRNGKey``).
        n: the number of patients.
        start: the global index of the first patient.

    Returns:
        A batch of ``n`` keys; patient ``start + i`` always gets the same key.

    Raises:
        ValueError: if ``n`` or ``start`` is negative, or an index reaches ``2**32``.
    """
    n, start = _check_range(n, start)
    return _fold_keys(key, jnp.asarray(start, jnp.uint32), n)


BLOCK = 8192
"""Patients per compiled block: larger batches are drawn block by block."""


def _check_range(n, start) -> tuple[int, int]:
    n, start = int(n), int(start)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
    if start + n + BLOCK > 2**32:
        raise ValueError("patient indices must stay below 2**32 - BLOCK")
    return n, start


def key_blocks(key, n: int, start: int = 0):
    """Per-patient keys in padded blocks: a list of ``(keys, m)``.

    ``keys`` holds ``fold_in(key, i)`` for consecutive patients; only its first ``m``
    entries are wanted, the rest pads the block to a power of two (at least 16, at most
    :data:`BLOCK`) so that batches of any size reuse a handful of compiled programs.
    """
    n, start = _check_range(n, start)
    if n <= BLOCK:
        size = max(16, 1 << max(n - 1, 0).bit_length())
        return [(_fold_keys(key, jnp.asarray(start, jnp.uint32), size), n)]
    return [
        (_fold_keys(key, jnp.asarray(start + b, jnp.uint32), BLOCK), min(BLOCK, n - b))
        for b in range(0, n, BLOCK)
    ]


@functools.partial(jax.jit, static_argnums=2)
def _fold_keys(key, start, n: int):
    idx = start + jnp.arange(n, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, idx)


@dataclasses.dataclass(frozen=True)
class SexGroup:
    """Summary statistics of one sex in an adult population.

    Weight is log-normal: ``weight_mean`` and ``weight_sd`` are the arithmetic mean and
    standard deviation (kg), converted to ``log`` scale by the log-normal moment
    identities. ``(AGE, log WT, HT)`` is multivariate normal with the correlation
    matrix built from the three pairwise correlations below. Serum creatinine is
    log-normal with median ``scr_median`` at age ``scr_age_ref`` and a log-linear age
    trend ``scr_age_slope`` (per year), independent of the rest given age.

    Arguments:
        age_mean, age_sd: mean and SD of age (y), before truncation.
        weight_mean, weight_sd: arithmetic mean and SD of body weight (kg).
        height_mean, height_sd: mean and SD of standing height (cm).
        corr_age_weight: correlation of age with log weight.
        corr_age_height: correlation of age with height.
        corr_weight_height: correlation of log weight with height.
        scr_median: median serum creatinine (mg/dL) at age ``scr_age_ref``.
        scr_log_sd: SD of log serum creatinine.
        scr_age_slope: change of log serum creatinine per year of age.
        scr_age_ref: reference age (y) of ``scr_median``.

    Raises:
        ValueError: for a non-positive SD or mean weight, or correlations that do not
            form a positive definite matrix.
    """

    age_mean: float
    age_sd: float
    weight_mean: float
    weight_sd: float
    height_mean: float
    height_sd: float
    corr_age_weight: float = 0.0
    corr_age_height: float = 0.0
    corr_weight_height: float = 0.0
    scr_median: float = 0.9
    scr_log_sd: float = 0.22
    scr_age_slope: float = 0.0
    scr_age_ref: float = 50.0

    def __post_init__(self):
        for f in (
            "age_sd",
            "weight_mean",
            "weight_sd",
            "height_mean",
            "height_sd",
            "scr_median",
            "scr_log_sd",
        ):
            v = getattr(self, f)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"SexGroup.{f} must be a positive finite number, got {v}")
        r = self.correlation
        if np.min(np.linalg.eigvalsh(r)) <= 0:
            raise ValueError(
                "SexGroup correlations (age-weight, age-height, weight-height) = "
                f"({self.corr_age_weight}, {self.corr_age_height}, {self.corr_weight_height}) "
                "do not form a positive definite correlation matrix"
            )

    @property
    def log_weight(self) -> tuple[float, float]:
        """``(mu, sigma)`` of log weight matching the arithmetic mean and SD."""
        s2 = math.log1p((self.weight_sd / self.weight_mean) ** 2)
        return math.log(self.weight_mean) - 0.5 * s2, math.sqrt(s2)

    @property
    def correlation(self) -> np.ndarray:
        """Correlation matrix of ``(AGE, log WT, HT)``."""
        a, b, c = self.corr_age_weight, self.corr_age_height, self.corr_weight_height
        return np.array([[1.0, a, b], [a, 1.0, c], [b, c, 1.0]])

    @property
    def mean(self) -> np.ndarray:
        """Mean of ``(AGE, log WT, HT)``."""
        return np.array([self.age_mean, self.log_weight[0], self.height_mean])

    @property
    def covariance(self) -> np.ndarray:
        """Covariance of ``(AGE, log WT, HT)``."""
        sd = np.array([self.age_sd, self.log_weight[1], self.height_sd])
        return self.correlation * sd[:, None] * sd[None, :]


# Adults aged 20 and over, United States, NHANES 2015-2018 (Fryar et al. 2021):
# mean weight 90.6 kg (men) and 77.5 kg (women), mean height 175.3 cm and 161.3 cm
# (mean BMI 29.1 and 29.6 kg/m2). The report tabulates means and percentiles, not SDs:
# the SDs below are approximations read from the 5th-95th percentile spread, and the
# correlations are typical adult values (height-weight moderately positive, height
# falling and weight nearly flat with age); age is an approximation of the US adult age
# distribution (mean about 47-48 y). Serum creatinine medians (about 0.95 mg/dL men,
# 0.75 mg/dL women, log-SD about 0.22, rising slowly with age) approximate NHANES
# laboratory data. These approximate values are marked as such, not quoted.
NHANES_MALE = SexGroup(
    age_mean=47.0,
    age_sd=17.0,
    weight_mean=90.6,
    weight_sd=21.0,
    height_mean=175.3,
    height_sd=7.6,
    corr_age_weight=0.05,
    corr_age_height=-0.15,
    corr_weight_height=0.45,
    scr_median=0.95,
    scr_log_sd=0.22,
    scr_age_slope=0.003,
    scr_age_ref=47.0,
)
NHANES_FEMALE = SexGroup(
    age_mean=48.0,
    age_sd=17.5,
    weight_mean=77.5,
    weight_sd=21.5,
    height_mean=161.3,
    height_sd=7.0,
    corr_age_weight=0.05,
    corr_age_height=-0.20,
    corr_weight_height=0.30,
    scr_median=0.75,
    scr_log_sd=0.22,
    scr_age_slope=0.003,
    scr_age_ref=48.0,
)


@dataclasses.dataclass(frozen=True)
class Demographics:
    """A generator of adult demographics: age, sex, weight, height and serum creatinine.

    Per sex, ``(AGE, log WT, HT)`` is multivariate normal (:class:`SexGroup`), truncated
    to the ranges below by rejection: each patient draws up to ``max_tries`` candidates
    from its own key and keeps the first inside every range (the probability that none
    is, for the default ranges, is below ``1e-15``; the last candidate is then clipped).
    Serum creatinine is drawn with the candidate and truncated the same way. Derived
    columns: ``BMI = WT / (HT/100)**2``, ``BSA`` (Du Bois & Du Bois 1916), ``CRCL``
    (Cockcroft & Gault 1976, total body weight).

    The default is the adult (20-85 y) US population of NHANES 2015-2018 (Fryar et al.
    2021, Vital Health Stat 3(46)): means as published; SDs, correlations and serum
    creatinine are approximations (see the module source).

    Arguments:
        male, female: summary statistics per sex.
        female_fraction: probability that a patient is female (``SEX = 1``).
        age_range, weight_range, height_range, scr_range: truncation intervals (y, kg,
            cm, mg/dL), closed.
        max_tries: candidates drawn per patient for the truncation.

    Raises:
        ValueError: for a ``female_fraction`` outside [0, 1], an empty range, or a
            range that a sex's distribution almost never reaches.
    """

    male: SexGroup = NHANES_MALE
    female: SexGroup = NHANES_FEMALE
    female_fraction: float = 0.51
    age_range: tuple[float, float] = (20.0, 85.0)
    weight_range: tuple[float, float] = (35.0, 250.0)
    height_range: tuple[float, float] = (130.0, 215.0)
    scr_range: tuple[float, float] = (0.3, 4.0)
    max_tries: int = 16

    source: str = dataclasses.field(default=_NHANES, compare=False)

    def __post_init__(self):
        if not 0.0 <= self.female_fraction <= 1.0:
            raise ValueError(f"female_fraction must lie in [0, 1], got {self.female_fraction}")
        for f in ("age_range", "weight_range", "height_range", "scr_range"):
            lo, hi = getattr(self, f)
            if not lo < hi:
                raise ValueError(f"Demographics.{f} = {(lo, hi)} is empty; need low < high")
        if self.weight_range[0] <= 0 or self.height_range[0] <= 0 or self.scr_range[0] <= 0:
            raise ValueError("weight, height and serum creatinine ranges must be positive")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")
        for name, g in (("male", self.male), ("female", self.female)):
            p = self._acceptance(g)
            if p < 0.05:
                raise ValueError(
                    f"Demographics: the {name} distribution falls inside the truncation "
                    f"ranges with probability ~{p:.3g}; widen the ranges or move the means"
                )

    def _acceptance(self, g: SexGroup) -> float:
        """A lower bound on the acceptance probability of one candidate (Bonferroni)."""
        from scipy import stats

        mu_w, sd_w = g.log_weight
        out = 0.0
        for m, s, (lo, hi) in (
            (g.age_mean, g.age_sd, self.age_range),
            (mu_w, sd_w, tuple(math.log(v) for v in self.weight_range)),
            (g.height_mean, g.height_sd, self.height_range),
            (math.log(g.scr_median), g.scr_log_sd, tuple(math.log(v) for v in self.scr_range)),
        ):
            out += 1.0 - (stats.norm.cdf(hi, m, s) - stats.norm.cdf(lo, m, s))
        return max(0.0, 1.0 - out)

    # ------------------------------------------------------------------ sampling
    def sample(self, key, n: int, start: int = 0):
        """Draw ``n`` patients with global indices ``start, ..., start + n - 1``.

        Arguments:
            key: a JAX PRNG key.
            n: number of patients.
            start: global index of the first patient; drawing patients ``[a, b)`` alone
                gives the rows ``[a, b)`` of drawing ``[0, b)``.

        Returns:
            A pandas DataFrame with columns :data:`COLUMNS` (``SEX`` is 0 for male, 1
            for female) indexed by the global patient index (named ``ID``).
        """
        n, start = int(n), int(start)
        cols = [self._columns(k, m) for k, m in key_blocks(key, n, start)]
        return self._frame(concat_columns(cols), np.arange(start, start + n))

    def sample_keys(self, keys, index=None):
        """Draw one patient per key (see :func:`patient_keys`).

        Arguments:
            keys: a batch of PRNG keys, one per patient.
            index: the DataFrame index (default ``0..n-1``).

        Returns:
            The demographics table, as in :meth:`sample`.
        """
        n = int(keys.shape[0])
        return self._frame(self._columns(keys, n), np.arange(n) if index is None else index)

    def _columns(self, keys, n: int) -> dict:
        """Numpy columns for the first ``n`` of ``keys`` (the rest is padding)."""
        groups = (self.male, self.female)
        mu = np.stack([np.append(g.mean, math.log(g.scr_median)) for g in groups])
        chol = np.stack([np.linalg.cholesky(g.covariance) for g in groups])
        scr = np.array([[g.scr_age_slope, g.scr_age_ref, g.scr_log_sd] for g in groups])
        lo = np.array(
            [
                self.age_range[0],
                math.log(self.weight_range[0]),
                self.height_range[0],
                math.log(self.scr_range[0]),
            ]
        )
        hi = np.array(
            [
                self.age_range[1],
                math.log(self.weight_range[1]),
                self.height_range[1],
                math.log(self.scr_range[1]),
            ]
        )
        if n == 0:
            sex, chosen = np.zeros((0,), np.int64), np.zeros((0, 4))
        else:
            # drawn in float64 whatever the x64 flag: the same key gives the same
            # patients in float32 and float64 programs (see float64_draws)
            with float64_draws():
                f = jnp.float64
                sex, chosen = _draw(
                    keys,
                    int(self.max_tries),
                    jnp.asarray(self.female_fraction, f),
                    *(jnp.asarray(v, f) for v in (mu, chol, scr, lo, hi)),
                )
                sex = np.asarray(sex, np.int64)[:n]
                chosen = np.asarray(chosen, np.float64)[:n]

        age = chosen[:, 0]
        wt = np.exp(chosen[:, 1])
        ht = chosen[:, 2]
        scr = np.exp(chosen[:, 3])
        return {
            "AGE": age,
            "SEX": sex,
            "WT": wt,
            "HT": ht,
            "BMI": wt / (ht / 100.0) ** 2,
            "BSA": body_surface_area(wt, ht),
            "SCR": scr,
            "CRCL": cockcroft_gault(age, wt, scr, sex),
        }

    @staticmethod
    def _frame(cols: dict, index):
        import pandas as pd

        return pd.DataFrame(cols, index=pd.Index(np.asarray(index), name="ID"))


def concat_columns(parts: list[dict]) -> dict:
    """Concatenate lists of ``{column: array}`` blocks (shared with ``_population.py``)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@functools.partial(jax.jit, static_argnums=1)
def _draw(keys, K: int, female_fraction, mu, chol, scr, lo, hi):
    """Per patient: sex, then the first of ``K`` candidates inside ``[lo, hi]``.

    ``mu`` (2, 4), ``chol`` (2, 3, 3) and ``scr`` (2, 3: slope, reference age, log SD)
    are indexed by sex; a candidate is ``(AGE, log WT, HT, log SCR)``.
    """

    def one(k):
        u = jax.random.uniform(jax.random.fold_in(k, 0), dtype=mu.dtype)
        s = (u < female_fraction).astype(jnp.int32)
        z = jax.random.normal(jax.random.fold_in(k, 1), (K, 4), mu.dtype)
        m, c, (slope, ref, sd) = mu[s], chol[s], scr[s]
        # L z as explicit sums (not a matmul): identical rounding for any batch size
        xs = (
            m[None, :3]
            + z[:, 0:1] * c[None, :, 0]
            + z[:, 1:2] * c[None, :, 1]
            + z[:, 2:3] * c[None, :, 2]
        )
        log_scr = m[3] + slope * (xs[:, 0] - ref) + sd * z[:, 3]
        x = jnp.concatenate([xs, log_scr[:, None]], axis=1)
        ok = jnp.all((x >= lo[None, :]) & (x <= hi[None, :]), axis=1)
        first = jnp.where(jnp.any(ok), jnp.argmax(ok), K - 1)
        return s, jnp.clip(x[first], lo, hi)

    return jax.vmap(one)(keys)


def body_surface_area(weight, height):
    """Body surface area (m2) by Du Bois & Du Bois (1916).

    ``BSA = 0.007184 * WT**0.425 * HT**0.725`` with weight in kg and height in cm.

    Arguments:
        weight: body weight (kg).
        height: standing height (cm).

    Returns:
        The body surface area in m2 (same shape as the inputs).
    """
    return 0.007184 * weight**0.425 * height**0.725


def cockcroft_gault(age, weight, scr, sex):
    """Creatinine clearance (mL/min) by Cockcroft & Gault (1976).

    ``CRCL = (140 - AGE) * WT / (72 * SCR)``, times 0.85 for women, with total body
    weight in kg, age in years and serum creatinine in mg/dL.

    Arguments:
        age: age (y).
        weight: body weight (kg).
        scr: serum creatinine (mg/dL).
        sex: 0 for male, 1 for female.

    Returns:
        The estimated creatinine clearance in mL/min.
    """
    xp = jnp if any(isinstance(v, jax.Array) for v in (age, weight, scr, sex)) else np
    factor = xp.where(xp.asarray(sex) == 1, 0.85, 1.0)
    return (140.0 - age) * weight / (72.0 * scr) * factor
