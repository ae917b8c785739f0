"""The whole H1 pipeline under the null (``--control permuted``, SPEC 4 ``controls.null_pipeline``).

One permuted control is a single draw from the null that the permutation
p-value already accounts for. What it cannot show is whether the *pipeline*
is calibrated: the per-image metrics depend on the labels through the
leave-one-out references (the mean map of the other *correct* images of the
class), so a shuffle must rebuild them. :func:`null_pipeline` repeats, for
``repeats`` seeded shuffles: correctness permuted within each class (class
sizes and accuracies fixed), references rebuilt from the maps
(:func:`camstat.metrics.class_sums`, :func:`camstat.metrics.loo_references`),
every per-image metric recomputed (:func:`camstat.metrics.per_image_metrics`;
reference-free ones once, they do not depend on the labels), and the pooled
test rerun. It reports per metric the rejection rate at ``alpha`` (near alpha
when the pipeline is calibrated) and quantiles of the pooled delta and of the
within-class AUC.

An example of what only this control catches: a correct image's reference
is the mean of the *other* n_c - 1 correct maps, an incorrect image's the
mean of all n_c, so with noisy maps the correct images sit slightly
*farther* from their references (expected ``dist`` larger by
sigma^2 / (n_c (n_c - 1))). With large classes this is invisible; with many
small ones the null pipeline rejects far more often than alpha.

The pooled test inside the loop is van Elteren's (1960) stratified Wilcoxon
test with its normal approximation (:func:`van_elteren_test`): the same
statistic as :func:`camstat.stats.stratified_permutation_test` (the pooled
within-class delta), exact tie-corrected variance, vectorised across
repeats, so no permutation loop nests inside the repeat loop. Its
calibration is checked in the suite.

References
----------
van Elteren, P. H. (1960). On the combination of independent two-sample
    tests of Wilcoxon. Bull. Int. Statist. Inst. 37, 351-361.
Lehmann, E. L. (1975). Nonparametrics: Statistical Methods Based on Ranks,
    ch. 3 (the stratified Wilcoxon test and its tie-corrected variance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from camstat import metrics
from camstat.stats import Record

__all__ = ["NullMetric", "NullPipelineResult", "VanElteren", "null_pipeline", "reference_metrics",
           "shuffle_within_class", "van_elteren_test"]

#: quantile levels of ``delta_quantiles`` and ``auc_within_class_quantiles``
QUANTILES = (0.025, 0.5, 0.975)
# images per chunk of reference maps: ~16 MB of float64 at 32x32
_CHUNK_PIXELS = 2_000_000


@dataclass(frozen=True)
class VanElteren(Record):
    """Van Elteren's test for each row: pooled delta, z and two-sided normal p (arrays)."""

    delta: np.ndarray
    z: np.ndarray
    p_value: np.ndarray


@dataclass(frozen=True)
class NullMetric(Record):
    """One metric under the null: rejection rate at alpha and quantiles over repeats.

    ``delta_quantiles`` are of the pooled within-class Cliff's delta of the
    metric as given (correct vs incorrect); ``auc_within_class_quantiles``
    of the within-class AUC in H1's orientation (> 0.5: correct more
    consistent); both at :data:`QUANTILES`. ``n_tests`` counts repeats in
    which the test could be run.
    """

    rejection_rate: float
    delta_quantiles: tuple[float, ...]
    auc_within_class_quantiles: tuple[float, ...]
    n_tests: int


@dataclass(frozen=True)
class NullPipelineResult(Record):
    """SPEC 4 ``controls.null_pipeline``: ``repeats``, ``alpha``, per metric :class:`NullMetric`."""

    repeats: int
    alpha: float
    test: str
    quantile_levels: tuple[float, ...]
    metrics: dict[str, NullMetric]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_dict().items() if k != "metrics"}
        out["metrics"] = {name: m.to_dict() for name, m in self.metrics.items()}
        return out


