"""Misclassification-detection statistics: AUROC, AUPR, FPR at 95 % TPR, AURC, DeLong, bootstrap.

Pure functions on arrays. A *score* is oriented so that **higher means more
likely an error**; ``error`` is the boolean "the prediction is wrong" (the
positive class). Every metric depends on the scores only through their
order, so any increasing transform of a score gives the same numbers.

Definitions (n images, P errors, N = n - P correct; ties between scores are
handled as stated, the same way in every function):

* ``auroc`` -- ``P(s_error > s_correct) + 0.5 P(s_error = s_correct)``,
  the Mann-Whitney form of the area under the ROC curve; equal to
  ``sklearn.metrics.roc_auc_score(error, score)``.
* ``aupr_error`` -- average precision of the errors,
  ``sum_t (R_t - R_{t-1}) P_t`` over the distinct thresholds in decreasing
  order (recall R, precision P; no interpolation); equal to
  ``sklearn.metrics.average_precision_score(error, score)``.
* ``fpr_at_95tpr`` -- the false-positive rate at the highest threshold whose
  true-positive rate (errors caught) is at least 0.95 (Hendrycks & Gimpel
  2017; Liang et al. 2018).
* ``aurc`` -- area under the risk-coverage curve (Geifman & El-Yaniv 2017):
  accept images from the most confident (lowest score) on;
  ``AURC = (1/n) sum_{k=1..n} risk_k`` with ``risk_k`` the error rate among
  the k accepted. Tied scores have no order: ``risk_k`` is its expectation
  over a random order within each tie, which in closed form is, for a tie
  group of w images holding e errors after ``N_b`` images holding ``E_b``
  errors, ``sum_{j=1..w} (E_b + j r) / (N_b + j) = w r + (E_b - r N_b)
  (H(N_b + w) - H(N_b))`` with ``r = e / w`` and H the harmonic numbers.
* ``eaurc`` -- excess AURC, ``AURC - AURC*`` where ``AURC*`` is the AURC of
  the oracle that accepts every correct image first (Geifman et al. 2019):
  ``AURC* = (P - N (H(n) - H(N))) / n``.

Bootstrap: images are resampled *within* errors and within correct
predictions (a stratified bootstrap, conditional on P and N), all scores of
one image together, so that differences between scores are paired. Every
metric of every replicate comes from one vectorised pass over a block of
resampling weights; intervals are percentile intervals.

DeLong: the variance of an AUROC and the covariance of correlated AUROCs on
the same images from the structural components of DeLong et al. (1988),
computed from midranks as Sun & Xu (2014) do (O(n log n) per score).

References
----------
DeLong, E. R., DeLong, D. M. & Clarke-Pearson, D. L. (1988). Comparing the
    areas under two or more correlated receiver operating characteristic
    curves: a nonparametric approach. Biometrics 44(3), 837-845.
Sun, X. & Xu, W. (2014). Fast implementation of DeLong's algorithm for
    comparing the areas under correlated receiver operating characteristic
    curves. IEEE Signal Processing Letters 21(11), 1389-1393.
Hendrycks, D. & Gimpel, K. (2017). A baseline for detecting misclassified
    and out-of-distribution examples in neural networks. ICLR.
Liang, S., Li, Y. & Srikant, R. (2018). Enhancing the reliability of
    out-of-distribution image detection in neural networks. ICLR.
Geifman, Y. & El-Yaniv, R. (2017). Selective classification for deep neural
    networks. NeurIPS.
Geifman, Y., Uziel, G. & El-Yaniv, R. (2019). Bias-reduced uncertainty
    estimation for deep neural classifiers. ICLR (AURC and E-AURC).
Efron, B. & Tibshirani, R. (1993). An Introduction to the Bootstrap, ch. 13
    (percentile intervals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy.special import digamma, ndtr
from scipy.stats import rankdata

from camstat.records import jsonable

__all__ = [
    "CURVE_METRICS",
    "DeLongResult",
    "aupr_error",
    "aurc",
    "auroc",
    "bootstrap_metrics",
    "curve_metrics",
    "delong_covariance",
    "delong_test",
    "eaurc",
    "fpr_at_tpr",
    "risk_coverage",
]

#: the per-score metrics, in the order results list them
CURVE_METRICS = ("auroc", "aupr_error", "fpr_at_95tpr", "aurc", "eaurc")

# elements of one (replicates x images) weight block: bounds memory at ~ 16 MB per array
_BLOCK_ELEMENTS = 1 << 21


def _check(score: Any, error: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64)
    e = np.asarray(error)
    if s.ndim != 1 or e.shape != s.shape:
        raise ValueError(f"score and error must be 1-d of the same length, got {s.shape} and {e.shape}")
    if e.dtype != bool:
        if not np.isin(e, (0, 1)).all():
            raise ValueError("error must be boolean (or 0/1)")
        e = e.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite; drop or impute NaN scores first")
    if e.all() or not e.any():
        raise ValueError("need at least one error and one correct prediction")
    return s, e


def _harmonic_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``H(a) - H(b)`` for non-negative (real) a, b, with H the harmonic numbers (H(x) = digamma(x+1) + gamma)."""
    return digamma(a + 1.0) - digamma(b + 1.0)


