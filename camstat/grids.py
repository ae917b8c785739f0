"""Reading a layer's output as an image grid (B, C, h, w).

CNN layers already give (B, C, h, w). Transformers do not:

- ViT-style blocks give tokens (B, T, C): ``p`` prefix tokens (class,
  distillation, register) followed by the ``h*w`` patch tokens in row-major
  order. The grid is ``tokens[:, p:].reshape(B, h, w, C)`` moved to channels
  first -- pytorch-grad-cam's ``reshape_transform`` for ViTs (and, with
  ``p = 0``, for Swin models that emit (B, L, C)).
- Swin / ConvNeXt-style stages compute channels last (B, h, w, C): a permute.

Which reading applies is decided from the shape alone, against the input
size: the grid must have the image's aspect ratio (the strides along height
and width agree), which channels-first and channels-last readings of the same
tensor almost never both satisfy. A shape no reading fits (attention scores,
per-head queries...) is not an image grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# How far the height and width strides (input / grid) may disagree. Convolutions
# with padding round sizes, so channels-first maps get slack; patch grids are exact.
MAX_STRIDE_RATIO = 1.5
MAX_TOKEN_STRIDE_RATIO = 1.1
# Class + distillation + up to 16 register tokens.
MAX_PREFIX_TOKENS = 18

@dataclass(frozen=True)
class GridLayout:
    """How to read one image's layer output as a (C, h, w) grid.

    ``kind`` is ``chw`` (as is), ``hwc`` (channels last) or ``tokens``
    (``prefix`` leading tokens dropped, the rest reshaped row-major).
    """

    kind: str
    channels: int
    height: int
    width: int
    prefix: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def _stride_ratio(h: int, w: int, input_hw: tuple[int, int]) -> float:
    """max/min of the height and width strides; 1 for a grid with the image's aspect."""
    if h < 1 or w < 1 or h > input_hw[0] or w > input_hw[1]:
        return math.inf
    sh, sw = input_hw[0] / h, input_hw[1] / w
    return max(sh, sw) / min(sh, sw)


def _token_grid(n: int, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) with h*w = n closest to the image's aspect, if close enough."""
    best, best_ratio = None, MAX_TOKEN_STRIDE_RATIO
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for h, w in ((d, n // d), (n // d, d)):
                ratio = _stride_ratio(h, w, input_hw)
                if ratio <= best_ratio:
                    best, best_ratio = (h, w), ratio
    return best


def _token_layout(tokens: int, channels: int, input_hw: tuple[int, int], prefix: int | None) -> GridLayout | None:
    # A declared prefix (timm's num_prefix_tokens) first, then the fewest leading tokens that leave a grid.
    tries = ([prefix] if prefix is not None else []) + list(range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1))
    for p in tries:
        if 0 <= p < tokens:
            grid = _token_grid(tokens - p, input_hw)
            if grid is not None:
                return GridLayout("tokens", channels, grid[0], grid[1], p)
    return None


def grid_layout(shape: tuple[int, ...], input_hw: tuple[int, int], prefix: int | None = None) -> GridLayout | None:
    """The reading of a per-image output ``shape`` (batch dimension removed) as
    an image grid for an input of ``input_hw``, or None when none fits.

    4-D outputs are channels first unless channels last fits the image's aspect
    strictly better (ties stay channels first, PyTorch's convention); 3-D
    outputs are token sequences. ``prefix`` is a model's declared number of
    prefix tokens, tried before inferring it.
    """
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    if len(shape) == 2:
        return _token_layout(int(shape[0]), int(shape[1]), input_hw, prefix)
    if len(shape) != 3:
        return None
    a, b, c = (int(s) for s in shape)
    chw, hwc = _stride_ratio(b, c, input_hw), _stride_ratio(a, b, input_hw)
    if min(chw, hwc) > MAX_STRIDE_RATIO:
        return None
    return GridLayout("chw", a, b, c) if chw <= hwc else GridLayout("hwc", c, a, b)


def to_grid(output: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    """A batch of layer outputs -> (B, C, h, w) per ``layout`` (a view where possible).

    Works for activations and their gradients alike: reading is a slice and a
    permutation, so the gradient of the grid is the grid of the gradient.
    """
    if layout.kind == "chw":
        return output
    if layout.kind == "hwc":
        return output.permute(0, 3, 1, 2)
    grid = output[:, layout.prefix :].reshape(output.shape[0], layout.height, layout.width, layout.channels)
    return grid.permute(0, 3, 1, 2)


def declared_prefix_tokens(model: torch.nn.Module) -> int | None:
    """timm's ``num_prefix_tokens`` (class + distillation + registers), when the model declares it."""
    value = getattr(model, "num_prefix_tokens", None)
    return int(value) if isinstance(value, int) else None