def van_elteren_test(values: Any, correct: Any, classes: Any) -> VanElteren:
    """Van Elteren's stratified Wilcoxon test, normal approximation, one test per row.

    ``values`` (R, N) or (N,) (NaN = left out of that row), ``correct`` of
    the same shape (bool), ``classes`` (N,). Per class s, with mid-ranks
    among the row's non-NaN values, R_s the rank sum of the n_cs correct of
    n_s images, E_s = n_cs (n_s + 1) / 2 and the exact permutation variance
    V_s = n_cs n_is / (n_s - 1) * sigma_s^2 (sigma_s^2 the population
    variance of the mid-ranks, which is the tie correction),

        T = sum_s (R_s - E_s) / (n_s + 1),  z = T / sqrt(sum_s V_s / (n_s + 1)^2),

    p = 2 (1 - Phi(|z|)); the pooled delta is 2 T / sum_s n_cs n_is / (n_s + 1),
    the statistic of :func:`camstat.stats.stratified_permutation_test`.
    Classes with one outcome contribute nothing; a row without any
    comparison gives NaN.
    """
    v = np.atleast_2d(np.asarray(values, dtype=float))
    c = np.atleast_2d(np.asarray(correct)).astype(bool)
    cls = np.asarray(classes).ravel()
    if c.shape != v.shape or cls.size != v.shape[1]:
        raise ValueError(f"values {v.shape}, correct {c.shape} and classes ({cls.size},) do not match")
    T = np.zeros(v.shape[0])
    var = np.zeros(v.shape[0])
    weight = np.zeros(v.shape[0])
    for lab in np.unique(cls):
        vs = v[:, cls == lab]
        ok = ~np.isnan(vs)
        cs = c[:, cls == lab] & ok
        r = scipy.stats.rankdata(vs, axis=1, nan_policy="omit")
        n = ok.sum(axis=1).astype(float)
        nc = cs.sum(axis=1).astype(float)
        ni = n - nc
        live = (nc > 0) & (ni > 0)
        n1 = np.where(live, n + 1, 1.0)
        centred = np.where(ok, r - n1[:, None] / 2, 0.0)
        sigma2 = np.einsum("ij,ij->i", centred, centred) / np.where(live, n, 1.0)
        rc = np.where(cs, r, 0.0).sum(axis=1)
        T += np.where(live, (rc - nc * n1 / 2) / n1, 0.0)
        var += np.where(live, nc * ni / np.where(live, n - 1, 1.0) * sigma2 / n1**2, 0.0)
        weight += np.where(live, nc * ni / n1, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, T / np.sqrt(var), np.nan)
        delta = np.where(weight > 0, 2 * T / weight, np.nan)
    return VanElteren(delta, z, 2 * scipy.stats.norm.sf(np.abs(z)))


