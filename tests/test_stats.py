"""Tests of camstat.stats: against reference implementations, by exhaustive
enumeration, and by simulation (calibration and power of the pooled test)."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.formula.api as smf
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from camstat import stats

SPEC_ROW_KEYS = {
    "class",
    "n_correct",
    "n_incorrect",
    "median_correct",
    "median_incorrect",
    "p_value",
    "p_adjusted",
    "cliffs_delta",
    "ci95",
}
SPEC_POOLED_KEYS = {"p_permutation", "odds_ratio_per_sd", "p_lrt", "p_lrt_given_confidence", "auc", "auc_ci95"}
# shift of a unit normal giving Cliff's delta 0.3: P(X > Y) = Phi(d / sqrt 2) = 0.65
SHIFT_DELTA_03 = np.sqrt(2) * scipy.stats.norm.ppf(0.65)


def naive_delta(x, y):
    x = np.asarray(x, float)[:, None]
    y = np.asarray(y, float)[None, :]
    return float(np.mean(np.sign(x - y)))


def naive_pooled_delta(values, correct, strata):
    """Van Elteren-weighted mean of within-stratum Cliff's deltas, by pair loop."""
    num = den = 0.0
    for s in np.unique(strata):
        m = strata == s
        x, y = values[m & correct], values[m & ~correct]
        if x.size == 0 or y.size == 0:
            continue
        w = x.size * y.size / (m.sum() + 1)
        num += w * naive_delta(x, y)
        den += w
    return num / den


# ---------------------------------------------------------------- Cliff's delta


