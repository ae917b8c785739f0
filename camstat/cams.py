"""Class activation maps: the methods, the one-pass engine and map scaling.

Each native method is a tiny class that turns a layer's activations ``A``
(B, K, h, w) and the gradients ``dY/dA`` of the target scores into a raw map
(B, h, w), in the manner of pytorch-grad-cam's ``BaseCAM``: channel-weight
methods override :meth:`CamMethod.weights`, element-wise methods override
:meth:`CamMethod.cam`. The same functions serve extraction (plain tensors)
and training (tensors carrying a graph, see :func:`differentiable_cams`), so
each formula exists once.

The engine runs **one forward and one backward pass per batch and target**:
forward hooks turn the first target layer's output into a fresh leaf, so
the backward stops there (never reaching the parameters or the input), and
every requested method and layer is computed from the same activations and
gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camstat.errors import CamstatError

TARGETS = ("pred", "true")


class CamMethod:
    """A gradient-based CAM: ``ReLU(sum_k w_k A_k)`` unless :meth:`cam` says otherwise."""

    name: str = ""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cam(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        w = self.weights(acts, grads)
        return torch.relu((w[:, :, None, None] * acts).sum(dim=1))


class GradCAM(CamMethod):
    """Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ij dY/dA_kij``."""

    name = "gradcam"

    def weights(self, acts, grads):
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), with exponentials of the score.

    ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3 + eps)`` (zero where ``g = 0``),
    ``w_k = sum_ij alpha_kij ReLU(g_kij)``, as pytorch-grad-cam computes it.
    """

    name = "gradcam++"

    def weights(self, acts, grads):
        g2 = grads * grads
        g3 = g2 * grads
        sum_acts = acts.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (torch.relu(grads) * alpha).sum(dim=(2, 3))


class XGradCAM(CamMethod):
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_ij A_kij g_kij / (sum_ij A_kij + eps)``."""

    name = "xgradcam"

    def weights(self, acts, grads):
        sum_acts = acts.sum(dim=(2, 3), keepdim=True)
        return (grads * acts / (sum_acts + 1e-7)).sum(dim=(2, 3))


class HiResCAM(CamMethod):
    """HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)`` element-wise."""

    name = "hirescam"

    def cam(self, acts, grads):
        return torch.relu((grads * acts).sum(dim=1))


class LayerCAM(CamMethod):
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``."""

    name = "layercam"

    def cam(self, acts, grads):
        return torch.relu((torch.relu(grads) * acts).sum(dim=1))


NATIVE: dict[str, CamMethod] = {m.name: m for m in (GradCAM(), GradCAMPlusPlus(), XGradCAM(), HiResCAM(), LayerCAM())}


# pytorch-grad-cam's other methods, by the names its README uses (lower case) -> class name.
# Imported only when asked for: importing the library costs seconds.
LIBRARY = {
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "ablationcam": "AblationCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "randomcam": "RandomCAM",
    "kpcacam": "KPCA_CAM",
    "shapleycam": "ShapleyCAM",
}


def available_methods() -> list[str]:
    return list(NATIVE) + sorted(LIBRARY)


