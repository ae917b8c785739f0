"""Choosing where a model runs (``--device``) and which process we are under torchrun."""

from __future__ import annotations

import os

import torch

from camstat.errors import CamstatError


def resolve_device(text: str = "auto") -> torch.device:
    """``auto`` picks CUDA (this process's ``LOCAL_RANK`` under torchrun), then MPS, then CPU."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CamstatError(f"invalid --device {text!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CamstatError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CamstatError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CamstatError("--device mps asked for, but MPS is not available; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CamstatError(f"invalid --device {text!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not under torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