def test_cliffs_delta_known_cases():
    assert stats.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert stats.cliffs_delta([1, 2], [5, 6, 7]) == -1.0
    assert stats.cliffs_delta([3, 3, 3], [3, 3]) == 0.0
    assert stats.cliffs_delta([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    # by hand: pairs (3,1)>, (3,4)<, (4,1)>, (4,4)=, (5,1)>, (5,4)> -> (4 - 1) / 6
    assert stats.cliffs_delta([3, 4, 5], [1, 4]) == pytest.approx(0.5, abs=1e-15)
    assert np.isnan(stats.cliffs_delta([], [1.0]))
    with pytest.raises(ValueError):
        stats.cliffs_delta([1.0, np.nan], [0.0])


@pytest.mark.parametrize("n,m,ties", [(1, 1, False), (7, 3, True), (40, 55, True), (200, 13, False)])
def test_cliffs_delta_matches_pair_loop(n, m, ties):
    rng = np.random.default_rng(n * 1000 + m)
    draw = (lambda k: rng.integers(0, 6, k).astype(float)) if ties else (lambda k: rng.normal(size=k))
    x, y = draw(n), draw(m)
    assert stats.cliffs_delta(x, y) == pytest.approx(naive_delta(x, y), abs=1e-12)


def test_cliffs_delta_is_not_quadratic():
    # a pair loop (or an n x m broadcast) over 3e5 x 3e5 would take minutes or
    # 720 GB; the rank formula takes a fraction of a second
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.1, 1, 300_000), rng.normal(0, 1, 300_000)
    t0 = time.perf_counter()
    d = stats.cliffs_delta(x, y)
    assert time.perf_counter() - t0 < 5.0
    assert d == pytest.approx(2 * scipy.stats.norm.cdf(0.1 / np.sqrt(2)) - 1, abs=0.01)


# ---------------------------------------------------------------- class test


@pytest.mark.parametrize(
    "n,m,ties",
    [(6, 5, False), (8, 7, True), (120, 30, True), (500, 60, False)],
)
def test_class_test_matches_mannwhitneyu(n, m, ties):
    rng = np.random.default_rng(n + m)
    draw = (lambda k: rng.integers(0, 8, k).astype(float)) if ties else (lambda k: rng.normal(size=k))
    x, y = draw(n) + 0.5, draw(m)
    res = stats.class_test(x, y, n_boot=500, seed=1)
    ref = scipy.stats.mannwhitneyu(x, y, alternative="two-sided")
    assert res.u == ref.statistic
    assert res.p_value == ref.pvalue
    assert (res.n_correct, res.n_incorrect) == (n, m)
    assert res.median_correct == np.median(x) and res.median_incorrect == np.median(y)
    assert res.cliffs_delta == pytest.approx(naive_delta(x, y), abs=1e-12)
    assert res.cliffs_delta == pytest.approx(2 * ref.statistic / (n * m) - 1, abs=1e-12)
    lo, hi = res.ci95
    assert -1 <= lo <= res.cliffs_delta <= hi <= 1


def _scipy_delta(x, y, axis=-1):
    n, m = x.shape[axis], y.shape[axis]
    r = scipy.stats.rankdata(np.concatenate([x, y], axis=axis), axis=axis)
    return 2 * (r[..., :n].sum(-1) - n * (n + 1) / 2) / (n * m) - 1


@pytest.mark.parametrize("case", ["normal", "ties", "skewed"])
def test_class_test_ci_agrees_with_scipy_bootstrap_bca(case):
    if case == "ties":
        rng = np.random.default_rng(11)
        x, y = rng.integers(0, 5, 60).astype(float) + 1, rng.integers(0, 5, 25).astype(float)
    elif case == "normal":
        rng = np.random.default_rng(11)
        x, y = rng.normal(0.4, 1, 60), rng.normal(0, 1.5, 25)
    else:  # large delta, small incorrect group: BCa and percentile differ
        rng = np.random.default_rng(1)
        x, y = rng.normal(2.0, 1, 30), rng.normal(0, 1, 10)
    ours = stats.class_test(x, y, n_boot=20000, seed=3).ci95

    def ref(method):
        return scipy.stats.bootstrap(
            (x, y), _scipy_delta, n_resamples=20000, method=method, vectorized=True, rng=np.random.default_rng(4)
        ).confidence_interval

    bca = ref("BCa")
    # two independent Monte Carlo runs of the same interval
    assert ours[0] == pytest.approx(bca.low, abs=0.025)
    assert ours[1] == pytest.approx(bca.high, abs=0.025)
    assert ours != stats.class_test(x, y, n_boot=20000, seed=5).ci95  # the seed is used
    if case == "skewed":
        # ... and it is BCa, not the percentile interval (lower ends ~0.1 apart here)
        assert abs(ours[0] - ref("percentile").low) > 0.06


def test_class_test_ci_separation_and_determinism():
    res = stats.class_test([5, 6, 7, 8, 9], [1, 2, 3, 4, 4.5], n_boot=300, seed=0)
    assert res.cliffs_delta == 1.0
    # complete separation: Newcombe's score bound, not the degenerate bootstrap's [1, 1]
    assert res.ci95[1] == 1.0 and 0.2 < res.ci95[0] < 0.6
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=12)
    assert stats.class_test(x, y, seed=7) == stats.class_test(x, y, seed=7)
    assert stats.class_test(x, y, seed=7).ci95 != stats.class_test(x, y, seed=8).ci95
    with pytest.raises(ValueError):
        stats.class_test(x, [], seed=0)


# ---------------------------------------------------------------- multiplicity


@pytest.mark.parametrize("method", ["holm", "fdr_bh", "bonferroni"])
def test_adjust_matches_multipletests(method):
    p = np.random.default_rng(2).uniform(0, 0.2, 25)
    np.testing.assert_allclose(stats.adjust(p, method), multipletests(p, method=method)[1], rtol=0, atol=0)
    with_nan = np.insert(p, [0, 7, 7], np.nan)
    out = stats.adjust(with_nan, method)
    assert np.isnan(out[[0, 8]]).all() and np.isnan(out).sum() == 3
    np.testing.assert_allclose(out[~np.isnan(with_nan)], multipletests(p, method=method)[1])


def test_adjust_rejects_unknown_method():
    with pytest.raises(ValueError, match="holm"):
        stats.adjust([0.1, 0.2], "sidak-ish")


# ---------------------------------------------------------------- permutation test


def test_permutation_statistic_is_pooled_within_class_delta():
    rng = np.random.default_rng(5)
    strata = np.repeat(np.array(["a", "b", "c", "d"]), [30, 12, 50, 9])
    values = rng.integers(0, 10, strata.size).astype(float)  # many ties
    correct = rng.random(strata.size) < 0.7
    correct[strata == "d"] = True  # a stratum with one group contributes nothing
    res = stats.stratified_permutation_test(values, correct, strata, n_permutations=99, seed=0)
    assert res.statistic == pytest.approx(naive_pooled_delta(values, correct, strata), abs=1e-12)
    assert res.n_permutations == 99
    k = res.p_value * 100 - 1  # p = (1 + #exceed) / (1 + B)
    assert abs(k - round(k)) < 1e-9 and 0 <= round(k) <= 99


