"""Class mean maps of a baseline's train-split store: the ``--means`` of ``train-reg`` (SPEC 5).

One function, :func:`class_means_from_store`; the derived-results cache it
keeps in the store is read and written by one small function each, so the
store's atomic ``write_derived/read_derived`` can replace them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from camstat.errors import CamstatError


@dataclass
class ClassMeans:
    """Per-class mean min-max maps (C, h, w) of a store's correct samples."""

    means: np.ndarray
    counts: np.ndarray  # correct samples per class
    fallback: list[int]  # classes without a correct sample (their mean uses all their samples)
    store: str
    method: str
    layer: str
    cached: bool


def class_means_from_store(
    path: str | Path,
    *,
    model: str,
    classes: Sequence[str],
    method: str,
    layer: str,
    size: tuple[int, int],
) -> ClassMeans:
    """Mean min-max map per class of a train-split store's correctly classified samples.

    Maps are the store's ``minmax`` maps of the layer at ``size`` (the layer's
    resolution in training); class = label (= prediction, as only correct
    samples count). A class without any correct sample falls back to all its
    samples (named in ``fallback``). The result is cached in the store under
    ``derived/class_means_<method>_<layer>`` with the parameters that made it.

    Refuses a store of another model spec, class set, layer or method, an
    incomplete one and one of a held-out split.
    """
    from camstat.store import open_store

    store = open_store(path)
    attrs = store.attrs
    if attrs.get("model") != model:
        raise CamstatError(f"--means store {path} is of model {attrs.get('model')!r}, not {model!r};"
                           " give the train-split store of a baseline with the same --model")
    if list(attrs.get("classes", [])) != list(classes):
        raise CamstatError(f"--means store {path} has other classes than the training data"
                           f" ({len(attrs.get('classes', []))} vs {len(classes)});"
                           " give the train-split store of a baseline on the same --data")
    if layer not in store.layers:
        raise CamstatError(f"--means store {path} has no maps of layer {layer!r} (it holds {', '.join(store.layers)}); pass --layer to match or re-extract")
    if method not in store.methods:
        raise CamstatError(f"--means store {path} has no {method} maps (it holds {', '.join(store.methods)}); pass --cam to match or re-extract")
    if attrs.get("split") != "train":
        raise CamstatError(
            f"--means store {path} is of the {attrs.get('split')!r} split; class means must come from the"
            " training split (extract the baseline with --split train), so held-out data never shapes training"
        )
    store.require_complete()
    target = "true" if "true" in store.targets else store.targets[0]
    params = {"method": method, "layer": layer, "target": target, "size": [int(size[0]), int(size[1])],
              "normalize": "minmax", "class_of": "label", "correct_only": True, "n": store.n,
              "checkpoint_sha256": attrs.get("checkpoint_sha256")}
    name = f"class_means_{method}_{layer}"
    cached = _read_cached(store, name, params, len(classes), tuple(size))
    if cached is not None:
        means, counts, fallback = cached
        return ClassMeans(means, counts, fallback, str(path), method, layer, cached=True)

    from camstat import metrics, references

    samples = store.samples
    labels, correct = samples["label"], samples["correct"]
    c = len(classes)
    blocks = store.iter_maps(method, layer, target, size=tuple(size), normalize="minmax")
    # Training needs a target map for every class, so an empty class falls back to all its samples (named in
    # `fallback`), where the analyses' rule (camstat.references) leaves it NaN.
    (sums, counts), (all_sums, all_counts) = references.group_sums(blocks, labels, [correct, np.ones(len(labels), bool)],
                                                                   c)
    fallback = [k for k in range(c) if counts[k] == 0]
    missing = [classes[k] for k in fallback if all_counts[k] == 0]
    if missing:
        raise CamstatError(f"--means store {path} has no samples of class(es) {', '.join(missing[:5])}")
    means = np.where(counts[:, None, None] > 0, metrics.class_means(sums, np.maximum(counts, 1)),
                     metrics.class_means(all_sums, np.maximum(all_counts, 1))).astype(np.float32)
    _write_cache(store, name, params, means, counts, fallback)
    return ClassMeans(means, counts, fallback, str(path), method, layer, cached=False)


def _read_cached(store, name: str, params: dict, c: int, size: tuple[int, int]):
    found = store.read_derived(name, params)  # None unless made with exactly these parameters
    if found is None or set(found.arrays) != {"means", "counts"}:
        return None
    means = np.asarray(found.arrays["means"], np.float32)
    counts = np.asarray(found.arrays["counts"], np.int64)
    if means.shape != (c, *size) or not np.isfinite(means).all():
        return None
    return means, counts, list(found.attrs.get("fallback_classes", []))


def _write_cache(store, name: str, params: dict, means: np.ndarray, counts: np.ndarray, fallback: list[int]) -> None:
    """Best effort: a read-only store only costs the cache (the result is swapped in whole, or not at all)."""
    try:
        store.write_derived(name, params, {"means": means, "counts": counts}, {"fallback_classes": fallback},
                            dims={"means": ("class", "y", "x"), "counts": ("class",)})
    except OSError:
        pass