def parse_methods(text: str) -> list[str]:
    """``"gradcam,gradcam++"`` -> validated, de-duplicated list."""
    methods = list(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    if not methods:
        raise CamstatError("no CAM method given; use e.g. --methods gradcam,gradcam++")
    known = available_methods()
    for m in methods:
        if m not in known:
            raise CamstatError(f"unknown CAM method {m!r}; choose from {', '.join(known)}")
    return methods


def parse_targets(text: str) -> list[str]:
    """``pred``, ``true`` or ``both``."""
    text = text.strip().lower()
    if text == "both":
        return list(TARGETS)
    if text not in TARGETS:
        raise CamstatError(f"unknown --target {text!r}; choose pred, true or both")
    return [text]


@dataclass
class CamBatch:
    """What the engine returns for one batch."""

    logits: torch.Tensor  # (B, C), detached
    maps: dict[tuple[str, str, str], torch.Tensor]  # (method, layer, target) -> (B, h, w) raw maps


class CamEngine:
    """Hooks a model's target layers and computes every method from one pass.

    Use as a context manager (hooks are removed on exit)::

        with CamEngine(model, ["layer4"], ["gradcam", "gradcam++"]) as engine:
            out = engine(images, labels, targets=["pred"])
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], methods: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        self.methods = list(methods)
        modules = dict(model.named_modules())
        self._acts: dict[str, torch.Tensor] = {}
        self._capturing = False
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]
        self._library = {}
        for m in self.methods:
            if m in LIBRARY:
                import pytorch_grad_cam

                obj = getattr(pytorch_grad_cam, LIBRARY[m])(model=model, target_layers=[modules[n] for n in self.layers])
                # The library's own hooks would record every forward we make: we feed it ours.
                obj.activations_and_grads.release()
                self._library[m] = obj

    def _hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if not self._capturing:
                return None
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise CamstatError(
                    f"layer {name!r} outputs {type(output).__name__}"
                    f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}, not a 4-D feature map;"
                    " pick another with `camstat layers`"
                )
            if not output.requires_grad:
                # Start the graph here: the backward then ends at this layer.
                output = output.detach().requires_grad_(True)
            self._acts[name] = output
            # A clone keeps the recorded activations safe from in-place ops downstream.
            return output.clone()

        return hook

    def __enter__(self) -> "CamEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: Sequence[str] = ("pred",)) -> CamBatch:
        self._acts = {}
        self._capturing = True
        try:
            with torch.enable_grad():
                logits = self.model(images)
        finally:
            self._capturing = False
        acts = [self._acts[name] for name in self.layers]
        pred = logits.argmax(dim=1)
        maps: dict[tuple[str, str, str], torch.Tensor] = {}
        classes_of = {"pred": pred, "true": labels.to(logits.device)}
        for ti, target in enumerate(targets):
            cls = classes_of[target]
            score = logits.gather(1, cls[:, None]).sum()
            last = ti == len(targets) - 1
            grads = torch.autograd.grad(score, acts, retain_graph=not last)
            for name, a, g in zip(self.layers, acts, grads):
                a, g = a.detach(), g.detach()
                for m in self.methods:
                    if m in NATIVE:
                        maps[(m, name, target)] = NATIVE[m].cam(a, g)
                    else:
                        maps[(m, name, target)] = self._library_cam(m, name, images, cls, a, g)
        return CamBatch(logits=logits.detach(), maps=maps)

    def _library_cam(self, method, layer, images, cls, acts, grads) -> torch.Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        obj = self._library[method]
        module = dict(self.model.named_modules())[layer]
        targets = [ClassifierOutputTarget(int(c)) for c in cls]
        cam = obj.get_cam_image(images, module, targets, acts.cpu().numpy(), grads.cpu().numpy(), False)
        return torch.from_numpy(np.maximum(cam, 0).astype(np.float32)).to(acts.device)


def differentiable_cams(
    acts: torch.Tensor, scores: torch.Tensor, method: str = "gradcam", create_graph: bool = True
) -> torch.Tensor:
    """Raw CAMs (B, h, w) whose graph runs through the gradient, for losses on maps.

    ``acts`` is a target layer's output inside the training graph and ``scores``
    (B,) the per-image target logits. ``create_graph=True`` keeps the graph of
    ``dY/dA`` so that a loss on the maps trains the network (a double backward
    that, for the last stage, only runs through the head).
    """
    if method not in NATIVE:
        raise CamstatError(f"differentiable CAM supports {', '.join(NATIVE)}, not {method!r}")
    (grads,) = torch.autograd.grad(scores.sum(), acts, create_graph=create_graph)
    return NATIVE[method].cam(acts, grads)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` without resize: ``(m - min) / (max + 1e-7)``."""
    flat = maps.flatten(1)
    m = maps - flat.min(dim=1).values[:, None, None]
    return m / (m.flatten(1).max(dim=1).values[:, None, None] + 1e-7)


def scale_maps(raw: np.ndarray | torch.Tensor, size: tuple[int, int] | None, normalize: str = "minmax") -> np.ndarray:
    """Analysis maps from raw layer-resolution maps (N, h, w) -> float32 (N, H, W).

    ``minmax`` reproduces pytorch-grad-cam exactly: per map subtract the min and
    divide by ``max + 1e-7``, resize bilinearly with half-pixel centres
    (``cv2.resize``, ``F.interpolate(align_corners=False)``), clip at 0 and
    min-max scale once more. ``sum`` gives non-negative maps summing to 1 (a
    constant-zero map becomes uniform); ``none`` resizes the raw values only.
    """
    if normalize not in ("minmax", "sum", "none"):
        raise CamstatError(f"unknown normalize {normalize!r}; choose minmax, sum or none")
    t = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
    if t.ndim != 3:
        raise ValueError(f"expected maps of shape (N, h, w), got {tuple(t.shape)}")

    def resize(x):
        if size is None or tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]

    if normalize == "minmax":
        out = minmax(torch.relu(resize(minmax(t))))
    elif normalize == "sum":
        out = torch.relu(resize(t))
        total = out.flatten(1).sum(dim=1)[:, None, None]
        uniform = torch.full_like(out, 1.0 / (out.shape[-1] * out.shape[-2]))
        out = torch.where(total > 0, out / total.clamp_min(1e-30), uniform)
    else:
        out = resize(t)
    return out.numpy().astype(np.float32, copy=False)
