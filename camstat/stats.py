"""Statistics for Hypothesis 1 (CAM consistency vs correctness) and Hypothesis 2.

Every function is pure: numpy arrays in, a small frozen result record out
(like a scipy/statsmodels result). Each record has ``to_dict()`` returning
JSON-ready Python types (floats, ints, lists, ``None`` for NaN). Rendering
(tables, reports) happens elsewhere.

Conventions
-----------
* ``x`` / "correct group" comes first: :func:`cliffs_delta` and the
  Mann-Whitney ``u`` are oriented so that a *positive* value means the
  metric is *higher* for correctly classified images. For a distance
  (lower = more consistent) H1 predicts a negative delta.
* The AUC is the AUC of the metric *as given* (score = value) for
  predicting ``correct``; pass ``-dist`` (or ``higher_is_correct=False``)
  for metrics where low values are expected for correct images.
* All randomness comes from seeded :class:`numpy.random.Generator` objects;
  seeds for metrics and classes are derived from their *names* (SHA-256),
  so output does not depend on the order in which metrics are given.
* NaN inputs are rejected by the low-level tests (ValueError) and dropped,
  with a count, by :func:`h1_metric`; nothing is dropped silently.

References
----------
Cliff, N. (1993). Dominance statistics: ordinal analyses to answer ordinal
    questions. Psychological Bulletin 114(3), 494-509.
Efron, B. & Tibshirani, R. (1993). An Introduction to the Bootstrap, ch. 14
    (BCa intervals; Eq. 14.15 for the acceleration).
van Elteren, P. H. (1960). On the combination of independent two-sample
    tests of Wilcoxon. Bull. Int. Statist. Inst. 37, 351-361.
Holm, S. (1979). A simple sequentially rejective multiple test procedure.
    Scand. J. Statist. 6, 65-70.
Hanley, J. A. & McNeil, B. J. (1982). The meaning and use of the area under
    a ROC curve. Radiology 143, 29-36.
Phipson, B. & Smyth, G. K. (2010). Permutation p-values should never be
    zero. Stat. Appl. Genet. Mol. Biol. 9(1).
Newcombe, R. G. (2006). Confidence intervals for an effect size measure
    based on the Mann-Whitney statistic. Part 2: asymptotic methods and
    evaluation. Statistics in Medicine 25, 559-573 (the bound used at
    complete separation).
Hosmer, D. W., Lemeshow, S. & Sturdivant, R. X. (2013). Applied Logistic
    Regression, 3rd ed., ch. 4 (likelihood-ratio tests; spline terms for
    a nonlinear covariate such as confidence).

Issue 10 additions: :func:`within_class_auc` (the headline AUC),
:func:`marginal_auc`, :func:`confidence_adjusted_test` (odds ratio given a
flexible function of confidence), :func:`h1_verdicts` and
:func:`secondary_adjusted`; the dispersion test is in
:mod:`camstat.dispersion`, the null pipeline in :mod:`camstat.nullsim`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from scipy.special import ndtr, ndtri

from camstat.records import jsonable

__all__ = [
    "AUCResult",
    "ClassRow",
    "ClassTest",
    "ConfidenceAdjusted",
    "H1MetricResult",
    "H1Result",
    "LogisticResult",
    "MarginalAUC",
    "McNemarResult",
    "PairedResult",
    "PermutationResult",
    "PooledResult",
    "Record",
    "Summary",
    "Verdict",
    "WithinClassAUC",
    "adjust",
    "auc_test",
    "class_test",
    "cliffs_delta",
    "confidence_adjusted_test",
    "confidence_covariates",
    "h1_analysis",
    "h1_metric",
    "h1_verdicts",
    "logistic_test",
    "marginal_auc",
    "mcnemar_exact",
    "paired_test",
    "permuted_control",
    "secondary_adjusted",
    "stratified_permutation_test",
    "summarize",
    "within_class_auc",
]

_NAN = float("nan")
_NAN_CI = (_NAN, _NAN)
# Bound on the number of array elements one vectorised chunk holds (bootstrap
# and permutation): ~32 MB of float64, small enough for any laptop.
_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------
# result records
# --------------------------------------------------------------------------


def _key(name: str) -> str:
    # `class` is a Python keyword, so records spell the field `class_`;
    # the JSON key is the plain word the SPEC uses.
    return "class" if name == "class_" else name


class Record:
    """Mixin: ``to_dict()`` (JSON-ready, field ``class_`` as key ``class``) for frozen dataclass records."""

    def to_dict(self) -> dict[str, Any]:
        return {_key(f.name): jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ClassTest(Record):
    """Correct vs incorrect within one group (see :func:`class_test`)."""

    n_correct: int
    n_incorrect: int
    median_correct: float
    median_incorrect: float
    u: float
    p_value: float
    cliffs_delta: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class PermutationResult(Record):
    """Stratified permutation test (see :func:`stratified_permutation_test`).

    ``statistic`` is the pooled within-stratum Cliff's delta (van Elteren
    weights); ``note`` says why the result is NaN, when it is.
    """

    statistic: float
    p_value: float
    n_permutations: int
    note: str | None = None


@dataclass(frozen=True)
class LogisticResult(Record):
    """Logistic model ``correct ~ z(metric) + C(class) [+ logit(conf)]``."""

    odds_ratio_per_sd: float
    ci95: tuple[float, float]
    p_lrt: float
    n: int
    dropped_strata: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class AUCResult(Record):
    """AUC of the metric (as given) for predicting correctness."""

    auc: float
    ci95: tuple[float, float]
    auc_within_class: float
    n: int
    auc_within_class_ci95: tuple[float, float] = _NAN_CI
    n_classes_within: int = 0


@dataclass(frozen=True)
class ClassRow(Record):
    """One per-class H1 row; ``to_dict()`` has exactly the SPEC 4 keys."""

    class_: str
    n_correct: int
    n_incorrect: int
    median_correct: float
    median_incorrect: float
    p_value: float
    p_adjusted: float | None
    cliffs_delta: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class PooledResult(Record):
    """Pooled H1 tests for one metric (SPEC 4 keys first, then extras)."""

    p_permutation: float
    odds_ratio_per_sd: float
    p_lrt: float
    p_lrt_given_confidence: float | None
    auc: float
    auc_ci95: tuple[float, float]
    # extras
    statistic: float
    odds_ratio_ci95: tuple[float, float]
    odds_ratio_per_sd_given_confidence: float | None
    odds_ratio_ci95_given_confidence: tuple[float, float] | None
    auc_within_class: float
    auc_within_class_ci95: tuple[float, float]
    n: int
    n_nan_dropped: int
    n_permutations: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class H1MetricResult(Record):
    """H1 for one metric: per-class rows, skipped classes, pooled tests.

    ``skipped`` holds ``(class name, reason)`` pairs (JSON: 2-element lists).
    """

    per_class: tuple[ClassRow, ...]
    skipped: tuple[tuple[str, str], ...]
    pooled: PooledResult


@dataclass(frozen=True)
class H1Result(Record):
    """H1 for every metric; p-values adjusted jointly over classes x metrics."""

    metrics: dict[str, H1MetricResult]
    correction: str
    family_size: int

    def to_dict(self) -> dict[str, Any]:
        """``{metric: {"per_class": [...], "skipped": [...], "pooled": {...}}}``."""
        return {name: res.to_dict() for name, res in self.metrics.items()}


@dataclass(frozen=True)
class Summary(Record):
    """Mean, sample SD (ddof=1) and t-based 95 % CI of the mean."""

    mean: float
    sd: float
    ci95: tuple[float, float]
    n: int


@dataclass(frozen=True)
class PairedResult(Record):
    """Paired comparison of a and b (differences a - b)."""

    mean_diff: float
    ci95: tuple[float, float]
    p_ttest: float
    p_wilcoxon: float | None
    n: int
    note: str | None = None


@dataclass(frozen=True)
class McNemarResult(Record):
    """Exact McNemar test; b = a right & b wrong, c = a wrong & b right."""

    b: int
    c: int
    p_value: float


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _as_values(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; drop them first (h1_metric does, with a count)")
    return arr


def _as_bool(x: Any, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x).ravel()
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean or 0/1")
        arr = arr.astype(bool)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr


def _same_length(n: int, **arrays: Any) -> None:
    for name, a in arrays.items():
        if a is not None and np.asarray(a).ravel().shape[0] != n:
            raise ValueError(f"{name} has {np.asarray(a).ravel().shape[0]} entries, expected {n}")


def _seed_seq(seed: int | np.random.SeedSequence, *names: str | int) -> np.random.SeedSequence:
    """A SeedSequence derived from ``seed`` (an int or a parent
    SeedSequence) and names via SHA-256.

    Python's ``hash`` is salted per process, so it cannot be used; hashing
    names (not positions) keeps a metric's or class's stream independent of
    which other metrics/classes are analysed.
    """
    if isinstance(seed, np.random.SeedSequence):
        words = [int(w) for w in seed.generate_state(4)]
    elif int(seed) < 0:
        raise ValueError("seed must be a non-negative integer")
    else:
        words = [int(seed)]
    for nm in names:
        digest = hashlib.sha256(str(nm).encode("utf-8")).digest()
        words.extend(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))
    return np.random.SeedSequence(words)


def _rng(seed: int | np.random.SeedSequence, *names: str | int) -> np.random.Generator:
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if names:
        return np.random.default_rng(_seed_seq(seed, *names))
    if int(seed) < 0:
        raise ValueError("seed must be a non-negative integer")
    return np.random.default_rng(int(seed))


def _dominance(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element dominance counts, exact integers.

    s_i = #{y < x_i} - #{y > x_i} for each x_i, t_j = #{x > y_j} - #{x < y_j}
    for each y_j; sum(s) == sum(t) == n*m*delta. O((n+m) log(n+m)).
    """
    ys = np.sort(y)
    xs = np.sort(x)
    m, n = ys.size, xs.size
    s = np.searchsorted(ys, x, "left") + np.searchsorted(ys, x, "right") - m
    t = n - np.searchsorted(xs, y, "left") - np.searchsorted(xs, y, "right")
    return s.astype(np.int64), t.astype(np.int64)