def test_permutation_p_matches_exhaustive_enumeration():
    values = np.array([0.3, 1.2, 2.5, 2.5, 0.1, 3.3, 0.7, 1.1, 4.0, 0.2, 2.2, 1.9])
    strata = np.array([0] * 7 + [1] * 5)
    correct = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0], bool)
    t_obs = naive_pooled_delta(values, correct, strata)
    idx0, idx1 = np.flatnonzero(strata == 0), np.flatnonzero(strata == 1)
    ts = []
    for c0 in itertools.combinations(idx0, int(correct[idx0].sum())):
        for c1 in itertools.combinations(idx1, int(correct[idx1].sum())):
            lab = np.zeros(values.size, bool)
            lab[list(c0) + list(c1)] = True
            ts.append(naive_pooled_delta(values, lab, strata))
    ts = np.abs(ts)
    assert ts.size == 35 * 10
    p_exact = np.mean(ts >= abs(t_obs) - 1e-12)
    res = stats.stratified_permutation_test(values, correct, strata, n_permutations=20000, seed=1)
    assert res.statistic == pytest.approx(t_obs, abs=1e-12)
    # Monte Carlo p vs exact p: sd <= 0.0036 at B = 20000
    assert res.p_value == pytest.approx(p_exact, abs=0.015)
    assert 0.05 < p_exact < 0.95  # the case is not trivial


def test_permutation_single_stratum_matches_scipy_permutation_test():
    rng = np.random.default_rng(8)
    x, y = rng.normal(0.8, 1, 7), rng.normal(0, 1, 5)
    values = np.concatenate([x, y])
    correct = np.r_[np.ones(7, bool), np.zeros(5, bool)]
    ref = scipy.stats.permutation_test(
        (x, y),
        lambda a, b: abs(naive_delta(a, b)),
        permutation_type="independent",
        alternative="greater",
        n_resamples=np.inf,  # exact: all C(12, 5) = 792 splits
    )
    res = stats.stratified_permutation_test(values, correct, np.zeros(12), n_permutations=20000, seed=2)
    assert abs(res.statistic) == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue, abs=0.01)


def test_permutation_degenerate_and_deterministic():
    res = stats.stratified_permutation_test([1.0, 2, 3], [1, 1, 1], [0, 0, 1], n_permutations=50)
    assert np.isnan(res.p_value) and "both" in res.note
    rng = np.random.default_rng(3)
    v, c, s = rng.normal(size=300), rng.random(300) < 0.8, rng.integers(0, 4, 300)
    a = stats.stratified_permutation_test(v, c, s, 500, seed=4)
    assert a == stats.stratified_permutation_test(v, c, s, 500, seed=4)


def _simulate(rng, effect, n_incorrect=None):
    """10 classes of unequal size, class-dependent accuracy (~85 %) and
    class-dependent metric level, so an unstratified test is confounded."""
    sizes = np.array([25, 35, 45, 55, 60, 70, 80, 90, 95, 110])
    acc = np.linspace(0.70, 0.97, 10)
    strata = np.repeat(np.arange(10), sizes)
    if n_incorrect is None:
        correct = rng.random(strata.size) < acc[strata]
    else:
        # exactly n_incorrect incorrect images, spread by (1 - accuracy)
        w = (1 - acc) * sizes
        per = np.floor(n_incorrect * w / w.sum()).astype(int)
        per[np.argsort(-w)[: n_incorrect - per.sum()]] += 1
        correct = np.ones(strata.size, bool)
        for k in range(10):
            idx = np.flatnonzero(strata == k)
            correct[rng.choice(idx, per[k], replace=False)] = False
    level = 8.0 * acc[strata]  # confounder: accurate classes have higher values
    values = level + rng.standard_t(5, strata.size) + effect * correct
    return values, correct, strata


