"""CAM-consistency losses for training (Hypothesis 2, SPEC 5): pure torch, no files.

The pieces, each usable on its own from a notebook:

- :func:`training_cams` -- differentiable Grad-CAM / Grad-CAM++ maps of a
  batch at the target layer's resolution, min-max normalised per image, in
  float32. The formulas are :mod:`camstat.cams`' (the extraction engine's:
  one definition per method, used both ways), the graph is kept through the
  gradient (``create_graph=True``), so a loss on the maps trains the network.
- the loss terms on such maps (B, h, w): :func:`mean_term` (SPEC's
  ``L_cam = ||CAM_c(x) - mean_CAM_c||^2``, per pixel), :func:`variance_term`
  (within-batch, per-class variance), :func:`spread_term` (radius of
  gyration: narrower regions) and their weighted sum in :class:`CamLoss`;
- :class:`CamHook` -- captures a layer's output inside the training graph.

Which terms a ``--loss`` means, the lambda schedules and the validation of
every option live in :mod:`camstat.training.config`; the class means of a
baseline store in :mod:`camstat.training.means`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camstat.cams import NATIVE, differentiable_cams, minmax
from camstat.errors import CamstatError

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
    if acts.dtype == torch.float32:
        raw = differentiable_cams(acts, scores.float(), method, create_graph=True)
    else:
        (grads,) = torch.autograd.grad(scores.float().sum(), acts, create_graph=True)
        with torch.autocast(acts.device.type, enabled=False):
            raw = NATIVE[method].cam(acts.float(), grads.float())
    with torch.autocast(acts.device.type, enabled=False):
        return minmax(torch.relu(minmax(raw.float())))


# --------------------------------------------------------------------------
# loss terms on min-max maps (B, h, w)


def mean_term(maps: torch.Tensor, labels: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Mean over images of the per-pixel mean squared difference to the class mean map.

    ``means`` (C, h, w): one map per class. This is ``dist`` of SPEC 3, i.e.
    ``||CAM_c(x) - mean_CAM_c||_2^2 / (h w)``, averaged over the batch.
    """
    if means.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"class means are {tuple(means.shape[-2:])}, maps {tuple(maps.shape[-2:])}")
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


@dataclass
class CamLoss:
    """``L_cam = sum_t w_t * term_t(maps)`` over the weighted terms (mean, variance, spread, neg-variance).

    ``weights`` come from :func:`camstat.training.config.loss_weights` (one
    term with weight 1 for a plain ``--loss``); ``means`` (C, h, w) is needed
    when ``mean`` has a positive weight.
    """

    weights: dict[str, float]
    means: torch.Tensor | None = None
    num_classes: int | None = None

    def __post_init__(self):
        if self.weights.get("mean", 0) > 0 and self.means is None:
            raise ValueError("the mean term needs class mean maps")

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
