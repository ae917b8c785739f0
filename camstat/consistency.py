"""Hypothesis 1 on a store: per-image consistency metrics and their tests (SPEC 3, 4).

``camstat consistency`` is a thin layer over :func:`analyze`, which a
notebook calls the same way::

    from camstat import open_store
    from camstat.consistency import analyze
    result = analyze(open_store("store/test.zarr"), by="correct", permutations=2000)
    result.to_dict()["metrics"]["dist"]["pooled"]

What it does
------------
* **Maps.** Analysis maps are min-max maps at the analysis size (default:
  the input size) of one (method, layer, target) of the store.
* **Groups.** ``by="correct"`` and ``by="class"`` group images by class (the
  prediction by default, ``class_of="label"`` for the true label);
  ``by="cluster"`` groups them by composition: k-means on 8x8 grayscale
  thumbnails of the input images (rebuilt from the store's data spec).
* **Reference** of image i: the mean map of the *correct* images of its
  group, leave-one-out (image i is never in its own reference), or the class
  means of another store's correct maps (``reference=``, e.g. the train
  split). An image whose leave-one-out reference is undefined (the only
  correct image of its group) gets NaN for the reference-based metrics; such
  images are counted (``undefined_reference``) and dropped, with a count, by
  the tests — never silently.
* **Streaming.** Maps are read in blocks of the store's chunk: pass 1 sums
  the included maps per group, pass 2 builds each block's references from
  those sums and computes the per-image metrics. Memory holds one block of
  maps plus one float per image and metric, whatever the store's size.
  Everything is exact except the group-level pairwise metrics
  (``by="class"``/``"cluster"``), which use a seeded sample of at most
  ``pair_sample`` maps per group (stated in the result as ``n_sampled``).
* **Tests** (``by="correct"``, ``"cluster"``): :func:`camstat.stats.h1_analysis`
  per metric, correct vs incorrect within each class (or cluster) and pooled
  (stratified permutation test, logistic models without and with the
  softmax confidence, AUC). Values are tested *as given*: the per-metric
  ``higher_is_more_consistent`` flag (from :data:`camstat.metrics.PER_IMAGE`)
  says which sign of Cliff's delta H1 predicts, and ``verdict`` states
  whether the observed direction agrees and whether it is significant.
* **Controls.** ``control="permuted"``: correctness shuffled within each
  group (:func:`camstat.stats.permuted_control`) and the same tables
  computed on the same per-image values — the effect must vanish. As a
  diagnostic of the whole pipeline under the null, the leave-one-out
  references are also rebuilt from the shuffled labels and the pooled test
  rerun (``rebuilt_references``): a correct image's reference lacks the
  image itself, which in classes whose maps form distinct modes leans the
  reference away from the image's own mode by 1/n_correct -- a small
  artefact *against* H1 (conservative), visible only in small classes.
  ``random_store=``: the Adebayo et al. (2018) sanity check. The same
  metrics on the maps of the same architecture with randomised weights, for
  the same images; groups and correctness are the *trained* store's (a
  random model's predictions are meaningless), so the comparison isolates
  the maps. How much of the consistency a network shows without learning
  (architecture, centre bias) is reported per metric: medians trained vs
  random, the AUC of both, a paired test per image.
* **Saved** into the store under ``derived/consistency/<method>/<layer>/
  <target>/<by>``: the per-image metric arrays (float32, chunked like the
  store) and the result JSON (attribute ``result``) with every parameter.
  The primary arrays are never written.

Reference: Adebayo, J. et al. (2018). Sanity checks for saliency maps.
NeurIPS 31.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from camstat import metrics as metrics_mod
from camstat import stats
from camstat.errors import CamstatError
from camstat.records import jsonable
from camstat.store import Store, open_store

BY = ("correct", "class", "cluster")
CLASS_OF = ("pred", "label")
CORRECTIONS = ("holm", "fdr_bh", "bonferroni")
CONTROLS = ("permuted",)
THUMB = 8  # side of the grayscale thumbnails k-means clusters
KMEANS_N_INIT = 10
ALPHA = 0.05

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _rng(seed: int, *names: Any) -> np.random.Generator:
    """A generator derived from the seed and names (order-independent of other streams)."""
    digest = hashlib.sha256("\x1f".join(map(str, names)).encode()).digest()
    key = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def _needs_masks(name: str) -> bool:
    return metrics_mod.PER_IMAGE[name].needs_masks


def valid_metrics(has_masks: bool = True) -> list[str]:
    """Names ``--metrics`` accepts by default (the per-image metrics of SPEC 3 that apply)."""
    return metrics_mod.default_metric_names(has_masks)


def parse_metrics(metrics: str | Sequence[str] | None, has_masks: bool) -> list[str]:
    """Metric names: every applicable one by default; unknown names are an error listing the valid ones."""
    if metrics is None or (isinstance(metrics, str) and not metrics.strip()):
        return valid_metrics(has_masks)
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    known = list(metrics_mod.PER_IMAGE)
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise CamstatError(f"unknown metric(s) {', '.join(unknown) or repr(metrics)}; valid: {', '.join(known)}")
    no_mask = [m for m in names if _needs_masks(m) and not has_masks]
    if no_mask:
        raise CamstatError(f"metric(s) {', '.join(no_mask)} need ground-truth masks, which this store lacks")
    return list(dict.fromkeys(names))


def _size(size: int | Sequence[int] | None, store: Store) -> tuple[int, int]:
    if size is None:
        return tuple(int(s) for s in store.input_size)
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise CamstatError(f"invalid analysis size {size}; give a positive number of pixels")
    return size


def _as_store(store: Store | str | Path, what: str = "store") -> Store:
    if isinstance(store, Store):
        return store
    if store is None:
        raise CamstatError(f"no {what} given")
    return open_store(store)


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if masks.shape[-2:] == tuple(size):
        return masks
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (F.interpolate(t, size=size, mode="nearest")[:, 0] > 0.5).numpy()


def _median(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else None


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------
# the streaming core
# --------------------------------------------------------------------------


@dataclass
class _Maps:
    """Which maps to analyse, and the progress counter shared by all passes."""

    method: str
    layer: str
    target: str
    size: tuple[int, int]
    block: int | None = None
    progress: Progress | None = None
    total: int = 0
    done: int = 0

    def iterate(self, store: Store):
        for sl, maps in store.iter_maps(self.method, self.layer, self.target, size=self.size,
                                        normalize="minmax", block=self.block):
            yield sl, maps
            self.done += sl.stop - sl.start
            if self.progress:
                self.progress(self.done, max(self.total, self.done))


def _group_sums(store: Store, spec: _Maps, groups: np.ndarray, includes: Sequence[np.ndarray],
                n_groups: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pass 1: per-group sums and counts of the maps of each ``include`` mask, accumulated block by block."""
    acc: list[list] = [[None, None] for _ in includes]
    for sl, maps in spec.iterate(store):
        for a, include in zip(acc, includes):
            s, c = metrics_mod.class_sums(maps, groups[sl], include[sl], n_groups)
            if a[0] is None:
                a[0], a[1] = np.array(s, dtype=np.float64), np.array(c, dtype=np.int64)
            else:
                a[0] += s
                a[1] += c
    return [(a[0], a[1]) for a in acc]