def test_stratified_permutation_test_is_calibrated_under_the_null():
    rng = np.random.default_rng(20240601)
    pvals = []
    for i in range(1000):
        v, c, s = _simulate(rng, effect=0.0)
        pvals.append(stats.stratified_permutation_test(v, c, s, n_permutations=499, seed=i).p_value)
    pvals = np.array(pvals)
    fpr = float(np.mean(pvals <= 0.05))
    print(f"FPR at alpha 0.05 over 1000 null data sets: {fpr:.3f}")
    assert 0.03 <= fpr <= 0.07
    # p-values are roughly uniform, not just right at 0.05
    assert 0.07 <= np.mean(pvals <= 0.10) <= 0.13


def test_simulation_has_teeth_without_stratification():
    # the same null data, with strata ignored, must be badly miscalibrated:
    # this is what the stratification in the test above protects against
    rng = np.random.default_rng(20240601)
    hits = 0
    for i in range(100):
        v, c, _ = _simulate(rng, effect=0.0)
        hits += stats.stratified_permutation_test(v, c, np.zeros(v.size), 199, seed=i).p_value <= 0.05
    assert hits / 100 > 0.5  # (0.9 at the time of writing)


def test_stratified_permutation_test_has_power_for_delta_03():
    rng = np.random.default_rng(7)
    pvals, stats_ = [], []
    for i in range(100):
        _, c, s = _simulate(rng, effect=0.0, n_incorrect=100)
        # planted effect on normal noise: correct images shifted so that
        # delta = 0.3 within every class, plus a class-dependent level
        v = rng.normal(0, 1, c.size) + SHIFT_DELTA_03 * c + 0.2 * s
        assert (~c).sum() == 100
        r = stats.stratified_permutation_test(v, c, s, n_permutations=499, seed=i)
        pvals.append(r.p_value)
        stats_.append(r.statistic)
    power = float(np.mean(np.array(pvals) <= 0.05))
    print(f"power at delta 0.3 with 100 incorrect images: {power:.2f}")
    assert power >= 0.9
    assert np.mean(stats_) == pytest.approx(0.3, abs=0.03)  # the statistic estimates delta


def test_logistic_lrt_is_calibrated_under_the_null():
    # 1,000 data sets (issue 18: 200 in [0.02, 0.09] let an FPR of 0.10 pass
    # 37 % of the time); now 0.10 passes [0.03, 0.07] with probability < 0.001
    rng = np.random.default_rng(99)
    p = []
    for _ in range(1000):
        v, c, s = _simulate(rng, effect=0.0)
        p.append(stats.logistic_test(v, c, s).p_lrt)
    fpr = float(np.mean(np.array(p) <= 0.05))
    print(f"logistic LRT FPR over 1000 null data sets: {fpr:.3f}")
    assert 0.03 <= fpr <= 0.07


# ---------------------------------------------------------------- logistic model


def _logit_data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n)
    metric = rng.normal(size=n) * 3 + 10
    conf = rng.uniform(0.3, 0.99, n)
    eta = 1.0 + 0.5 * (metric - 10) / 3 + 0.3 * cls + 1.5 * (conf - 0.6)
    correct = rng.random(n) < 1 / (1 + np.exp(-eta))
    return metric, correct, cls, conf


def test_logistic_matches_statsmodels_formula_fit():
    metric, correct, cls, conf = _logit_data()
    res = stats.logistic_test(metric, correct, cls)
    df = pd.DataFrame(
        {"correct": correct.astype(int), "z": (metric - metric.mean()) / metric.std(ddof=1), "cls": cls}
    )
    full = smf.logit("correct ~ z + C(cls)", df).fit(disp=0)
    red = smf.logit("correct ~ C(cls)", df).fit(disp=0)
    assert res.odds_ratio_per_sd == pytest.approx(np.exp(full.params["z"]), rel=1e-6)
    np.testing.assert_allclose(res.ci95, np.exp(full.conf_int().loc["z"]), rtol=1e-6)
    assert res.p_lrt == pytest.approx(scipy.stats.chi2.sf(2 * (full.llf - red.llf), 1), rel=1e-6)
    assert res.n == metric.size and res.note is None
    assert 1.3 < res.odds_ratio_per_sd < 2.3  # true OR per SD = e^0.5 = 1.65


