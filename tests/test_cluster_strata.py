"""H1 within composition clusters that mix classes: the pooled tests are stratified by cluster x class cells.

Clusters across classes hold images of several classes, and classes differ both in accuracy and in how far their
maps sit from the cluster's mean map. Stratified by cluster alone, the pooled tests then find "correct maps are
more consistent" in data where, within every class, consistency says nothing about correctness. Stratified by
cell (one cluster's images of one class) they keep their level.
"""

from __future__ import annotations

import numpy as np
import pytest

from camstat import stats
from camstat.h1.groups import Grouping
from camstat.h1.tables import h1_tables

NAMES = ["cluster 0", "cluster 1", "cluster 2"]


def _mixed_clusters(rng: np.random.Generator, n: int = 600, effect: float = 0.0):
    """Two classes spread evenly over three clusters. Class 1 is often wrong (accuracy 0.5 vs 0.9) and its maps
    lie further from the cluster mean (dist + 1 SD); within a class, dist shifts by ``effect`` SD for
    misclassified images (0: the null, where dist says nothing about correctness given the class)."""
    cls = rng.integers(0, 2, n)
    cluster = rng.integers(0, 3, n)
    correct = rng.random(n) < np.where(cls == 0, 0.9, 0.5)
    dist = rng.normal(0, 1, n) + 1.0 * cls + effect * ~correct
    return dist, correct, cluster, cls


def _pooled(dist, correct, strata, seed: int) -> dict:
    groups = strata % 3 if strata.max() >= 3 else strata  # the clusters (strata are cluster * 2 + class or clusters)
    t = h1_tables({"dist": dist}, correct, groups, np.full(dist.size, np.nan), None, NAMES, primary="dist",
                  correction="holm", min_group=5, permutations=199, n_boot=50, seed=seed, strata=strata)
    return t["dist"]["pooled"]


def test_grouping_strata_are_cells_only_for_clusters_across_classes():
    clusters, classes = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1])
    across = Grouping(clusters, NAMES, strata=clusters * 2 + classes, strata_kind="cluster x class")
    assert len(np.unique(across.strata)) == 5
    within = Grouping(clusters, NAMES, strata_kind="cluster")
    assert within.strata is within.groups


def test_pooled_tests_of_mixed_clusters_keep_their_level_when_stratified_by_cell():
    # 1,000 null data sets: a true rate of 0.10 (2 x alpha) lands in [0.03, 0.07] with probability < 0.001
    rng = np.random.default_rng(20261130)
    reps, rejected, auc_cell, auc_cluster, by_cluster = 1000, 0, [], [], 0
    for i in range(reps):
        dist, correct, cluster, cls = _mixed_clusters(rng)
        cells = cluster * 2 + cls
        # the pooled permutation test of h1_metric (test_consistency.py::test_by_cluster checks that analyze
        # hands it the cells)
        rejected += stats.stratified_permutation_test(dist, correct, cells, 199, seed=i).p_value <= 0.05
        auc_cell.append(stats.within_class_auc(dist, correct, cells, higher_is_more_consistent=False,
                                               n_boot=0).auc_within_class)
        if i < 100:  # the confounding the cells remove: stratified by cluster alone
            auc_cluster.append(stats.within_class_auc(dist, correct, cluster, higher_is_more_consistent=False,
                                                      n_boot=0).auc_within_class)
            by_cluster += stats.stratified_permutation_test(dist, correct, cluster, 199, seed=i).p_value <= 0.05
    print(f"mixed clusters, class-confounded null: the pooled permutation test rejects in {rejected / reps:.3f} "
          f"(strata: cells), mean within-cell AUC {np.mean(auc_cell):.3f}; by cluster alone {by_cluster / 100:.2f}, "
          f"mean within-cluster AUC {np.mean(auc_cluster):.3f}")
    assert 0.03 <= rejected / reps <= 0.07
    assert abs(np.mean(auc_cell) - 0.5) < 0.005
    assert by_cluster / 100 > 0.9 and np.mean(auc_cluster) > 0.6


def test_pooled_tests_by_cell_keep_their_power():
    # through h1_tables, as analyze calls it: the pooled p and the within-cell AUC see the planted shift
    rng = np.random.default_rng(7)
    hits, aucs = 0, []
    for i in range(20):
        dist, correct, cluster, cls = _mixed_clusters(rng, effect=0.5)
        p = _pooled(dist, correct, cluster * 2 + cls, seed=i)
        hits += p["p_permutation"] <= 0.05 and p["auc_within_class_ci95"][0] > 0.5
        aucs.append(p["auc_within_class"])
    print(f"power at a within-class shift of 0.5 SD: {hits / 20:.2f}; mean within-cell AUC {np.mean(aucs):.3f}")
    assert hits / 20 >= 0.9
    # the population AUC of a 0.5 SD normal shift is Phi(0.5 / sqrt(2)) = 0.638
    assert np.mean(aucs) == pytest.approx(0.638, abs=0.02)
