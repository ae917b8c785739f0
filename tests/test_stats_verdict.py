"""The H1 verdict rule (SPEC 4) and the degenerate cases of issue 10."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from camstat import stats


def test_verdict_needs_adjusted_p_and_auc_ci_above_half():
    p = [0.004, 0.03, 0.001, 0.2]
    auc = [0.62, 0.60, 0.58, 0.55]
    ci = [(0.55, 0.69), (0.52, 0.68), (0.49, 0.66), (0.51, 0.60)]
    v = stats.h1_verdicts("dist", p, auc, ci)
    want = multipletests(p, method="holm")[1]
    np.testing.assert_allclose([x.p_adjusted for x in v], want)
    # 0.004 -> 0.012 and CI above 0.5: supported; 0.03 -> 0.06: not significant after Holm;
    # 0.001 significant but CI reaches below 0.5; 0.2 neither
    assert [x.supported for x in v] == [True, False, False, False]
    assert [(x.significant, x.auc_ci_above_half) for x in v] == [(True, True), (False, True), (True, False),
                                                                 (False, True)]
    assert v[0].to_dict() == {"primary": "dist", "supported": True, "p_adjusted": pytest.approx(want[0]),
                              "auc_within_class": 0.62, "auc_within_class_ci95": [0.55, 0.69],
                              "significant": True, "auc_ci_above_half": True}
    nan = stats.h1_verdicts("dist", [np.nan], [np.nan], [(np.nan, np.nan)])[0]
    assert not nan.supported and nan.to_dict()["p_adjusted"] is None
    with pytest.raises(ValueError):
        stats.h1_verdicts("dist", [0.1, 0.2], [0.6], [(0.5, 0.7)])


def test_secondary_metrics_adjusted_across_themselves():
    p = {"ssim": 0.01, "iou": 0.04, "corr": np.nan, "com": 0.03}
    adj = stats.secondary_adjusted(p)
    want = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert [adj[k] for k in ("ssim", "iou", "com")] == pytest.approx(list(want))
    assert np.isnan(adj["corr"]) and list(adj) == list(p)


def test_paired_test_with_identical_differences_has_no_p_or_ci():
    a = np.array([0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97])
    res = stats.paired_test(a, a - 0.01)
    assert res.mean_diff == pytest.approx(0.01)
    assert np.isnan(res.p_ttest) and np.isnan(res.ci95).all() and res.p_wilcoxon is None
    assert "equal" in res.note


def test_summary_with_sd_zero_has_nan_ci():
    s = stats.summarize([0.5, 0.5, 0.5])
    assert s.mean == 0.5 and s.sd == 0.0 and s.to_dict()["ci95"] == [None, None]


def test_class_without_correct_images_is_skipped_as_n_correct_0():
    rng = np.random.default_rng(0)
    cls = np.repeat([0, 1, 2], 30)
    correct = rng.random(90) < 0.7
    correct[cls == 1] = False
    values = rng.normal(size=90)
    values[cls == 1] = np.nan  # no correct image: no reference, every value undefined
    res = stats.h1_metric(values, correct, cls, None, class_names=["a", "b", "c"], permutations=99, n_boot=99)
    assert dict(res.skipped) == {"b": "n_correct=0"}
    assert res.pooled.n_nan_dropped == 30
