"""Speed of camstat's ROAD (``camstat.road.road_scores``) against pytorch-grad-cam's ``ROADCombined``.

Both score the same images, maps and model with the nine default percentiles (MoRF and LeRF:
18 imputations per image) and imputation noise 0.01; the maps are smooth, Grad-CAM-like (random
4 x 4 maps, bilinearly upsampled, min-max scaled). Sizes: 32 px (camstat:resnet20, CIFAR-sized)
and 224 px (torchvision:resnet18). Each side runs once per size, in the same process; printed:
images/s of each and the ratio camstat / pytorch-grad-cam, and the largest difference of the
per-image combined scores with noise 0 (a check that both compute the same thing).

    python studies/benchmarks/road_speed.py                       # 64 images at 32 px, 4 at 224 px, one job per CPU
    python studies/benchmarks/road_speed.py --jobs 16 --device cuda --n32 512 --n224 32
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from camstat.models import build_model
from camstat.road import road_scores

PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def smooth_maps(n: int, size: int, seed: int) -> np.ndarray:
    low = torch.from_numpy(np.random.default_rng(seed).random((n, 1, 4, 4), dtype=np.float32))
    up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.amin(dim=(1, 2), keepdim=True)
    return (up / (up.amax(dim=(1, 2), keepdim=True) + 1e-7)).numpy()


def camstat_combined(model, x, maps, classes, noise, jobs) -> np.ndarray:
    seeds = [[np.random.SeedSequence([0, i])] for i in range(len(x))]
    morf, lerf = road_scores(model, x, maps[:, None], classes, PERCENTILES, noise, seeds, jobs=jobs)
    return (lerf.mean(-1) - morf.mean(-1))[:, 0] / 2


def pgc_combined(model, x, maps, classes) -> np.ndarray:
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    return ROADCombined(percentiles=PERCENTILES)(x, maps, targets, model)


def one_size(spec: str, size: int, n: int, jobs: int, device: str) -> dict:
    torch.manual_seed(0)
    model = build_model(spec, 10).eval().to(device)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    maps = smooth_maps(n, size, 2)
    with torch.no_grad():
        classes = model(x).argmax(1).cpu().numpy()
    camstat_combined(model, x[:1], maps[:1], classes[:1], 0.01, jobs)  # start the worker processes once
    t = time.perf_counter()
    camstat_combined(model, x, maps, classes, 0.01, jobs)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    pgc_combined(model, x, maps, classes)
    theirs = time.perf_counter() - t
    # equality check (noise 0) on a few images: pgc's ROADCombined has no noise option, so patch its default
    import pytorch_grad_cam.metrics.road as road_mod

    k = min(n, 4)
    default = road_mod.NoisyLinearImputer.__init__.__defaults__
    road_mod.NoisyLinearImputer.__init__.__defaults__ = (0.0, *default[1:])
    try:
        ref = pgc_combined(model, x[:k], maps[:k], classes[:k])
    finally:
        road_mod.NoisyLinearImputer.__init__.__defaults__ = default
    diff = float(np.abs(camstat_combined(model, x[:k], maps[:k], classes[:k], 0.0, jobs) - ref).max())
    return {"size": size, "model": spec, "n": n, "camstat_ips": n / ours, "pgc_ips": n / theirs,
            "ratio": theirs / ours, "max_abs_diff_noise0": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n32", type=int, default=64)
    ap.add_argument("--n224", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, --jobs {args.jobs}")
    for spec, size, n in (("camstat:resnet20", 32, args.n32), ("torchvision:resnet18", 224, args.n224)):
        if n < 1:
            continue
        r = one_size(spec, size, n, args.jobs, args.device)
        print(f"{size:>3} px ({spec}, {n} images): camstat {r['camstat_ips']:.2f} img/s, pytorch-grad-cam "
              f"{r['pgc_ips']:.2f} img/s, ratio {r['ratio']:.1f}x; max |combined diff| at noise 0 "
              f"{r['max_abs_diff_noise0']:.1e}", flush=True)


if __name__ == "__main__":
    main()
