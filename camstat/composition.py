"""Images of similar composition: features of an image's layout, and k-means clusters of them (SPEC 4).

Features (``--features``), one row per image:

- ``thumbnail``: the image in grayscale, box-downsampled to 8x8, in [0, 1]
  (64 values: where it is bright or dark);
- ``hog``: histograms of oriented gradients (Dalal & Triggs 2005;
  :func:`skimage.feature.hog`, 9 orientations, 8x8-pixel cells, 2x2-cell
  blocks, L2-Hys) of the grayscale image box-downsampled to 32x32
  (324 values: where the edges are and which way they run);
- ``embedding``: the model's own classifier-head input, stored at
  extraction (:mod:`camstat.embedding`);
- ``mask``: where the object is, from ground-truth masks (or boxes drawn as
  masks): centroid ``(x, y)`` as fractions of the width and height, scale
  ``sqrt(area / (H W))`` and log aspect ``log(w_box / h_box)`` of its
  bounding box.

Each feature kind is standardised as a whole: centred and divided by one
common scale, the root mean column variance, so features of any units give
comparable distances (and silhouettes) while each kind keeps its own
geometry. Not column by column: unit variance per column would blow a
near-constant column (an aspect that never varies, a background pixel) up
into noise as loud as the object's position (measured on
``builtin:shapes?positions=6``: the adjusted Rand index of ``mask``
clusters falls from 0.99 to 0.33). Then seeded k-means (sklearn ``KMeans``,
``n_init`` fixed) clusters them. With ``k="auto"`` K is the
one of ``K_RANGE`` with the highest mean silhouette (Rousseeuw 1987)
``s(i) = (b(i) - a(i)) / max(a(i), b(i))``, ``a`` the mean distance to the
own cluster, ``b`` to the nearest other, computed on a seeded sample of at
most ``SILHOUETTE_SAMPLE`` images. ``within_class`` clusters each class on
its own (its images' composition, class held fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from camstat.errors import CamstatError

FEATURES = ("thumbnail", "hog", "embedding", "mask")
THUMB = 8  # side of the grayscale thumbnails
HOG_SIDE = 32  # side of the grayscale image HOG describes
HOG_PARAMS = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
KMEANS_N_INIT = 10
K_RANGE = (2, 10)  # K tried by --clusters auto (both ends included)
SILHOUETTE_SAMPLE = 2000


# --------------------------------------------------------------------------
# features


def _gray(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 (H, W[, 3]) -> grayscale (side, side) in [0, 1], box-downsampled."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(pil.convert("L").resize((side, side), Image.BOX), dtype=np.float64) / 255.0


def thumbnail_features(images: Iterable[np.ndarray]) -> np.ndarray:
    """(N, 64): each image in grayscale, box-downsampled to 8x8, in [0, 1]."""
    return np.stack([_gray(im, THUMB).ravel() for im in images])


def hog_features(images: Iterable[np.ndarray]) -> np.ndarray:
    """(N, 324): :func:`skimage.feature.hog` of each image, grayscale and box-downsampled to 32x32."""
    from skimage.feature import hog

    return np.stack([hog(_gray(im, HOG_SIDE), **HOG_PARAMS) for im in images])


def mask_features(masks: np.ndarray) -> np.ndarray:
    """(N, 4): centroid x, y (fractions of W, H), ``sqrt(area / (H W))`` and ``log(w_box / h_box)``.

    ``masks`` is bool (N, H, W); an empty mask has no position, and is an error.
    """
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    area = masks.sum(axis=(1, 2))
    if (area == 0).any():
        raise CamstatError(f"{int((area == 0).sum())} image(s) have an empty object mask; --features mask needs"
                           " an object in every image (choose other --features)")
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W): which rows/columns the object touches
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    cy = (masks.sum(axis=2) * ys).sum(axis=1) / area / h
    cx = (masks.sum(axis=1) * xs).sum(axis=1) / area / w
    box_h = h - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
    box_w = w - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1)
    return np.column_stack([cx, cy, np.sqrt(area / (h * w)), np.log(box_w / box_h)])


def require(store: Any, kind: str) -> None:
    """A clear error unless ``kind`` is known and the store holds what it needs (embeddings, masks)."""
    if kind not in FEATURES:
        raise CamstatError(f"invalid --features {kind!r}; choose {', '.join(FEATURES)}")
    if kind == "embedding" and not store.has_embedding:
        store.embedding()  # its error says why there are none and to re-extract
    if kind == "mask" and not store.has_masks:
        raise CamstatError(f"store {store.path} holds no ground-truth masks; --features mask needs data with"
                           " masks or boxes (choose other --features)")


def store_features(store: Any, kind: str) -> np.ndarray:
    """Features ``kind`` (one of :data:`FEATURES`) of a store's images, float64 (N, D)."""
    require(store, kind)
    if kind == "embedding":
        return store.embedding().astype(np.float64)
    if kind == "mask":
        return mask_features(store.masks())
    dataset = store.dataset()
    images = (dataset.raw_image(i) for i in range(len(dataset)))
    return thumbnail_features(images) if kind == "thumbnail" else hog_features(images)