@dataclass
class _Streamed:
    """What the two passes give: per-image metrics, undefined references, exact group-level parts."""

    values: dict[str, np.ndarray]
    undefined: np.ndarray
    com: np.ndarray | None = None  # (N, 2) centres of mass
    dist_all: np.ndarray | None = None  # dist to the mean of the image's whole group
    dist_own: np.ndarray | None = None  # dist to the mean of its group's correct (or incorrect) maps


def _stream_metrics(store: Store, spec: _Maps, names: list[str], groups: np.ndarray, include: np.ndarray,
                    n_groups: int, *, q: float, means: np.ndarray | None = None, masks: bool = False,
                    group_level: bool = False) -> _Streamed:
    """Per-image metrics of every map against its group reference, in two streamed passes.

    Without ``means``: pass 1 sums the included maps per group, pass 2 takes
    leave-one-out references from the sums (:func:`metrics.loo_references`).
    With ``means`` (another store's class means) pass 1 is needed only for
    ``group_level``. ``group_level`` also sums all maps and the excluded
    ones per group, so that pass 2 gives each map's centre of mass and its
    distance to the mean of its whole group and of its own side (included
    or not): the exact, non-pairwise group-level metrics.
    """
    n = store.n
    sums = counts = all_means = side_means = None
    if means is None or group_level:
        includes = [include] + ([np.ones(n, bool), ~include] if group_level else [])
        parts = _group_sums(store, spec, groups, includes, n_groups)
        sums, counts = parts[0]
        if group_level:
            all_means = metrics_mod.class_means(*parts[1])
            side_means = np.stack([metrics_mod.class_means(*parts[2]), metrics_mod.class_means(sums, counts)])
    values: dict[str, np.ndarray] = {name: np.full(n, np.nan) for name in names}
    undefined = np.zeros(n, dtype=bool)
    out = _Streamed(values, undefined)
    if group_level:
        out.com, out.dist_all, out.dist_own = np.full((n, 2), np.nan), np.full(n, np.nan), np.full(n, np.nan)
    needs_ref = any(metrics_mod.PER_IMAGE[m].needs_reference for m in names)
    for sl, maps in spec.iterate(store):
        g = groups[sl]
        refs = None
        if needs_ref:
            refs = (metrics_mod.loo_references(maps, g, include[sl], sums, counts) if means is None
                    else metrics_mod.references_from_means(g, means))
            undefined[sl] = np.isnan(refs).any(axis=(1, 2))
        block_masks = _resize_masks(store.masks(sl), spec.size) if masks else None
        for key, v in metrics_mod.per_image_metrics(maps, refs, names, masks=block_masks, q=q).items():
            values[key][sl] = v
        if group_level:
            out.com[sl] = metrics_mod.com(maps)
            out.dist_all[sl] = metrics_mod.dist(maps, all_means[g])
            out.dist_own[sl] = metrics_mod.dist(maps, side_means[include[sl].astype(np.int64), g])
    return out


def _orientation(key: str) -> bool | None:
    """Higher-is-more-consistent of a metric (from :data:`camstat.metrics.PER_IMAGE`)."""
    info = metrics_mod.PER_IMAGE.get(key)
    return None if info is None else bool(info.higher_is_more_consistent)


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------


_BETTER = {"consistency": "consistent", "concentration": "concentrated", "localisation": "well localised"}


def _kind(key: str) -> str:
    info = metrics_mod.PER_IMAGE.get(key)
    return "consistency" if info is None else info.kind


def orientation_text(key: str, higher: bool | None) -> str:
    """``"lower = more consistent"``, ``"higher = more well localised"``, ... for tables."""
    if higher is None:
        return "no direction"
    word = _BETTER.get(_kind(key), "consistent")
    return f"{'higher' if higher else 'lower'} = {'better localised' if word == 'well localised' else 'more ' + word}"


