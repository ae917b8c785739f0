"""Within-class and marginal AUC (issue 10): against scipy/sklearn, the BCa
interval against scipy.stats.bootstrap on the same resampling scheme,
degenerate cases, and calibration under the class-confounded null."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from scipy.special import ndtri
from sklearn.metrics import roc_auc_score

from camstat import stats


def _confounded(rng, effect=0.0, sizes=(20, 30, 40, 50, 60, 40)):
    """Class accuracy 0.5-0.95 and a metric level tied to it: the marginal AUC is confounded."""
    sizes = np.asarray(sizes)
    acc = np.linspace(0.5, 0.95, sizes.size)
    cls = np.repeat(np.arange(sizes.size), sizes)
    correct = rng.random(cls.size) < acc[cls]
    values = 4.0 * acc[cls] + rng.normal(size=cls.size) + effect * correct
    return values, correct, cls


def _pooled_delta(*samples, axis=-1):
    """Van Elteren-weighted within-class delta of (correct, incorrect) sample pairs, vectorised."""
    num = den = 0.0
    for x, y in zip(samples[::2], samples[1::2]):
        n, m = x.shape[axis], y.shape[axis]
        r = scipy.stats.rankdata(np.concatenate([x, y], axis=axis), axis=axis)
        d = 2 * (r[..., :n].sum(-1) - n * (n + 1) / 2) / (n * m) - 1
        w = n * m / (n + m + 1)
        num, den = num + w * d, den + w
    return num / den


def _cells(values, correct, cls):
    out = []
    for k in np.unique(cls):
        m = cls == k
        if 0 < correct[m].sum() < m.sum():
            out += [values[m & correct], values[m & ~correct]]
    return out


def test_within_class_auc_is_the_pooled_delta_on_the_auc_scale():
    values, correct, cls = _confounded(np.random.default_rng(0), effect=0.5)
    res = stats.within_class_auc(values, correct, cls, n_boot=0)
    perm = stats.stratified_permutation_test(values, correct, cls, 0)
    assert res.auc_within_class == pytest.approx((1 + perm.statistic) / 2, abs=1e-13)
    assert res.auc_within_class == pytest.approx((1 + _pooled_delta(*_cells(values, correct, cls))) / 2, abs=1e-13)
    # H1's orientation: a distance (lower = more consistent) is negated
    flipped = stats.within_class_auc(-values, correct, cls, higher_is_more_consistent=False, n_boot=0)
    assert flipped.auc_within_class == pytest.approx(res.auc_within_class, abs=1e-13)
    assert res.n_classes == 6 and res.n == values.size


def test_marginal_auc_matches_roc_auc_score():
    values, correct, cls = _confounded(np.random.default_rng(1))
    res = stats.marginal_auc(values, correct, n_boot=0)
    assert res.auc_marginal == pytest.approx(roc_auc_score(correct, values), abs=1e-13)
    low = stats.marginal_auc(values, correct, higher_is_more_consistent=False, n_boot=0)
    assert low.auc_marginal == pytest.approx(1 - res.auc_marginal, abs=1e-13)


@pytest.mark.parametrize("case", ["normal", "ties01", "skewed"])
def test_within_class_ci_equals_scipy_bootstrap_bca_same_scheme(case):
    if case == "skewed":
        # large effect, small incorrect groups: BCa's lower end is 0.016 below
        # the percentile interval's, so a percentile CI would fail here
        values, correct, cls = _confounded(np.random.default_rng(5), effect=1.5, sizes=(16, 20, 24, 40, 30))
    else:
        values, correct, cls = _confounded(np.random.default_rng(2), effect=0.4)
    if case == "ties01":  # 0/1 metric: most bootstrap values tie with each other
        values = (values > np.median(values)).astype(float)
    res = stats.within_class_auc(values, correct, cls, n_boot=40000, seed=3)
    ref = scipy.stats.bootstrap(
        _cells(values, correct, cls), _pooled_delta, n_resamples=40000, method="BCa", vectorized=True,
        rng=np.random.default_rng(4),
    ).confidence_interval
    # two Monte Carlo runs of the same interval: endpoints agree to ~ their MC error (~0.003)
    np.testing.assert_allclose(res.auc_within_class_ci95, ((1 + ref.low) / 2, (1 + ref.high) / 2), atol=0.006)


def _delta(x, y, axis=-1):
    n, m = x.shape[axis], y.shape[axis]
    r = scipy.stats.rankdata(np.concatenate([x, y], axis=axis), axis=axis)
    return 2 * (r[..., :n].sum(-1) - n * (n + 1) / 2) / (n * m) - 1


def test_marginal_ci_equals_scipy_bootstrap_bca():
    values, correct, _ = _confounded(np.random.default_rng(5), effect=0.3)
    res = stats.marginal_auc(values, correct, n_boot=40000, seed=1)
    ref = scipy.stats.bootstrap((values[correct], values[~correct]), lambda x, y, axis=-1: (1 + _delta(x, y, axis)) / 2,
                                n_resamples=40000, method="BCa", vectorized=True,
                                rng=np.random.default_rng(2)).confidence_interval
    np.testing.assert_allclose(res.auc_marginal_ci95, (ref.low, ref.high), atol=0.006)


@pytest.mark.parametrize("n,m,seed", [(10, 6, 1), (8, 5, 3)])
def test_class_test_bca_with_heavy_ties_matches_scipy(n, m, seed):
    # small 0/1 samples: a large share of the bootstrap deltas equals the
    # observed one, so the bias correction must count ties as scipy does
    # ((#< + #<=) / 2B; counting only "<" moves an end by 0.07-0.13 here).
    # The ends lie on the lattice k / (n m), so two Monte Carlo runs agree
    # exactly unless an end sits at a lattice boundary (not for these seeds)
    rng = np.random.default_rng(seed)
    x, y = (rng.random(n) < 0.6).astype(float), (rng.random(m) < 0.4).astype(float)
    ours = stats.class_test(x, y, n_boot=40000, seed=2).ci95
    ref = scipy.stats.bootstrap((x, y), _delta, n_resamples=40000, method="BCa", vectorized=True,
                                rng=np.random.default_rng(6)).confidence_interval
    np.testing.assert_allclose(ours, (ref.low, ref.high), atol=0.01)


def _newcombe_lower(n, m, z=ndtri(0.975)):
    """Newcombe (2006) method 5 lower bound at theta_hat = 1, by bisection on a fine grid."""
    t = np.linspace(0.0, 1.0 - 1e-9, 2_000_001)
    n_star = (n + m) / 2 - 1
    v = t * (1 - t) * (1 + (n_star - 1) * ((1 - t) / (2 - t) + t / (1 + t))) / (n * m)
    inside = (1 - t) <= z * np.sqrt(v)
    return t[np.argmax(inside)]


def test_complete_separation_gives_newcombes_bound_not_a_point():
    values = np.array([5, 6, 7, 8, 9, 10, 1, 2, 3, 4.0])
    correct = np.array([1] * 6 + [0] * 4, bool)
    res = stats.marginal_auc(values, correct, n_boot=200)
    assert res.auc_marginal == 1.0 and res.separated
    assert res.auc_marginal_ci95[1] == 1.0
    assert res.auc_marginal_ci95[0] == pytest.approx(_newcombe_lower(6, 4), abs=1e-6)
    ct = stats.class_test(values[correct], values[~correct], n_boot=200)
    assert ct.ci95[0] == pytest.approx(2 * _newcombe_lower(6, 4) - 1, abs=2e-6)
    # within classes: separated in every class, pooled bound is tighter than one class's
    cls = np.repeat([0, 1], 10)
    w = stats.within_class_auc(np.r_[values, values], np.r_[correct, correct], cls, n_boot=200)
    assert w.separated and w.auc_within_class == 1.0
    assert _newcombe_lower(6, 4) < w.auc_within_class_ci95[0] < 1.0 and w.auc_within_class_ci95[1] == 1.0
    lo = stats.within_class_auc(-np.r_[values, values], np.r_[correct, correct], cls, n_boot=200)
    assert lo.auc_within_class == 0.0 and lo.auc_within_class_ci95[0] == 0.0
    assert lo.auc_within_class_ci95[1] == pytest.approx(1 - w.auc_within_class_ci95[0], abs=1e-12)


def test_constant_metric_gives_nan_ci_not_zero_width():
    correct = np.array([1, 0, 1, 0, 1, 1, 0, 1], bool)
    cls = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    w = stats.within_class_auc(np.ones(8), correct, cls, n_boot=100)
    assert w.auc_within_class == 0.5 and w.to_dict()["auc_within_class_ci95"] == [None, None]
    m = stats.marginal_auc(np.ones(8), correct, n_boot=100)
    assert m.auc_marginal == 0.5 and np.isnan(m.auc_marginal_ci95).all()
    assert np.isnan(stats.class_test(np.ones(4), np.ones(3), n_boot=100).ci95).all()
    none = stats.within_class_auc(np.arange(4.0), [1, 1, 0, 0], [0, 0, 1, 1], n_boot=100)
    assert none.n_classes == 0 and np.isnan(none.auc_within_class)


def test_within_class_ci_is_seeded_and_order_independent():
    values, correct, cls = _confounded(np.random.default_rng(9), effect=0.3)
    a = stats.within_class_auc(values, correct, cls, n_boot=500, seed=1)
    assert a == stats.within_class_auc(values, correct, cls, n_boot=500, seed=1)
    other = stats.within_class_auc(values, correct, cls, n_boot=500, seed=2)
    assert a.auc_within_class_ci95 != other.auc_within_class_ci95


@pytest.mark.slow
def test_within_class_ci_is_calibrated_under_the_class_confounded_null():
    # 1,000 data sets: a true rate of 0.10 (2 x alpha) lands in [0.03, 0.07]
    # with probability < 0.001; 0.05 with probability 0.997
    rng = np.random.default_rng(20261130)
    within = marginal = 0
    reps = 1000
    for i in range(reps):
        values, correct, cls = _confounded(rng)
        lo, hi = stats.within_class_auc(values, correct, cls, n_boot=999, seed=i).auc_within_class_ci95
        within += not lo <= 0.5 <= hi
        if i < 200:
            mlo, mhi = stats.marginal_auc(values, correct, n_boot=499, seed=i).auc_marginal_ci95
            marginal += not mlo <= 0.5 <= mhi
    print(f"within-class AUC CI excludes 0.5 in {within / reps:.3f} of {reps} null data sets; "
          f"marginal AUC CI in {marginal / 200:.3f} of 200")
    assert 0.03 <= within / reps <= 0.07
    assert marginal / 200 > 0.5  # the confounding the within-class AUC removes


def test_auc_test_ci_equals_scipy_bootstrap_bca():
    # issue 18: the pooled AUC CI of auc_test (used by h1_metric) was only checked to contain the estimate
    values, correct, cls = _confounded(np.random.default_rng(12), effect=0.3)
    res = stats.auc_test(values, correct, cls, n_boot=40000, seed=3)
    ref = scipy.stats.bootstrap((values[correct], values[~correct]), lambda x, y, axis=-1: (1 + _delta(x, y, axis)) / 2,
                                n_resamples=40000, method="BCa", vectorized=True,
                                rng=np.random.default_rng(5)).confidence_interval
    np.testing.assert_allclose(res.ci95, (ref.low, ref.high), atol=0.006)