def _harmonic(x: np.ndarray, integer: bool) -> np.ndarray:
    """Harmonic numbers up to a constant: a table lookup for integer counts (bootstrap multiplicities), else digamma."""
    if not integer:
        return digamma(x + 1.0)
    top = int(x.max()) if x.size else 0
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, top + 1))])
    return table[x.astype(np.int64)]


def curve_metrics(score: Any, error: Any, weights: np.ndarray | None = None, tpr: float = 0.95) -> dict[str, np.ndarray]:
    """Every metric of :data:`CURVE_METRICS` for one score, under one or many weightings of the images.

    Parameters
    ----------
    score : (n,) float, higher = more likely an error
    error : (n,) bool
    weights : (B, n) non-negative multiplicities (bootstrap resamples), or
        None for the data as they are (B = 1)
    tpr : the true-positive rate of ``fpr_at_95tpr``

    Returns
    -------
    dict name -> (B,) float64
    """
    s, e = _check(score, error)
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # tie groups, highest score first
    wo = w[:, order]
    err = np.add.reduceat(wo * e[order], starts, axis=1)  # (B, G) error weight per tie group
    cor = np.add.reduceat(wo, starts, axis=1) - err
    p, nn = err.sum(axis=1), cor.sum(axis=1)
    tp, fp = np.cumsum(err, axis=1), np.cumsum(cor, axis=1)
    out: dict[str, np.ndarray] = {}
    out["auroc"] = (err * (nn[:, None] - fp + 0.5 * cor)).sum(axis=1) / (p * nn)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(err > 0, tp / (tp + fp), 0.0)
    out["aupr_error"] = (err * prec).sum(axis=1) / p
    first = np.argmax(tp / p[:, None] >= tpr, axis=1)
    out["fpr_at_95tpr"] = np.take_along_axis(fp, first[:, None], axis=1)[:, 0] / nn
    n = p + nn
    out["aurc"] = _aurc(err, cor, tp, fp, n, integer=bool(np.all(w == np.round(w))))
    out["eaurc"] = out["aurc"] - (p - nn * _harmonic_diff(n, nn)) / n
    return out


def _aurc(err: np.ndarray, cor: np.ndarray, tp: np.ndarray, fp: np.ndarray, n: np.ndarray, integer: bool,
          ) -> np.ndarray:
    """AURC from the tie groups in decreasing score order (the accepting order is the reverse).

    A group is accepted after every group of lower score: ``N_b = n - (TP + FP)``
    and ``E_b = P - TP`` of the cumulative counts in decreasing order.
    """
    size = err + cor
    before_n = n[:, None] - (tp + fp)
    before_err = tp[:, -1:] - tp
    r = np.divide(err, size, out=np.zeros_like(err), where=size > 0)
    # H(N_b + w) of a group is H(N_b) of the group above it (n for the top group): one pass
    h = _harmonic(np.concatenate([n[:, None], before_n], axis=1), integer)
    h_after, h = h[:, :-1], h[:, 1:]
    group = err + (before_err - r * before_n) * (h_after - h)
    return group.sum(axis=1) / n


def auroc(score: Any, error: Any) -> float:
    """AUROC of ``score`` for telling errors from correct predictions (see the module docstring)."""
    return float(curve_metrics(score, error)["auroc"][0])


def aupr_error(score: Any, error: Any) -> float:
    """Average precision of the errors (see the module docstring)."""
    return float(curve_metrics(score, error)["aupr_error"][0])


def fpr_at_tpr(score: Any, error: Any, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold that catches at least ``tpr`` of the errors."""
    return float(curve_metrics(score, error, tpr=tpr)["fpr_at_95tpr"][0])


def aurc(score: Any, error: Any) -> float:
    """Area under the risk-coverage curve (Geifman & El-Yaniv 2017); lower is better."""
    return float(curve_metrics(score, error)["aurc"][0])


def eaurc(score: Any, error: Any) -> float:
    """Excess AURC over the oracle ordering (Geifman et al. 2019); 0 for a perfect score."""
    return float(curve_metrics(score, error)["eaurc"][0])


def risk_coverage(score: Any, error: Any) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve at every distinct threshold: (coverage, risk), coverage increasing.

    Images are accepted from the lowest score (most confident) on; the point
    of a tie group is reached once all of the group is accepted.
    """
    s, e = _check(score, error)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), ss.size - 1]
    accepted = ends + 1.0
    return accepted / s.size, np.cumsum(e[order])[ends] / accepted


