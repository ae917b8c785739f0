"""The ``camstat`` command line: parses options, shows progress, delegates to the library.

Every command takes ``--json PATH`` for its machine-readable result and, where
it runs a model, ``--device``. Bad input ends with one ``error: ...`` line and
exit code 2; ``camstat --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from camstat.errors import CamstatError

# Newer Typer vendors click: reach its exception base through a public class.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Statistics of class-activation-map consistency: extract CAMs, test H1, train with a CAM loss (H2), report.",
)
console = Console(stderr=True)
out = Console()

JsonOpt = typer.Option(None, "--json", help="Write the machine-readable result to this file.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")


def _clean(obj):
    """JSON-safe: NaN/inf -> null, numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Optional[Path], result: dict) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_clean(result), indent=2, sort_keys=False) + "\n")


@contextmanager
def progress_bar(description: str) -> Iterator:
    """A rich progress bar, shown from the first update on; yields ``update(done, total)``."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """camstat: is the evidence a classifier looks at consistent, and does consistency predict correctness?"""


@app.command()
def extract(
    model: str = typer.Option(..., "--model", help="torchvision:NAME, camstat:resnet20|smallcnn, timm:NAME, file.py:factory, module:factory, torchscript:PATH."),
    data: str = typer.Option(..., "--data", help="builtin:digits, builtin:shapes, cifar10:ROOT, imagefolder:ROOT, stanford-cars:ROOT."),
    store: Path = typer.Option(..., "--store", help="Zarr store to write, e.g. store/NAME.zarr."),
    split: str = typer.Option("test", "--split", help="train or test."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights: state_dict .pt/.pth or .safetensors."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Output classes (default: from checkpoint)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (runs code from the file!)."),
    methods: str = typer.Option("gradcam,gradcam++", "--methods", help="Comma list: gradcam, gradcam++, xgradcam, hirescam, layercam, or a pytorch-grad-cam method (scorecam, eigencam, ...)."),
    layer: str = typer.Option("auto", "--layer", help="auto (last conv stage) or comma list of module names (see `camstat layers`)."),
    target: str = typer.Option("pred", "--target", help="Class whose score is explained: pred, true or both."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (creates the store if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N (K from 0): fill only the K-th of N chunk-aligned slices; under torchrun the rank is used."),
    size: Optional[int] = typer.Option(None, "--size", help="Input size in pixels (default: checkpoint metadata, else the data's own)."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="imagenet, cifar, none or MEAN,STD (default: checkpoint metadata, else imagenet)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use N images (a seeded, class-balanced subset)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    on_bad_image: str = typer.Option("skip", "--on-bad-image", help="skip (report and leave out) or fail."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit subset."),
    chunk: int = typer.Option(256, "--chunk", help="Samples per store chunk (the unit of resume and sharding)."),
    device: str = DeviceOpt,
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Run a model over a dataset split; store predictions and raw CAMs (one forward + one backward per batch)."""
    from camstat.extract import extract as run_extract

    if resume and overwrite:
        raise CamstatError("--resume and --overwrite exclude each other")
    if on_bad_image not in ("skip", "fail"):
        raise CamstatError(f"invalid --on-bad-image {on_bad_image!r}; choose skip or fail")
    with progress_bar("extract") as update:
        result = run_extract(
            model, data, store, split=split, checkpoint=str(checkpoint) if checkpoint else None,
            num_classes=num_classes, trust_checkpoint=trust_checkpoint, methods=methods, layer=layer,
            target=target, size=size, normalize=normalize, limit=limit, batch_size=batch_size, workers=workers,
            device=device, mode="resume" if resume else "overwrite" if overwrite else "new", shard=shard,
            on_bad_image=on_bad_image, seed=seed, chunk=chunk, progress=update,
        )
    out.print(
        f"{result.store}: {result.n} images, accuracy {result.accuracy:.4f}, {', '.join(result.methods)} at "
        f"{', '.join(result.layers)}; {result.processed} processed at {result.images_per_second:.1f} img/s"
        + ("" if result.complete else " (store not complete yet: other shards pending)")
    )
    write_json(json_path, result.to_dict())


@app.command()
def info(
    store: Path = typer.Argument(..., help="A camstat store."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """What a store holds: model, data, methods, layers, n, accuracy, completeness."""
    from camstat.store import open_store

    s = open_store(store)
    a = s.attrs
    samples = s.samples
    done = samples["done"]
    result = {
        "store": str(store),
        "model": a["model"],
        "checkpoint": a.get("checkpoint"),
        "checkpoint_sha256": a.get("checkpoint_sha256"),
        "data": a["data"],
        "split": a["split"],
        "classes": a["classes"],
        "input_size": a["input_size"],
        "normalize": a["normalize"],
        "methods": a["methods"],
        "layers": a["layers"],
        "layer_shapes": a["layer_shapes"],
        "targets": a["targets"],
        "n": s.n,
        "done": int(done.sum()),
        "complete": bool(done.all()),
        "accuracy": float(samples["correct"][done].mean()) if done.any() else None,
        "has_masks": s.has_masks,
        "bad_images": len(a.get("bad_images", [])),
        "derived": sorted(s.root["derived"].group_keys()) if "derived" in s.root else [],
        "created": a.get("created"),
        "command": a.get("command"),
        "versions": a.get("versions"),
    }
    table = Table(title=str(store), show_header=False)
    for key in ("model", "checkpoint", "checkpoint_sha256", "data", "split", "n", "done", "complete", "accuracy",
                "methods", "layers", "layer_shapes", "targets", "input_size", "has_masks", "bad_images", "derived",
                "created", "command"):
        value = result[key]
        if key == "accuracy" and value is not None:
            value = f"{value:.4f}"
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    table.add_row("classes", f"{len(a['classes'])}: {', '.join(a['classes'][:10])}{' ...' if len(a['classes']) > 10 else ''}")
    out.print(table)
    write_json(json_path, result)


@app.command()
def layers(
    model: str = typer.Option(..., "--model", help="Model spec, as for extract."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
    size: int = typer.Option(224, "--size", help="Input size used to report output shapes."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """List a model's candidate target layers (name, type, output shape); `auto` is marked."""
    from camstat import models

    loaded = models.load_model(model, num_classes=num_classes or None, checkpoint=str(checkpoint) if checkpoint else None,
                               trust_checkpoint=trust_checkpoint)
    candidates = models.candidate_layers(loaded.module, (size, size))
    auto = models.resolve_layers(loaded.module, "auto", (size, size))
    table = Table(title=f"{model}: candidate target layers at {size}x{size}")
    for col in ("layer", "type", "output shape", ""):
        table.add_column(col)
    for c in candidates:
        table.add_row(c.name, c.type, "x".join(map(str, c.out_shape)), "auto" if c.name in auto else "")
    out.print(table)
    write_json(json_path, {"model": model, "size": size, "auto": auto,
                           "layers": [{"name": c.name, "type": c.type, "shape": list(c.out_shape)} for c in candidates]})


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: one-line errors with exit code 2 unless ``--debug``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="camstat", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except CamstatError as exc:
        if debug:
            raise
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except _ClickException as exc:
        if debug:
            raise
        console.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        console.print("error: interrupted; rerun with --resume to continue", markup=False)
        return 130
    except OSError as exc:
        if debug:
            raise
        console.print(f"error: {exc.strerror or exc} ({exc.filename or ''}); rerun with --debug for details",
                      markup=False, soft_wrap=True)
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
