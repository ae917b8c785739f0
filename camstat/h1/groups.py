"""How an H1 analysis groups images -- by class, or by composition cluster -- and group-level consistency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from camstat import composition
from camstat import metrics as metrics_mod
from camstat.h1.options import Options, rng
from camstat.h1.streaming import MapStream, Streamed
from camstat.records import jsonable
from camstat.store import Store


@dataclass
class Grouping:
    """Each image's group (index into ``names``), the reference store's, and the clusters' description.

    ``strata``: each image's stratum (index into ``strata_names``) of the
    pooled tests (the within-stratum AUC, the stratified permutation test,
    the model given confidence) and of the dispersion test. Composition
    clusters across classes mix classes whose accuracy and map consistency
    differ, so there a stratum is a cluster x class cell (``strata_kind``
    ``"cluster x class"``, named ``"cluster 0, cat"``); otherwise it is the group.
    """

    groups: np.ndarray
    names: list[str]
    ref_groups: np.ndarray | None = None
    info: dict | None = None
    strata: np.ndarray | None = None
    strata_kind: str = "class"
    strata_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.strata is None:
            self.strata, self.strata_names = self.groups, self.names


def make_groups(store: Store, ref: Store | None, opts: Options) -> Grouping:
    """Classes (prediction or label), or composition clusters (:func:`camstat.composition.cluster`).

    A reference store's images join the cluster of the nearest centroid (of
    their class's clustering with ``within_class``).
    """
    classes = store.samples[opts.class_of].astype(np.int64)
    ref_classes = ref.samples[opts.class_of].astype(np.int64) if ref is not None else None
    if opts.by != "cluster":
        return Grouping(classes, list(store.classes), ref_classes)
    found = composition.cluster(composition.store_features(store, opts.features), opts.clusters,
                                features=opts.features, classes=classes, class_names=store.classes,
                                within_class=opts.within_class, seed=opts.seed)
    ref_groups = None
    if ref is not None:
        ref_groups = found.predict(composition.store_features(ref, opts.features), ref_classes)
    if opts.within_class:  # each cluster lies within one class already
        return Grouping(found.labels, found.names, ref_groups, found.to_dict(), strata_kind="cluster")
    k = len(store.classes)
    cells, strata = np.unique(found.labels * k + classes, return_inverse=True)
    return Grouping(found.labels, found.names, ref_groups, found.to_dict(), strata=strata.ravel(),
                    strata_kind="cluster x class",
                    strata_names=[f"{found.names[c // k]}, {store.classes[c % k]}" for c in cells])


def group_level(store: Store, spec: MapStream, streamed: Streamed, groups: np.ndarray, correct: np.ndarray | None,
                names: list[str], *, pair_sample: int, seed: int, q: float, label: str,
                subsets: Sequence[str] = ("all", "correct", "incorrect")) -> list[dict]:
    """Group-level consistency (:func:`metrics.group_consistency`) per group and subset.

    The pairwise means (SSIM, IoU) use a seeded sample of at most
    ``pair_sample`` maps of the group (read from the store); the centre-of-mass
    dispersion and the mean distance to the group mean are exact, over all
    of the group's maps (from the streamed pass, same definitions).
    """
    rows = []
    for k, name in enumerate(names):
        members = np.flatnonzero(groups == k)
        row: dict[str, Any] = {label: name, "n": int(members.size)}
        if correct is not None:
            row["n_correct"] = int(correct[members].sum())
            row["n_incorrect"] = int((~correct[members]).sum())
        for subset in subsets:
            idx = members if subset == "all" else members[correct[members] == (subset == "correct")]
            if idx.size < 2:
                row[subset] = {"n": int(idx.size), "n_sampled": int(idx.size)}  # too few maps for pairs
                continue
            take = np.sort(rng(seed, "group-level", label, name, subset).choice(
                idx, size=min(pair_sample, idx.size), replace=False))
            maps = store.maps(spec.method, spec.layer, spec.target, size=spec.size, indices=take)
            gc = dict(metrics_mod.group_consistency(maps, max_pairs_sample=None, q=q))
            c = streamed.com[idx]
            d = streamed.dist_all[idx] if subset == "all" else streamed.dist_own[idx]
            gc.update({
                "n": int(idx.size), "n_sampled": int(take.size), "sampled": bool(take.size < idx.size),
                "max_pairs_sample": int(pair_sample), "seed": int(seed),
                "com_dispersion": float(np.sqrt(((c - c.mean(axis=0)) ** 2).sum(axis=1)).mean()),
                "mean_dist_to_mean": float(d.mean()),
            })
            row[subset] = jsonable(gc)
        rows.append(row)
    return rows