# --------------------------------------------------------------------------
# clusters


@dataclass(frozen=True)
class Scaler:
    """Centre, then divide by the root mean column variance (one scale for the whole feature kind)."""

    mean: np.ndarray
    scale: float

    @classmethod
    def fit(cls, feats: np.ndarray) -> "Scaler":
        scale = float(np.sqrt(feats.var(axis=0).mean()))
        return cls(feats.mean(axis=0), scale if scale > 0 else 1.0)

    def transform(self, feats: np.ndarray) -> np.ndarray:
        return (feats - self.mean) / self.scale


@dataclass(frozen=True)
class _Fit:
    """One k-means fit on standardised features, clusters numbered by size (largest first)."""

    scaler: Scaler
    kmeans: Any
    order: np.ndarray  # kmeans label -> our number

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return self.order[self.kmeans.predict(self.scaler.transform(feats))]


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, Any, np.ndarray]:
    """Seeded k-means on ``x``: (labels numbered by size, model, kmeans label -> number)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=int(seed)).fit(x)
    sizes = np.bincount(km.labels_, minlength=k)
    # numbered by size (ties by the centroid), so names don't depend on k-means' own labels
    rank = sorted(range(k), key=lambda j: (-sizes[j], tuple(np.round(km.cluster_centers_[j], 12))))
    order = np.empty(k, dtype=np.int64)
    order[rank] = np.arange(k)
    return order[km.labels_], km, order


def _silhouette_sample(n: int, seed: int) -> np.ndarray:
    """Which images the silhouettes are computed on: all, or a seeded sample of ``SILHOUETTE_SAMPLE``."""
    if n <= SILHOUETTE_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, SILHOUETTE_SAMPLE, replace=False))


def choose_k(x: np.ndarray, seed: int, k_range: tuple[int, int] = K_RANGE) -> tuple[int, dict[int, float]]:
    """K of ``k_range`` (clipped to at most N - 1) with the highest mean silhouette, and every K's score."""
    from sklearn.metrics import silhouette_score

    lo, hi = k_range[0], min(k_range[1], len(x) - 1)
    if hi < lo:
        raise CamstatError(f"--clusters auto needs at least {lo + 1} images per clustering, got {len(x)}")
    take = _silhouette_sample(len(x), seed)
    scores = {}
    for k in range(lo, hi + 1):
        labels = _kmeans(x, k, seed)[0]
        scores[k] = float(silhouette_score(x[take], labels[take])) if len(set(labels[take])) > 1 else -1.0
    best = max(scores, key=lambda k: (scores[k], -k))  # ties: the smaller K
    return best, scores


