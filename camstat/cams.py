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
gradients. Layer outputs are read as (B, C, h, w) grids first
(:mod:`camstat.grids`), so transformer tokens and channels-last stages work
as pytorch-grad-cam's ``reshape_transform`` makes them work. ShapleyCAM adds
a Hessian-vector product to the same pass; RandomCAM is seeded per image.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from camstat.errors import CamstatError
from camstat.grids import GridLayout, declared_prefix_tokens, grid_layout, to_grid

TARGETS = ("pred", "true")


class CamMethod:
    """A gradient-based CAM: ``ReLU(sum_k w_k A_k)`` unless :meth:`cam` says otherwise.

    ``second_order`` methods also need the Hessian-vector product ``H A`` of
    the target score with respect to the activations (``hvp``).
    """

    name: str = ""
    second_order: bool = False

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cam(self, acts: torch.Tensor, grads: torch.Tensor, hvp: torch.Tensor | None = None) -> torch.Tensor:
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

    def cam(self, acts, grads, hvp=None):
        return torch.relu((grads * acts).sum(dim=1))


class LayerCAM(CamMethod):
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``."""

    name = "layercam"

    def cam(self, acts, grads, hvp=None):
        return torch.relu((torch.relu(grads) * acts).sum(dim=1))


class ShapleyCAM(CamMethod):
    """ShapleyCAM (Cai et al. 2025, arXiv:2501.06261): a second-order Taylor
    view of Grad-CAM, ``w_k = mean_ij (g - H A / 2)_kij`` with ``H A`` the
    Hessian-vector product of the score, as pytorch-grad-cam computes it. For
    a piecewise-linear head (ReLU, pooling, linear) ``H A = 0`` and it equals Grad-CAM.
    """

    name = "shapleycam"
    second_order = True

    def cam(self, acts, grads, hvp=None):
        if hvp is None:
            raise CamstatError("shapleycam needs the Hessian-vector product of the score (hvp)")
        w = (grads - 0.5 * hvp).mean(dim=(2, 3))
        return torch.relu((w[:, :, None, None] * acts).sum(dim=1))


NATIVE: dict[str, CamMethod] = {
    m.name: m for m in (GradCAM(), GradCAMPlusPlus(), XGradCAM(), HiResCAM(), LayerCAM(), ShapleyCAM())
}
RANDOM = "randomcam"


def random_cam(acts: torch.Tensor, keys: Sequence[int], seed: int) -> torch.Tensor:
    """RandomCAM, the sanity baseline of pytorch-grad-cam: ``ReLU(sum_k w_k A_k)``
    with ``w_k ~ U(-1, 1)``. Image b's weights come from a generator seeded by
    ``(seed, keys[b])`` -- a digest of the image -- so a map depends on the
    seed and the image only: reruns, resumed runs and other batchings agree bitwise.
    """
    k = acts.shape[1]
    w = np.stack([np.random.default_rng([seed, key]).uniform(-1, 1, k) for key in keys])
    w = torch.as_tensor(w, dtype=acts.dtype, device=acts.device)
    return torch.relu((w[:, :, None, None] * acts).sum(dim=1))


def image_keys(images: torch.Tensor) -> list[int]:
    """A 63-bit digest of each image's bytes, the per-image key of :func:`random_cam`."""
    flat = images.detach().cpu().contiguous().numpy()
    return [int.from_bytes(hashlib.blake2b(x.tobytes(), digest_size=8).digest(), "little") >> 1 for x in flat]


# pytorch-grad-cam's other methods, by the names its README uses (lower case) -> class name.
# Imported only when asked for: importing the library costs seconds.
LIBRARY = {
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "ablationcam": "AblationCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "kpcacam": "KPCA_CAM",
}


