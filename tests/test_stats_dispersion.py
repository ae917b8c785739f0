"""Dispersion test (issue 10): against a naive leave-one-out loop and
camstat.metrics, by exhaustive permutation, and by simulation (calibration,
power, and the case the reference-based test gets wrong)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from camstat import dispersion, metrics, stats


def _maps(rng, k=4, n=40, size=8, noise_incorrect=1.0, elsewhere=0.0):
    """Class template + noise; class accuracy 0.5-0.9 and class-dependent noise (a confounder)."""
    cls = np.repeat(np.arange(k), n)
    acc = np.linspace(0.5, 0.9, k)
    correct = rng.random(cls.size) < acc[cls]
    sd = 0.2 + 0.2 * acc[cls]  # accurate classes are noisier: only a within-class test is fair
    x = rng.random((k, size, size))[cls] + rng.normal(size=(cls.size, size, size)) * sd[:, None, None] * np.where(
        correct, 1.0, noise_incorrect)[:, None, None]
    # incorrect maps centred elsewhere but exactly as spread out
    x = x + elsewhere * (~correct)[:, None, None] * rng.random((k, size, size))[cls]
    return x, correct, cls


def _naive_dispersion(x):
    return np.mean([metrics.dist(x[i:i + 1], (x.sum(0) - x[i]) / (len(x) - 1))[0] for i in range(len(x))])


def test_dispersions_equal_a_naive_leave_one_out_loop_and_pairwise_ssim():
    x, c, cls = _maps(np.random.default_rng(0), size=10, n=80)
    res = dispersion.dispersion_test(x, c, cls, n_permutations=10, class_names=list("abcd"))
    assert [r.class_ for r in res.per_class] == list("abcd")
    for k, row in enumerate(res.per_class):
        m = cls == k
        assert row.dispersion_correct == pytest.approx(_naive_dispersion(x[m & c]), rel=1e-10)
        assert row.dispersion_incorrect == pytest.approx(_naive_dispersion(x[m & ~c]), rel=1e-10)
        assert row.statistic == pytest.approx(np.log(row.dispersion_incorrect / row.dispersion_correct), rel=1e-10)
        iu = np.triu_indices(int((m & c).sum()), 1)
        assert row.ssim_correct == pytest.approx(metrics.pairwise_ssim(x[m & c])[iu].mean(), abs=1e-12)
    d = res.to_dict()
    assert {"class", "dispersion_correct", "dispersion_incorrect", "p_value"} <= set(d["per_class"][0])
    assert set(d["pooled"]) >= {"statistic", "p_permutation"}


def test_permutation_p_equals_exhaustive_enumeration():
    rng = np.random.default_rng(1)
    x = rng.random((9, 7, 7))
    c = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    cls = np.zeros(9, int)
    res = dispersion.dispersion_test(x, c, cls, min_group=2, n_permutations=100_000, seed=3)
    obs = res.pooled.statistic
    null = []
    for idx in itertools.combinations(range(9), 5):
        u = np.zeros(9, bool)
        u[list(idx)] = True
        null.append(np.log(_naive_dispersion(x[~u]) / _naive_dispersion(x[u])))
    exact = np.mean(np.abs(null) >= abs(obs) - 1e-12)
    assert res.pooled.p_permutation == pytest.approx(exact, abs=0.005)  # 100,000 draws: MC sd 0.0016


def test_skips_small_groups_and_is_seeded():
    x, c, cls = _maps(np.random.default_rng(2))
    c = c.copy()
    c[(cls == 0)] = True
    res = dispersion.dispersion_test(x, c, cls, n_permutations=200, seed=1)
    assert dict(res.skipped)["0"] == "n_incorrect=0 < min_group=5"
    assert res == dispersion.dispersion_test(x, c, cls, n_permutations=200, seed=1)
    other = dispersion.dispersion_test(x, c, cls, n_permutations=200, seed=2)
    assert res.pooled.p_permutation != other.pooled.p_permutation
    with pytest.raises(ValueError):
        dispersion.dispersion_test(x, c, cls, min_group=1)


def test_finds_noisier_incorrect_maps():
    x, c, cls = _maps(np.random.default_rng(3), noise_incorrect=1.3)
    res = dispersion.dispersion_test(x, c, cls, n_permutations=999)
    assert res.pooled.statistic > 0 and res.pooled.p_permutation < 0.01


def test_maps_centred_elsewhere_are_not_less_consistent():
    # issue 10: incorrect maps as self-consistent as correct ones but centred
    # elsewhere. The reference test (dist to the correct maps' mean) calls it
    # a huge effect; the dispersion test does not.
    x, c, cls = _maps(np.random.default_rng(4), n=60, elsewhere=1.0)
    sums, counts = metrics.class_sums(x, cls, c, 4)
    d = metrics.dist(x, metrics.loo_references(x, cls, c, sums, counts))
    ref_test = stats.stratified_permutation_test(d, c, cls, 999, seed=0)
    assert ref_test.statistic < -0.8 and ref_test.p_value < 0.01
    res = dispersion.dispersion_test(x, c, cls, n_permutations=999)
    assert res.pooled.p_permutation > 0.05


@pytest.mark.slow
def test_dispersion_test_is_calibrated_under_the_null():
    # 1,000 null data sets: a true FPR of 0.10 passes [0.03, 0.07] with probability < 0.001
    rng = np.random.default_rng(20261130)
    p = np.array([dispersion.dispersion_test(*_maps(rng), n_permutations=199, max_pairs_sample=2, seed=i)
                  .pooled.p_permutation for i in range(1000)])
    fpr = float(np.mean(p <= 0.05))
    print(f"dispersion test FPR at 0.05 over 1000 null data sets: {fpr:.3f}")
    assert 0.03 <= fpr <= 0.07
