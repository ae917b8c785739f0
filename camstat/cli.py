"""The ``camstat`` command line: parses options, shows progress, delegates to the library.

Every command takes ``--json PATH`` for its machine-readable result and, where
it runs a model, ``--device``. Bad input ends with one ``error: ...`` line and
exit code 2; ``camstat --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from enum import Enum
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from camstat.composition import FEATURES
from camstat.errors import CamstatError, command_line_spelling
from camstat.h1.options import BY, CLASS_OF, CORRECTIONS
from camstat.present.terminal import (epoch_line, render_consistency, render_extract, render_info, render_layers,
                                      render_train, render_verify)
from camstat.records import jsonable
from camstat.sweep import EMITS
from camstat.training.config import CHOICES as TRAIN_CHOICES

# Newer Typer vendors click: reach its exception base through a public class.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    add_completion=True,
    rich_markup_mode=None,  # click's help: flags shown as flags, choices as <a|b|c>
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Statistics of class-activation-map consistency: extract CAMs, test H1, train with a CAM loss (H2), report.",
)
# No markup or emoji codes: what is printed comes from stores, checkpoints and folder names (data, shown as
# written; "[/x]" in a class name would otherwise crash the table and "[b]" or ":cat:" would vanish).
console = Console(stderr=True, markup=False, emoji=False)
out = Console(markup=False, emoji=False)

CheckpointPrefixOpt = typer.Option(None, "--checkpoint-prefix", help="Sub-module prefix of the model's keys in the checkpoint (e.g. model, net); default: found automatically.")
JsonOpt = typer.Option(None, "--json", help="Write the machine-readable result to this file (- for stdout; then "
                       "everything else goes to stderr).")


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of an option's values, so that --help lists them and completion offers them."""
    return Enum(name, {v.replace("-", "_") or "none": v for v in values}, type=str)


By = _choices("By", BY)
ClassOf = _choices("ClassOf", CLASS_OF)
Correction = _choices("Correction", CORRECTIONS)
Target = _choices("Target", ("pred", "true"))
ExtractTarget = _choices("ExtractTarget", ("pred", "true", "both"))
OnBadImage = _choices("OnBadImage", ("skip", "fail"))
Control = _choices("Control", ("permuted", "none"))
Split = _choices("Split", ("train", "val", "test"))
Intensity = _choices("Intensity", ("dtype", "minmax"))
IntensityOpt = Annotated[Optional[Intensity], typer.Option("--intensity", help="Pixel values to [0, 1]: dtype (by the file's depth: 8-bit /255, 16-bit /65535 or its PNG sBIT depth, float as is and must lie in [0, 1]) or minmax (per image). Default: extract takes the checkpoint metadata's (the rule the model was trained with), else dtype.")]
Loss = _choices("Loss", TRAIN_CHOICES["loss"])
Cam = _choices("Cam", TRAIN_CHOICES["cam"])
Schedule = _choices("Schedule", TRAIN_CHOICES["schedule"])
MeansUpdate = _choices("MeansUpdate", TRAIN_CHOICES["means_update"])
Optimizer = _choices("Optimizer", TRAIN_CHOICES["optimizer"])
LrSchedule = _choices("LrSchedule", TRAIN_CHOICES["lr_schedule"])
EvalSplit = _choices("EvalSplit", TRAIN_CHOICES["eval_split"])
Emit = _choices("Emit", EMITS)
Features = _choices("Features", FEATURES)


# Options shared by `consistency` and `report` (and new H1 commands): declared once, defaults in the signature.
LayerOpt = Annotated[Optional[str], typer.Option("--layer", help="Layer in the store (default: its first).")]
TargetOpt = Annotated[Target, typer.Option("--target", help="Explained class as extracted.")]
ByOpt = Annotated[By, typer.Option("--by", help="correct (H1 tests per class and pooled), class (group-level "
                                   "consistency per class) or cluster (k-means composition clusters; H1 tests "
                                   "within clusters).")]
MetricsOpt = Annotated[Optional[str], typer.Option("--metrics", help="Comma list (default: every per-image metric "
                                                   "that applies): dist, ssim, iou, corr, com, entropy, spread, "
                                                   "pointing, energy (the last two need masks).")]
ClassOfOpt = Annotated[ClassOf, typer.Option("--class-of", help="Group images by predicted class (pred) or true "
                                             "label (label).")]