def test_logistic_with_confidence_matches_statsmodels():
    metric, correct, cls, conf = _logit_data(1)
    res = stats.logistic_test(metric, correct, cls, confidence=conf)
    df = pd.DataFrame(
        {
            "correct": correct.astype(int),
            "z": (metric - metric.mean()) / metric.std(ddof=1),
            "cls": cls,
            "lc": np.log(conf / (1 - conf)),
        }
    )
    full = smf.logit("correct ~ z + C(cls) + lc", df).fit(disp=0)
    red = smf.logit("correct ~ C(cls) + lc", df).fit(disp=0)
    assert res.odds_ratio_per_sd == pytest.approx(np.exp(full.params["z"]), rel=1e-6)
    assert res.p_lrt == pytest.approx(scipy.stats.chi2.sf(2 * (full.llf - red.llf), 1), rel=1e-6)


def test_logistic_drops_single_outcome_strata_and_survives_separation():
    metric, correct, cls, _ = _logit_data(2)
    cls = cls.copy()
    cls[:40] = 9
    correct = correct.copy()
    correct[:40] = True  # class 9: all correct
    res = stats.logistic_test(metric, correct, cls)
    keep = cls != 9
    ref = stats.logistic_test(metric[keep], correct[keep], cls[keep])
    assert res.dropped_strata == ("9",) and "9" in res.note
    assert res.odds_ratio_per_sd == pytest.approx(ref.odds_ratio_per_sd, rel=1e-9)
    assert res.n == keep.sum()
    # perfect separation by the metric: NaN with a note, no exception
    sep = stats.logistic_test(np.r_[np.arange(10.0), np.arange(10.0) + 20], np.r_[[0] * 10, [1] * 10], [0] * 20)
    assert np.isnan(sep.odds_ratio_per_sd) and np.isnan(sep.p_lrt) and sep.note
    const = stats.logistic_test(np.ones(20), np.r_[[0] * 10, [1] * 10], [0] * 20)
    assert np.isnan(const.p_lrt) and "constant" in const.note


# ---------------------------------------------------------------- AUC


def test_auc_matches_roc_auc_score():
    rng = np.random.default_rng(4)
    n = 400
    strata = rng.integers(0, 5, n)
    correct = rng.random(n) < 0.8
    correct[strata == 4] = True  # AUC undefined in class 4
    values = rng.integers(0, 20, n) + 3.0 * correct  # ties included
    res = stats.auc_test(values, correct, strata, n_boot=1000, seed=0)
    assert res.auc == roc_auc_score(correct, values)
    assert res.auc == pytest.approx((1 + stats.cliffs_delta(values[correct], values[~correct])) / 2)
    per = [roc_auc_score(correct[strata == k], values[strata == k]) for k in range(4)]
    assert res.auc_within_class == pytest.approx(np.mean(per)) and res.n_classes_within == 4
    assert res.ci95[0] < res.auc < res.ci95[1]
    assert res.auc_within_class_ci95[0] < res.auc_within_class < res.auc_within_class_ci95[1]
    assert res.n == n
    flipped = stats.auc_test(values, correct, strata, n_boot=1000, seed=0, higher_is_correct=False)
    assert flipped.auc == pytest.approx(1 - res.auc)
    assert flipped.auc == roc_auc_score(correct, -values)
    assert stats.auc_test(values, correct, seed=0, n_boot=100).auc_within_class != res.auc_within_class


# ---------------------------------------------------------------- H2 helpers