def _stratified_weights(error: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of a bootstrap that resamples errors and correct predictions separately."""
    w = np.zeros((n_boot, error.size))
    for group in (np.flatnonzero(error), np.flatnonzero(~error)):
        w[:, group] = rng.multinomial(group.size, np.full(group.size, 1.0 / group.size), size=n_boot)
    return w


def bootstrap_metrics(scores: Mapping[str, Any], error: Any, n_boot: int, seed: int | np.random.SeedSequence,
                      ) -> dict[str, dict[str, np.ndarray]]:
    """Stratified, paired bootstrap replicates of every metric of every score.

    All scores are evaluated on the same resamples, so that differences between
    scores (e.g. ``boot[a]["auroc"] - boot[b]["auroc"]``) are paired bootstrap
    replicates of the difference.

    Returns
    -------
    dict score name -> dict metric name -> (n_boot,) float64
    """
    e = np.asarray(error).astype(bool)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // max(1, e.size))
    parts: dict[str, dict[str, list[np.ndarray]]] = {k: {m: [] for m in CURVE_METRICS} for k in scores}
    for start in range(0, n_boot, block):
        w = _stratified_weights(e, min(block, n_boot - start), rng)
        for name, score in scores.items():
            for metric, values in curve_metrics(score, e, w).items():
                parts[name][metric].append(values)
    return {k: {m: np.concatenate(v) if v else np.empty(0) for m, v in d.items()} for k, d in parts.items()}


def delong_covariance(scores: Any, error: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong covariance matrix, vectorised (Sun & Xu 2014).

    With midranks ``T_z`` in the pooled sample, ``T_x`` among the m errors and
    ``T_y`` among the n correct predictions, the structural components are
    ``V10_i = (T_z(x_i) - T_x(x_i)) / n`` and ``V01_j = 1 - (T_z(y_j) - T_y(y_j)) / m``,
    ``AUROC = mean(V10)`` and ``S = cov(V10) / m + cov(V01) / n`` (DeLong et al. 1988).

    Parameters
    ----------
    scores : (..., k, n) k scores of the same n images (leading axes: independent replicates)
    error : (n,) bool

    Returns
    -------
    auc : (..., k)
    cov : (..., k, k)
    """
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(error).astype(bool)
    x, y = s[..., e], s[..., ~e]
    m, n = x.shape[-1], y.shape[-1]
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two errors and two correct predictions")
    tx, ty = rankdata(x, axis=-1), rankdata(y, axis=-1)
    tz = rankdata(np.concatenate([x, y], axis=-1), axis=-1)
    v10 = (tz[..., :m] - tx) / n
    v01 = 1.0 - (tz[..., m:] - ty) / m
    auc = v10.mean(axis=-1)

    def cov(v: np.ndarray) -> np.ndarray:
        c = v - v.mean(axis=-1, keepdims=True)
        return np.einsum("...in,...jn->...ij", c, c) / (v.shape[-1] - 1)

    return auc, cov(v10) / m + cov(v01) / n


@dataclass(frozen=True)
class DeLongResult:
    """DeLong test of ``AUROC(a) = AUROC(b)`` on the same images (two-sided, normal approximation)."""

    auc_a: float
    auc_b: float
    delta: float  # auc_a - auc_b
    se: float
    z: float
    p_value: float

    def to_dict(self) -> dict:
        return jsonable(self.__dict__)


def delong_test(score_a: Any, score_b: Any, error: Any) -> DeLongResult:
    """Paired DeLong test of two correlated AUROCs (DeLong et al. 1988; Sun & Xu 2014).

    ``z = (AUROC_a - AUROC_b) / sqrt(S_aa + S_bb - 2 S_ab)``, ``p = 2 Phi(-|z|)``.
    Two scores that order the images identically have zero variance of the
    difference: p = 1.
    """
    a, e = _check(score_a, error)
    b, _ = _check(score_b, error)
    if b.shape != a.shape:
        raise ValueError("score_a and score_b must have the same length")
    auc, cov = delong_covariance(np.stack([a, b]), e)
    delta = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se <= 1e-12:
        z, p = 0.0, 1.0 if abs(delta) <= 1e-12 else 0.0
    else:
        z = delta / se
        p = float(2 * ndtr(-abs(z)))
    return DeLongResult(float(auc[0]), float(auc[1]), delta, se, float(z), p)
