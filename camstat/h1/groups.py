"""How an H1 analysis groups images -- by class, or by composition cluster -- and group-level consistency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from camstat import metrics as metrics_mod
from camstat.errors import CamstatError
from camstat.h1.options import Options, rng
from camstat.h1.streaming import MapStream, Streamed
from camstat.records import jsonable
from camstat.store import Store

THUMB = 8  # side of the grayscale thumbnails k-means clusters
KMEANS_N_INIT = 10


def thumbnails(store: Store) -> np.ndarray:
    """8x8 grayscale thumbnails (N, 64) of the store's input images, rebuilt from its data spec."""
    from PIL import Image

    dataset = store.dataset()
    feats = np.empty((store.n, THUMB * THUMB), dtype=np.float64)
    for i in range(store.n):
        gray = Image.fromarray(dataset.raw_image(i)).convert("L").resize((THUMB, THUMB), Image.BOX)
        feats[i] = np.asarray(gray, dtype=np.float64).ravel() / 255.0
    return feats


@dataclass
class Clusters:
    """k-means clusters numbered by size: labels, names, and the fitted model to assign other images."""

    labels: np.ndarray
    names: list[str]
    model: Any
    order: np.ndarray  # kmeans label -> our label

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return self.order[self.model.predict(feats)]


def kmeans(feats: np.ndarray, k: int, seed: int) -> Clusters:
    """Seeded k-means, clusters numbered by size (largest first; ties by the centroid)."""
    from sklearn.cluster import KMeans

    if k < 2:
        raise CamstatError(f"--clusters must be at least 2, got {k}")
    if k > len(feats):
        raise CamstatError(f"--clusters {k} exceeds the number of images ({len(feats)})")
    km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=int(seed)).fit(feats)
    sizes = np.bincount(km.labels_, minlength=k)
    # numbered by size so that names don't depend on k-means' labels
    rank = sorted(range(k), key=lambda j: (-sizes[j], tuple(np.round(km.cluster_centers_[j], 12))))
    order = np.empty(k, dtype=np.int64)
    order[rank] = np.arange(k)
    return Clusters(order[km.labels_], [f"cluster {j}" for j in range(k)], km, order)


@dataclass
class Grouping:
    """Each image's group (index into ``names``), the reference store's, and the clusters' description."""

    groups: np.ndarray
    names: list[str]
    ref_groups: np.ndarray | None = None
    info: dict | None = None


def make_groups(store: Store, ref: Store | None, opts: Options) -> Grouping:
    """Classes (prediction or label), or composition clusters (k-means on thumbnails)."""
    classes = store.samples[opts.class_of].astype(np.int64)
    if opts.by != "cluster":
        ref_groups = ref.samples[opts.class_of].astype(np.int64) if ref is not None else None
        return Grouping(classes, list(store.classes), ref_groups)
    cl = kmeans(thumbnails(store), opts.clusters, opts.seed)
    class_names = store.classes
    comp = np.zeros((len(cl.names), len(class_names)), dtype=np.int64)
    np.add.at(comp, (cl.labels, classes), 1)
    info = {
        "k": opts.clusters, "features": f"{THUMB}x{THUMB} grayscale thumbnails (box filter), scaled to [0, 1]",
        "algorithm": f"sklearn KMeans(n_init={KMEANS_N_INIT}, random_state=seed), clusters numbered by size",
        "inertia": float(cl.model.inertia_),
        "sizes": np.bincount(cl.labels, minlength=len(cl.names)).tolist(),
        "class_counts": {gn: {cn: int(comp[j, c]) for c, cn in enumerate(class_names) if comp[j, c]}
                         for j, gn in enumerate(cl.names)},
    }
    ref_groups = cl.predict(thumbnails(ref)) if ref is not None else None
    return Grouping(cl.labels, cl.names, ref_groups, info)


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
