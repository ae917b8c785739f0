"""CAM-consistency losses for training (Hypothesis 2, SPEC 5).

The pieces, each usable on its own from a notebook:

- :func:`training_cams` -- differentiable Grad-CAM / Grad-CAM++ maps of a
  batch at the target layer's resolution, min-max normalised per image, in
  float32. The formulas are :mod:`camstat.cams`' (the extraction engine's:
  one definition per method, used both ways), the graph is kept through the
  gradient (``create_graph=True``), so a loss on the maps trains the network.
- the loss terms on such maps (B, h, w): :func:`mean_term` (SPEC's
  ``L_cam = ||CAM_c(x) - mean_CAM_c||^2``, per pixel), :func:`variance_term`
  (within-batch, per-class variance), :func:`spread_term` (radius of
  gyration: narrower regions) and their combinations in :class:`CamLoss`
  (``mean``, ``variance``, ``spread``, ``neg-variance``, ``hybrid``);
- :func:`lambda_at` -- the ``constant``, ``linear`` and ``curriculum``
  schedules of lambda over epochs;
- :func:`class_means_from_store` -- the per-class mean maps of a baseline's
  correct training-set maps (``--means STORE``), cached in the store;
- :class:`CamHook` -- captures a layer's output inside the training graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from camstat.cams import NATIVE, _minmax, differentiable_cams
from camstat.errors import CamstatError

LOSSES = ("mean", "variance", "spread", "neg-variance", "hybrid")
SCHEDULES = ("constant", "linear", "curriculum")
CAM_METHODS = ("gradcam", "gradcam++")
HYBRID_TERMS = ("mean", "variance", "spread", "neg-variance")
DEFAULT_HYBRID = "mean=1,spread=1"
# Below this (in diagonal units) the radius of gyration is floored inside the
# square root, so the gradient of a one-pixel map stays finite.
_SPREAD_EPS = 1e-6


# --------------------------------------------------------------------------
# differentiable maps


def training_cams(acts: torch.Tensor, scores: torch.Tensor, method: str = "gradcam") -> torch.Tensor:
    """Differentiable, per-image min-max CAMs (B, h, w) in float32.

    ``acts`` is the target layer's output inside the training graph, ``scores``
    (B,) the logits of the classes to explain (the true ones in training). The
    maps are ``camstat.cams``' raw CAMs (``ReLU(sum_k w_k A_k)``), scaled exactly as
    the store's ``minmax`` analysis maps at the layer resolution
    (:func:`camstat.cams.scale_maps` without a resize: ``(m - min) / (max + 1e-7)``,
    clipped at 0 and scaled once more, as pytorch-grad-cam does), so training
    maps, stored class means and held-out maps share one definition.

    Under autocast (``--amp``) the gradient is taken in the activations' dtype
    and everything after it (the method's formula -- Grad-CAM++ cubes the
    gradients --, the scaling and the loss) runs in float32.
    """
    if method not in CAM_METHODS:
        raise CamstatError(f"unknown --cam {method!r}; choose {' or '.join(CAM_METHODS)}")
    if acts.dtype == torch.float32:
        raw = differentiable_cams(acts, scores.float(), method, create_graph=True)
    else:
        (grads,) = torch.autograd.grad(scores.float().sum(), acts, create_graph=True)
        with torch.autocast(acts.device.type, enabled=False):
            raw = NATIVE[method].cam(acts.float(), grads.float())
    with torch.autocast(acts.device.type, enabled=False):
        return _minmax(torch.relu(_minmax(raw.float())))


# --------------------------------------------------------------------------
# loss terms on min-max maps (B, h, w)


def mean_term(maps: torch.Tensor, labels: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Mean over images of the per-pixel mean squared difference to the class mean map.

    ``means`` (C, h, w): one map per class. This is ``dist`` of SPEC 3, i.e.
    ``||CAM_c(x) - mean_CAM_c||_2^2 / (h w)``, averaged over the batch.
    """
    if means.shape[-2:] != maps.shape[-2:]:
        raise CamstatError(f"class means are {tuple(means.shape[-2:])}, maps {tuple(maps.shape[-2:])}")
    return ((maps - means[labels].to(maps.dtype)) ** 2).mean(dim=(1, 2)).mean()


