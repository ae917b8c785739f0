"""Benchmark: cost of a CAM-regularised training step vs a plain one (SPEC 5).

SPEC: with the target layer at the last convolutional stage, a regularised
step (``L_cls + lambda * L_cam``, differentiable Grad-CAM of the true class)
costs at most 1.25x a plain cross-entropy step of the same model and batch.
Both steps are :func:`camstat.training.train.train_step` -- the code ``train-reg``
runs -- on the same model, batch and optimiser; they are timed alternately
(so machine load hits both alike) after a warm-up, and the medians compared.

    python studies/benchmarks/train_step.py                 # resnet20 + smallcnn, batch 128, 32x32, CPU
    python studies/benchmarks/train_step.py --repeats 50 --device cuda --json out.json

Prints one line per (model, CAM, loss) with the median step times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from camstat import models
from camstat.devices import resolve_device
from camstat.extract import layer_shapes
from camstat.training.config import loss_weights
from camstat.training.losses import CamHook, CamLoss
from camstat.training.train import train_step


def bench(spec: str, cam: str, loss: str, batch: int, size: int, repeats: int, warmup: int, device: torch.device,
          num_classes: int = 10) -> dict:
    torch.manual_seed(0)
    net = models.build_model(spec, num_classes).to(device).train()
    layer = models.resolve_layers(net, "auto", (size, size))[0]
    net.eval()
    hw = tuple(layer_shapes(net, [layer], torch.zeros(3, size, size, device=device))[layer])
    net.train()
    hook = CamHook(models.get_layer(net, layer))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    means = torch.rand(num_classes, *hw, device=device)
    cam_loss = CamLoss(loss_weights(loss), means=means, num_classes=num_classes)

    def timed(lam: float) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train_step(net, hook, opt, images, labels, lam=lam, cam_loss=cam_loss, cam=cam)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        timed(0.0)
        timed(0.2)
    plain, reg = [], []
    for _ in range(repeats):
        plain.append(timed(0.0))
        reg.append(timed(0.2))
    hook.remove()
    p, r = statistics.median(plain), statistics.median(reg)
    return {"model": spec, "layer": layer, "layer_size": list(hw), "cam": cam, "loss": loss, "batch": batch,
            "size": size, "device": str(device), "threads": torch.get_num_threads(), "repeats": repeats,
            "plain_ms": 1000 * p, "reg_ms": 1000 * r, "ratio": r / p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="camstat:resnet20,camstat:smallcnn")
    parser.add_argument("--cams", default="gradcam,gradcam++")
    parser.add_argument("--losses", default="mean")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for spec in args.models.split(","):
        for cam in args.cams.split(","):
            for loss in args.losses.split(","):
                row = bench(spec, cam, loss, args.batch, args.size, args.repeats, args.warmup, device)
                rows.append(row)
                print(f"{spec:18s} {row['layer']:16s} {cam:9s} {loss:12s} batch {args.batch} {args.size}x{args.size} "
                      f"{row['device']}: plain {row['plain_ms']:8.1f} ms  reg {row['reg_ms']:8.1f} ms  "
                      f"ratio {row['ratio']:.3f}", flush=True)
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio (reg / plain): {worst:.3f}  (SPEC: <= 1.25)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "worst_ratio": worst}, f, indent=2)


if __name__ == "__main__":
    main()
