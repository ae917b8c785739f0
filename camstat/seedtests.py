"""Paired comparison of two arms over seeds, the seed being the unit of replication (SPEC 5).

For the per-seed differences ``d_i = a_i - b_i`` (i = 1..n seeds):

- the mean difference with its t-based 95 % CI, ``mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n)``,
  and the paired t-test (``scipy.stats.ttest_rel``, via :func:`camstat.stats.paired_test`);
- the exact sign-flip permutation p (:func:`sign_flip_test`): under H0 the
  distribution of each difference is symmetric about 0, so all ``2^n`` sign
  patterns of ``d`` are equally likely; ``p = #{s : |sum_i s_i d_i| >= |sum_i d_i|} / 2^n``
  (Fisher 1935; Good, *Permutation Tests*, 2000, ch. 3). The smallest p is
  ``2 / 2^n``: 5 seeds cannot go below 0.0625, 6 reach 0.031;
- the Wilcoxon signed-rank p, only from 6 pairs on (below, its exact p
  cannot reach 0.05 either).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats

from camstat import stats

MAX_EXACT = 20  # up to 2^20 sign patterns are enumerated; beyond, a seeded Monte Carlo sample


@dataclass(frozen=True)
class SignFlipResult:
    """Two-sided sign-flip permutation test of mean(d) = 0."""

    p_value: float
    n: int
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeedComparison:
    """Paired comparison over seeds of one metric (differences a - b)."""

    mean_diff: float
    ci95: tuple[float, float]
    p_ttest: float
    p_signflip: float
    p_wilcoxon: float | None
    n: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_flip_test(d: Any, *, n_resamples: int = 100_000, seed: int = 0) -> SignFlipResult:
    """Exact (n <= 20) two-sided sign-flip p of the paired differences ``d``.

    ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on one
    sample flips the signs; it enumerates all ``2^n`` patterns when
    ``n_resamples >= 2^n``. Above :data:`MAX_EXACT` pairs it draws
    ``n_resamples`` seeded patterns instead (``exact`` False).
    """
    d = np.asarray(d, np.float64).ravel()
    if np.isnan(d).any():
        raise ValueError("d contains NaN; drop the pairs first")
    n = int(d.size)
    if n == 0:
        return SignFlipResult(float("nan"), 0, True)
    if n == 1:  # both signs give |d|: scipy needs two observations, the answer is 1
        return SignFlipResult(1.0, 1, True)
    exact = n <= MAX_EXACT
    res = scipy.stats.permutation_test(
        (d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=np.inf if exact else n_resamples, alternative="two-sided", random_state=seed,
    )
    return SignFlipResult(float(min(1.0, res.pvalue)), n, exact)


def compare_seeds(a: Any, b: Any) -> SeedComparison:
    """Paired comparison of per-seed values ``a`` and ``b`` (same seed order): t CI, t-test, sign-flip, Wilcoxon."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = stats.paired_test(x, y)
    p_flip = sign_flip_test(x - y).p_value if x.size >= 2 else float("nan")
    return SeedComparison(mean_diff=t.mean_diff, ci95=tuple(t.ci95), p_ttest=t.p_ttest, p_signflip=p_flip,
                          p_wilcoxon=t.p_wilcoxon, n=t.n, note=t.note)