def variance_term(maps: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Pooled within-batch, within-class variance of the maps.

    Per image the mean squared difference to the batch mean of its class
    (images whose class has a single member in the batch are left out),
    averaged over images. Zero (still in the graph) when no class repeats.
    """
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    c = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    onehot = torch.nn.functional.one_hot(labels, c).to(flat.dtype)  # (B, C)
    counts = onehot.sum(dim=0)  # (C,)
    centres = (onehot.T @ flat) / counts.clamp_min(1)[:, None]  # (C, P)
    per_image = ((flat - centres[labels]) ** 2).mean(dim=1)
    valid = (counts[labels] >= 2).to(flat.dtype)
    return (per_image * valid).sum() / valid.sum().clamp_min(1)


def spread_term(maps: torch.Tensor) -> torch.Tensor:
    """Mean radius of gyration of the sum-normalised maps / the map's diagonal.

    As SPEC 3's ``spread``: each map is normalised to sum 1 (a map that is zero
    everywhere counts as uniform -- the widest -- so switching maps off is no
    way to look narrow), the radius of gyration is taken around its centre of
    mass in pixel units and divided by ``sqrt(h^2 + w^2)``.
    """
    b, h, w = maps.shape
    total = maps.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / (h * w))
    p = torch.where(total > 0, maps / total.clamp_min(1e-30), uniform)
    ys = torch.arange(h, dtype=maps.dtype, device=maps.device)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=maps.dtype, device=maps.device)[None, :].expand(h, w)
    cy = (p * ys).sum(dim=(1, 2), keepdim=True)
    cx = (p * xs).sum(dim=(1, 2), keepdim=True)
    second = (p * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum(dim=(1, 2))
    diag2 = float(h * h + w * w)
    return torch.sqrt(second / diag2 + _SPREAD_EPS**2).mean()


def parse_hybrid(text: str | dict | None) -> dict[str, float]:
    """``"mean=1,spread=0.5"`` -> ``{"mean": 1.0, "spread": 0.5}`` (terms of ``--loss hybrid``)."""
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in (text or DEFAULT_HYBRID).split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise CamstatError(f"bad --hybrid term {part!r}; write TERM=WEIGHT, e.g. {DEFAULT_HYBRID}")
            items.append((key.strip(), value.strip()))
    weights: dict[str, float] = {}
    for key, value in items:
        if key not in HYBRID_TERMS:
            raise CamstatError(f"unknown --hybrid term {key!r}; choose from {', '.join(HYBRID_TERMS)}")
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise CamstatError(f"--hybrid weight of {key} is not a number: {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise CamstatError(f"--hybrid weight of {key} must be finite and >= 0, not {value}")
        weights[key] = weight
    if not any(weights.values()):
        raise CamstatError("--hybrid needs at least one positive weight")
    return weights


@dataclass
class CamLoss:
    """``L_cam`` of one ``--loss`` kind on min-max maps.

    ``means`` (C, h, w) is needed by ``mean`` (and by ``hybrid`` when it
    weighs ``mean``); ``weights`` are the ``hybrid`` terms' weights.
    """

    kind: str = "mean"
    means: torch.Tensor | None = None
    num_classes: int | None = None
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in LOSSES:
            raise CamstatError(f"unknown --loss {self.kind!r}; choose from {', '.join(LOSSES)}")
        if self.kind == "hybrid":
            self.weights = parse_hybrid(self.weights or None)
        else:
            self.weights = {self.kind: 1.0}
        if self.needs_means and self.means is None:
            raise CamstatError(
                f"--loss {self.kind} needs class mean maps: pass --means STORE (the baseline's train-split store)"
            )

    @property
    def needs_means(self) -> bool:
        return self.weights.get("mean", 0) > 0

    def terms(self, maps: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, weight in self.weights.items():
            if weight == 0:
                continue
            if name == "mean":
                out[name] = mean_term(maps, labels, self.means)
            elif name == "variance":
                out[name] = variance_term(maps, labels, self.num_classes)
            elif name == "neg-variance":
                out[name] = -variance_term(maps, labels, self.num_classes)
            else:
                out[name] = spread_term(maps)
        return out

    def __call__(self, maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        terms = self.terms(maps, labels)
        return sum(self.weights[name] * value for name, value in terms.items())


# --------------------------------------------------------------------------
# lambda schedules


def curriculum_defaults(epochs: int, warmup: int | None, ramp: int | None) -> tuple[int, int]:
    """Curriculum warm-up and ramp lengths (epochs); each defaults to 20 % of the epochs."""
    default = max(1, round(0.2 * epochs)) if epochs > 1 else 0
    return (default if warmup is None else int(warmup)), (default if ramp is None else int(ramp))


def lambda_at(epoch: int, lam: float, schedule: str, epochs: int, warmup: int = 0, ramp: int = 0) -> float:
    """Lambda in epoch ``epoch`` (0-based) of ``epochs``.

    ``constant``: ``lam`` throughout. ``linear``: ``lam * (epoch + 1) / epochs``,
    reaching ``lam`` in the last epoch. ``curriculum``: 0 for ``warmup``
    epochs (plain training), then a linear ramp over ``ramp`` epochs that
    reaches ``lam`` in its last one, then ``lam``.
    """
    if schedule not in SCHEDULES:
        raise CamstatError(f"unknown --schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if lam == 0:
        return 0.0
    if schedule == "constant":
        return float(lam)
    if schedule == "linear":
        return float(lam) * (epoch + 1) / max(1, epochs)
    if epoch < warmup:
        return 0.0
    if ramp <= 0:
        return float(lam)
    return float(lam) * min(1.0, (epoch - warmup + 1) / ramp)


# --------------------------------------------------------------------------
# the layer's activations inside the graph


class CamHook:
    """A forward hook that keeps the target layer's output while ``active``.

    The output is recorded as it is (in the graph, no clone, no detach), so
    a plain step with the hook inactive is exactly a step without it.
    """

    def __init__(self, module: nn.Module):
        self.active = False
        self.acts: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.active:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise CamstatError("the CAM target layer does not output a 4-D feature map; pick another --layer")
            self.acts = output
        return None

    def take(self) -> torch.Tensor:
        acts, self.acts = self.acts, None
        if acts is None:
            raise RuntimeError("the CAM target layer did not run in this forward pass")
        return acts

    def remove(self) -> None:
        self._handle.remove()


# --------------------------------------------------------------------------
# class means from a baseline store


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

    from camstat import metrics

    samples = store.samples
    labels, correct = samples["label"], samples["correct"]
    c = len(classes)
    sums, counts = np.zeros((c, *size)), np.zeros(c, np.int64)
    all_sums, all_counts = np.zeros((c, *size)), np.zeros(c, np.int64)
    for sl, block in store.iter_maps(method, layer, target, size=tuple(size), normalize="minmax"):
        s_ok, k_ok = metrics.class_sums(block, labels[sl], correct[sl], c)
        s_all, k_all = metrics.class_sums(block, labels[sl], np.ones(len(block), bool), c)
        sums, counts, all_sums, all_counts = sums + s_ok, counts + k_ok, all_sums + s_all, all_counts + k_all
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