def shuffle_within_class(correct: Any, classes: Any, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """(repeats, N) bool: ``correct`` permuted within each class, independently per row."""
    c = np.asarray(correct).ravel().astype(bool)
    cls = np.asarray(classes).ravel()
    out = np.empty((int(repeats), c.size), dtype=bool)
    for lab in np.unique(cls):
        idx = np.flatnonzero(cls == lab)
        out[:, idx] = rng.permuted(np.broadcast_to(c[idx], (int(repeats), idx.size)), axis=1)
    return out


class _Classes:
    """Per-class image indices and flattened maps, to sum any labelling's correct maps by one product per class."""

    def __init__(self, x: np.ndarray, cls: np.ndarray) -> None:
        self.n_classes = int(cls.max()) + 1
        self.index = [np.flatnonzero(cls == k) for k in range(self.n_classes)]
        flat = x.reshape(x.shape[0], -1)
        self.blocks = [flat[i] for i in self.index]

    def sums(self, u: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """What :func:`camstat.metrics.class_sums` returns for ``include=u``."""
        sums = np.stack([u[i].astype(np.float64) @ b for i, b in zip(self.index, self.blocks)])
        counts = np.array([np.count_nonzero(u[i]) for i in self.index], dtype=np.int64)
        return sums.reshape(self.n_classes, *shape), counts


def reference_metrics(
    maps: np.ndarray, classes: np.ndarray, correct: np.ndarray, names: Sequence[str],
    q: float = metrics.DEFAULT_Q, groups: _Classes | None = None,
) -> dict[str, np.ndarray]:
    """Reference-based metrics of every image for one labelling, leave-one-out references rebuilt.

    Equal to :func:`camstat.metrics.per_image_metrics` with
    :func:`camstat.metrics.loo_references` built from
    :func:`camstat.metrics.class_sums` of ``correct``; the class sums come
    from one product per class (``groups``, built once per pipeline) and
    the references are made chunk by chunk.
    """
    x = np.asarray(maps, dtype=np.float64)
    cls = np.asarray(classes).ravel()
    groups = _Classes(x, cls) if groups is None else groups
    sums, counts = groups.sums(np.asarray(correct, dtype=bool), x.shape[1:])
    out = {name: np.empty(x.shape[0]) for name in names}
    step = max(1, _CHUNK_PIXELS // int(np.prod(x.shape[1:])))
    for a in range(0, x.shape[0], step):
        refs = metrics.loo_references(x[a:a + step], cls[a:a + step], correct[a:a + step], sums, counts)
        for name, val in metrics.per_image_metrics(x[a:a + step], refs, list(names), q=q).items():
            out[name][a:a + step] = val
    return out


def null_pipeline(
    maps: Any,
    correct: Any,
    classes: Any,
    *,
    strata: Any | None = None,
    metric_names: Sequence[str] | None = None,
    repeats: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    q: float = metrics.DEFAULT_Q,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> NullPipelineResult:
    """Run the reference-building, metric and pooled-test pipeline ``repeats`` times under the null.

    ``maps`` (N, H, W) analysis maps, ``correct`` (N,) bool, ``classes``
    (N,) int class indices (the class whose correct maps form the
    reference); ``strata`` (default ``classes``; each nested in a class)
    those of the shuffle and of the pooled test, as in the analysis run
    (cluster x class cells for clusters that mix classes). Every shuffle comes from one seeded generator, so the same
    inputs and ``seed`` give the same result (whatever ``workers``, the
    number of threads sharing the repeats; default
    :func:`camstat.metrics.default_threads`). ``progress(r)`` is called
    after each repeat (from a worker thread). Cost: ``repeats`` x (one pass of the reference-based
    metrics over all images); reference-free metrics and the tests are
    vectorised across repeats.
    """
    x = np.asarray(maps, dtype=np.float64)
    cls = np.asarray(classes).ravel().astype(np.int64)
    c = np.asarray(correct).ravel().astype(bool)
    if x.ndim != 3 or cls.size != x.shape[0] or c.size != x.shape[0]:
        raise ValueError(f"maps (N, H, W) with N = len(correct) = len(classes) needed, got {x.shape}, "
                         f"{c.size}, {cls.size}")
    if int(repeats) < 1 or not 0 < alpha < 1:
        raise ValueError("repeats must be >= 1 and alpha in (0, 1)")
    names = list(metrics.default_metric_names(False) if metric_names is None else metric_names)
    infos = [metrics.PER_IMAGE[nm] for nm in names]
    cells = cls if strata is None else np.unique(np.asarray(strata).ravel(), return_inverse=True)[1].ravel()
    if cells.size != x.shape[0]:
        raise ValueError(f"strata has {cells.size} entries, expected {x.shape[0]}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E756C6C]))  # "null"
    labels = shuffle_within_class(c, cells, int(repeats), rng)
    fixed = metrics.per_image_metrics(x, None, [m.name for m in infos if not m.needs_reference], q=q)
    values = {nm: np.broadcast_to(v, labels.shape) for nm, v in fixed.items()}
    by_ref = [m.name for m in infos if m.needs_reference]
    for nm in by_ref:
        values[nm] = np.empty(labels.shape)
    groups = _Classes(x, cls)

    def one(r: int) -> None:
        for nm, v in reference_metrics(x, cls, labels[r], by_ref, q, groups).items():
            values[nm][r] = v
        if progress is not None:
            progress(r)

    if by_ref:
        # repeats are independent and numpy releases the GIL in the heavy
        # loops, so threads share the work without copying the maps
        with ThreadPoolExecutor(max(1, int(workers or metrics.default_threads()))) as pool:
            list(pool.map(one, range(int(repeats))))
    out = {}
    for m in infos:
        res = van_elteren_test(values[m.name], labels, cells)
        ok = np.isfinite(res.p_value)
        auc = (1 + (res.delta if m.higher_is_more_consistent else -res.delta)) / 2
        quant = (lambda a: tuple(float(t) for t in np.quantile(a[ok], QUANTILES)) if ok.any()
                 else (float("nan"),) * len(QUANTILES))
        out[m.name] = NullMetric(
            rejection_rate=float(np.mean(res.p_value[ok] <= alpha)) if ok.any() else float("nan"),
            delta_quantiles=quant(res.delta),
            auc_within_class_quantiles=quant(auc),
            n_tests=int(ok.sum()),
        )
    return NullPipelineResult(int(repeats), float(alpha), "van_elteren_normal", QUANTILES, out)
