"""The model's own embedding: the input of its classifier head, taken in the extraction's forward pass.

Which module is the head: the **last** ``nn.Linear`` that a forward pass of
one input reaches (found by hooking every ``nn.Linear`` and recording the
order of calls). For the usual classifiers (ResNet's ``fc``, VGG's and
EfficientNet's ``classifier``, ViT's ``head``) this is the final layer, and
its input is the pooled penultimate feature vector (SPEC 2.4). A model that
reaches no ``nn.Linear`` (a 1x1-convolution head, a TorchScript module), or
whose last one is fed something other than one vector per image, has no
embedding: extraction stores none and says why in the store's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Head:
    """Where the embedding comes from: the head module's name and the embedding's width (None: no embedding)."""

    module: str | None
    dim: int | None
    reason: str | None = None  # why there is no embedding

    def to_attrs(self) -> dict:
        return {"module": self.module, "dim": self.dim, "reason": self.reason,
                "rule": "input of the last nn.Linear reached in the forward pass"}


def find_head(model: nn.Module, sample: torch.Tensor) -> Head:
    """The classifier head of ``model``: the last ``nn.Linear`` one forward pass of ``sample`` (C, H, W) reaches."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: calls.append((name, tuple(args[0].shape))))
               for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(sample[None])
    finally:
        for h in handles:
            h.remove()
    if not calls:
        return Head(None, None, "the forward pass reaches no nn.Linear head")
    name, shape = calls[-1]
    if len(shape) != 2:
        return Head(None, None, f"the head {name!r} takes input of shape {shape}, not one vector per image")
    return Head(name, int(shape[1]))


class HeadInput:
    """Records the head's input at every forward pass (a forward pre-hook); :meth:`take` hands it over.

    Use as a context manager beside :class:`camstat.cams.CamEngine`, so the
    embedding comes from the same forward pass as the logits and maps.
    """

    def __init__(self, model: nn.Module, head: Head):
        self._value: torch.Tensor | None = None
        self._handle = None
        if head.module is not None:
            module = dict(model.named_modules())[head.module]
            self._handle = module.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        # The first forward after a take is the engine's own; methods that run more (ScoreCAM's masked
        # inputs) must not replace it.
        if self._value is None and args:
            self._value = args[0].detach()

    def take(self) -> torch.Tensor | None:
        """The head's input (B, D) in the first forward since the last take, or None without a head."""
        value, self._value = self._value, None
        return value

    def __enter__(self) -> "HeadInput":
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
