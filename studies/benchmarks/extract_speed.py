"""Whole-process speed of `camstat extract` against pytorch-grad-cam and plain inference.

Three processes on the same images, model and batch size:

1. ``camstat extract --methods gradcam,gradcam++`` (one forward + one backward
   that stops at the target layer, both methods from it, written to a store);
2. pytorch-grad-cam's ``GradCAM`` and ``GradCAMPlusPlus`` computing both maps
   (each its own forward and full backward);
3. a plain ``torch.no_grad()`` inference pass over the same data.

Each is run ``--repeats`` times, interleaved; the fastest run of each is kept.
Prints the two ratios the issue asks for:  pytorch-grad-cam / camstat (goal
>= 3.5) and camstat / inference (goal <= 1.15).

    python studies/benchmarks/extract_speed.py                  # 512 images, 128 px, ResNet-18, CPU
    python studies/benchmarks/extract_speed.py --data imagefolder:../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

COMMON = """
import sys, torch
from camstat.data import load_dataset, parse_normalize
ds = load_dataset({data!r}, 'test', size={size}, normalize=parse_normalize('imagenet', {{}}), limit={n})
loader = torch.utils.data.DataLoader(ds, batch_size={batch})
from camstat.models import load_model
model = load_model('torchvision:resnet18', num_classes={classes}, checkpoint={ckpt!r}).module.eval()
"""

PGC = COMMON + """
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
cams = [GradCAM(model=model, target_layers=[model.layer4]), GradCAMPlusPlus(model=model, target_layers=[model.layer4])]
for x, y, i in loader:
    for cam in cams:
        cam(x, None)  # targets=None: the predicted class, as camstat --target pred
"""

INFER = COMMON + """
with torch.no_grad():
    for x, y, i in loader:
        model(x).argmax(1)
"""


def in_process(size: int, batch: int, classes: int, repeats: int = 5) -> dict[str, float]:
    """Per-batch compute only (no start-up, no data loading, no store): best of ``repeats``."""
    import torchvision
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    from camstat.cams import CamEngine

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=classes).eval()
    x = torch.randn(batch, 3, size, size)
    labels = torch.zeros(batch, dtype=torch.long)
    cams = [GradCAM(model=model, target_layers=[model.layer4]), GradCAMPlusPlus(model=model, target_layers=[model.layer4])]
    engine = CamEngine(model.requires_grad_(False), ["layer4"], ["gradcam", "gradcam++"])

    def infer():
        with torch.no_grad():
            model(x)

    def pgc():
        model.requires_grad_(True)  # as a user's model: pytorch-grad-cam back-propagates into the weights too
        for cam in cams:
            cam(x, None)
        model.requires_grad_(False)

    steps = {"camstat": lambda: engine(x, labels, ["pred"]), "pytorch-grad-cam": pgc, "inference": infer}
    best = {k: float("inf") for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():
            start = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - start)
    engine.close()
    return best


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:shapes?n=600")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from camstat.data import load_dataset

    classes = len(load_dataset(args.data, "test", limit=1).classes)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        import torchvision

        ckpt = str(Path(tmp) / "resnet18.pt")
        torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), ckpt)
        fmt = dict(data=args.data, size=args.size, n=args.n, batch=args.batch, classes=classes, ckpt=ckpt)
        runs = {"camstat": [], "pytorch-grad-cam": [], "inference": []}
        for r in range(args.repeats):
            store = str(Path(tmp) / f"s{r}.zarr")
            runs["camstat"].append(timed([
                sys.executable, "-m", "camstat", "extract", "--model", "torchvision:resnet18", "--num-classes",
                str(classes), "--checkpoint", ckpt, "--data", args.data, "--split", "test", "--size", str(args.size),
                "--normalize", "imagenet", "--limit", str(args.n), "--batch-size", str(args.batch),
                "--methods", "gradcam,gradcam++", "--device", "cpu", "--store", store]))
            runs["pytorch-grad-cam"].append(timed([sys.executable, "-c", PGC.format(**fmt)]))
            runs["inference"].append(timed([sys.executable, "-c", INFER.format(**fmt)]))
    best = {k: min(v) for k, v in runs.items()}
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"data {args.data}, {args.n} images at {args.size}px, ResNet-18, batch {args.batch}, CPU; "
          f"best of {args.repeats} whole-process runs")
    for k, v in best.items():
        print(f"  {k:18s} {v:7.2f} s")
    print(f"pytorch-grad-cam / camstat extract : {best['pytorch-grad-cam'] / best['camstat']:.2f}x  (goal >= 3.5)")
    print(f"camstat extract / plain inference  : {best['camstat'] / best['inference']:.2f}x  (goal <= 1.15)")
    print(f"  (whole processes share a fixed start-up and data cost, which bounds the first ratio by "
          f"pytorch-grad-cam / inference = {best['pytorch-grad-cam'] / best['inference']:.2f}x)")
    batch = in_process(args.size, args.batch, classes)
    print(f"per batch of {args.batch} in one process (compute only, best of 5):")
    print(f"  pytorch-grad-cam / camstat engine : {batch['pytorch-grad-cam'] / batch['camstat']:.2f}x")
    print(f"  camstat engine / no-grad forward  : {batch['camstat'] / batch['inference']:.2f}x")


if __name__ == "__main__":
    main()
