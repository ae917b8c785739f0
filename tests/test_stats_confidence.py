"""Does consistency add to confidence? The flexible confidence adjustment
(issue 10) against statsmodels with the same design, and its calibration
under a miscalibrated-confidence null (P(correct) = conf^4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.formula.api as smf
from scipy.special import log_softmax

from camstat import stats


def _conf4(rng, n=1000, k=10, noise=0.1):
    """Logits with a wide range of confidence; P(correct) = conf^4; the metric a noisy copy of confidence."""
    logits = rng.normal(0, 1.5, (n, k))
    logits[np.arange(n), rng.integers(0, k, n)] += rng.uniform(0, 9, n)
    conf = np.exp(log_softmax(logits, axis=1)).max(axis=1)
    correct = rng.random(n) < conf**4
    return conf + rng.normal(0, noise, n), correct, logits.argmax(axis=1), logits, conf


def _statsmodels_fit(metric, correct, cls, logits, with_metric=True):
    log_odds, margin = stats.confidence_covariates(logits)
    df = pd.DataFrame({"correct": correct.astype(int), "m": metric, "cls": cls, "lo": log_odds, "mg": margin})
    within = df.m - df.groupby("cls").m.transform("mean")
    df["z"] = (df.m - df.m.mean()) / np.sqrt((within**2).sum() / (len(df) - df.cls.nunique()))
    rhs = "C(cls) + cr(lo, df=4, constraints='center') + mg"
    return smf.logit(f"correct ~ {'z + ' if with_metric else ''}{rhs}", df).fit(disp=0)


def test_confidence_covariates_from_log_softmax_without_clipping():
    logits = np.array([[40.0, 0.0, -1.0], [2.0, 1.0, 0.5], [0.0, 3.0, 3.0]])
    log_odds, margin = stats.confidence_covariates(logits)
    lp = log_softmax(logits, axis=1).max(axis=1)
    np.testing.assert_allclose(log_odds[1:], lp[1:] - np.log1p(-np.exp(lp[1:])), rtol=1e-12)
    # p = 1 - 6e-18: 1 - p underflows in float64, the log-odds does not (clipping at 1e-6 would give 13.8)
    assert log_odds[0] == pytest.approx(40.0 - np.log1p(np.exp(-1.0)), rel=1e-12)
    np.testing.assert_array_equal(margin, [40.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        stats.confidence_covariates(np.ones((3, 1)))


def test_confidence_adjusted_equals_statsmodels_with_the_same_design():
    metric, correct, cls, logits, _ = _conf4(np.random.default_rng(0))
    res = stats.confidence_adjusted_test(metric, correct, cls, logits)
    full = _statsmodels_fit(metric, correct, cls, logits)
    red = _statsmodels_fit(metric, correct, cls, logits, with_metric=False)
    assert res.odds_ratio_per_sd_given_confidence == pytest.approx(np.exp(full.params["z"]), rel=1e-6)
    np.testing.assert_allclose(res.odds_ratio_ci95_given_confidence, np.exp(full.conf_int().loc["z"]), rtol=1e-6)
    assert res.p_lrt_given_confidence == pytest.approx(scipy.stats.chi2.sf(2 * (full.llf - red.llf), 1), rel=1e-6)
    assert res.sd_kind == "pooled_within_class" and res.n == metric.size
    # the adjustment matters here: without confidence the copy of confidence looks highly predictive
    plain = stats.logistic_test(metric, correct, cls)
    assert plain.p_lrt < 1e-6 < res.p_lrt_given_confidence
    flipped = stats.confidence_adjusted_test(-metric, correct, cls, logits, higher_is_more_consistent=False)
    assert flipped.odds_ratio_per_sd_given_confidence == pytest.approx(res.odds_ratio_per_sd_given_confidence)


def test_odds_ratio_is_per_pooled_within_class_sd():
    rng = np.random.default_rng(1)
    metric, correct, cls, logits, _ = _conf4(rng)
    shifted = metric + 5.0 * cls  # between-class spread: the marginal SD grows, the within-class SD does not
    a = stats.confidence_adjusted_test(metric, correct, cls, logits)
    b = stats.confidence_adjusted_test(shifted, correct, cls, logits)
    assert b.sd == pytest.approx(a.sd, rel=1e-12) and b.sd < shifted.std()
    assert b.odds_ratio_per_sd_given_confidence == pytest.approx(a.odds_ratio_per_sd_given_confidence, rel=1e-6)


def test_h1_metric_given_confidence_uses_confidence():
    # issue 18: a fit "given confidence" without confidence went unnoticed
    metric, correct, cls, _, conf = _conf4(np.random.default_rng(2), n=600)
    names = [str(k) for k in range(10)]
    pooled = stats.h1_metric(metric, correct, cls, conf, class_names=names, permutations=0, n_boot=0).pooled
    df = pd.DataFrame({"correct": correct.astype(int), "z": (metric - metric.mean()) / metric.std(ddof=1),
                       "cls": cls, "lc": np.log(conf / (1 - conf))})
    full = smf.logit("correct ~ z + C(cls) + lc", df).fit(disp=0)
    red = smf.logit("correct ~ C(cls) + lc", df).fit(disp=0)
    assert pooled.odds_ratio_per_sd_given_confidence == pytest.approx(np.exp(full.params["z"]), rel=1e-6)
    assert pooled.p_lrt_given_confidence == pytest.approx(scipy.stats.chi2.sf(2 * (full.llf - red.llf), 1), rel=1e-6)


def test_confidence_adjusted_degenerate_inputs():
    metric, correct, cls, logits, _ = _conf4(np.random.default_rng(3), n=300)
    const = stats.confidence_adjusted_test(np.ones(300), correct, cls, logits)
    assert np.isnan(const.p_lrt_given_confidence) and "constant" in const.note
    correct = correct.copy()
    correct[cls == 0] = True
    dropped = stats.confidence_adjusted_test(metric, correct, cls, logits)
    assert dropped.dropped_strata == ("0",) and dropped.n == int((cls != 0).sum())
    with pytest.raises(ValueError, match="logits"):
        stats.confidence_adjusted_test(metric, correct, cls, logits[:10])
    two = stats.confidence_adjusted_test(metric, correct, cls, logits[:, :2])  # margin == log-odds: left out
    assert np.isfinite(two.p_lrt_given_confidence)


@pytest.mark.slow
def test_lrt_given_flexible_confidence_is_calibrated_under_the_conf4_null():
    # 1,000 data sets: a true FPR of 0.10 passes [0.03, 0.07] with probability < 0.001
    rng = np.random.default_rng(20261130)
    flexible, linear = [], []
    for i in range(1000):
        metric, correct, cls, logits, conf = _conf4(rng)
        flexible.append(stats.confidence_adjusted_test(metric, correct, cls, logits).p_lrt_given_confidence)
        if i < 200:
            linear.append(stats.logistic_test(metric, correct, cls, conf).p_lrt)
    fpr = float(np.mean(np.array(flexible) <= 0.05))
    fpr_linear = float(np.mean(np.array(linear) <= 0.05))
    print(f"LRT given confidence, FPR at 0.05: flexible {fpr:.3f} (1000 nulls), linear logit {fpr_linear:.3f} (200)")
    assert 0.03 <= fpr <= 0.07
    assert fpr_linear > 0.15  # the straight line in logit(confidence) is miscalibrated here