def _verdict(key: str, pooled: dict, higher: bool | None, alpha: float = ALPHA) -> dict:
    """Does the pooled effect go the way H1 predicts (correct maps *better*), and is it significant?

    ``auc_consistency`` is the AUC oriented so that > 0.5 means the better
    (more consistent / concentrated / localised) maps predict correctness.
    """
    stat, p, auc = pooled.get("statistic"), pooled.get("p_permutation"), pooled.get("auc")
    lo_hi = pooled.get("auc_ci95") or [None, None]
    significant = p is not None and p < alpha
    if higher is None or stat is None:
        return {"direction": "undefined", "significant": significant, "auc_consistency": None,
                "auc_consistency_ci95": [None, None],
                "text": "no H1 direction: the metric has no better side" if higher is None
                else "no pooled test possible"}
    signed = stat if higher else -stat
    direction = "supported" if signed > 0 else "opposite" if signed < 0 else "none"
    auc_c = None if auc is None else (auc if higher else 1.0 - auc)
    ci_c = list(lo_hi) if higher else [None if lo_hi[1] is None else 1.0 - lo_hi[1],
                                       None if lo_hi[0] is None else 1.0 - lo_hi[0]]
    better = _BETTER.get(_kind(key), "consistent")
    if better == "well localised":
        phrase = {"supported": "better localised", "opposite": "worse localised", "none": "equally well localised"}
    else:
        phrase = {d: f"{w} {better}" for d, w in (("supported", "more"), ("opposite", "less"), ("none", "equally"))}
    text = (f"H1 direction {direction}: correct images' maps are {phrase[direction]} than incorrect ones "
            f"(pooled delta {stat:+.3f}; {orientation_text(key, higher)}); "
            + (f"significant (p_perm = {p:.3g} < {alpha})" if significant
               else f"not significant (p_perm = {'n/a' if p is None else format(p, '.3g')})"))
    return {"direction": direction, "significant": significant, "auc_consistency": auc_c,
            "auc_consistency_ci95": ci_c, "text": text}


def _h1_tables(values: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray, confidence: np.ndarray,
               names: list[str], *, correction: str, min_group: int, permutations: int, n_boot: int,
               seed: int) -> dict:
    res = stats.h1_analysis(values, correct, groups, confidence, class_names=names, correction=correction,
                            min_group=min_group, permutations=permutations, n_boot=n_boot, seed=seed).to_dict()
    out = {}
    for key, table in res.items():
        higher = _orientation(key)
        out[key] = {
            "per_class": table["per_class"],
            "skipped": table["skipped"],
            "pooled": table["pooled"],
            "kind": _kind(key),
            "higher_is_more_consistent": higher,
            "n_undefined": int(np.isnan(values[key]).sum()),
            "verdict": _verdict(key, table["pooled"], higher),
        }
    return out


def _median_tables(values: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray,
                   names: list[str]) -> dict:
    """Per-image metric medians per group (all, correct, incorrect) and overall."""
    out = {}
    for key, v in values.items():
        rows = []
        for k, name in enumerate(names):
            m = groups == k
            rows.append({"class": name, "n": int(m.sum()), "n_correct": int((m & correct).sum()),
                         "n_incorrect": int((m & ~correct).sum()), "median": _median(v[m]),
                         "median_correct": _median(v[m & correct]), "median_incorrect": _median(v[m & ~correct]),
                         "n_undefined": int(np.isnan(v[m]).sum())})
        out[key] = {
            "per_class": rows,
            "pooled": {"n": int(v.size), "median": _median(v), "median_correct": _median(v[correct]),
                       "median_incorrect": _median(v[~correct]), "n_undefined": int(np.isnan(v).sum())},
            "kind": _kind(key),
            "higher_is_more_consistent": _orientation(key),
        }
    return out


def _group_level(store: Store, spec: _Maps, streamed: _Streamed, groups: np.ndarray, correct: np.ndarray | None,
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
                row[subset] = {"n": int(idx.size), "n_sampled": int(idx.size),
                               "note": "fewer than 2 maps: no group-level consistency"}
                continue
            rng = _rng(seed, "group-level", label, name, subset)
            take = np.sort(rng.choice(idx, size=min(pair_sample, idx.size), replace=False))
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


# --------------------------------------------------------------------------
# clusters
# --------------------------------------------------------------------------


def _thumbnails(store: Store, progress: Callable[[str], None] | None = None) -> np.ndarray:
    """8x8 grayscale thumbnails (N, 64) of the store's input images, rebuilt from its data spec."""
    from PIL import Image

    from camstat.data import load_dataset

    a = store.attrs
    norm = a.get("normalize")
    dataset = load_dataset(a["data"], a["split"], size=tuple(a["input_size"]),
                           normalize=(tuple(norm[0]), tuple(norm[1])) if norm else None,
                           limit=a.get("limit"), seed=int(a.get("seed", 0)))
    index = store.samples["index"]
    if len(dataset) != len(index) or not np.array_equal(np.asarray(dataset.index), index):
        raise CamstatError(
            f"the images of {a['data']} ({a['split']}) no longer match store {store.path} "
            f"({len(dataset)} vs {len(index)} images, or a different order); --by cluster needs the same data"
        )
    feats = np.empty((len(index), THUMB * THUMB), dtype=np.float64)
    for i in range(len(index)):
        gray = Image.fromarray(dataset.raw_image(i)).convert("L").resize((THUMB, THUMB), Image.BOX)
        feats[i] = np.asarray(gray, dtype=np.float64).ravel() / 255.0
    return feats


@dataclass
class _Clusters:
    labels: np.ndarray
    names: list[str]
    model: Any
    order: np.ndarray  # kmeans label -> our label

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return self.order[self.model.predict(feats)]


def _kmeans(feats: np.ndarray, k: int, seed: int) -> _Clusters:
    from sklearn.cluster import KMeans

    if k < 2:
        raise CamstatError(f"--clusters must be at least 2, got {k}")
    if k > len(feats):
        raise CamstatError(f"--clusters {k} exceeds the number of images ({len(feats)})")
    km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=int(seed)).fit(feats)
    sizes = np.bincount(km.labels_, minlength=k)
    # number clusters by size (largest first; ties by the centroid), so names don't depend on k-means' labels
    rank = sorted(range(k), key=lambda j: (-sizes[j], tuple(np.round(km.cluster_centers_[j], 12))))
    order = np.empty(k, dtype=np.int64)
    order[rank] = np.arange(k)
    return _Clusters(order[km.labels_], [f"cluster {j}" for j in range(k)], km, order)


