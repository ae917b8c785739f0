"""Held-out evaluation of a training run: predictions, true-class CAMs and their consistency.

:class:`Evaluator` runs :class:`camstat.cams.CamEngine` (the extraction
engine) over a held-out split; :func:`heldout_metrics` turns its output into
an epoch record's ``accuracy``, ``dist``, ``ssim``, ``dist_self`` and
``ssim_self``; :func:`ssim_pairs` is SSIM per image pair as training and
``camstat compare`` measure it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camstat import metrics

SSIM_MIN_SIDE = 7  # SSIM's 7x7 window


def own_reference(maps: np.ndarray, labels: np.ndarray, correct: np.ndarray, num_classes: int):
    """Leave-one-out class means of the model's own correct maps, per image (SPEC 3's reference).

    Image i's reference is the mean map of the correctly classified images of
    its class (its label) other than i (:func:`camstat.metrics.loo_references`).
    Returns ``(ref (N,h,w), valid (N,))``; ``valid`` is False where the class
    has no other correct image.
    """
    sums, counts = metrics.class_sums(maps, labels, correct, num_classes)
    ref = metrics.loo_references(maps, labels, correct, sums, counts)
    valid = np.isfinite(ref).all(axis=(1, 2))
    return np.where(valid[:, None, None], ref, 0.0).astype(np.float32), valid


def ssim_size(layer_hw: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """The size SSIM is taken at: the layer's resolution, or the input size for maps under 7x7."""
    return tuple(layer_hw) if min(layer_hw) >= SSIM_MIN_SIDE else tuple(input_size)


def ssim_pairs(maps: np.ndarray, refs: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """SSIM per image; maps under 7x7 are compared at the input size (bilinear)."""
    if len(maps) == 0:
        return np.zeros(0, np.float32)
    if min(maps.shape[-2:]) < SSIM_MIN_SIDE:
        up = lambda a: F.interpolate(torch.from_numpy(np.ascontiguousarray(a, np.float32))[:, None],
                                     size=tuple(input_size), mode="bilinear", align_corners=False)[:, 0].numpy()
        maps, refs = up(maps), up(refs)
    return np.asarray(metrics.ssim(maps, refs), np.float64)


def _consistency(maps, refs, valid, input_size) -> tuple[np.ndarray, np.ndarray]:
    dist = np.full(len(maps), np.nan)
    ssim = np.full(len(maps), np.nan)
    if valid.any():
        dist[valid] = np.asarray(metrics.dist(maps[valid], refs[valid]), np.float64)
        ssim[valid] = ssim_pairs(maps[valid], refs[valid], input_size)
    return dist, ssim


def _nanmean(a: np.ndarray) -> float | None:
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


class Evaluator:
    """Predictions and true-class CAMs of the held-out split, as ``camstat extract`` makes them.

    Runs :class:`camstat.cams.CamEngine` (the extraction engine) on a frozen
    copy of the network, so training state (graph, flags, DDP) is untouched.
    """

    def __init__(self, module: nn.Module, layer: str, method: str, batch_size: int, workers: int,
                 device: torch.device):
        from camstat.cams import CamEngine

        self.net = copy.deepcopy(module).eval().requires_grad_(False)
        self.engine = CamEngine(self.net, [layer], [method])
        self.key = (method, layer, "true")
        self.batch_size, self.workers, self.device = batch_size, workers, device

    def __call__(self, module: nn.Module, dataset) -> dict[str, np.ndarray]:
        from camstat.cams import scale_maps

        self.net.load_state_dict(module.state_dict())
        # its own generator: iterating a loader draws a seed, which must not come from training's stream
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.workers, generator=torch.Generator())
        logits, raws = [], []
        for images, labels, _ in loader:
            out = self.engine(images.to(self.device), labels.to(self.device), ["true"])
            logits.append(out.logits.float().cpu())
            raws.append(out.maps[self.key].float().cpu())
        logits_t = torch.cat(logits)
        raw = torch.cat(raws).numpy()
        pred = logits_t.argmax(1).numpy()
        labels = np.asarray(dataset.labels, np.int64)
        return {
            "index": np.asarray(dataset.index, np.int64),
            "label": labels,
            "pred": pred,
            "correct": pred == labels,
            "confidence": torch.softmax(logits_t, 1).max(1).values.numpy(),
            "maps": scale_maps(raw, raw.shape[-2:], "minmax"),
        }


def heldout_metrics(ev: dict, ref_means: np.ndarray | None, num_classes: int, input_size) -> dict:
    """Adds per-image ``dist``/``ssim`` (to ``ref_means``, else own) and ``*_self`` to ``ev``; returns their means."""
    maps, labels, correct = ev["maps"], ev["label"], ev["correct"]
    self_ref, self_valid = own_reference(maps, labels, correct, num_classes)
    ev["dist_self"], ev["ssim_self"] = _consistency(maps, self_ref, self_valid, input_size)
    if ref_means is not None:
        ev["dist"], ev["ssim"] = _consistency(maps, ref_means[labels], np.ones(len(maps), bool), input_size)
    else:
        ev["dist"], ev["ssim"] = ev["dist_self"], ev["ssim_self"]
    return {
        "accuracy": float(correct.mean()),
        "dist": _nanmean(ev["dist"]),
        "ssim": _nanmean(ev["ssim"]),
        "dist_self": _nanmean(ev["dist_self"]),
        "ssim_self": _nanmean(ev["ssim_self"]),
    }