ReferenceOpt = Annotated[Optional[Path], typer.Option("--reference", help="Store whose correct maps give the class "
                                                      "means (e.g. the train split); default: leave-one-out means. "
                                                      "In report, the same model's train-split store also adds the "
                                                      "detect-errors section.")]
CorrectionOpt = Annotated[Correction, typer.Option("--correction", help="Multiplicity over classes x metrics.")]
PermutationsOpt = Annotated[int, typer.Option("--permutations", help="Permutations of the stratified test (seeded).")]
BootstrapOpt = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the CIs (seeded).")]
MinGroupOpt = Annotated[int, typer.Option("--min-group", help="Skip (and report) classes with fewer correct or "
                                          "incorrect images.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seeds permutations, bootstrap, controls, k-means and pair "
                                      "samples.")]
RandomStoreOpt = Annotated[Optional[Path], typer.Option("--random-store", help="Store of the same architecture and "
                                                        "images with randomised weights (extract without "
                                                        "--checkpoint): Adebayo et al. sanity check.")]
ClustersOpt = Annotated[str, typer.Option("--clusters", help="--by cluster: K of k-means, or auto (the K of 2..10 "
                                           "with the best mean silhouette).")]
FeaturesOpt = Annotated[Features, typer.Option("--features", help="--by cluster: what composition means: thumbnail "
                                               "(8x8 grayscale layout), hog (edges of the 32x32 grayscale image), "
                                               "embedding (the model's classifier-head input, stored at extraction) "
                                               "or mask (object position, scale and aspect from masks or boxes).")]
WithinClassOpt = Annotated[bool, typer.Option("--within-class", help="--by cluster: cluster each class on its own.")]
PairSampleOpt = Annotated[int, typer.Option("--pair-sample", help="At most this many maps per group for pairwise "
                                            "group-level metrics (seeded sample).")]
SizeOpt = Annotated[Optional[int], typer.Option("--size", help="Analysis size in pixels (default: the store's "
                                                "input size).")]
QOpt = Annotated[float, typer.Option("--q", help="Top fraction of pixels for the IoU masks.")]
PrimaryOpt = Annotated[Optional[str], typer.Option("--primary", help="Consistency metric that decides the H1 verdict "
                                                   "(default: dist), Holm-adjusted across the command's analyses; the "
                                                   "other consistency metrics are secondary.")]
NullRepeatsOpt = Annotated[int, typer.Option("--null-repeats", help="Repeats of the whole pipeline under the null "
                                             "for --control permuted (seeded).")]


def human(json_path: Optional[Path]) -> Console:
    """Where human output goes: stdout, or stderr when the JSON goes to stdout (``--json -``)."""
    return console if json_path is not None and str(json_path) == "-" else out
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")


def show(items: list, json_path: Optional[Path]) -> None:
    """Print a view (:mod:`camstat.present.terminal`) where human output goes."""
    console_ = human(json_path)
    for item in items:
        console_.print(item, highlight=False, soft_wrap=isinstance(item, str))


def write_json(path: Optional[Path], result: dict) -> None:
    """The machine-readable result into ``path`` (``-``: stdout)."""
    if path is not None and str(path) == "-":
        sys.stdout.write(json.dumps(jsonable(result), indent=2, sort_keys=False) + "\n")
    elif path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(jsonable(result), indent=2, sort_keys=False) + "\n")


def split_vs(tokens: list[str], command: str) -> tuple[list[str], list[str] | None]:
    """``A... --vs B...`` -> (A, B); B is None when there is no ``--vs`` (``--vs=B`` works too)."""
    first: list[str] = []
    second: list[str] | None = None
    for token in tokens:
        if token == "--vs" or token.startswith("--vs="):
            second = [] if second is None else second
            token = token[len("--vs="):]
            if not token:
                continue
        elif token.startswith("-"):
            raise CamstatError(f"unknown option {token!r} for {command}")
        (second if second is not None else first).append(token)
    return first, second


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


def _version(value: bool) -> None:
    if value:
        import camstat

        out.print(f"camstat {camstat.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=lambda v: _version(v),
                                 help="Print camstat's version and exit."),
) -> None:
    """camstat: is the evidence a classifier looks at consistent, and does consistency predict correctness?"""