def test_mcnemar_matches_statsmodels():
    rng = np.random.default_rng(6)
    a = rng.random(300) < 0.8
    b = np.where(rng.random(300) < 0.1, ~a, a)
    res = stats.mcnemar_exact(a, b)
    assert res.b == np.sum(a & ~b) and res.c == np.sum(~a & b)
    table = [[np.sum(a & b), res.b], [res.c, np.sum(~a & ~b)]]
    assert res.p_value == mcnemar(table, exact=True).pvalue
    small = stats.mcnemar_exact([1, 1, 1, 0], [0, 0, 1, 0])
    assert (small.b, small.c) == (2, 0) and small.p_value == pytest.approx(0.5)


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(9)
    a = rng.normal(0.9, 0.01, 8)
    b = a - rng.normal(0.005, 0.004, 8)
    res = stats.paired_test(a, b)
    tt = scipy.stats.ttest_rel(a, b)
    assert res.p_ttest == tt.pvalue and res.mean_diff == pytest.approx(np.mean(a - b))
    np.testing.assert_allclose(res.ci95, tuple(tt.confidence_interval()))
    assert res.p_wilcoxon == scipy.stats.wilcoxon(a, b).pvalue and res.n == 8
    few = stats.paired_test(a[:5], b[:5])
    assert few.p_wilcoxon is None and "n=5 < 6" in few.note and few.to_dict()["p_wilcoxon"] is None
    zero = stats.paired_test(a, a)
    assert zero.p_wilcoxon is None and "zero" in zero.note and np.isnan(zero.p_ttest)
    assert zero.to_dict()["ci95"] == [None, None]


def test_summarize_matches_t_interval():
    x = np.array([0.91, 0.93, 0.90, 0.94, 0.925])
    s = stats.summarize(x)
    ref = scipy.stats.ttest_1samp(x, 0).confidence_interval()
    assert s.mean == pytest.approx(x.mean()) and s.sd == pytest.approx(x.std(ddof=1)) and s.n == 5
    np.testing.assert_allclose(s.ci95, (ref.low, ref.high))
    one = stats.summarize([0.5])
    assert one.mean == 0.5 and np.isnan(one.sd) and one.to_dict()["ci95"] == [None, None]


# ---------------------------------------------------------------- control


def test_permuted_control_keeps_class_counts_and_kills_the_effect():
    rng = np.random.default_rng(12)
    classes = rng.integers(0, 6, 900)
    correct = rng.random(900) < 0.8
    values = rng.normal(size=900) + 1.2 * correct  # strong effect (delta ~ 0.6)
    real = stats.stratified_permutation_test(values, correct, classes, 999, seed=0)
    assert real.p_value == 1 / 1000
    ctrl = stats.permuted_control(classes, correct, seed=0)
    assert ctrl.dtype == correct.dtype and not np.array_equal(ctrl, correct)
    for k in range(6):
        assert ctrl[classes == k].sum() == correct[classes == k].sum()
    np.testing.assert_array_equal(ctrl, stats.permuted_control(classes, correct, seed=0))
    res = [
        stats.stratified_permutation_test(values, stats.permuted_control(classes, correct, seed=s), classes, 199, s)
        for s in range(20)
    ]
    assert np.mean([r.p_value <= 0.05 for r in res]) <= 0.2
    assert abs(np.mean([r.statistic for r in res])) < 0.05


# ---------------------------------------------------------------- H1 end to end


CLASS_NAMES = ["plane", "car", "bird", "cat", "deer", "dog"]


def _h1_data(seed=0, n=900):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 5, n)  # "dog" (5) has no images at all
    correct = rng.random(n) < 0.8
    correct[classes == 3] = True
    correct[np.flatnonzero(classes == 3)[:2]] = False  # cat: 2 incorrect
    conf = np.clip(rng.beta(6, 1.5, n), 0.2, 1.0)
    metrics = {
        "dist": rng.gamma(2, 0.01, n) * np.where(correct, 0.6, 1.0),
        "ssim": rng.uniform(0, 1, n) + 0.1 * correct,
        "iou": rng.uniform(0, 1, n),
    }
    # 7 NaNs, none in "cat", whose two incorrect images test the skip reason
    metrics["ssim"][np.flatnonzero(classes != 3)[[3, 10, 50, 51, 52, 200, 300]]] = np.nan
    return metrics, correct, classes, conf


def _run_h1(metrics, seed=0, **kw):
    _, correct, classes, conf = _h1_data()
    kw.setdefault("permutations", 300)
    kw.setdefault("n_boot", 300)
    return stats.h1_analysis(metrics, correct, classes, conf, class_names=CLASS_NAMES, seed=seed, **kw)