# --------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------


@dataclass
class ConsistencyResult:
    """What :func:`analyze` found: ``to_dict()`` is the ``--json`` result (SPEC 4 keys)."""

    data: dict
    values: dict[str, np.ndarray] = field(repr=False)
    undefined: np.ndarray = field(repr=False)
    groups: np.ndarray = field(repr=False)
    controls: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    derived: str | None = None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.data))

    @property
    def by(self) -> str:
        return self.data["by"]


def _provenance(store: Store) -> dict:
    from camstat.provenance import command_line, versions

    a = store.attrs
    return {
        "model": a.get("model"),
        "checkpoint": a.get("checkpoint"),
        "checkpoint_sha256": a.get("checkpoint_sha256"),
        "data": a.get("data"),
        "split": a.get("split"),
        "store_created": a.get("created"),
        "command": command_line(),
        "versions": versions(),
    }


def _store_identity(store: Store) -> dict:
    a = store.attrs
    return {"path": str(store.path), "model": a.get("model"), "checkpoint": a.get("checkpoint"),
            "checkpoint_sha256": a.get("checkpoint_sha256"), "data": a.get("data"), "split": a.get("split"),
            "n": store.n, "created": a.get("created")}


def _check_reference(ref: Store, store: Store, method: str, layer: str, target: str) -> str:
    if ref.path.resolve() == store.path.resolve():
        raise CamstatError("--reference is the analysed store itself; leave it out to use leave-one-out references")
    if ref.classes != store.classes:
        raise CamstatError(f"reference store {ref.path} has other classes than {store.path}; it must be the same task")
    if method not in ref.methods:
        raise CamstatError(f"reference store {ref.path} has no method {method!r} (it holds {', '.join(ref.methods)})")
    if layer not in ref.layers:
        raise CamstatError(f"reference store {ref.path} has no layer {layer!r} (it holds {', '.join(ref.layers)})")
    a, b = ref.attrs, store.attrs
    if (a.get("data"), a.get("split"), a.get("checkpoint_sha256")) == (b.get("data"), b.get("split"),
                                                                       b.get("checkpoint_sha256")):
        raise CamstatError(f"reference store {ref.path} holds the same images and model as {store.path}; its means "
                           "would contain each image itself; use leave-one-out references (no --reference)")
    ref.require_complete()
    # Only correct maps enter the means, and for them pred == true: either target gives the same maps.
    if target in ref.targets:
        return target
    for alt in ("pred", "true"):
        if alt in ref.targets:
            return alt
    raise CamstatError(f"reference store {ref.path} has no target {target!r} (it holds {', '.join(ref.targets)})")


def _check_random(rnd: Store, store: Store, method: str, layer: str, target: str) -> None:
    a, b = rnd.attrs, store.attrs
    if rnd.path.resolve() == store.path.resolve():
        raise CamstatError("--random-store is the analysed store itself; give the randomised-weights store")
    problems = []
    if rnd.n != store.n:
        problems.append(f"n {rnd.n} vs {store.n}")
    if a.get("model") != b.get("model"):
        problems.append(f"model {a.get('model')!r} vs {b.get('model')!r}")
    if (a.get("data"), a.get("split")) != (b.get("data"), b.get("split")):
        problems.append(f"data {a.get('data')} ({a.get('split')}) vs {b.get('data')} ({b.get('split')})")
    if rnd.classes != store.classes:
        problems.append("classes")
    if problems:
        raise CamstatError(f"random store {rnd.path} does not match {store.path}: {'; '.join(problems)}; "
                           "extract it with the same --model, --data, --split and --limit and no --checkpoint")
    if not np.array_equal(rnd.samples["index"], store.samples["index"]):
        raise CamstatError(f"random store {rnd.path} holds other images (dataset index differs) than {store.path}")
    if b.get("checkpoint_sha256") and a.get("checkpoint_sha256") == b.get("checkpoint_sha256"):
        raise CamstatError(f"random store {rnd.path} was made with the same checkpoint as {store.path}; "
                           "extract it without --checkpoint (randomised weights)")
    rnd.require_complete()
    for what, have, want in (("method", rnd.methods, method), ("layer", rnd.layers, layer),
                             ("target", rnd.targets, target)):
        if want not in have:
            raise CamstatError(f"random store {rnd.path} has no {what} {want!r} (it holds {', '.join(have)})")