@app.command()
def extract(
    model: str = typer.Option(..., "--model", help="torchvision:NAME, camstat:resnet20|smallcnn, timm:NAME, file.py:factory, module:factory, torchscript:PATH."),
    data: str = typer.Option(..., "--data", help="builtin:digits, builtin:shapes, cifar10:ROOT, imagefolder:ROOT, stanford-cars:ROOT, npz:PATH[?classes=a,b]."),
    class_names: Optional[str] = typer.Option(None, "--classes", help="npz: class names a,b,... in label order (default: the numbers)."),
    store: Path = typer.Option(..., "--store", help="Zarr store to write, e.g. store/NAME.zarr."),
    split: str = typer.Option("test", "--split", help="train or test (npz: also val)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights: state_dict .pt/.pth or .safetensors."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Output classes (default: from checkpoint)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (runs code from the file!)."),
    checkpoint_prefix: Optional[str] = CheckpointPrefixOpt,
    methods: str = typer.Option("gradcam,gradcam++", "--methods", help="Comma list: gradcam, gradcam++, xgradcam, hirescam, layercam, or a pytorch-grad-cam method (scorecam, eigencam, ...)."),
    layer: str = typer.Option("auto", "--layer", help="auto (last conv stage) or comma list of module names (see `camstat layers`)."),
    target: ExtractTarget = typer.Option("pred", "--target", help="Class whose score is explained: pred, true or both."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (creates the store if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N (K from 0): fill only the K-th of N chunk-aligned slices; under torchrun the rank is used."),
    size: Optional[int] = typer.Option(None, "--size", help="Input size in pixels (default: checkpoint metadata, else the data's own)."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="imagenet, cifar, none or MEAN,STD (default: checkpoint metadata, else imagenet)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use N images (a seeded, class-balanced subset)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    on_bad_image: OnBadImage = typer.Option("skip", "--on-bad-image", help="skip (report and leave out) or fail."),
    intensity: IntensityOpt = None,
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit subset."),
    chunk: int = typer.Option(256, "--chunk", help="Samples per store chunk (the unit of resume and sharding)."),
    device: str = DeviceOpt,
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Run a model over a dataset split; store predictions and raw CAMs (one forward + one backward per batch)."""
    from camstat import data as data_mod
    from camstat.extract import extract as run_extract

    if resume and overwrite:
        raise CamstatError("--resume and --overwrite exclude each other")
    with progress_bar("extract") as update:
        result = run_extract(
            model, data_mod.with_class_names(data, class_names), store, split=split, checkpoint=str(checkpoint) if checkpoint else None,
            num_classes=num_classes, trust_checkpoint=trust_checkpoint, checkpoint_prefix=checkpoint_prefix,
            methods=methods, layer=layer, target=target.value, size=size, normalize=normalize, limit=limit,
            batch_size=batch_size, workers=workers, device=device,
            mode="resume" if resume else "overwrite" if overwrite else "new", shard=shard,
            on_bad_image=on_bad_image.value, seed=seed, chunk=chunk, progress=update, intensity=intensity.value if intensity else None,
        )
    show(render_extract(result.to_dict(), shard), json_path)
    write_json(json_path, result.to_dict())


@app.command()
def info(
    store: Path = typer.Argument(..., help="A camstat store."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """What a store holds: model, data, methods, layers, n, accuracy, completeness."""
    from camstat.store import open_store

    result = open_store(store).summary()
    show(render_info(result), json_path)
    write_json(json_path, result)


@app.command()
def layers(
    model: str = typer.Option(..., "--model", help="Model spec, as for extract."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
    checkpoint_prefix: Optional[str] = CheckpointPrefixOpt,
    data: Optional[str] = typer.Option(None, "--data", help="Data spec, as for extract: its image size is the default --size."),
    split: str = typer.Option("test", "--split"),
    size: Optional[int] = typer.Option(None, "--size", help="Input size (default, as extract: checkpoint metadata, else the --data's size, else 224)."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """List a model's candidate target layers (name, type, output shape); `auto` is marked."""
    from camstat import data as data_mod
    from camstat import models

    meta = {}
    if checkpoint is None:  # layer shapes don't depend on the class count: no need to ask for it
        module = models.build_model(model, num_classes)
    else:
        loaded = models.load_model(model, num_classes=num_classes, checkpoint=str(checkpoint),
                                   trust_checkpoint=trust_checkpoint, checkpoint_prefix=checkpoint_prefix)
        module, meta = loaded.module, loaded.meta
    if size is None and meta.get("size"):
        size = int(meta["size"][0])
    hw = (size, size) if size is not None else (224, 224)
    if data is not None:  # the size extract would use
        hw = tuple(data_mod.load_dataset(data, split, size=size, limit=1).size)
    trace = models.LayerTrace(module, hw)
    candidates = trace.candidates()
    auto = [trace.auto().name]
    show(render_layers(model, hw, candidates, auto), json_path)
    write_json(json_path, {"model": model, "size": hw[0], "input_size": list(hw), "auto": auto,
                           "layers": [{"name": c.name, "type": c.type, "shape": list(c.out_shape)} for c in candidates]})


@app.command("train-reg")
def train_reg(
    data: str = typer.Option(..., "--data", help="builtin:digits, builtin:shapes, cifar10:ROOT, imagefolder:ROOT, npz:PATH (train split to learn; val/test held out)."),
    class_names: Optional[str] = typer.Option(None, "--classes", help="npz: class names a,b,... in label order (default: the numbers)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory, e.g. runs/NAME (rerun the same command to resume)."),
    model: str = typer.Option("camstat:resnet20", "--model", help="Architecture spec, trained from scratch (see extract)."),
    lam: float = typer.Option(0.0, "--lambda", help="Weight of the CAM term; 0 = plain cross-entropy training (the baseline)."),
    loss: Loss = typer.Option("mean", "--loss", help="mean (to --means class maps), variance (within-batch, per class), spread (narrower maps), neg-variance, hybrid."),
    cam: Cam = typer.Option("gradcam", "--cam", help="Differentiable CAM: gradcam or gradcam++."),
    means: Optional[Path] = typer.Option(None, "--means", help="Baseline's train-split store (camstat extract --split train); class means of its correct maps."),
    layer: str = typer.Option("auto", "--layer", help="Target layer: auto (last conv stage) or a module name."),
    schedule: Schedule = typer.Option("constant", "--schedule", help="Lambda over epochs: constant, linear (ramps to lambda) or curriculum (0 for a warm-up, then a ramp)."),
    cam_warmup: Optional[int] = typer.Option(None, "--cam-warmup", help="Curriculum: epochs at lambda 0 (default 20 % of the epochs)."),
    cam_ramp: Optional[int] = typer.Option(None, "--cam-ramp", help="Curriculum: epochs of the ramp to lambda (default 20 % of the epochs)."),
    hybrid: str = typer.Option("mean=1,spread=1", "--hybrid", help="Terms and weights of --loss hybrid: mean, variance, spread, neg-variance."),
    means_update: MeansUpdate = typer.Option("none", "--means-update", help="none or ema (refresh the means from the model's own correct training maps)."),
    ema_decay: float = typer.Option(0.99, "--ema-decay", help="Per-step decay of --means-update ema."),
    epochs: int = typer.Option(200, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size", help="Global batch size (split over torchrun processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: 0.1 x batch/128 for SGD, 1e-3 x batch/128 for AdamW)."),
    optimizer: Optimizer = typer.Option("sgd", "--optimizer", help="sgd (momentum 0.9, nesterov) or adamw."),
    momentum: float = typer.Option(0.9, "--momentum"),
    nesterov: bool = typer.Option(True, "--nesterov/--no-nesterov"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    lr_schedule: LrSchedule = typer.Option("cosine", "--lr-schedule", help="cosine (per step, to 0) or constant."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random crop (pad 4) and horizontal flip."),
    size: Optional[int] = typer.Option(None, "--size", help="Input size (default: the data's own)."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="imagenet (default), cifar, none or MEAN,STD."),
    intensity: IntensityOpt = "dtype",
    limit: Optional[int] = typer.Option(None, "--limit", help="Train on N images (a fixed class-balanced subset)."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Hold out N images of the evaluated splits (default: all)."),
    eval_split: Optional[EvalSplit] = typer.Option(None, "--eval-split", help="Split evaluated each epoch: val or test (default: val when the data has one, else test); the test split is evaluated once more at the end."),
    eval_batch_size: int = typer.Option(256, "--eval-batch-size"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (4-8 for image folders on GPU)."),
    seed: int = typer.Option(0, "--seed", help="Seeds weights, data order and augmentation; compare pairs runs by seed."),
    device: str = DeviceOpt,
    amp: bool = typer.Option(False, "--amp", help="bf16 (or fp16) autocast on CUDA; the CAM term stays float32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an existing --out."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Train with L = L_cls + lambda * L_cam (lambda 0 = baseline); writes model.pt, run.json, metrics.jsonl."""
    from camstat import data as data_mod
    from camstat.training.config import TrainConfig
    from camstat.training.train import train

    config = TrainConfig(
        model=model, data=data_mod.with_class_names(data, class_names), out=str(out_dir), lam=lam, loss=loss.value, cam=cam.value,
        means=str(means) if means else None, layer=layer, schedule=schedule.value, cam_warmup=cam_warmup,
        cam_ramp=cam_ramp, hybrid=hybrid, means_update=means_update.value, ema_decay=ema_decay, epochs=epochs,
        batch_size=batch_size, lr=lr, optimizer=optimizer.value, momentum=momentum, nesterov=nesterov,
        weight_decay=weight_decay, lr_schedule=lr_schedule.value, augment=augment, size=size, normalize=normalize,
        intensity=intensity.value if intensity else "dtype", limit=limit, eval_limit=eval_limit, eval_split=eval_split.value if eval_split else None, eval_batch_size=eval_batch_size, workers=workers, seed=seed, device=device, amp=amp, overwrite=overwrite,
    )
    def on_epoch(r: dict) -> None:
        console.print(epoch_line(r), highlight=False)

    with progress_bar("train-reg") as update:
        result = train(config, progress=update, on_epoch=on_epoch)
    show(render_train(result.out, result.epochs, result.world_size, result.final, result.notes,
                      result.already_complete), json_path)
    write_json(json_path, result.to_dict())


@app.command(context_settings={"ignore_unknown_options": True})
def compare(
    runs: list[str] = typer.Argument(..., help="RUN... --vs RUN... (arm A, then arm B), or one sweep folder runs/NAME (every arm vs lambda 0)."),
    means: Optional[Path] = typer.Option(None, "--means", help="Measure consistency against this train-split store's class means (default: each run's own)."),
    names: Optional[str] = typer.Option(None, "--names", help="Arm names A,B (default: from lambda, loss, cam and schedule)."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """H2 with the seed as the unit: per arm mean, sd, 95% CI; paired by seed: t CI, sign-flip p, Wilcoxon."""
    from camstat.compare import compare_runs, compare_sweep
    from camstat.present.compare import render, render_sweep

    arm_a, arm_b = split_vs(runs, "compare")
    if arm_b is None and len(arm_a) == 1 and not (Path(arm_a[0]) / "run.json").is_file():
        d = compare_sweep(arm_a[0], means=means).to_dict()
        items = render_sweep(d)
    elif arm_b is None:
        raise CamstatError("compare needs two arms: camstat compare RUN... --vs RUN... (or one sweep folder)")
    else:
        d = compare_runs(arm_a, arm_b, names=names.split(",") if names else None, means=means).to_dict()
        items = render(d)
    show(items, json_path)
    write_json(json_path, d)


@app.command()
def sweep(
    data: str = typer.Option(..., "--data", help="As for train-reg."),
    out_dir: Path = typer.Option(..., "--out", help="Sweep folder: runs go to OUT/<arm>/s<seed>/ (rerun to resume)."),
    model: str = typer.Option("camstat:resnet20", "--model", help="Architecture spec, trained from scratch."),
    lambdas: str = typer.Option("0,0.2", "--lambda", help="Comma list of lambdas; 0 is the baseline arm."),
    losses: str = typer.Option("mean", "--loss", help="Comma list of losses: mean, variance, spread, neg-variance, hybrid."),
    cams: str = typer.Option("gradcam", "--cam", help="Comma list: gradcam, gradcam++."),
    seeds: str = typer.Option("0-4", "--seeds", help="Seeds, e.g. 0-4 or 0,1,2 (the unit of replication)."),
    means: Optional[Path] = typer.Option(None, "--means", help="Baseline's train-split store (class means) for every run."),
    jobs: int = typer.Option(1, "--jobs", help="Train N runs at a time in local processes (1: in this process)."),
    emit: Optional[Emit] = typer.Option(None, "--emit", help="slurm (array, one task per run) or torchrun: write OUT/sweep.slurm or OUT/sweep-torchrun.sh instead of training."),
    hybrid: str = typer.Option("mean=1,spread=1", "--hybrid", help="Terms of --loss hybrid."),
    schedule: Schedule = typer.Option("constant", "--schedule", help="Lambda over epochs."),
    layer: str = typer.Option("auto", "--layer", help="Target layer."),
    epochs: int = typer.Option(200, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    optimizer: Optimizer = typer.Option("sgd", "--optimizer"),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    size: Optional[int] = typer.Option(None, "--size"),
    normalize: Optional[str] = typer.Option(None, "--normalize"),
    intensity: IntensityOpt = "dtype",
    limit: Optional[int] = typer.Option(None, "--limit"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit"),
    eval_split: Optional[EvalSplit] = typer.Option(None, "--eval-split", help="Default: val when the data has one, else test."),
    workers: int = typer.Option(0, "--workers"),
    device: str = DeviceOpt,
    amp: bool = typer.Option(False, "--amp"),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """H2: train every arm (lambda x loss x cam) x seed; skips complete runs, resumes interrupted ones."""
    from camstat.sweep import parse_list, parse_seeds
    from camstat.sweep import sweep as run_sweep
    from camstat.training.config import TrainConfig

    base = TrainConfig(model=model, data=data, means=str(means) if means else None, hybrid=hybrid,
                       schedule=schedule.value, layer=layer, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer.value, augment=augment, size=size, normalize=normalize,
                       intensity=intensity.value if intensity else "dtype", limit=limit,
                       eval_limit=eval_limit, eval_split=eval_split.value if eval_split else None,
                       workers=workers, device=device, amp=amp)

    def on_run(row: dict) -> None:
        error = f" ({row['error']})" if row.get("error") else ""
        console.print(f"{row['arm']} seed {row['seed']}: {row['status']}{error}", highlight=False, soft_wrap=True)

    result = run_sweep(base, lambdas=parse_list(lambdas, "--lambda", float), losses=parse_list(losses, "--loss"),
                       cams=parse_list(cams, "--cam"), seeds=parse_seeds(seeds), out=out_dir, jobs=jobs, emit=emit.value if emit else None,
                       on_run=on_run)
    if result.script:
        out.print(f"{result.script}: {len(result.runs)} runs", highlight=False, soft_wrap=True)
    else:
        out.print(f"{result.out}: " + ", ".join(f"{n} {k}" for k, n in result.counts.items()) +
                  f" ({result.seconds:.0f} s); compare with: camstat compare {result.out}", highlight=False,
                  soft_wrap=True)
    write_json(json_path, result.to_dict())
    if result.counts.get("failed"):
        raise CamstatError(f"{result.counts['failed']} run(s) failed (see above, or {result.out}/logs with --jobs);"
                           " fix the cause and rerun the sweep: it resumes")


@app.command()
def consistency(
    store: Path = typer.Argument(..., help="A complete camstat store."),
    by: ByOpt = By.correct,
    method: Optional[str] = typer.Option(None, "--method", help="CAM method in the store (default: its first); a comma list analyses each, with one H1 verdict family across them (JSON: {\"analyses\": [...]})."),
    layer: LayerOpt = None,
    target: TargetOpt = Target.pred,
    metrics: MetricsOpt = None,
    class_of: ClassOfOpt = ClassOf.pred,
    reference: ReferenceOpt = None,
    correction: CorrectionOpt = Correction.holm,
    permutations: PermutationsOpt = 10000,
    bootstrap: BootstrapOpt = 2000,
    min_group: MinGroupOpt = 5,
    seed: SeedOpt = 0,
    control: Optional[Control] = typer.Option(None, "--control", help="permuted: also run the whole pipeline under the null (correctness shuffled within class, references rebuilt, tests rerun) --null-repeats times; its rejection rate must be near alpha."),
    null_repeats: NullRepeatsOpt = 200,
    primary: PrimaryOpt = None,
    random_store: RandomStoreOpt = None,
    clusters: ClustersOpt = "8",
    features: FeaturesOpt = Features.thumbnail,
    within_class: WithinClassOpt = False,
    pair_sample: PairSampleOpt = 500,
    size: SizeOpt = None,
    q: QOpt = 0.2,
    save: bool = typer.Option(True, "--save/--no-save", help="Write the per-image metrics and result under the store's derived/ group."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Consistency metrics and H1 tests: are correct predictions' maps closer to their class's mean map?"""
    from camstat.h1 import analyze
    from camstat.h1.verdicts import primary_verdicts

    results = []
    for m in [m.strip() for m in method.split(",") if m.strip()] if method else [None]:
        with progress_bar(f"consistency {m or ''}".strip()) as update:
            results.append(analyze(
                store, method=m, layer=layer, target=target.value, by=by.value, metrics=metrics,
                class_of=class_of.value, reference=reference, size=size, q=q, correction=correction.value,
                permutations=permutations, n_boot=bootstrap, min_group=min_group, seed=seed,
                control=None if control in (None, Control.none) else control.value, null_repeats=null_repeats,
                primary=primary, random_store=random_store, clusters=clusters, features=features.value,
                within_class=within_class, pair_sample=pair_sample, save=save, progress=update,
            ).to_dict())
    primary_verdicts(results, correction=correction.value)  # one verdict family: the command's analyses
    for d in results:
        show(render_consistency(d), json_path)
    write_json(json_path, results[0] if len(results) == 1 else {"analyses": results})


@app.command(context_settings={"ignore_unknown_options": True})
def report(
    inputs: list[str] = typer.Argument(..., help="Stores (H1) and/or train-reg run directories or a sweep folder runs/NAME (H2: every arm vs lambda 0); arm B's runs after --vs."),
    out_dir: Path = typer.Option(..., "--out", help="Report folder, e.g. studies/NAME (report.md, report.tex, results.json, fig-*.png)."),
    method: Optional[str] = typer.Option(None, "--method", help="Comma list of CAM methods to analyse (default: every method in the store)."),
    layer: LayerOpt = None,
    target: TargetOpt = Target.pred,
    by: ByOpt = By.correct,
    metrics: MetricsOpt = None,
    class_of: ClassOfOpt = ClassOf.pred,
    reference: ReferenceOpt = None,
    correction: CorrectionOpt = Correction.holm,
    permutations: PermutationsOpt = 10000,
    bootstrap: BootstrapOpt = 2000,
    min_group: MinGroupOpt = 5,
    seed: SeedOpt = 0,
    control: Control = typer.Option("permuted", "--control", help="permuted (the whole pipeline under the null, --null-repeats times; rejection rate must be near alpha) or none."),
    null_repeats: NullRepeatsOpt = 200,
    random_store: RandomStoreOpt = None,
    clusters: ClustersOpt = "8",
    features: FeaturesOpt = Features.thumbnail,
    within_class: WithinClassOpt = False,
    means: Optional[Path] = typer.Option(None, "--means", help="compare: measure run consistency against this train-split store's class means."),
    names: Optional[str] = typer.Option(None, "--names", help="compare: arm names A,B (default: from lambda and loss)."),
    primary: PrimaryOpt = None,
    gallery: int = typer.Option(8, "--gallery", help="Images per gallery row (most / least consistent)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title of report.md."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Significance report: report.md, report.tex (booktabs), results.json and PNG figures."""
    from camstat.present.report import report as make_report

    first, vs_runs = split_vs(inputs, "report")
    if vs_runs is not None and not vs_runs:
        raise CamstatError("--vs needs run directories after it: camstat report RUN... --vs RUN...")

    def say(message: str) -> None:
        console.print(f"{message} ...", highlight=False)

    result = make_report(
        first, out_dir, vs=vs_runs or None, method=method, layer=layer, target=target.value, by=by.value,
        metrics=metrics, class_of=class_of.value, reference=reference, correction=correction.value, permutations=permutations, n_boot=bootstrap,
        min_group=min_group, seed=seed, control=control.value, random_store=random_store, clusters=clusters,
        features=features.value, within_class=within_class, names=names.split(",") if names else None, means=means,
        primary=primary, null_repeats=null_repeats, gallery=gallery, title=title, progress=say,
    )
    for line in result.summary:
        human(json_path).print(f"- {line}", highlight=False, soft_wrap=True)
    human(json_path).print(f"report: {result.report_md} ({len(result.figures)} figures, {result.seconds:.0f} s)", highlight=False,
              soft_wrap=True)
    write_json(json_path, result.to_dict())


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("studies/demo"), "--out", help="Where the report goes."),
    fast: bool = typer.Option(False, "--fast", help="Tiny sizes (seconds, for tests): the pipeline, not the result."),
    work: Path = typer.Option(Path("."), "--work", help="Stores go to WORK/store/demo, runs to WORK/runs/demo."),
    device: str = typer.Option("cpu", "--device", help="cpu (default: the committed report's numbers), auto, cuda, cuda:N or mps."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """The whole pipeline on builtin:shapes with a decoy: train, extract, H1 with controls, H2, report."""
    from camstat.demo import demo as run_demo

    def say(message: str) -> None:
        console.print(message, highlight=False)

    result = run_demo(out_dir, fast=fast, work=work, device=device, progress=say)
    human(json_path).print(f"report: {result.report} (demo took {result.seconds:.0f} s)", highlight=False, soft_wrap=True)
    for line in result.summary:
        human(json_path).print(f"- {line}", highlight=False, soft_wrap=True)
    write_json(json_path, result.to_dict())


@app.command("detect-errors")
def detect_errors(
    store: Path = typer.Argument(..., help="A complete camstat store (e.g. the test split)."),
    reference: Path = typer.Option(..., "--reference", help="The same model's store of another split (train, or val when STORE is the test split; never the test split): its correct maps give the class means."),
    method: Optional[str] = typer.Option(None, "--method", help="CAM method in the store (default: its first)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer in the store (default: its first)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list of consistency metrics (default all): dist, ssim, iou, corr, com."),
    folds: int = typer.Option(5, "--folds", help="Folds of the out-of-fold combined model (stratified, seeded)."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples for the CIs (seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the folds and the bootstrap."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Can CAMs tell when the model is wrong? CAM consistency vs softmax confidence as error detectors."""
    from camstat.detection import detect_errors as run_detect
    from camstat.present.detection import render

    with progress_bar("detect-errors") as update:
        result = run_detect(store, reference, method=method, layer=layer, metrics=metrics, folds=folds, seed=seed,
                            n_boot=bootstrap, progress=update)
    d = result.to_dict()
    show(render(d), json_path)
    write_json(json_path, d)


@app.command()
def verify(
    store: Path = typer.Argument(..., help="A camstat store."),
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Check every chunk of every array against its checksum; exit 2 naming each damaged chunk."""
    from camstat.store import open_store

    result = open_store(store).verify()
    write_json(json_path, result.to_dict())
    show(render_verify(result.to_dict()), json_path)
    for bad in result.bad:
        console.print(f"damaged: {bad}", highlight=False, soft_wrap=True)
    if not result.ok:
        raise CamstatError(f"{len(result.bad)} damaged chunk(s) in {store}; extract the store again (--overwrite)")




@app.command()
def faithfulness(
    store: Path = typer.Argument(..., help="A complete camstat store (its model and images are rebuilt from it)."),
    method: Optional[str] = typer.Option(None, "--method", help="Comma list of the store's methods (default: all)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer in the store (default: its first)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score a seeded, class-balanced subset of N images."),
    percentiles: str = typer.Option("10,20,30,40,50,60,70,80,90", "--percentiles", help="ROAD percentiles (pytorch-grad-cam's: p removes 100 - p % of the pixels)."),
    road_noise: float = typer.Option(0.01, "--road-noise", help="Noise added to imputed pixels (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the random maps, the imputation noise, --limit and the bootstrap."),
    jobs: int = typer.Option(1, "--jobs", help="Processes for the imputation solves."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The store's checkpoint at another path (its SHA-256 must match)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per model call."),
    device: str = DeviceOpt,
    json_path: Optional[Path] = JsonOpt,
) -> None:
    """Are the maps faithful to the model? ROAD MoRF/LeRF vs random and class-mean maps (resumable)."""
    from camstat.faithfulness import faithfulness as run_faithfulness
    from camstat.present.faithfulness import render

    with progress_bar("faithfulness") as update:
        result = run_faithfulness(store, methods=method, layer=layer, limit=limit, percentiles=percentiles,
                                  road_noise=road_noise, seed=seed, jobs=jobs, device=device, batch_size=batch_size,
                                  checkpoint=checkpoint, progress=update)
    d = result.to_dict()
    show(render(d), json_path)
    write_json(json_path, d)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: one-line errors with exit code 2 unless ``--debug``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        with command_line_spelling():  # messages name --flags, not Python arguments
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