def _percentile_ci(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if boot.size == 0:
        return _NAN_CI
    a = (1 - level) / 2
    lo, hi = np.percentile(boot, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def _bca_ci(
    theta: float, boot: np.ndarray, jackknife: Sequence[np.ndarray], level: float = 0.95
) -> tuple[float, float]:
    """BCa interval, as ``scipy.stats.bootstrap(method="BCa")`` computes it.

    Multi-sample acceleration from per-sample jackknife values (Efron &
    Tibshirani 1993, 14.15, as in scipy). Falls back to the percentile
    interval where BCa is undefined: all bootstrap values equal (e.g.
    complete separation, delta = +-1), a one-element sample (no jackknife),
    or an infinite bias correction.
    """
    if boot.size == 0:
        return _NAN_CI
    B = boot.size
    z0 = ndtri((np.count_nonzero(boot < theta) + np.count_nonzero(boot <= theta)) / (2 * B))
    nums = dens = 0.0
    for jk in jackknife:
        nj = jk.size
        if nj < 2:
            return _percentile_ci(boot, level)
        u = (nj - 1) * (jk.mean() - jk)
        nums += np.sum(u**3) / nj**3
        dens += np.sum(u**2) / nj**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a_hat = nums / (6 * dens**1.5)
    if not (np.isfinite(z0) and np.isfinite(a_hat)) or np.ptp(boot) == 0:
        return _percentile_ci(boot, level)
    z_a = ndtri((1 - level) / 2)
    alphas = []
    for z in (z_a, -z_a):
        num = z0 + z
        alphas.append(ndtr(z0 + num / (1 - a_hat * num)))
    lo, hi = np.percentile(boot, [100 * alphas[0], 100 * alphas[1]])
    return float(lo), float(hi)


def _boot_counts(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """(k, n) multiplicities of k bootstrap resamples of n items."""
    idx = rng.integers(0, n, size=(k, n)) + (np.arange(k, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=k * n).reshape(k, n)


def _bootstrap_dominance(
    x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap distribution of S = n*m*delta (int64), each group resampled
    separately.

    Instead of re-ranking every resample (O(B (n+m) log(n+m))), a resample
    is represented by the multiplicities of the original points: with y
    sorted once, #{y* < x_i} is a cumulative sum of y-multiplicities read at
    a fixed position, so S* = sum_i cx_i (#{y* < x_i} - #{y* > x_i}) costs
    O(n + m) per resample, all in exact integer arithmetic (so comparisons
    with the observed S in the BCa bias correction are tie-exact).
    """
    n, m = x.size, y.size
    ys = np.sort(y)
    lo = np.searchsorted(ys, x, "left")
    hi = np.searchsorted(ys, x, "right")
    out = np.empty(n_boot, dtype=np.int64)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // (n + m + 1)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        cx = _boot_counts(rng, k, n)
        cy = _boot_counts(rng, k, m)  # multiplicities of the *sorted* y
        cum = np.zeros((k, m + 1), dtype=np.int64)
        np.cumsum(cy, axis=1, out=cum[:, 1:])
        score = cum[:, lo] + cum[:, hi] - m  # #{y*<x_i} - #{y*>x_i}
        out[start : start + k] = np.einsum("ij,ij->i", cx, score)
    return out


def _delta_with_ci(
    x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, tuple[float, float], np.ndarray]:
    """Cliff's delta, its BCa 95 % CI and the bootstrap deltas."""
    n, m = x.size, y.size
    s, t = _dominance(x, y)
    S = int(s.sum())
    nm = n * m
    delta = S / nm
    if n_boot <= 0:
        return delta, _NAN_CI, np.empty(0)
    boot_S = _bootstrap_dominance(x, y, n_boot, rng)
    boot = boot_S / nm
    # leave-one-out deltas per sample, from the dominance counts (exact, O(n+m))
    jack = []
    if n > 1:
        jack.append((S - s) / ((n - 1) * m))
    else:
        jack.append(np.empty(0))
    if m > 1:
        jack.append((S - t) / (n * (m - 1)))
    else:
        jack.append(np.empty(0))
    if np.ptp(boot_S) == 0:
        return delta, _degenerate_ci(delta, n, m), boot
    # BCa on the integer scale S = n m delta, so ties between bootstrap
    # values and the observed value are exact in the bias correction; the
    # acceleration is scale-free, so delta-scale jackknife values are fine.
    lo, hi = _bca_ci(S, boot_S.astype(float), jack)
    return delta, (lo / nm, hi / nm), boot


def _degenerate_ci(delta: float, n_x: Any, n_y: Any, level: float = 0.95) -> tuple[float, float]:
    """CI of a Cliff's delta whose bootstrap distribution is a single value.

    Complete separation (delta = +-1) keeps every resample separated, so a
    bootstrap interval would be the point [1, 1]. The rule used instead is
    Newcombe's (2006) score-type interval for theta = P(X > Y) (his method
    5): the bound is the theta < 1 at which the observed theta = 1 lies z
    standard errors away, with the Hanley & McNeil (1982) variance

        V(theta) = theta (1 - theta) [1 + (N* - 1) ((1 - theta) / (2 - theta)
                   + theta / (1 + theta))] / (n m),   N* = (n + m) / 2 - 1,

    pooled over classes as sum_s w_s^2 V_s / (sum_s w_s)^2 with the van
    Elteren weights w_s = n_s m_s / (n_s + m_s + 1) (one class: the plain
    formula). delta's interval is [2 theta_lo - 1, 1] (mirrored for -1).
    Any other single-valued bootstrap (a constant metric, sd 0) has no
    interval: NaN, never a zero-width CI.

    Newcombe, R. G. (2006). Confidence intervals for an effect size measure
    based on the Mann-Whitney statistic. Part 2: asymptotic methods and
    evaluation. Statistics in Medicine 25, 559-573.
    """
    if abs(delta) != 1.0:
        return _NAN_CI
    from scipy.optimize import brentq

    n = np.atleast_1d(np.asarray(n_x, dtype=float))
    m = np.atleast_1d(np.asarray(n_y, dtype=float))
    w = n * m / (n + m + 1)
    n_star = (n + m) / 2 - 1
    z = ndtri(1 - (1 - level) / 2)

    def gap(theta: float) -> float:
        # sqrt(1 - theta) - z SE(theta) / sqrt(1 - theta): the root below 1
        v = theta * (1 + (n_star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / (n * m)
        return math.sqrt(1 - theta) - z * math.sqrt(np.sum(w**2 * v)) / np.sum(w)

    bound = 2.0 * brentq(gap, 0.0, 1.0 - 1e-12) - 1.0
    return (bound, 1.0) if delta > 0 else (-1.0, -bound)


# --------------------------------------------------------------------------
# effect size and per-class test
# --------------------------------------------------------------------------


def cliffs_delta(x: Any, y: Any) -> float:
    """Cliff's delta, P(X > Y) - P(X < Y), x = correct group, y = incorrect.

    Computed from the rank sum of x in the pooled sample with mid-ranks for
    ties, delta = 2 U_x / (n m) - 1 with U_x = R_x - n(n+1)/2, which is
    O((n+m) log(n+m)) instead of the O(n m) pair loop. Range [-1, 1];
    +1 when every x exceeds every y. NaN when a group is empty.
    Reference: Cliff (1993).
    """
    x = _as_values(x, "x")
    y = _as_values(y, "y")
    n, m = x.size, y.size
    if n == 0 or m == 0:
        return _NAN
    ranks = scipy.stats.rankdata(np.concatenate([x, y]))
    # 2 U_x - n m with mid-ranks is an exact integer in float64 (ranks are
    # multiples of 1/2), so the result is exact before the final division
    two_u = 2.0 * ranks[:n].sum() - n * (n + 1)
    return float((two_u - n * m) / (n * m))


def class_test(
    x_correct: Any, x_incorrect: Any, n_boot: int = 2000, seed: int | np.random.SeedSequence = 0
) -> ClassTest:
    """Correct vs incorrect images of one class.

    Two-sided Mann-Whitney U (``scipy.stats.mannwhitneyu`` defaults: exact
    for small samples without ties, else normal approximation with tie and
    continuity correction); ``u`` is U of the correct group. Effect size
    Cliff's delta with a BCa bootstrap 95 % CI (each group resampled
    separately, ``n_boot`` resamples from a seeded generator; percentile
    interval where BCa is undefined; at delta = +-1 Newcombe's score bound,
    see :func:`_degenerate_ci`; NaN for a constant metric).

    Raises ValueError for an empty group or NaN values.
    """
    x = _as_values(x_correct, "x_correct")
    y = _as_values(x_incorrect, "x_incorrect")
    if x.size == 0 or y.size == 0:
        raise ValueError(f"class_test needs both groups non-empty (n_correct={x.size}, n_incorrect={y.size})")
    mw = scipy.stats.mannwhitneyu(x, y, alternative="two-sided")
    delta, ci, _ = _delta_with_ci(x, y, int(n_boot), _rng(seed))
    return ClassTest(
        n_correct=int(x.size),
        n_incorrect=int(y.size),
        median_correct=float(np.median(x)),
        median_incorrect=float(np.median(y)),
        u=float(mw.statistic),
        p_value=float(mw.pvalue),
        cliffs_delta=float(delta),
        ci95=ci,
    )


# --------------------------------------------------------------------------
# multiplicity
# --------------------------------------------------------------------------

_METHODS = ("holm", "fdr_bh", "bonferroni")


def adjust(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values (``statsmodels`` ``multipletests``).

    ``method``: ``holm`` (Holm 1979, FWER), ``fdr_bh`` (Benjamini-Hochberg,
    FDR) or ``bonferroni``. NaN entries (tests that could not be run) stay
    NaN and are not counted in the family.
    """
    from statsmodels.stats.multitest import multipletests

    if method not in _METHODS:
        raise ValueError(f"unknown correction {method!r}; choose one of {', '.join(_METHODS)}")
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


# --------------------------------------------------------------------------
# pooled tests
# --------------------------------------------------------------------------


def stratified_permutation_test(
    values: Any,
    correct: Any,
    strata: Any,
    n_permutations: int = 10000,
    seed: int | np.random.SeedSequence = 0,
) -> PermutationResult:
    """Two-sided permutation test of correct vs incorrect, stratified by class.

    Statistic (van Elteren 1960): within each stratum s, values are ranked
    (mid-ranks) and the Cliff's delta d_s of correct vs incorrect is taken;
    T = sum_s w_s d_s / sum_s w_s with w_s = n_cs n_is / (n_s + 1), i.e.
    the van Elteren combination of within-stratum Wilcoxon rank sums,
    reported on the Cliff's-delta scale (a pooled within-class delta).
    Strata where either group is empty contribute nothing.

    Null distribution: correctness labels permuted within each stratum
    (group sizes per stratum fixed), ``n_permutations`` random permutations
    from a seeded generator; p = (1 + #{|T*| >= |T_obs|}) / (1 + B)
    (Phipson & Smyth 2010), so p is never 0 and the test is exact-valid.
    Vectorised: per chunk of permutations each stratum's ranks are shuffled
    row-wise (``Generator.permuted``), O(B N) in total.
    """
    v = _as_values(values, "values")
    c = _as_bool(correct, "correct", v.size)
    _same_length(v.size, strata=strata)
    B = int(n_permutations)
    if B < 0:
        raise ValueError("n_permutations must be >= 0")
    _, codes = np.unique(np.asarray(strata).ravel(), return_inverse=True)
    codes = codes.ravel()
    rng = _rng(seed)

    blocks = []  # (ranks, size k of the smaller group, k-is-correct, weight 2/(n+1), E)
    S_obs = 0.0
    W = 0.0
    for s in range(codes.max() + 1 if codes.size else 0):
        idx = np.flatnonzero(codes == s)
        cs = c[idx]
        nc = int(cs.sum())
        ni = idx.size - nc
        if nc == 0 or ni == 0:
            continue
        ns = idx.size
        r = scipy.stats.rankdata(v[idx])
        # centred rank sum of the correct group, scaled by 2/(n+1) so that
        # S = sum_s w_s d_s exactly (d_s = 2 (R_c - E) / (n_c n_i))
        e = nc * (ns + 1) / 2.0
        S_obs += 2.0 * (r[cs].sum() - e) / (ns + 1)
        W += nc * ni / (ns + 1)
        # permuting only needs the rank sum of a random subset of the
        # smaller group's size; R_c follows from the fixed total.
        k, k_is_correct = (nc, True) if nc <= ni else (ni, False)
        blocks.append((r, k, k_is_correct, ns, e))
    if not blocks:
        return PermutationResult(_NAN, _NAN, B, note="no stratum has both correct and incorrect images")
    statistic = S_obs / W
    if B == 0:
        return PermutationResult(float(statistic), _NAN, 0, note="n_permutations=0")

    max_ns = max(b[3] for b in blocks)
    chunk = max(1, min(B, _CHUNK_ELEMENTS // max_ns))
    # relative tolerance: equal statistics computed along different float
    # paths must count as ">=" (the permutation distribution is discrete)
    tol = 1e-9 * max(1.0, abs(S_obs))
    exceed = 0
    for start in range(0, B, chunk):
        kk = min(chunk, B - start)
        S = np.zeros(kk)
        for r, k, k_is_correct, ns, e in blocks:
            perm = np.broadcast_to(r, (kk, ns)).copy()
            rng.permuted(perm, axis=1, out=perm)
            sub = perm[:, :k].sum(axis=1)
            rc = sub if k_is_correct else ns * (ns + 1) / 2.0 - sub
            S += 2.0 * (rc - e) / (ns + 1)
        exceed += int(np.count_nonzero(np.abs(S) >= abs(S_obs) - tol))
    p = (1 + exceed) / (1 + B)
    return PermutationResult(float(statistic), float(p), B)


def _logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def _fit_logit(y: np.ndarray, X: np.ndarray) -> tuple[Any, str | None]:
    """Fit a statsmodels Logit; return (result, problem or None)."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = sm.Logit(y, X).fit(disp=0, method="newton", maxiter=100)
    except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as exc:
        return None, f"logistic fit failed: {exc}"
    if any(issubclass(w.category, PerfectSeparationWarning) for w in caught):
        return None, "perfect separation: odds ratio not identifiable"
    if not res.mle_retvals.get("converged", False):
        return None, "logistic fit did not converge (likely quasi-complete separation)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bse = np.asarray(res.bse)
    if not (np.all(np.isfinite(res.params)) and np.all(np.isfinite(bse))):
        return None, "logistic fit gave non-finite estimates (likely separation)"
    return res, None


def logistic_test(
    values: Any, correct: Any, strata: Any, confidence: Any = None
) -> LogisticResult:
    """Logistic regression ``correct ~ z(metric) + C(class) [+ logit(confidence)]``.

    z(metric) is the metric standardised to mean 0 and unit SD (ddof=1) over
    the analysed images, so ``odds_ratio_per_sd`` = exp(beta_z) is the odds
    ratio of being correct per SD of the metric, with a Wald 95 % CI.
    ``p_lrt``: likelihood-ratio test (chi2, 1 df) against the same model
    without the metric. With ``confidence`` (softmax probability of the
    prediction), its logit (clipped to [1e-6, 1 - 1e-6]) enters both models,
    so the test asks whether consistency adds to confidence.

    Strata in which every image is correct (or every one incorrect) carry no
    information about the metric once the class effect is in the model and
    would make its coefficient diverge; they are dropped and listed in
    ``dropped_strata``. A fit that fails (separation, no convergence, a
    constant metric) returns NaN with a ``note`` instead of raising.
    """
    v = _as_values(values, "values")
    y = _as_bool(correct, "correct", v.size)
    _same_length(v.size, strata=strata, confidence=confidence)
    strata_arr = np.asarray(strata).ravel()
    conf = None if confidence is None else _as_values(confidence, "confidence")

    labels, codes = np.unique(strata_arr, return_inverse=True)
    codes = codes.ravel()
    keep = np.ones(v.size, dtype=bool)
    dropped = []
    for s, lab in enumerate(labels):
        m = codes == s
        if y[m].all() or not y[m].any():
            keep &= ~m
            dropped.append(str(lab))
    notes = []
    if dropped:
        word = "stratum" if len(dropped) == 1 else "strata"
        notes.append(f"dropped {len(dropped)} {word} with a single outcome: {', '.join(dropped)}")
    n = int(keep.sum())

    def fail(msg: str) -> LogisticResult:
        return LogisticResult(_NAN, _NAN_CI, _NAN, n, tuple(dropped), "; ".join([*notes, msg]))

    if n == 0:
        return fail("no stratum has both correct and incorrect images")
    vk, yk, ck = v[keep], y[keep].astype(float), codes[keep]
    sd = vk.std(ddof=1) if n > 1 else 0.0
    if not np.isfinite(sd) or sd == 0:
        return fail("metric is constant: odds ratio undefined")
    z = (vk - vk.mean()) / sd

    # design: intercept, z, treatment dummies of the kept strata, logit(conf)
    kept_levels = np.unique(ck)
    dummies = (ck[:, None] == kept_levels[None, 1:]).astype(float)
    base = [np.ones(n), dummies]
    if conf is not None:
        base.append(_logit(conf[keep])[:, None])
    X0 = np.column_stack(base)
    X1 = np.column_stack([X0[:, :1], z, X0[:, 1:]])

    full, problem = _fit_logit(yk, X1)
    if problem:
        return fail(problem)
    reduced, problem = _fit_logit(yk, X0)
    if problem:
        return fail(f"reduced model: {problem}")
    lr = max(0.0, 2.0 * (full.llf - reduced.llf))
    p_lrt = float(scipy.stats.chi2.sf(lr, 1))
    ci = np.exp(np.asarray(full.conf_int(0.05))[1])
    return LogisticResult(
        odds_ratio_per_sd=float(np.exp(full.params[1])),
        ci95=(float(ci[0]), float(ci[1])),
        p_lrt=p_lrt,
        n=n,
        dropped_strata=tuple(dropped),
        note="; ".join(notes) or None,
    )


def auc_test(
    values: Any,
    correct: Any,
    strata: Any = None,
    n_boot: int = 2000,
    seed: int | np.random.SeedSequence = 0,
    higher_is_correct: bool | None = None,
) -> AUCResult:
    """AUC of the metric for predicting correctness, with bootstrap 95 % CI.

    Orientation: the score is the metric *as given* (``higher_is_correct``
    None or True); ``higher_is_correct=False`` uses ``-values``, which is
    the same as passing ``-values`` (e.g. ``-dist``). AUC = 0.5 means no
    predictive value; AUC < 0.5 means the metric points the other way.

    ``auc`` is ``sklearn.metrics.roc_auc_score(correct, score)``, which
    equals (1 + Cliff's delta) / 2 (Hanley & McNeil 1982); its CI is the BCa
    interval of a bootstrap stratified by correctness (the two groups
    resampled separately). ``auc_within_class`` is the unweighted mean of
    per-stratum AUCs over strata with both outcomes, with a percentile CI
    from resampling within every stratum x outcome cell.
    """
    from sklearn.metrics import roc_auc_score

    v = _as_values(values, "values")
    y = _as_bool(correct, "correct", v.size)
    _same_length(v.size, strata=strata)
    score = -v if higher_is_correct is False else v
    n = int(v.size)
    pooled_ss, within_ss = _seed_seq(seed, "auc").spawn(2)
    if y.all() or not y.any():
        auc, ci = _NAN, _NAN_CI
    else:
        auc = float(roc_auc_score(y, score))
        _, dci, _ = _delta_with_ci(score[y], score[~y], int(n_boot), np.random.default_rng(pooled_ss))
        ci = ((1 + dci[0]) / 2, (1 + dci[1]) / 2)

    within, within_ci, k = _NAN, _NAN_CI, 0
    if strata is not None:
        labels, codes = np.unique(np.asarray(strata).ravel(), return_inverse=True)
        codes = codes.ravel()
        per, boots = [], []
        for s, child in zip(range(labels.size), within_ss.spawn(labels.size)):
            m = codes == s
            ys = y[m]
            if ys.all() or not ys.any():
                continue
            per.append(roc_auc_score(ys, score[m]))
            _, _, b = _delta_with_ci(score[m][ys], score[m][~ys], int(n_boot), np.random.default_rng(child))
            boots.append((1 + b) / 2)
        k = len(per)
        if k:
            within = float(np.mean(per))
            if n_boot > 0:
                within_ci = _percentile_ci(np.mean(boots, axis=0))
    return AUCResult(auc, ci, within, n, within_ci, k)


@dataclass(frozen=True)
class WithinClassAUC(Record):
    """Within-class AUC in H1's orientation (see :func:`within_class_auc`).

    ``separated`` flags complete separation in every class (the CI is then
    the score bound of :func:`_degenerate_ci`, not a bootstrap interval).
    """

    auc_within_class: float
    auc_within_class_ci95: tuple[float, float]
    n: int
    n_classes: int
    separated: bool = False


@dataclass(frozen=True)
class MarginalAUC(Record):
    """AUC over all images, ignoring classes (see :func:`marginal_auc`)."""

    auc_marginal: float
    auc_marginal_ci95: tuple[float, float]
    n: int
    separated: bool = False


def _oriented(values: Any, correct: Any, higher_is_more_consistent: bool) -> tuple[np.ndarray, np.ndarray]:
    v = _as_values(values, "values")
    y = _as_bool(correct, "correct", v.size)
    return (v if higher_is_more_consistent else -v), y


def _within_class_jackknife(
    cells: list[tuple[np.ndarray, np.ndarray, int]], inv: np.ndarray, num: float, W: float
) -> list[np.ndarray]:
    """Leave-one-out pooled deltas, one array per sample (class x outcome).

    Removing one image of class s changes S_s by its dominance count and the
    van Elteren weight n_c n_i / (n_s + 1) to that of the smaller sample, as
    ``scipy.stats.bootstrap``'s multi-sample jackknife recomputes it.
    """
    out = []
    for (s, t, S), w in zip(cells, inv):
        nc, ni = s.size, t.size
        ns = nc + ni
        rest_num, rest_den = num - S * w, W - nc * ni * w
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append((rest_num + (S - s) / ns) / (rest_den + (nc - 1) * ni / ns))
            out.append((rest_num + (S - t) / ns) / (rest_den + nc * (ni - 1) / ns))
    return out


def within_class_auc(
    values: Any,
    correct: Any,
    classes: Any,
    *,
    higher_is_more_consistent: bool = True,
    n_boot: int = 2000,
    seed: int | np.random.SeedSequence = 0,
) -> WithinClassAUC:
    """Within-class AUC: P(a correct image is more consistent than an incorrect one of its class).

    With d_s the Cliff's delta of correct vs incorrect images in class s (the
    metric oriented so that larger = more consistent) and van Elteren (1960)
    weights w_s = n_cs n_is / (n_s + 1),

        AUC_w = (1 + delta_w) / 2,   delta_w = sum_s w_s d_s / sum_s w_s,

    i.e. the pooled delta of :func:`stratified_permutation_test` in H1's
    orientation, put on the AUC scale (Hanley & McNeil 1982). Classes with
    only one outcome carry no within-class comparison and are left out.
    Unlike the marginal AUC it cannot be moved by differences between
    classes (class accuracy tied to the metric's level).

    CI: BCa bootstrap (Efron & Tibshirani 1993, ch. 14) resampling every
    class x outcome cell separately, so the weights stay fixed (the scheme
    of ``scipy.stats.bootstrap`` with one sample per cell); complete
    separation in every class gives Newcombe's (2006) score bound pooled
    over classes (:func:`_degenerate_ci`); a bootstrap with a single value
    otherwise (constant metric) gives NaN. SPEC 4 keys ``auc_within_class``,
    ``auc_within_class_ci95``.
    """
    score, y = _oriented(values, correct, higher_is_more_consistent)
    _same_length(score.size, classes=classes)
    _, codes = np.unique(np.asarray(classes).ravel(), return_inverse=True)
    codes = codes.ravel()
    groups = []
    for k in range(codes.max() + 1 if codes.size else 0):
        m = codes == k
        if 0 < y[m].sum() < m.sum():
            groups.append((score[m & y], score[m & ~y]))
    n = int(score.size)
    if not groups:
        return WithinClassAUC(_NAN, _NAN_CI, n, 0)
    cells = []
    for x, z in groups:
        s, t = _dominance(x, z)
        cells.append((s, t, int(s.sum())))
    sizes = np.array([(x.size, z.size) for x, z in groups])
    inv = 1.0 / (sizes.sum(axis=1) + 1)
    W = float(np.sum(sizes[:, 0] * sizes[:, 1] * inv))
    S_obs = np.array([S for _, _, S in cells], dtype=np.int64)
    separated = bool(np.all(np.abs(S_obs) == sizes[:, 0] * sizes[:, 1]) and abs(np.sign(S_obs).sum()) == len(cells))
    if n_boot <= 0:
        delta = float(np.sign(S_obs[0])) if separated else float(np.sum(S_obs * inv) / W)
        return WithinClassAUC((1 + delta) / 2, _NAN_CI, n, len(cells), separated)
    rngs = [np.random.default_rng(c) for c in _seed_seq(seed, "auc-within-class").spawn(len(cells))]
    boot_S = np.column_stack([_bootstrap_dominance(x, z, int(n_boot), r) for (x, z), r in zip(groups, rngs)])
    # observed and bootstrap values through the same row sums, so that equal
    # integer counts give bit-equal deltas (exact ties in the BCa bias correction)
    vals = (np.vstack([S_obs[None, :], boot_S]) * inv).sum(axis=1) / W
    delta, boot = float(vals[0]), vals[1:]
    if separated:
        delta = float(np.sign(S_obs[0]))
        ci = _degenerate_ci(delta, sizes[:, 0], sizes[:, 1])
    elif np.ptp(boot) == 0:
        ci = _NAN_CI
    else:
        ci = _bca_ci(delta, boot, _within_class_jackknife(cells, inv, delta * W, W))
    return WithinClassAUC((1 + delta) / 2, ((1 + ci[0]) / 2, (1 + ci[1]) / 2), n, len(cells), separated)


def marginal_auc(
    values: Any,
    correct: Any,
    *,
    higher_is_more_consistent: bool = True,
    n_boot: int = 2000,
    seed: int | np.random.SeedSequence = 0,
) -> MarginalAUC:
    """AUC over all images, classes ignored: (1 + delta) / 2 (Hanley & McNeil 1982).

    It mixes differences *between* classes into the comparison (an accurate
    class whose maps are all more consistent moves it even when, within
    every class, correctness is unrelated to the metric), so it is only ever
    reported labelled "marginal"; :func:`within_class_auc` is the headline.
    Orientation: > 0.5 means correct images are more consistent. CI: BCa,
    correct and incorrect images resampled separately (as :func:`class_test`),
    with the same degenerate-case rules. SPEC 4 keys ``auc_marginal``,
    ``auc_marginal_ci95``.
    """
    score, y = _oriented(values, correct, higher_is_more_consistent)
    n = int(score.size)
    if y.all() or not y.any():
        return MarginalAUC(_NAN, _NAN_CI, n)
    rng = np.random.default_rng(_seed_seq(seed, "auc-marginal"))
    delta, ci, _ = _delta_with_ci(score[y], score[~y], int(n_boot), rng)
    return MarginalAUC((1 + delta) / 2, ((1 + ci[0]) / 2, (1 + ci[1]) / 2), n, abs(delta) == 1.0)


@dataclass(frozen=True)
class ConfidenceAdjusted(Record):
    """Metric's odds ratio given flexible confidence (see :func:`confidence_adjusted_test`).

    ``sd`` is the SD the odds ratio is per, of kind ``sd_kind``
    (``"pooled_within_class"``).
    """

    odds_ratio_per_sd_given_confidence: float
    odds_ratio_ci95_given_confidence: tuple[float, float]
    p_lrt_given_confidence: float
    sd: float
    sd_kind: str
    spline_df: int
    n: int
    dropped_strata: tuple[str, ...] = ()
    note: str | None = None


def confidence_covariates(logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds of the predicted class and the top-1 minus top-2 logit margin.

    With logits z and top class t, p_t = softmax(z)_t and
    log(p_t / (1 - p_t)) = z_t - logsumexp_{j != t} z_j, computed that way
    (no probability is formed, so nothing is clipped: confidences of
    1 - 1e-12 keep their distinct log-odds). Returns two (N,) arrays.
    """
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=float)
    if z.ndim != 2 or z.shape[1] < 2 or not np.isfinite(z).all():
        raise ValueError(f"logits must be a finite (N, K >= 2) array, got shape {z.shape}")
    order = np.argsort(z, axis=1)
    top = np.take_along_axis(z, order[:, -1:], axis=1)[:, 0]
    second = np.take_along_axis(z, order[:, -2:-1], axis=1)[:, 0]
    others = z.copy()
    np.put_along_axis(others, order[:, -1:], -np.inf, axis=1)
    return top - logsumexp(others, axis=1), top - second


def _pooled_within_sd(v: np.ndarray, codes: np.ndarray) -> float:
    """sqrt(sum_s sum_i (v_i - mean_s)^2 / (n - K)): the metric's SD within classes."""
    k = np.unique(codes).size
    if v.size <= k:
        return _NAN
    means = np.bincount(codes, weights=v) / np.maximum(np.bincount(codes), 1)
    return float(np.sqrt(np.sum((v - means[codes]) ** 2) / (v.size - k)))


def _confidence_design(logits: np.ndarray, df: int) -> np.ndarray:
    """Natural cubic spline (patsy ``cr``, centred) of the log-odds, plus the margin.

    With two classes the margin equals the log-odds and is left out.
    """
    import patsy

    log_odds, margin = confidence_covariates(logits)
    spline = np.asarray(patsy.dmatrix(f"cr(x, df={int(df)}, constraints='center') - 1", {"x": log_odds}))
    return spline if logits.shape[1] == 2 else np.column_stack([spline, margin])


def confidence_adjusted_test(
    values: Any,
    correct: Any,
    classes: Any,
    logits: Any,
    *,
    higher_is_more_consistent: bool = True,
    spline_df: int = 4,
) -> ConfidenceAdjusted:
    """Does the metric add to confidence? ``correct ~ z + C(class) + ns(log-odds, df) + margin``.

    Logistic model (statsmodels ``Logit``, Newton) with the metric z
    standardised by its pooled within-class SD (sqrt of the within-class
    sum of squares / (n - K)), so the odds ratio exp(beta_z) is per SD of
    the metric *within* a class (between-class spread excluded; oriented so
    that > 1 means more consistent -> more often correct). Confidence enters
    flexibly: a natural cubic regression spline (``patsy.cr``, ``spline_df``
    df, knots at quantiles) of the predicted class's log-odds and the top-1
    minus top-2 logit margin, both from the stored logits
    (:func:`confidence_covariates`). 95 % Wald CI; ``p_lrt`` is the
    likelihood-ratio test (chi2, 1 df) against the same model without z.
    A straight line in logit(confidence) is not enough: with
    P(correct) = conf^4 a noisy copy of confidence "adds" to it in ~28 % of
    null data sets (issue 10); this form is calibrated in the suite.
    Classes with a single outcome are dropped (as :func:`logistic_test`).
    SPEC 4 keys ``odds_ratio_per_sd_given_confidence``,
    ``odds_ratio_ci95_given_confidence``, ``p_lrt_given_confidence``.
    """
    score, y = _oriented(values, correct, higher_is_more_consistent)
    z_logits = np.asarray(logits, dtype=float)
    if z_logits.ndim != 2 or z_logits.shape[0] != score.size:
        raise ValueError(f"logits must have shape ({score.size}, K), got {z_logits.shape}")
    _same_length(score.size, classes=classes)
    labels, codes = np.unique(np.asarray(classes).ravel(), return_inverse=True)
    codes = codes.ravel()
    single = [k for k in range(labels.size) if y[codes == k].all() or not y[codes == k].any()]
    keep = ~np.isin(codes, single)
    dropped = tuple(str(labels[k]) for k in single)
    n = int(keep.sum())

    def fail(msg: str, sd: float = _NAN) -> ConfidenceAdjusted:
        return ConfidenceAdjusted(_NAN, _NAN_CI, _NAN, sd, "pooled_within_class", int(spline_df), n, dropped, msg)

    if n == 0:
        return fail("no class has both correct and incorrect images")
    v, yk, ck = score[keep], y[keep].astype(float), np.unique(codes[keep], return_inverse=True)[1].ravel()
    sd = _pooled_within_sd(v, ck)
    if not np.isfinite(sd) or sd == 0:
        return fail("metric is constant within classes: odds ratio undefined", sd)
    if np.unique(confidence_covariates(z_logits[keep])[0]).size < int(spline_df) + 1:
        return fail(f"confidence takes fewer than {int(spline_df) + 1} distinct values: no spline of it", sd)
    dummies = (ck[:, None] == np.arange(1, ck.max() + 1)[None, :]).astype(float)
    X0 = np.column_stack([np.ones(n), dummies, _confidence_design(z_logits[keep], spline_df)])
    X1 = np.column_stack([X0[:, :1], (v - v.mean()) / sd, X0[:, 1:]])
    full, problem = _fit_logit(yk, X1)
    reduced, problem0 = _fit_logit(yk, X0) if full is not None else (None, None)
    if problem or problem0:
        return fail(problem or f"reduced model: {problem0}", sd)
    ci = np.exp(np.asarray(full.conf_int(0.05))[1])
    p = float(scipy.stats.chi2.sf(max(0.0, 2.0 * (full.llf - reduced.llf)), 1))
    note = f"dropped {len(dropped)} single-outcome classes" if dropped else None
    return ConfidenceAdjusted(
        float(np.exp(full.params[1])), (float(ci[0]), float(ci[1])), p, sd, "pooled_within_class",
        int(spline_df), n, dropped, note,
    )


@dataclass(frozen=True)
class Verdict(Record):
    """SPEC 4 ``verdict`` of one primary analysis (a method x layer x target)."""

    primary: str
    supported: bool
    p_adjusted: float
    auc_within_class: float
    auc_within_class_ci95: tuple[float, float]
    significant: bool
    auc_ci_above_half: bool


def h1_verdicts(
    primary: str,
    p_permutation: Any,
    auc_within_class: Any,
    auc_within_class_ci95: Any,
    *,
    alpha: float = 0.05,
    correction: str = "holm",
) -> tuple[Verdict, ...]:
    """H1 verdicts from the primary metric, one per analysis (SPEC 4 ``verdict``).

    ``p_permutation`` (A,): the primary metric's pooled permutation p in
    each of the A primary analyses of the command (methods x layers x
    targets); ``auc_within_class`` (A,) and ``auc_within_class_ci95`` (A, 2)
    from :func:`within_class_auc` (H1's orientation: > 0.5 = correct images
    more consistent). The p-values are adjusted across the A analyses
    (:func:`adjust`, Holm 1979 by default), and

        supported = p_adjusted < alpha  and  CI lower bound > 0.5,

    so neither a significant but tiny effect in the wrong direction nor a
    wide CI supports H1. NaN inputs give ``supported = False``.
    """
    p = np.atleast_1d(np.asarray(p_permutation, dtype=float))
    auc = np.atleast_1d(np.asarray(auc_within_class, dtype=float))
    ci = np.asarray(auc_within_class_ci95, dtype=float).reshape(-1, 2)
    if not (p.shape == auc.shape == ci.shape[:1]):
        raise ValueError(f"one p, AUC and CI per analysis needed, got {p.size}, {auc.size}, {ci.shape[0]}")
    p_adj = adjust(p, correction)
    out = []
    for pa, a, (lo, hi) in zip(p_adj, auc, ci):
        sig, above = bool(pa < alpha), bool(lo > 0.5)  # NaN compares False
        out.append(Verdict(str(primary), sig and above, float(pa), float(a), (float(lo), float(hi)), sig, above))
    return tuple(out)


def secondary_adjusted(p_permutation: Mapping[str, float], correction: str = "holm") -> dict[str, float]:
    """Pooled p of the secondary (non-primary consistency) metrics, adjusted across themselves.

    ``{metric: p}`` -> ``{metric: p_adjusted}`` (:func:`adjust`; NaN stays
    NaN and is not counted in the family). Concentration metrics are a
    separate question and do not belong in this family.
    """
    names = list(p_permutation)
    adj = adjust(np.array([p_permutation[k] for k in names], dtype=float), correction)
    return {k: float(v) for k, v in zip(names, adj)}


def permuted_control(classes: Any, correct: Any, seed: int = 0) -> np.ndarray:
    """Correctness labels shuffled within each class (the permuted control).

    Keeps each class's number of correct images, destroys any link between
    correctness and the maps: H1's effect must vanish on these labels.
    Returns an array of the same dtype as ``correct``.
    """
    c = np.asarray(correct).ravel()
    cls = np.asarray(classes).ravel()
    _same_length(c.size, classes=cls)
    rng = _rng(seed, "permuted-control")
    out = c.copy()
    _, codes = np.unique(cls, return_inverse=True)
    codes = codes.ravel()
    for s in range(codes.max() + 1 if codes.size else 0):
        idx = np.flatnonzero(codes == s)
        out[idx] = rng.permutation(c[idx])
    return out


# --------------------------------------------------------------------------
# H1: one metric, all metrics
# --------------------------------------------------------------------------


def _class_codes(classes: Any, class_names: Sequence[str]) -> np.ndarray:
    """Class indices into ``class_names`` (accepts indices or names)."""
    cls = np.asarray(classes).ravel()
    k = len(class_names)
    if cls.dtype.kind in "iu":
        if cls.size and (cls.min() < 0 or cls.max() >= k):
            raise ValueError(f"class indices must lie in [0, {k}); got {cls.min()}..{cls.max()}")
        return cls.astype(np.int64)
    if cls.dtype.kind == "f":
        if not np.all(np.mod(cls, 1) == 0):
            raise ValueError("class indices must be integers")
        return _class_codes(cls.astype(np.int64), class_names)
    lookup = {str(nm): i for i, nm in enumerate(class_names)}
    unknown = sorted({str(c) for c in cls} - lookup.keys())
    if unknown:
        raise ValueError(f"classes not in class_names: {', '.join(unknown[:5])}")
    return np.array([lookup[str(c)] for c in cls], dtype=np.int64)


def _skip_reason(n_all: tuple[int, int], n_kept: tuple[int, int], min_group: int) -> str | None:
    """Why a class is skipped, or None. An empty group is the reason itself
    ("n_correct=0"), not the NaN rows it leaves behind (a class without
    correct images has no reference, so all its values are NaN)."""
    labels = ("n_correct", "n_incorrect")
    empty = [f"{lab}=0" for lab, k in zip(labels, n_all) if k == 0]
    if empty:
        return "; ".join(empty)
    small = [f"{lab}={k} < min_group={min_group}" for lab, k in zip(labels, n_kept) if k < min_group]
    return "; ".join(small) or None


def _class_rows(
    v: np.ndarray, c: np.ndarray, codes: np.ndarray, n_all: np.ndarray, class_names: Sequence[str],
    min_group: int, n_boot: int, seed: int | np.random.SeedSequence,
) -> tuple[list[ClassRow], list[tuple[str, str]]]:
    """Per-class rows (:func:`class_test`) and skipped classes; ``n_all`` (K, 2) counts before NaN dropping."""
    rows: list[ClassRow] = []
    skipped: list[tuple[str, str]] = []
    row_fields = {f.name for f in dataclasses.fields(ClassRow)}
    for k, name in enumerate(class_names):
        m = codes == k
        xc, xi = v[m & c], v[m & ~c]
        reason = _skip_reason(tuple(n_all[k]), (xc.size, xi.size), min_group)
        if reason:
            skipped.append((str(name), reason))
            continue
        # seeded by name, so a class's stream does not depend on class order
        # or on which other classes are skipped
        t = class_test(xc, xi, n_boot=n_boot, seed=_seed_seq(seed, "class", str(name)))
        same = {f: v_ for f, v_ in dataclasses.asdict(t).items() if f in row_fields}
        rows.append(ClassRow(class_=str(name), p_adjusted=None, **same))
    return rows, skipped


def _given_confidence(
    v: np.ndarray, c: np.ndarray, strata: np.ndarray, conf: np.ndarray | None, notes: list[str]
) -> LogisticResult | None:
    """:func:`logistic_test` with ``logit(confidence)``; None without confidence (noted)."""
    if conf is None:
        notes.append("no confidence given: confidence-adjusted model not fitted")
        return None
    if not v.size:
        return None
    ok = ~np.isnan(conf)
    if not ok.all():
        notes.append(f"confidence-adjusted model: dropped {int((~ok).sum())} images with NaN confidence")
    lc = logistic_test(v[ok], c[ok], strata[ok], conf[ok])
    if lc.note:
        notes.append(f"logistic given confidence: {lc.note}")
    return lc


def _pooled(
    v: np.ndarray, c: np.ndarray, strata: np.ndarray, conf: np.ndarray | None, n_nan: int, notes: list[str],
    permutations: int, n_boot: int, seed: int | np.random.SeedSequence,
) -> PooledResult:
    """Pooled tests of one metric (permutation, logistic without and with confidence, AUC)."""
    n = int(v.size)
    if n == 0:
        notes.append("no non-NaN values")
        perm = PermutationResult(_NAN, _NAN, int(permutations), note="no data")
        logi = LogisticResult(_NAN, _NAN_CI, _NAN, 0, note="no data")
        auc = AUCResult(_NAN, _NAN_CI, _NAN, 0)
    else:
        perm = stratified_permutation_test(v, c, strata, permutations, seed=_seed_seq(seed, "permutation"))
        logi = logistic_test(v, c, strata)
        auc = auc_test(v, c, strata, n_boot=n_boot, seed=_seed_seq(seed, "auc"))
    for prefix, note in (("permutation", perm.note), ("logistic", logi.note)):
        if note:
            notes.append(f"{prefix}: {note}")
    lc = _given_confidence(v, c, strata, conf, notes)
    return PooledResult(
        p_permutation=perm.p_value,
        odds_ratio_per_sd=logi.odds_ratio_per_sd,
        p_lrt=logi.p_lrt,
        p_lrt_given_confidence=None if lc is None else lc.p_lrt,
        auc=auc.auc,
        auc_ci95=auc.ci95,
        statistic=perm.statistic,
        odds_ratio_ci95=logi.ci95,
        odds_ratio_per_sd_given_confidence=None if lc is None else lc.odds_ratio_per_sd,
        odds_ratio_ci95_given_confidence=None if lc is None else lc.ci95,
        auc_within_class=auc.auc_within_class,
        auc_within_class_ci95=auc.auc_within_class_ci95,
        n=n,
        n_nan_dropped=n_nan,
        n_permutations=perm.n_permutations,
        notes=tuple(notes),
    )


def h1_metric(
    values: Any,
    correct: Any,
    classes: Any,
    confidence: Any,
    *,
    class_names: Sequence[str],
    strata: Any | None = None,
    min_group: int = 5,
    permutations: int = 10000,
    n_boot: int = 2000,
    seed: int | np.random.SeedSequence = 0,
) -> H1MetricResult:
    """H1 tests of one per-image metric: per class and pooled (SPEC 4).

    ``classes`` are indices into ``class_names`` (or the names). Per class
    with at least ``min_group`` correct *and* incorrect images:
    :func:`class_test`; classes below it are listed in ``skipped`` with the
    reason (a class with no correct images: ``"n_correct=0"``). ``p_adjusted``
    is left None here; :func:`h1_analysis` fills it over the joint family of
    classes x metrics. Pooled (all non-NaN images, every class):
    :func:`stratified_permutation_test`, :func:`logistic_test` without and
    with ``confidence`` (may be None), :func:`auc_test` of the metric as
    given. Images with NaN values are dropped and counted
    (``pooled.n_nan_dropped``); NaN confidences only leave the
    confidence-adjusted model, with a note. ``strata`` (default: ``classes``)
    are the pooled tests' strata, when they must be finer than the groups
    tested one by one (composition clusters that mix classes: cluster x class
    cells, so that class differences cannot pass for an effect).
    """
    v = np.asarray(values, dtype=float).ravel()
    n_all = v.size
    c = _as_bool(correct, "correct", n_all)
    _same_length(n_all, classes=classes, confidence=confidence, strata=strata)
    codes = _class_codes(classes, class_names)
    conf = None if confidence is None else np.asarray(confidence, dtype=float).ravel()
    if int(min_group) < 1:
        raise ValueError("min_group must be >= 1")
    k = len(class_names)
    counts = np.column_stack([np.bincount(codes[c], minlength=k), np.bincount(codes[~c], minlength=k)])

    notes: list[str] = []
    finite = ~np.isnan(v)
    n_nan = int(n_all - finite.sum())
    if n_nan:
        notes.append(f"dropped {n_nan} images with NaN values")
    v, c, codes = v[finite], c[finite], codes[finite]
    if conf is not None:
        conf = conf[finite]

    rows, skipped = _class_rows(v, c, codes, counts, class_names, min_group, n_boot, seed)
    if strata is None:
        names_arr = np.asarray([str(nm) for nm in class_names], dtype=object)
        strata = names_arr[codes] if codes.size else np.empty(0, dtype=object)
    else:
        strata = np.asarray(strata).ravel()[finite]
    pooled = _pooled(v, c, strata, conf, n_nan, notes, permutations, n_boot, seed)
    return H1MetricResult(per_class=tuple(rows), skipped=tuple(skipped), pooled=pooled)


def h1_analysis(
    metrics: Mapping[str, Any],
    correct: Any,
    classes: Any,
    confidence: Any,
    *,
    class_names: Sequence[str],
    strata: Any | None = None,
    correction: str = "holm",
    min_group: int = 5,
    permutations: int = 10000,
    n_boot: int = 2000,
    seed: int = 0,
) -> H1Result:
    """H1 for every metric; per-class p-values adjusted jointly.

    Runs :func:`h1_metric` for each metric (seed derived from ``seed`` and
    the metric's name; ``strata`` the pooled tests' strata), then applies :func:`adjust` with ``correction`` to
    the family of *all* per-class tests of all metrics (skipped classes are
    not in the family) and fills ``p_adjusted``. ``to_dict()`` gives
    ``{metric: {"per_class": [...], "skipped": [...], "pooled": {...}}}``.
    """
    if correction not in _METHODS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {', '.join(_METHODS)}")
    results = {
        name: h1_metric(
            vals,
            correct,
            classes,
            confidence,
            class_names=class_names,
            strata=strata,
            min_group=min_group,
            permutations=permutations,
            n_boot=n_boot,
            seed=_seed_seq(seed, "metric", name),
        )
        for name, vals in metrics.items()
    }
    family = [row.p_value for res in results.values() for row in res.per_class]
    adjusted = iter(adjust(np.asarray(family, dtype=float), correction).tolist())
    out = {}
    for name, res in results.items():
        rows = tuple(dataclasses.replace(row, p_adjusted=next(adjusted)) for row in res.per_class)
        out[name] = dataclasses.replace(res, per_class=rows)
    return H1Result(metrics=out, correction=correction, family_size=int(np.sum(~np.isnan(family))))


# --------------------------------------------------------------------------
# H2 helpers
# --------------------------------------------------------------------------


def summarize(x: Any) -> Summary:
    """Mean, SD (ddof=1) and t-based 95 % CI of the mean (NaN for n < 2 or SD 0)."""
    a = _as_values(x, "x")
    n = int(a.size)
    if n == 0:
        return Summary(_NAN, _NAN, _NAN_CI, 0)
    mean = float(a.mean())
    if n < 2:
        return Summary(mean, _NAN, _NAN_CI, n)
    sd = float(a.std(ddof=1))
    if sd == 0:
        # no spread observed is not a zero-width interval: the t interval is undefined
        return Summary(mean, 0.0, _NAN_CI, n)
    lo, hi = scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Summary(mean, sd, (float(lo), float(hi)), n)


def paired_test(a: Any, b: Any) -> PairedResult:
    """Paired comparison of two arms over seeds (differences a - b).

    ``p_ttest`` and the t-based CI of the mean difference from
    ``scipy.stats.ttest_rel``; ``p_wilcoxon`` from ``scipy.stats.wilcoxon``
    (exact for small n), but None when n < 6 — the smallest two-sided
    exact p with n pairs is 2 / 2^n, so with n <= 5 it can never reach
    0.05. When every difference is the same (SD 0), both p-values and the CI
    are NaN (no test is possible), never p 0 with a zero-width CI; ``note``
    says which.
    """
    x = _as_values(a, "a")
    y = _as_values(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired_test needs equal lengths, got {x.size} and {y.size}")
    n = int(x.size)
    d = x - y
    mean_diff = float(d.mean()) if n else _NAN
    notes = []
    if n < 2:
        return PairedResult(mean_diff, _NAN_CI, _NAN, None, n, "n < 2: no paired test possible")
    if np.all(d == d[0]):
        # sd 0: the t statistic is +-inf or 0/0; p 0 and a zero-width CI
        # would claim certainty that seeds cannot give
        note = "all differences are zero" if d[0] == 0 else "all differences are equal"
        return PairedResult(mean_diff, _NAN_CI, _NAN, None, n, f"{note}: no test possible")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tt = scipy.stats.ttest_rel(x, y)
        ci = tt.confidence_interval(0.95)
    p_w: float | None
    if n < 6:
        p_w = None
        notes.append(f"n={n} < 6: Wilcoxon omitted (exact two-sided p cannot go below 2/2^n = {2 / 2**n:.3g})")
    else:
        p_w = float(scipy.stats.wilcoxon(x, y).pvalue)
    return PairedResult(
        mean_diff=mean_diff,
        ci95=(float(ci.low), float(ci.high)),
        p_ttest=float(tt.pvalue),
        p_wilcoxon=p_w,
        n=n,
        note="; ".join(notes) or None,
    )


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """Exact McNemar test on per-image correctness of two paired runs.

    b = #(a right, b wrong), c = #(a wrong, b right); the p-value is the
    two-sided exact binomial test of b vs c
    (``statsmodels.stats.contingency_tables.mcnemar(exact=True)``).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    ca = _as_bool(correct_a, "correct_a")
    cb = _as_bool(correct_b, "correct_b", ca.size)
    both = int(np.sum(ca & cb))
    b = int(np.sum(ca & ~cb))
    c = int(np.sum(~ca & cb))
    neither = int(np.sum(~ca & ~cb))
    res = mcnemar([[both, b], [c, neither]], exact=True)
    return McNemarResult(b=b, c=c, p_value=float(res.pvalue))