def test_h1_analysis_keys_skips_nan_and_json():
    metrics, correct, classes, _ = _h1_data()
    d = _run_h1(metrics).to_dict()
    json.dumps(d, allow_nan=False)  # JSON-ready: no NaN, no numpy types
    assert set(d) == {"dist", "ssim", "iou"}
    for name, res in d.items():
        assert set(res) == {"per_class", "skipped", "pooled"}
        for row in res["per_class"]:
            assert set(row) == SPEC_ROW_KEYS
            assert isinstance(row["class"], str) and len(row["ci95"]) == 2
        assert SPEC_POOLED_KEYS <= set(res["pooled"])
        # every class is either tested or skipped with its reason
        skipped = dict(res["skipped"])
        assert {r["class"] for r in res["per_class"]} | set(skipped) == set(CLASS_NAMES)
        assert skipped["cat"] == "n_incorrect=2 < min_group=5"
        assert skipped["dog"] == "n_correct=0; n_incorrect=0"  # no images at all
        assert res["pooled"]["p_lrt_given_confidence"] is not None
    ssim = d["ssim"]["pooled"]
    assert ssim["n_nan_dropped"] == 7 and ssim["n"] == correct.size - 7
    assert any("7 images with NaN" in note for note in ssim["notes"])
    plane = next(r for r in d["ssim"]["per_class"] if r["class"] == "plane")
    ok = ~np.isnan(metrics["ssim"]) & (classes == 0)
    assert plane["n_correct"] + plane["n_incorrect"] == ok.sum()
    assert d["dist"]["pooled"]["n_nan_dropped"] == 0
    # the planted effects are found, the null metric is not
    assert d["dist"]["pooled"]["p_permutation"] < 0.01 and d["dist"]["pooled"]["statistic"] < 0
    assert d["ssim"]["pooled"]["p_permutation"] < 0.01 and d["ssim"]["pooled"]["auc"] > 0.5


def test_h1_analysis_adjusts_jointly_over_classes_and_metrics():
    metrics, *_ = _h1_data()
    for method in ("holm", "fdr_bh"):
        res = _run_h1(metrics, correction=method)
        rows = [r for m in res.metrics.values() for r in m.per_class]
        assert res.family_size == len(rows) == 3 * 4
        expected = multipletests([r.p_value for r in rows], method=method)[1]
        np.testing.assert_allclose([r.p_adjusted for r in rows], expected)
    single = stats.h1_metric(
        metrics["iou"], *_h1_data()[1:], class_names=CLASS_NAMES, permutations=50, n_boot=50
    )
    assert all(r.p_adjusted is None for r in single.per_class)  # filled only by h1_analysis


def test_h1_analysis_is_deterministic_and_order_independent():
    metrics, *_ = _h1_data()
    a = _run_h1(metrics).to_dict()
    assert a == _run_h1(metrics).to_dict()
    reordered = {k: metrics[k] for k in ("iou", "ssim", "dist")}
    assert _run_h1(reordered).to_dict() == a
    only_iou = _run_h1({"iou": metrics["iou"]}).to_dict()
    def unadjusted(rows):
        return [{k: v for k, v in r.items() if k != "p_adjusted"} for r in rows]

    # same stream per metric name, whatever else is analysed (only the
    # adjusted p-values depend on the family)
    assert unadjusted(only_iou["iou"]["per_class"]) == unadjusted(a["iou"]["per_class"])
    assert only_iou["iou"]["pooled"] == a["iou"]["pooled"]
    other = _run_h1(metrics, seed=1).to_dict()
    assert other["iou"]["pooled"]["p_permutation"] != a["iou"]["pooled"]["p_permutation"] or (
        other["iou"]["per_class"][0]["ci95"] != a["iou"]["per_class"][0]["ci95"]
    )


def test_h1_metric_accepts_class_names_and_handles_missing_confidence():
    metrics, correct, classes, _ = _h1_data()
    names = np.array(CLASS_NAMES)[classes]
    kw = dict(class_names=CLASS_NAMES, permutations=50, n_boot=50)
    by_index = stats.h1_metric(metrics["dist"], correct, classes, None, **kw)
    by_name = stats.h1_metric(metrics["dist"], correct, names, None, **kw)
    assert by_index.to_dict() == by_name.to_dict()
    assert by_index.pooled.p_lrt_given_confidence is None
    assert any("no confidence" in n for n in by_index.pooled.notes)
    with pytest.raises(ValueError):
        stats.h1_metric(metrics["dist"], correct, classes + 10, None, class_names=CLASS_NAMES)