def _random_control(trained: dict[str, np.ndarray], random: dict[str, np.ndarray], correct: np.ndarray,
                    groups: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Per metric: trained vs randomised-weights maps of the same images (Adebayo et al. 2018)."""
    out = {}
    for key in trained:
        t, r = trained[key], random.get(key)
        if r is None:
            continue
        higher = _orientation(key)
        row: dict[str, Any] = {"higher_is_more_consistent": higher, "median_trained": _median(t),
                               "median_random": _median(r), "median_random_correct": _median(r[correct]),
                               "median_random_incorrect": _median(r[~correct]),
                               "n_undefined_random": int(np.isnan(r).sum())}
        mt, mr = row["median_trained"], row["median_random"]
        row["random_over_trained"] = (mr / mt) if (mt not in (None, 0) and mr is not None) else None
        for name, v in (("trained", t), ("random", r)):
            ok = ~np.isnan(v)
            a = stats.auc_test(v[ok], correct[ok], groups[ok], n_boot=n_boot,
                               seed=int(_rng(seed, "auc", key).integers(2**31)))
            row[f"auc_{name}"] = a.auc
            row[f"auc_{name}_ci95"] = list(a.ci95)
        both = ~np.isnan(t) & ~np.isnan(r)
        paired = stats.paired_test(t[both], r[both]).to_dict()
        row["paired_trained_minus_random"] = paired
        if higher is not None and paired["mean_diff"] is not None:
            gain = paired["mean_diff"] if higher else -paired["mean_diff"]
            better = _BETTER.get(_kind(key), "consistent").replace("well ", "")
            row["text"] = (f"trained maps are {'more' if gain > 0 else 'less'} {better} than random-weight maps "
                           f"(median {mt if mt is None else format(mt, '.4g')} vs "
                           f"{mr if mr is None else format(mr, '.4g')}); AUC trained "
                           f"{_fmt(row['auc_trained'])} vs random {_fmt(row['auc_random'])}")
        out[key] = jsonable(row)
    return out


def _artefact(values: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, *, permutations: int,
              seed: int) -> dict:
    """Pooled stratified permutation test per metric (pipeline-level null diagnostic)."""
    out = {}
    for key, v in values.items():
        ok = ~np.isnan(v)
        r = stats.stratified_permutation_test(v[ok], labels[ok], groups[ok], permutations,
                                              seed=int(_rng(seed, "artefact", key).integers(2**31)))
        higher = _orientation(key)
        direction = None
        if higher is not None and r.statistic == r.statistic:
            signed = r.statistic if higher else -r.statistic
            direction = "supported" if signed > 0 else "opposite" if signed < 0 else "none"
        out[key] = jsonable({"statistic": r.statistic, "p_permutation": r.p_value, "direction": direction,
                           "n": int(ok.sum())})
    return out


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


# --------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------


def analyze(
    store: Store | str | Path,
    *,
    method: str | None = None,
    layer: str | None = None,
    target: str = "pred",
    by: str = "correct",
    metrics: str | Sequence[str] | None = None,
    class_of: str = "pred",
    reference: Store | str | Path | None = None,
    size: int | Sequence[int] | None = None,
    q: float = 0.2,
    correction: str = "holm",
    permutations: int = 10000,
    n_boot: int = 2000,
    min_group: int = 5,
    seed: int = 0,
    control: str | None = None,
    random_store: Store | str | Path | None = None,
    clusters: int = 8,
    pair_sample: int = 500,
    save: bool = True,
    block: int | None = None,
    progress: Progress | None = None,
) -> ConsistencyResult:
    """Consistency metrics and H1 tests of one store (see the module docstring).

    ``by``: ``correct`` (H1 tests per class and pooled), ``class``
    (group-level consistency per class, metric medians) or ``cluster``
    (k-means on image thumbnails, ``clusters`` groups; H1 tests within
    clusters and group-level consistency per cluster). ``save`` writes the
    per-image arrays and the result under ``derived/``; ``block`` overrides
    the number of maps read at a time (default: the store's chunk).
    ``progress(done, total)`` counts maps read over all passes.
    """
    s = _as_store(store)
    s.require_complete()
    if by not in BY:
        raise CamstatError(f"invalid --by {by!r}; choose {', '.join(BY)}")
    if class_of not in CLASS_OF:
        raise CamstatError(f"invalid --class-of {class_of!r}; choose pred or label")
    if correction not in CORRECTIONS:
        raise CamstatError(f"invalid --correction {correction!r}; choose {', '.join(CORRECTIONS)}")
    if control is not None and control not in CONTROLS:
        raise CamstatError(f"invalid --control {control!r}; choose permuted")
    if not 0 < q < 1:
        raise CamstatError(f"--q must lie in (0, 1), got {q}")
    if permutations < 1 or n_boot < 0 or min_group < 1 or pair_sample < 2:
        raise CamstatError("need --permutations >= 1, --bootstrap >= 0, --min-group >= 1 and --pair-sample >= 2")
    method = method or s.methods[0]
    layer = layer or s.layers[0]
    s._map_array(method, layer, target)  # validates method, layer, target with a clear message
    names = parse_metrics(metrics, s.has_masks)
    size_hw = _size(size, s)
    ref = _as_store(reference, "reference store") if reference is not None else None
    ref_target = _check_reference(ref, s, method, layer, target) if ref is not None else None
    rnd = _as_store(random_store, "random store") if random_store is not None else None
    if rnd is not None:
        _check_random(rnd, s, method, layer, target)

    samples = s.samples
    correct = samples["correct"].astype(bool)
    confidence = samples["confidence"].astype(np.float64)
    classes = samples[class_of].astype(np.int64)
    class_names = s.classes
    spec = _Maps(method, layer, target, size_hw, block=block, progress=progress)
    masks = any(_needs_masks(m) for m in names)

    # groups: classes, or composition clusters
    cluster_info = None
    ref_groups = None
    if by == "cluster":
        feats = _thumbnails(s)
        cl = _kmeans(feats, int(clusters), seed)
        groups, group_names = cl.labels, cl.names
        comp = np.zeros((len(group_names), len(class_names)), dtype=np.int64)
        np.add.at(comp, (groups, classes), 1)
        cluster_info = {
            "k": int(clusters), "features": f"{THUMB}x{THUMB} grayscale thumbnails (box filter), scaled to [0, 1]",
            "algorithm": f"sklearn KMeans(n_init={KMEANS_N_INIT}, random_state=seed), clusters numbered by size",
            "inertia": float(cl.model.inertia_),
            "sizes": np.bincount(groups, minlength=len(group_names)).tolist(),
            "class_counts": {gn: {cn: int(comp[j, c]) for c, cn in enumerate(class_names) if comp[j, c]}
                             for j, gn in enumerate(group_names)},
        }
        if ref is not None:
            ref_groups = cl.predict(_thumbnails(ref))
    else:
        groups, group_names = classes, list(class_names)
        if ref is not None:
            ref_groups = ref.samples[class_of].astype(np.int64)
    n_groups = len(group_names)

    # progress total: every pass over a store's maps
    passes = (1 if ref is not None and by == "correct" else 2) + (2 if control == "permuted" and ref is None else 0)
    spec.total = passes * s.n + (ref.n if ref is not None else 0) + (2 * rnd.n if rnd is not None else 0)

    # references from another store: class (or cluster) means of its correct maps
    means = None
    reference_info = None
    if ref is not None:
        ref_spec = _Maps(method, layer, ref_target, size_hw, block=block, progress=progress, total=spec.total)
        ref_correct = ref.samples["correct"].astype(bool)
        [(sums, counts)] = _group_sums(ref, ref_spec, ref_groups, [ref_correct], n_groups)
        spec.done = ref_spec.done
        means = metrics_mod.class_means(sums, counts)  # NaN for groups without a correct reference map
        reference_info = {**_store_identity(ref), "target": ref_target,
                          "counts": {group_names[j]: int(counts[j]) for j in range(n_groups)},
                          "groups_without_reference": [group_names[j] for j in range(n_groups) if counts[j] == 0],
                          "means_sha256": _fingerprint(means)}

    grouped = by in ("class", "cluster")
    main_run = _stream_metrics(s, spec, names, groups, correct, n_groups, q=q, means=means, masks=masks,
                               group_level=grouped)
    values, undefined = main_run.values, main_run.undefined
    undefined_info = {
        "n": int(undefined.sum()),
        "per_group": {group_names[j]: int(undefined[groups == j].sum()) for j in range(n_groups)
                      if undefined[groups == j].any()},
        "note": ("images without a reference (leave-one-out: the only correct image of their group; --reference: "
                 "no correct image of their group in the reference store) get NaN for the reference-based "
                 "metrics and are left out of the tests, with counts"),
    }

    test_kw = dict(correction=correction, min_group=min_group, permutations=permutations, n_boot=n_boot, seed=seed)
    label = "cluster" if by == "cluster" else "class"

    def tables(vals: dict[str, np.ndarray], corr: np.ndarray) -> dict:
        if by == "class":
            return _median_tables(vals, corr, groups, group_names)
        return _h1_tables(vals, corr, groups, confidence, group_names, **test_kw)

    result: dict[str, Any] = {
        "method": method,
        "layer": layer,
        "target": target,
        "by": by,
        "class_of": class_of,
        "n": s.n,
        "accuracy": float(correct.mean()) if s.n else None,
        "n_correct": int(correct.sum()),
        "n_incorrect": int((~correct).sum()),
        "metrics": tables(values, correct),
        "undefined_reference": undefined_info,
    }
    if by in ("class", "cluster"):
        result["groups"] = _group_level(s, spec, main_run, groups, correct, group_names, pair_sample=pair_sample,
                                        seed=seed, q=q, label=label)
    if cluster_info is not None:
        result["clusters"] = cluster_info

    # controls
    controls: dict[str, Any] = {"permuted": None, "random_weights": None}
    control_values: dict[str, dict[str, np.ndarray]] = {}
    if control == "permuted":
        shuffled = np.asarray(stats.permuted_control(groups, correct, seed=seed), dtype=bool)
        controls["permuted"] = {
            "note": (f"correctness shuffled within each {label} (stats.permuted_control, seed {seed}) and the same "
                     "tests run on the same per-image values: H1's effect must vanish"),
            "n_changed": int((shuffled != correct).sum()),
            "metrics": tables(values, shuffled),
        }
        if by != "class":
            for key, m in controls["permuted"]["metrics"].items():
                real, ctl = result["metrics"][key]["pooled"].get("statistic"), m["pooled"].get("statistic")
                m["statistic_over_real"] = (ctl / real) if real and ctl is not None and real == real else None
        if means is None:
            # The whole pipeline under the null: references rebuilt from the shuffled labels.
            rebuilt = _stream_metrics(s, spec, names, groups, shuffled, n_groups, q=q, masks=masks)
            pv, pu = rebuilt.values, rebuilt.undefined
            control_values["permuted_rebuilt"] = pv
            controls["permuted"]["rebuilt_references"] = {
                "note": ("leave-one-out references rebuilt from the shuffled labels (the whole pipeline under the "
                         "null). A correct image's reference lacks the image itself, so in classes whose maps form "
                         "distinct modes it leans away from the image's own mode by 1/n_correct: a small artefact "
                         "in the direction *opposite* to H1 (conservative for H1), largest for small classes"),
                "undefined_reference": int(pu.sum()),
                "metrics": _artefact(pv, shuffled, groups, permutations=permutations, seed=seed),
            }
    if rnd is not None:
        rnd_run = _stream_metrics(rnd, spec, names, groups, correct, n_groups, q=q, masks=masks, group_level=grouped)
        rv, ru = rnd_run.values, rnd_run.undefined
        control_values["random_weights"] = rv
        controls["random_weights"] = {
            "store": _store_identity(rnd),
            "note": ("Adebayo et al. (2018) sanity check: the same metrics on the randomised-weights model's maps of "
                     f"the same images, grouped by the trained store's {label}s and using its correctness (a random "
                     "model's predictions are meaningless); references are leave-one-out within the random store. "
                     "Consistency the random maps share is architecture and centre bias, not learning."),
            "metrics": _random_control(values, rv, correct, groups, n_boot=n_boot, seed=seed),
            "undefined_reference": int(ru.sum()),
        }
        if rnd.attrs.get("checkpoint"):
            controls["random_weights"]["warning"] = (
                f"the random store was extracted with checkpoint {rnd.attrs['checkpoint']}; the sanity check "
                "expects randomised weights (camstat extract without --checkpoint)")
        if by in ("class", "cluster"):
            controls["random_weights"]["groups"] = _group_level(rnd, spec, rnd_run, groups, None, group_names,
                                                                pair_sample=pair_sample, seed=seed, q=q,
                                                                label=label, subsets=("all",))
    result["controls"] = controls

    params = {
        "method": method, "layer": layer, "target": target, "by": by, "metrics": names, "class_of": class_of,
        "reference": reference_info, "size": list(size_hw), "q": q, "correction": correction,
        "permutations": permutations, "n_boot": n_boot, "min_group": min_group, "seed": seed, "control": control,
        "random_store": _store_identity(rnd) if rnd is not None else None,
        "clusters": int(clusters) if by == "cluster" else None, "pair_sample": pair_sample,
        "maps": "min-max analysis maps (pytorch-grad-cam scaling) at the analysis size",
        "reference_kind": f"{label} means of another store's correct maps" if ref is not None
        else f"leave-one-out mean of the correct maps of the same {label}",
    }
    result["params"] = params
    result["store"] = str(s.path)
    result["provenance"] = _provenance(s)
    result = jsonable(result)

    derived = None
    if save:
        derived = _save(s, result, values, undefined, groups if by == "cluster" else None, control_values)
        result["derived"] = derived
    return ConsistencyResult(result, values, undefined, groups, control_values, derived)


def _save(s: Store, result: dict, values: dict[str, np.ndarray], undefined: np.ndarray,
          clusters: np.ndarray | None, control_values: dict[str, dict[str, np.ndarray]]) -> str:
    """Per-image arrays and the result under ``derived/consistency/...``; primary data untouched."""
    from camstat.provenance import now

    name = f"consistency/{result['method']}/{result['layer']}/{result['target']}/{result['by']}"
    arrays = {key: v.astype("float32") for key, v in values.items()}
    arrays["reference_undefined"] = undefined.astype(bool)
    if clusters is not None:
        arrays["cluster"] = clusters.astype("int64")
    for cname, vals in control_values.items():
        arrays.update({f"controls/{cname}/{key}": v.astype("float32") for key, v in vals.items()})
    # Written whole and swapped in atomically: arrays and attributes always come from one run.
    return s.write_derived(name, result["params"], arrays, {"created": now(), "result": result})


# --------------------------------------------------------------------------
# rendering (the CLI's tables; every number comes from to_dict())
# --------------------------------------------------------------------------


def _num(x: Any, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _ci(ci: Any, spec: str = ".3f") -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "[-]"
    return f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def _pv(p: Any) -> str:
    return "-" if p is None else ("<1e-4" if p < 1e-4 else f"{p:.4f}")


def render(d: dict) -> list:
    """Rich renderables for a :meth:`ConsistencyResult.to_dict` result: per-metric tables, verdicts, controls."""
    from rich.table import Table
    from rich.text import Text

    items: list = []
    head = (f"{d['store']}: {d['method']} @ {d['layer']}, target {d['target']}, by {d['by']} "
            f"(classes from {d['class_of']}); n = {d['n']}, accuracy {_num(d['accuracy'], '.4f')}; reference: "
            f"{d['params']['reference_kind']}")
    items.append(Text(head))
    label = "cluster" if d["by"] == "cluster" else "class"
    for key, m in d["metrics"].items():
        higher = m.get("higher_is_more_consistent")
        orient = orientation_text(key, higher)
        if d["by"] == "class":
            t = Table(title=f"{key} ({orient}): medians per class")
            for col in ("class", "n", "n correct", "n incorrect", "median", "median correct", "median incorrect",
                        "undefined"):
                t.add_column(col, justify="left" if col == "class" else "right")
            for r in m["per_class"]:
                if r["n"]:
                    t.add_row(r["class"], str(r["n"]), str(r["n_correct"]), str(r["n_incorrect"]), _num(r["median"]),
                              _num(r["median_correct"]), _num(r["median_incorrect"]), str(r["n_undefined"]))
            p = m["pooled"]
            t.add_row("all", str(p["n"]), str(d["n_correct"]), str(d["n_incorrect"]), _num(p["median"]),
                      _num(p["median_correct"]), _num(p["median_incorrect"]), str(p["n_undefined"]), style="bold")
            items.append(t)
            continue
        t = Table(title=f"{key} ({orient}): correct vs incorrect per {label}")
        for col in (label, "n corr", "n inc", "median corr", "median inc", "delta [95% CI]", "p", "p_adj"):
            t.add_column(col, justify="left" if col == label else "right")
        for r in m["per_class"]:
            t.add_row(r["class"], str(r["n_correct"]), str(r["n_incorrect"]), _num(r["median_correct"]),
                      _num(r["median_incorrect"]), f"{_num(r['cliffs_delta'], '+.3f')} {_ci(r['ci95'])}",
                      _pv(r["p_value"]), _pv(r["p_adjusted"]))
        if m["skipped"]:
            shown = "; ".join(f"{c} ({why})" for c, why in m["skipped"][:6])
            more = f"; ... {len(m['skipped']) - 6} more" if len(m["skipped"]) > 6 else ""
            t.caption = f"skipped: {shown}{more}"
        items.append(t)
        p = m["pooled"]
        items.append(Text(
            f"  pooled (n = {p['n']}, {m['n_undefined']} undefined): p_perm {_pv(p['p_permutation'])}, "
            f"OR/SD {_num(p['odds_ratio_per_sd'], '.3f')} {_ci(p.get('odds_ratio_ci95'))}, p_LRT {_pv(p['p_lrt'])}, "
            f"p_LRT|conf {_pv(p['p_lrt_given_confidence'])}, AUC {_num(p['auc'], '.3f')} {_ci(p['auc_ci95'])}"))
        for note in p.get("notes") or []:
            items.append(Text(f"  note: {note}", style="dim"))
        v = m["verdict"]
        style = "green" if v["direction"] == "supported" and v["significant"] else (
            "red" if v["direction"] == "opposite" and v["significant"] else "yellow")
        items.append(Text(f"  {key}: {v['text']}", style=style))
    if d.get("groups"):
        t = Table(title=f"group-level consistency per {label} (seeded sample of at most "
                        f"{d['params']['pair_sample']} maps per group)")
        cols = ("mean_pairwise_ssim", "mean_pairwise_iou", "com_dispersion", "mean_dist_to_mean")
        for col in (label, "subset", "n", "sampled", "pairwise SSIM", "pairwise IoU", "CoM dispersion",
                    "dist to mean"):
            t.add_column(col, justify="left" if col in (label, "subset") else "right")
        for row in d["groups"]:
            for subset in ("all", "correct", "incorrect"):
                g = row.get(subset)
                if g is None:
                    continue
                t.add_row(row[label], subset, str(g["n"]), str(g.get("n_sampled", "-")),
                          *(_num(g.get(c)) for c in cols))
        items.append(t)
    if d.get("clusters"):
        c = d["clusters"]
        items.append(Text(f"clusters: k = {c['k']} on {c['features']}; sizes {c['sizes']}"))
    u = d["undefined_reference"]
    if u["n"]:
        items.append(Text(f"{u['n']} image(s) without a reference ({u['per_group']}): NaN for reference-based metrics, "
                          "left out of the tests", style="yellow"))
    ctl = d["controls"]
    if ctl.get("permuted"):
        pc = ctl["permuted"]
        t = Table(title=f"control: correctness permuted within {label} ({pc['n_changed']} labels changed; "
                        "the effect must vanish)")
        if d["by"] == "class":
            for col in ("metric", "median correct", "median incorrect"):
                t.add_column(col, justify="left" if col == "metric" else "right")
            for key, m in pc["metrics"].items():
                t.add_row(key, _num(m["pooled"]["median_correct"]), _num(m["pooled"]["median_incorrect"]))
        else:
            for col in ("metric", "delta", "delta / real", "p_perm", "AUC [95% CI]", "direction", "significant"):
                t.add_column(col, justify="left" if col == "metric" else "right")
            for key, m in pc["metrics"].items():
                p = m["pooled"]
                t.add_row(key, _num(p.get("statistic"), "+.3f"), _num(m.get("statistic_over_real"), "+.2f"),
                          _pv(p["p_permutation"]),
                          f"{_num(p['auc'], '.3f')} {_ci(p['auc_ci95'])}", m["verdict"]["direction"],
                          "yes" if m["verdict"]["significant"] else "no")
        items.append(t)
        rb = pc.get("rebuilt_references")
        if rb:
            parts = ", ".join(f"{k} {_num(m['statistic'], '+.3f')} (p {_pv(m['p_permutation'])}, {m['direction']})"
                              for k, m in rb["metrics"].items())
            items.append(Text(f"  references rebuilt from the shuffled labels (whole pipeline under the null; "
                              f"leave-one-out artefact, if any, 'opposite'): {parts}", style="dim"))
        items.append(Text("  (under the null, p < 0.05 in 5 % of seeds; judge the control by delta / real)",
                          style="dim"))
    if ctl.get("random_weights"):
        rc = ctl["random_weights"]
        t = Table(title=f"control: randomised weights ({rc['store']['path']}; Adebayo et al. 2018)")
        for col in ("metric", "median trained", "median random", "random/trained", "AUC trained", "AUC random",
                    "mean diff [95% CI]", "p (Wilcoxon)"):
            t.add_column(col, justify="left" if col == "metric" else "right")
        for key, m in rc["metrics"].items():
            pt = m["paired_trained_minus_random"]
            t.add_row(key, _num(m["median_trained"]), _num(m["median_random"]), _num(m["random_over_trained"], ".3f"),
                      f"{_num(m['auc_trained'], '.3f')} {_ci(m['auc_trained_ci95'])}",
                      f"{_num(m['auc_random'], '.3f')} {_ci(m['auc_random_ci95'])}",
                      f"{_num(pt['mean_diff'], '+.4g')} {_ci(pt['ci95'], '.4g')}", _pv(pt["p_wilcoxon"]))
        t.caption = "groups and correctness from the trained store; references leave-one-out within the random store"
        items.append(t)
    if d.get("derived"):
        items.append(Text(f"saved: {d['store']}/{d['derived']}", style="dim"))
    return items