def _per_cluster_silhouette(x: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Mean silhouette of each cluster's images (NaN for a cluster with no sampled image or one cluster)."""
    from sklearn.metrics import silhouette_samples

    take = _silhouette_sample(len(x), seed)
    out = np.full(k, np.nan)
    if len(set(labels[take])) < 2:
        return out
    s = silhouette_samples(x[take], labels[take])
    for j in range(k):
        if (labels[take] == j).any():
            out[j] = s[labels[take] == j].mean()
    return out


@dataclass(frozen=True)
class Composition:
    """Composition clusters of a set of images (SPEC 4, ``--by cluster``).

    ``k`` holds K per clustering: one entry ``"all"``, or one per class with
    ``within_class``; ``k_scores`` the mean silhouette of every K tried when
    K was chosen (``k_selection == "auto"``). Per cluster (``names``):
    ``sizes``, ``class_counts`` (clusters x classes) and mean ``silhouette``.
    ``labels`` (N,) is each image's cluster number.
    """

    features: str
    k: dict[str, int]
    k_selection: str
    k_range: tuple[int, int] | None
    k_scores: dict[str, dict[int, float]]
    within_class: bool
    seed: int
    labels: np.ndarray
    names: list[str]
    sizes: np.ndarray
    class_counts: np.ndarray
    silhouette: np.ndarray
    class_names: list[str]
    fits: dict[str, tuple[_Fit, int]] = field(repr=False)  # clustering -> (fit, its first cluster number)

    def predict(self, feats: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """The cluster of other images (a reference store's): the nearest centroid of their clustering.

        With ``within_class`` an image of a class that has no clustering here gets -1.
        """
        if not self.within_class:
            fit, first = self.fits["all"]
            return fit.predict(feats) + first
        out = np.full(len(feats), -1, dtype=np.int64)
        for c, name in enumerate(self.class_names):
            members = np.flatnonzero(classes == c)
            if members.size and name in self.fits:
                fit, first = self.fits[name]
                out[members] = fit.predict(feats[members]) + first
        return out

    def to_dict(self) -> dict:
        """Numbers for the JSON result (the assignment itself is stored under ``derived/``)."""
        return {
            "features": self.features,
            "k": self.k["all"] if not self.within_class else dict(self.k), "n_clusters": len(self.names),
            "k_selection": self.k_selection, "k_range": list(self.k_range) if self.k_range else None,
            "silhouette_by_k": {g: {str(k): v for k, v in s.items()} for g, s in self.k_scores.items()} or None,
            "within_class": self.within_class, "seed": self.seed, "n_init": KMEANS_N_INIT,
            "silhouette_sample": SILHOUETTE_SAMPLE,
            "names": list(self.names), "sizes": self.sizes.tolist(),
            "silhouette": [None if np.isnan(s) else float(s) for s in self.silhouette],
            "class_counts": {g: {cn: int(self.class_counts[j, c]) for c, cn in enumerate(self.class_names)
                                 if self.class_counts[j, c]} for j, g in enumerate(self.names)},
        }


def parse_clusters(value: int | str) -> int | str:
    """``--clusters``: an integer K >= 2, or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise CamstatError(f"invalid --clusters {value!r}; give a number K >= 2 or auto") from None
    if k < 2:
        raise CamstatError(f"--clusters must be at least 2 (or auto), got {k}")
    return k


def _fit_one(feats: np.ndarray, k: int | str, seed: int, where: str) -> tuple[_Fit, np.ndarray, int, dict]:
    """Standardise, choose K if asked, fit: (fit, labels, K, silhouette per K tried)."""
    if isinstance(k, int) and k > len(feats):
        raise CamstatError(f"--clusters {k} exceeds the number of images ({len(feats)}{where})")
    scaler = Scaler.fit(feats)
    x = scaler.transform(feats)
    scores: dict[int, float] = {}
    if k == "auto":
        k, scores = choose_k(x, seed)
    labels, km, order = _kmeans(x, int(k), seed)
    return _Fit(scaler, km, order), labels, int(k), scores


def cluster(feats: np.ndarray, k: int | str, *, features: str, classes: np.ndarray, class_names: Sequence[str],
            within_class: bool = False, seed: int = 0) -> Composition:
    """k-means composition clusters of ``feats`` (N, D), over all images or within each class."""
    k = parse_clusters(k)
    feats = np.asarray(feats, dtype=np.float64)
    if not np.isfinite(feats).all():
        raise CamstatError(f"the {features} features hold non-finite values; re-extract the store")
    groups = ({"all": np.arange(len(feats))} if not within_class else
              {name: np.flatnonzero(classes == c) for c, name in enumerate(class_names) if (classes == c).any()})
    labels = np.empty(len(feats), dtype=np.int64)
    names: list[str] = []
    fits, ks, scores, sil = {}, {}, {}, []
    for g, members in groups.items():
        fit, lab, kk, sc = _fit_one(feats[members], k, seed, "" if g == "all" else f" of class {g}")
        labels[members] = lab + len(names)
        fits[g], ks[g] = (fit, len(names)), kk
        if sc:
            scores[g] = sc
        sil.append(_per_cluster_silhouette(fit.scaler.transform(feats[members]), lab, kk, seed))
        names += [f"cluster {j}" if g == "all" else f"{g} cluster {j}" for j in range(kk)]
    counts = np.zeros((len(names), len(class_names)), dtype=np.int64)
    np.add.at(counts, (labels, classes), 1)
    return Composition(features=features, k=ks, k_selection="auto" if k == "auto" else "given",
                       k_range=K_RANGE if k == "auto" else None, k_scores=scores, within_class=within_class,
                       seed=int(seed), labels=labels, names=names, sizes=np.bincount(labels, minlength=len(names)),
                       class_counts=counts, silhouette=np.concatenate(sil), class_names=list(class_names),
                       fits=fits)