def available_methods() -> list[str]:
    return list(NATIVE) + sorted([*LIBRARY, RANDOM])


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

    Layer outputs are read as image grids (:mod:`camstat.grids`): token
    sequences of ViTs lose their prefix tokens and become (B, C, h, w),
    channels-last stages are permuted. ``seed`` seeds ``randomcam``.
    Use as a context manager (hooks are removed on exit)::

        with CamEngine(model, ["layer4"], ["gradcam", "gradcam++"]) as engine:
            out = engine(images, labels, targets=["pred"])
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], methods: Sequence[str], seed: int = 0):
        self.model = model
        self.layers = list(layers)
        self.methods = list(methods)
        self.seed = seed
        modules = dict(model.named_modules())
        self._prefix = declared_prefix_tokens(model)
        self._input_hw: tuple[int, int] = (0, 0)
        self._acts: dict[str, torch.Tensor] = {}
        self._layouts: dict[str, GridLayout] = {}
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
            layout = None
            if isinstance(output, torch.Tensor):
                layout = grid_layout(tuple(output.shape[1:]), self._input_hw, self._prefix)
            if layout is None:
                raise CamstatError(
                    f"layer {name!r} outputs {type(output).__name__}"
                    f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}, which is neither a feature"
                    " map, a channels-last map nor transformer tokens forming a patch grid;"
                    " pick another with `camstat layers`"
                )
            if not output.requires_grad:
                # Start the graph here: the backward then ends at this layer.
                output = output.detach().requires_grad_(True)
            self._acts[name] = output
            self._layouts[name] = layout
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
        self._input_hw = (int(images.shape[-2]), int(images.shape[-1]))
        second_order = any(m in NATIVE and NATIVE[m].second_order for m in self.methods)
        self._capturing = True
        try:
            # fused attention kernels have no second derivative; the math kernel has
            with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]) if second_order else nullcontext():
                logits = self.model(images)
        finally:
            self._capturing = False
        acts = [self._acts[name] for name in self.layers]
        keys = image_keys(images) if RANDOM in self.methods else []
        pred = logits.argmax(dim=1)
        maps: dict[tuple[str, str, str], torch.Tensor] = {}
        classes_of = {"pred": pred, "true": labels.to(logits.device)}
        for ti, target in enumerate(targets):
            cls = classes_of[target]
            score = logits.gather(1, cls[:, None]).sum()
            keep = second_order or ti < len(targets) - 1
            grads = torch.autograd.grad(score, acts, retain_graph=keep, create_graph=second_order)
            for name, a, g in zip(self.layers, acts, grads):
                hvp = self._hvp(a, g) if second_order else None
                layout = self._layouts[name]
                a, g = to_grid(a.detach(), layout), to_grid(g.detach(), layout)
                hvp = None if hvp is None else to_grid(hvp, layout)
                for m in self.methods:
                    if m in NATIVE:
                        maps[(m, name, target)] = NATIVE[m].cam(a, g, hvp)
                    elif m == RANDOM:
                        maps[(m, name, target)] = random_cam(a, keys, self.seed)
                    else:
                        maps[(m, name, target)] = self._library_cam(m, name, images, cls, a, g)
        return CamBatch(logits=logits.detach(), maps=maps)

    @staticmethod
    def _hvp(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``H A``: the derivative of ``<dY/dA, A>`` with A held fixed, as pytorch-grad-cam's ShapleyCAM."""
        if not grads.requires_grad:  # the score is linear in A past this layer
            return torch.zeros_like(acts)
        try:
            (hvp,) = torch.autograd.grad(grads, acts, grad_outputs=acts, retain_graph=True, allow_unused=True)
        except RuntimeError as exc:
            raise CamstatError(
                f"shapleycam needs second derivatives, which an operation of this model lacks "
                f"({str(exc).splitlines()[0]}); drop shapleycam from --methods"
            ) from exc
        return torch.zeros_like(acts) if hvp is None else hvp.detach()

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
    first_order = [m for m, cam in NATIVE.items() if not cam.second_order]
    if method not in first_order:
        raise CamstatError(f"differentiable CAM supports {', '.join(first_order)}, not {method!r}")
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
