"""``camstat train-reg``: train a classifier with a CAM-consistency term (H2, SPEC 5).

``L_total = L_cls + lambda_e * L_cam`` where ``L_cam`` is one of
:mod:`camstat.losses`' terms on differentiable min-max CAMs of the true
class at the target layer, and ``lambda_e`` follows the ``--schedule``.
Lambda 0 (and every epoch whose scheduled lambda is 0) is plain
cross-entropy training, bit for bit: the CAM is not computed at all then.

Library entry point: :func:`train` with a :class:`TrainConfig`; the CLI only
parses options and shows progress.

A run directory (``--out runs/NAME``) holds

- ``run.json`` -- every option, the values resolved from them (learning
  rate, layer, sizes, ...), seed, lambda, loss, schedule, world size,
  versions, command line, device, times, and ``status`` (``running`` /
  ``complete``) with the final record once complete;
- ``metrics.jsonl`` -- one record per epoch (:data:`RECORD_KEYS`);
- ``state.pt`` -- everything needed to resume after the last completed
  epoch (model, optimiser, LR schedule, AMP scaler, EMA means, the RNG
  states of every rank, the records); plain tensors and Python types, so
  ``torch.load(weights_only=True)`` reads it;
- ``model.pt`` -- the final weights with the metadata ``camstat extract``
  reads (model spec, classes, normalisation, size), via
  :func:`camstat.models.save_checkpoint`;
- ``heldout.npz`` -- per held-out image: ``index``, ``label``, ``pred``,
  ``correct``, ``confidence``, ``dist``, ``ssim`` (to the run's reference
  means), ``dist_self``, ``ssim_self`` (to the model's own class means,
  leave-one-out), ``maps`` (min-max CAMs of the true class at the layer
  resolution), plus ``means`` (the reference, C x h x w) -- what
  ``camstat compare`` needs for paired analyses and McNemar.

Every file is written atomically (temporary file + rename); under
``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camstat.atomic import atomic_write
from camstat.errors import CamstatError
from camstat.records import jsonable
from camstat.losses import (
    CAM_METHODS,
    DEFAULT_HYBRID,
    LOSSES,
    SCHEDULES,
    CamHook,
    CamLoss,
    class_means_from_store,
    curriculum_defaults,
    lambda_at,
    parse_hybrid,
    training_cams,
)

RUN_FORMAT = 1
RUN_FILES = ("run.json", "metrics.jsonl", "state.pt", "model.pt", "heldout.npz")
RECORD_KEYS = ("epoch", "lambda", "loss", "loss_cls", "loss_cam", "train_accuracy", "accuracy", "dist", "ssim",
               "dist_self", "ssim_self", "lr", "seconds")
# Options that may change between an interrupted run and its resumption.
NON_IDENTITY = ("out", "overwrite", "device", "workers")
SSIM_MIN_SIDE = 7  # SSIM's 7x7 window
DATA_SELECTION_SEED = 0  # --limit picks the same images whatever --seed is, so seeds pair on one data set


@dataclass
class TrainConfig:
    """Options of ``camstat train-reg`` (see the CLI help for each).

    ``lr=None`` means ``0.1 * batch_size / 128`` (SGD) or ``1e-3 * batch_size / 128``
    (AdamW). ``batch_size`` is the global batch (split over torchrun ranks).
    """

    model: str = "camstat:resnet20"
    data: str = "builtin:digits"
    out: str = "runs/run"
    lam: float = 0.0
    loss: str = "mean"
    cam: str = "gradcam"
    means: str | None = None
    layer: str = "auto"
    schedule: str = "constant"
    cam_warmup: int | None = None
    cam_ramp: int | None = None
    hybrid: str = DEFAULT_HYBRID
    means_update: str = "none"
    ema_decay: float = 0.99
    epochs: int = 200
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    augment: bool = True
    size: int | None = None
    normalize: str | None = None
    limit: int | None = None
    eval_limit: int | None = None
    eval_batch_size: int = 256
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if "lambda" in d:
            d["lam"] = d.pop("lambda")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        """Bad options -> CamstatError (exit code 2 on the command line)."""
        try:
            lam = float(self.lam)
        except (TypeError, ValueError):
            raise CamstatError(f"--lambda must be a number, not {self.lam!r}") from None
        if not math.isfinite(lam) or lam < 0:
            raise CamstatError(f"--lambda must be finite and >= 0 (0 = plain training), not {self.lam}")
        self.lam = lam
        if self.loss not in LOSSES:
            raise CamstatError(f"unknown --loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.cam not in CAM_METHODS:
            raise CamstatError(f"unknown --cam {self.cam!r}; choose {' or '.join(CAM_METHODS)}")
        if self.schedule not in SCHEDULES:
            raise CamstatError(f"unknown --schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.means_update not in ("none", "ema"):
            raise CamstatError(f"unknown --means-update {self.means_update!r}; choose none or ema")
        if self.optimizer not in ("sgd", "adamw"):
            raise CamstatError(f"unknown --optimizer {self.optimizer!r}; choose sgd or adamw")
        if self.lr_schedule not in ("cosine", "constant"):
            raise CamstatError(f"unknown --lr-schedule {self.lr_schedule!r}; choose cosine or constant")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise CamstatError(f"--{name.replace('_', '-')} must be at least 1")
        if self.workers < 0:
            raise CamstatError("--workers must be >= 0")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise CamstatError(f"--lr must be positive, not {self.lr}")
        if not (0 <= self.weight_decay < math.inf) or not (0 <= self.momentum < 1):
            raise CamstatError("--weight-decay must be >= 0 and --momentum in [0, 1)")
        if not (0 <= self.ema_decay < 1):
            raise CamstatError(f"--ema-decay must lie in [0, 1), not {self.ema_decay}")
        for name in ("cam_warmup", "cam_ramp"):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise CamstatError(f"--{name.replace('_', '-')} must be >= 0")
        weights = parse_hybrid(self.hybrid) if self.loss == "hybrid" else {self.loss: 1.0}
        uses_means = weights.get("mean", 0) > 0
        if self.lam > 0 and uses_means and not self.means:
            raise CamstatError(
                f"--loss {self.loss} needs class mean maps: pass --means STORE (the baseline's train-split store,"
                " from `camstat extract --split train`)"
            )
        if self.means_update == "ema" and not (uses_means and self.means):
            raise CamstatError("--means-update ema refreshes the --means maps of --loss mean|hybrid; pass --means")

    def identity(self) -> dict:
        d = self.to_dict()
        for key in NON_IDENTITY:
            d.pop(key, None)
        return d


@dataclass
class TrainResult:
    """What ``train`` returns (and ``camstat train-reg --json`` writes)."""

    out: str
    epochs: int
    records: list[dict]
    final: dict
    world_size: int
    resumed_from: int  # epochs already done when this call started
    already_complete: bool
    seconds: float
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update({k: self.final.get(k) for k in ("accuracy", "dist", "ssim", "loss_cam")})
        return d


# --------------------------------------------------------------------------
# small helpers


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(jsonable(obj), indent=2) + "\n"), "w")


def _write_records(path: Path, records: list[dict]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(jsonable(r)) + "\n" for r in records)), "w")


def read_records(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Dist:
    """The torchrun process group (or a no-op stand-in for one process)."""

    def __init__(self, device: torch.device):
        from camstat.devices import distributed_rank

        self.rank, self.world = distributed_rank()
        self.created = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if device.type == "cuda":
                    torch.cuda.set_device(device)
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.created = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        boxes = [None] * self.world
        dist.all_gather_object(boxes, obj)
        return boxes

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()

    def on_main(self, fn: Callable, *args):
        """Run ``fn`` on rank 0; every rank gets its result or raises its CamstatError."""
        result, error = None, None
        if self.main:
            try:
                result = fn(*args)
            except CamstatError as exc:
                error = str(exc)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise CamstatError(error)
        return result


# --------------------------------------------------------------------------
# held-out evaluation


def own_reference(maps: np.ndarray, labels: np.ndarray, correct: np.ndarray, num_classes: int):
    """Leave-one-out class means of the model's own correct maps, per image (SPEC 3's reference).

    Image i's reference is the mean map of the correctly classified images of
    its class (its label) other than i (:func:`camstat.metrics.loo_references`).
    Returns ``(ref (N,h,w), valid (N,))``; ``valid`` is False where the class
    has no other correct image.
    """
    from camstat import metrics

    sums, counts = metrics.class_sums(maps, labels, correct, num_classes)
    ref = metrics.loo_references(maps, labels, correct, sums, counts)
    valid = np.isfinite(ref).all(axis=(1, 2))
    return np.where(valid[:, None, None], ref, 0.0).astype(np.float32), valid


def _ssim_pairs(maps: np.ndarray, refs: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """SSIM per image; maps under 7x7 are compared at the input size (bilinear)."""
    from camstat import metrics

    if len(maps) == 0:
        return np.zeros(0, np.float32)
    if min(maps.shape[-2:]) < SSIM_MIN_SIDE:
        up = lambda a: F.interpolate(torch.from_numpy(np.ascontiguousarray(a, np.float32))[:, None],
                                     size=tuple(input_size), mode="bilinear", align_corners=False)[:, 0].numpy()
        maps, refs = up(maps), up(refs)
    return np.asarray(metrics.ssim(maps, refs), np.float64)


def _consistency(maps, refs, valid, input_size) -> tuple[np.ndarray, np.ndarray]:
    from camstat import metrics

    dist = np.full(len(maps), np.nan)
    ssim = np.full(len(maps), np.nan)
    if valid.any():
        dist[valid] = np.asarray(metrics.dist(maps[valid], refs[valid]), np.float64)
        ssim[valid] = _ssim_pairs(maps[valid], refs[valid], input_size)
    return dist, ssim


def _nanmean(a: np.ndarray) -> float | None:
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


class _Evaluator:
    """Predictions and true-class CAMs of the held-out split, as ``camstat extract`` makes them.

    Runs :class:`camstat.cams.CamEngine` (the extraction engine) on a frozen
    copy of the network, so training state (graph, flags, DDP) is untouched.
    """

    def __init__(self, module: nn.Module, dataset, layer: str, method: str, batch_size: int, workers: int,
                 device: torch.device):
        import copy

        from camstat.cams import CamEngine

        self.net = copy.deepcopy(module).eval().requires_grad_(False)
        self.engine = CamEngine(self.net, [layer], [method])
        self.key = (method, layer, "true")
        self.dataset = dataset
        # its own generator: iterating a loader draws a seed, which must not come from training's stream
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                                  generator=torch.Generator())
        self.device = device

    def __call__(self, module: nn.Module) -> dict[str, np.ndarray]:
        from camstat.cams import scale_maps

        self.net.load_state_dict(module.state_dict())
        logits, raws = [], []
        for images, labels, _ in self.loader:
            out = self.engine(images.to(self.device), labels.to(self.device), ["true"])
            logits.append(out.logits.float().cpu())
            raws.append(out.maps[self.key].float().cpu())
        logits_t = torch.cat(logits)
        raw = torch.cat(raws).numpy()
        pred = logits_t.argmax(1).numpy()
        labels = np.asarray(self.dataset.labels, np.int64)
        return {
            "index": np.asarray(self.dataset.index, np.int64),
            "label": labels,
            "pred": pred,
            "correct": pred == labels,
            "confidence": torch.softmax(logits_t, 1).max(1).values.numpy(),
            "maps": scale_maps(raw, raw.shape[-2:], "minmax"),
        }


def _heldout_metrics(ev: dict, ref_means: np.ndarray | None, num_classes: int, input_size) -> dict:
    maps, labels, correct = ev["maps"], ev["label"], ev["correct"]
    self_ref, self_valid = own_reference(maps, labels, correct, num_classes)
    ev["dist_self"], ev["ssim_self"] = _consistency(maps, self_ref, self_valid, input_size)
    if ref_means is not None:
        ev["dist"], ev["ssim"] = _consistency(maps, ref_means[labels], np.ones(len(maps), bool), input_size)
    else:
        ev["dist"], ev["ssim"] = ev["dist_self"], ev["ssim_self"]
    return {
        "accuracy": float(correct.mean()),
        "dist": _nanmean(ev["dist"]),
        "ssim": _nanmean(ev["ssim"]),
        "dist_self": _nanmean(ev["dist_self"]),
        "ssim_self": _nanmean(ev["ssim_self"]),
    }


# --------------------------------------------------------------------------
# the run directory


LOCK_FILE = ".camstat-train.lock"


def _lock_out(out: Path, overwrite: bool = False) -> int:
    """Hold an exclusive lock on the run directory (released when the process ends, even by SIGKILL)."""
    import errno
    import fcntl

    if out.exists() and not out.is_dir():
        raise CamstatError(f"--out {out} exists and is not a directory; choose another --out")
    # Refuse someone else's folder before the lock file is put into it (see _prepare_out).
    if (out.is_dir() and not overwrite and not (out / "run.json").is_file() and not (out / LOCK_FILE).exists()
            and any(out.iterdir())):
        raise CamstatError(f"--out {out} exists and holds no camstat run; choose another --out (or --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise CamstatError(f"--out {out} is being trained by another process; wait for it or use another --out") from None
        raise
    return fd


def _prepare_out(cfg: TrainConfig, world: int) -> dict:
    """Decide, on rank 0, whether to start, resume or report a complete run."""
    out = Path(cfg.out)
    run_json = out / "run.json"
    if out.exists() and not out.is_dir():
        raise CamstatError(f"--out {out} exists and is not a directory")
    if run_json.is_file() and cfg.overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    elif run_json.is_file():
        try:
            found = json.loads(run_json.read_text())
        except ValueError:
            raise CamstatError(f"{run_json} is unreadable; pass --overwrite to start the run again") from None
        old = TrainConfig.from_dict(found.get("options", {})).identity()
        new = cfg.identity()
        diff = [k for k in new if json.dumps(old.get(k)) != json.dumps(new.get(k))]
        if diff:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in diff[:4])
            raise CamstatError(
                f"--out {out} holds a run with other options: {shown}; rerun with the same options to resume,"
                " choose another --out, or pass --overwrite to start again"
            )
        if found.get("world_size", 1) != world:
            raise CamstatError(
                f"--out {out} was trained with {found.get('world_size')} process(es), this is {world};"
                " resume with the same number of torchrun processes (or --overwrite)"
            )
        if found.get("status") == "complete" and (out / "model.pt").is_file() and (out / "heldout.npz").is_file():
            return {"action": "complete", "run": found}
        return {"action": "resume" if (out / "state.pt").is_file() else "fresh", "run": found}
    elif out.is_dir() and any(p for p in out.iterdir() if p.name != LOCK_FILE) and not cfg.overwrite:
        raise CamstatError(f"--out {out} exists and holds no camstat run; choose another --out (or --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return {"action": "fresh", "run": None}


def _complete_result(cfg: TrainConfig, run: dict, start: float) -> TrainResult:
    records = read_records(cfg.out)
    return TrainResult(out=str(cfg.out), epochs=len(records), records=records, final=records[-1] if records else {},
                       world_size=run.get("world_size", 1), resumed_from=len(records), already_complete=True,
                       seconds=time.perf_counter() - start, files=[str(Path(cfg.out) / n) for n in RUN_FILES])


# --------------------------------------------------------------------------
# training


@dataclass
class StepOutput:
    logits: torch.Tensor
    loss: torch.Tensor
    loss_cls: torch.Tensor
    loss_cam: torch.Tensor | None
    maps: torch.Tensor | None


def train_step(model: nn.Module, hook: CamHook, opt: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, *, lam: float, cam_loss: CamLoss | None, cam: str = "gradcam",
               amp_dtype: torch.dtype | None = None, scaler: "torch.amp.GradScaler | None" = None) -> StepOutput:
    """One optimiser step of ``L_cls + lam * L_cam``; ``lam == 0`` is a plain cross-entropy step.

    ``hook`` sits on the target layer of ``model`` (the unwrapped module when
    ``model`` is DDP). With ``lam > 0`` the true class's CAM is built from the
    layer's activations in the graph; the extra backward work is the head's
    double backward and the map arithmetic, as the benchmark measures.
    """
    use_cam = lam > 0 and cam_loss is not None
    device_type = images.device.type
    hook.active = use_cam
    try:
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
            loss_cls = F.cross_entropy(logits, labels)
    finally:
        hook.active = False
    loss_cam = maps = None
    if use_cam:
        acts = hook.take()
        scores = logits.gather(1, labels[:, None])[:, 0]
        maps = training_cams(acts, scores, cam)
        loss_cam = cam_loss(maps, labels)
        loss = loss_cls.float() + lam * loss_cam
    else:
        loss = loss_cls
    opt.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return StepOutput(logits, loss, loss_cls, loss_cam, maps)


def train(
    config: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with the CAM term; see the module docstring.

    ``progress(done_steps, total_steps)`` is called after every optimiser step
    and ``on_epoch(record)`` after each epoch's record and state are on disk
    (both on rank 0 only). Rerunning with the same ``out`` resumes.
    """
    from camstat import data as data_mod
    from camstat import models
    from camstat.devices import resolve_device
    from camstat.extract import layer_shapes
    from camstat.provenance import command_line, now, versions

    cfg = TrainConfig.from_dict(config.to_dict())
    cfg.validate()
    start_time = time.perf_counter()
    device = resolve_device(cfg.device)
    notes = []
    if cfg.amp and device.type != "cuda":
        notes.append(f"--amp applies to CUDA only; trained in float32 on {device}")
    ddp = _Dist(device)
    lock = None
    try:
        # -- the run directory: start, resume or done -----------------------
        lock = ddp.on_main(_lock_out, Path(cfg.out), cfg.overwrite)
        lock = lock if ddp.main else None  # only rank 0 holds it
        plan = ddp.on_main(_prepare_out, cfg, ddp.world)
        if plan["action"] == "complete":
            return _complete_result(cfg, plan["run"], start_time)

        # -- data --------------------------------------------------------------
        norm = data_mod.parse_normalize(cfg.normalize, None)
        train_ds = data_mod.load_dataset(cfg.data, "train", size=cfg.size, normalize=norm, limit=cfg.limit,
                                         augment=cfg.augment, seed=DATA_SELECTION_SEED)
        test_ds = data_mod.load_dataset(cfg.data, "test", size=train_ds.size, normalize=norm, limit=cfg.eval_limit,
                                        seed=DATA_SELECTION_SEED)
        if list(test_ds.classes) != list(train_ds.classes):
            raise CamstatError(f"{cfg.data}: the test split's classes differ from the train split's")
        classes = list(train_ds.classes)
        num_classes = len(classes)
        if cfg.batch_size % ddp.world:
            raise CamstatError(f"--batch-size {cfg.batch_size} is not divisible by the {ddp.world} torchrun processes")
        per_rank = cfg.batch_size // ddp.world
        if len(train_ds) // ddp.world < per_rank:
            raise CamstatError(
                f"{len(train_ds)} training images are fewer than one batch of {cfg.batch_size}; lower --batch-size"
            )

        # -- model (seeded: the same initial weights for every arm) -----------
        _seed_all(cfg.seed)
        raw = models.build_model(cfg.model, num_classes).to(device)
        raw.train()
        layer_list = models.resolve_layers(raw, cfg.layer, tuple(train_ds.size))
        if len(layer_list) != 1:
            raise CamstatError(f"train-reg regularises one layer; --layer names {len(layer_list)}")
        layer = layer_list[0]
        # the layer's resolution from a zero image in eval mode: no BN buffer moves, no random number is drawn
        raw.eval()
        layer_hw = tuple(layer_shapes(raw, [layer], torch.zeros(3, *train_ds.size, device=device))[layer])
        raw.train()
        input_size = tuple(train_ds.size)

        # -- class means ------------------------------------------------------
        means_info = None
        if cfg.means:
            def load_means():
                cm = class_means_from_store(cfg.means, model=cfg.model, classes=classes, method=cfg.cam,
                                            layer=layer, size=layer_hw)
                return {"means": cm.means, "counts": cm.counts.tolist(), "fallback": cm.fallback,
                        "cached": cm.cached}
            means_info = ddp.on_main(load_means)
        ref_means = means_info["means"] if means_info else None
        weights = parse_hybrid(cfg.hybrid) if cfg.loss == "hybrid" else {}
        train_means = torch.from_numpy(ref_means.copy()).to(device) if ref_means is not None else None
        cam_loss = None
        if cfg.lam > 0:
            cam_loss = CamLoss(cfg.loss, means=train_means, num_classes=num_classes, weights=weights)

        warmup, ramp = curriculum_defaults(cfg.epochs, cfg.cam_warmup, cfg.cam_ramp)
        lambdas = [lambda_at(e, cfg.lam, cfg.schedule, cfg.epochs, warmup, ramp) for e in range(cfg.epochs)]

        # -- optimisation -------------------------------------------------------
        lr = cfg.lr if cfg.lr is not None else (0.1 if cfg.optimizer == "sgd" else 1e-3) * cfg.batch_size / 128
        evaluator = _Evaluator(raw, test_ds, layer, cfg.cam, cfg.eval_batch_size, cfg.workers, device) \
            if ddp.main else None
        hook = CamHook(models.get_layer(raw, layer))
        model: nn.Module = raw
        if ddp.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(raw.parameters(), lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                                  weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(raw.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=ddp.world, rank=ddp.rank, shuffle=True,
                                                      seed=cfg.seed)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=per_rank, sampler=sampler, drop_last=True,
                                             num_workers=cfg.workers, pin_memory=device.type == "cuda")
        steps = len(loader)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps) \
            if cfg.lr_schedule == "cosine" else None
        amp_dtype = None
        if cfg.amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        ema = cfg.means_update == "ema" and cam_loss is not None and train_means is not None

        # -- resume -------------------------------------------------------------
        records: list[dict] = []
        start_epoch = 0
        if plan["action"] == "resume":
            state = torch.load(Path(cfg.out) / "state.pt", map_location="cpu", weights_only=True)
            raw.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state.get("scheduler") is not None:
                sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if train_means is not None and state.get("means") is not None:
                train_means.copy_(state["means"].to(device))
            records = list(state["records"])
            start_epoch = int(state["epoch"])
            _set_rng_state(state["rng"][ddp.rank], device)

        run_info = {
            "camstat_run": RUN_FORMAT,
            "status": "running",
            "options": cfg.to_dict(),
            "seed": cfg.seed,
            "lambda": cfg.lam,
            "loss": cfg.loss,
            "schedule": cfg.schedule,
            "cam": cfg.cam,
            "world_size": ddp.world,
            "resolved": {
                "model": cfg.model, "data": cfg.data, "layer": layer, "layer_size": list(layer_hw),
                "input_size": list(input_size), "normalize": [list(norm[0]), list(norm[1])], "classes": classes,
                "num_classes": num_classes, "lr": lr, "batch_size_per_rank": per_rank, "steps_per_epoch": steps,
                "n_train": len(train_ds), "n_heldout": len(test_ds), "lambdas": lambdas,
                "cam_warmup": warmup if cfg.schedule == "curriculum" else None,
                "cam_ramp": ramp if cfg.schedule == "curriculum" else None,
                "hybrid": weights or None, "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
                "reference": "means" if ref_means is not None else "self",
                "ssim_size": list(layer_hw) if min(layer_hw) >= SSIM_MIN_SIDE else list(input_size),
                "means": None if means_info is None else {k: v for k, v in means_info.items() if k != "means"},
                "data_selection_seed": DATA_SELECTION_SEED,
            },
            "versions": versions(),
            "command": command_line(),
            "device": str(device),
            "created": plan["run"]["created"] if plan["run"] and plan["action"] == "resume" else now(),
            "resumes": (plan["run"] or {}).get("resumes", []) + ([{"epoch": start_epoch, "time": now(),
                                                                     "device": str(device)}]
                                                                   if plan["action"] == "resume" else []),
        }
        out = Path(cfg.out)
        if ddp.main:
            _write_json(out / "run.json", run_info)
            _write_records(out / "metrics.jsonl", records)

        total_steps = cfg.epochs * steps
        done_steps = start_epoch * steps
        ev = None
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lam_e = lambdas[epoch]
            use_cam = lam_e > 0 and cam_loss is not None
            sampler.set_epoch(epoch)
            lr_epoch = opt.param_groups[0]["lr"]
            # sums of: loss, loss_cls, loss_cam, correct, images
            totals = torch.zeros(5, dtype=torch.float64, device=device)
            model.train()
            for images, labels, _ in loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                step = train_step(model, hook, opt, images, labels, lam=lam_e if use_cam else 0.0,
                                  cam_loss=cam_loss, cam=cfg.cam, amp_dtype=amp_dtype, scaler=scaler)
                logits, loss, loss_cls, loss_cam, maps = step.logits, step.loss, step.loss_cls, step.loss_cam, step.maps
                if sched is not None:
                    sched.step()
                with torch.no_grad():
                    correct = logits.argmax(1) == labels
                    if ema:
                        _ema_update(train_means, maps.detach(), labels, correct, cfg.ema_decay, ddp)
                    b = float(len(labels))
                    totals += torch.stack([
                        loss.detach().double() * b, loss_cls.detach().double() * b,
                        (loss_cam.detach().double() * b) if loss_cam is not None else totals.new_zeros(()),
                        correct.sum().double(), totals.new_tensor(b)])
                done_steps += 1
                if progress is not None and ddp.main:
                    progress(done_steps, total_steps)
            totals = ddp.all_reduce(totals).cpu()
            n = float(totals[4])
            record = {
                "epoch": epoch + 1,
                "lambda": lam_e,
                "loss": float(totals[0]) / n,
                "loss_cls": float(totals[1]) / n,
                "loss_cam": float(totals[2]) / n if use_cam else None,
                "train_accuracy": float(totals[3]) / n,
                "lr": lr_epoch,
            }
            rng_states = ddp.gather(_rng_state(device))
            if ddp.main:
                ev = evaluator(raw)
                record.update(_heldout_metrics(ev, ref_means, num_classes, input_size))
                record["seconds"] = time.perf_counter() - t0
                records.append({k: record.get(k) for k in RECORD_KEYS})
                state = {
                    "format": RUN_FORMAT,
                    "epoch": epoch + 1,
                    "model": raw.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "means": train_means.detach().cpu() if (ema and train_means is not None) else None,
                    "rng": rng_states,
                    "records": records,
                }
                atomic_write(out / "state.pt", lambda f: torch.save(state, f))
                _write_records(out / "metrics.jsonl", records)
            ddp.barrier()
            if ddp.main and on_epoch is not None:
                on_epoch(records[-1])

        # -- final files -----------------------------------------------------------
        if ddp.main:
            if ev is None:  # resumed after the last epoch's state but before the final files
                ev = evaluator(raw)
                _heldout_metrics(ev, ref_means, num_classes, input_size)
            meta = {
                "model": cfg.model, "num_classes": num_classes, "classes": classes,
                "normalize": [list(norm[0]), list(norm[1])], "size": list(input_size), "data": cfg.data,
                "layer": layer, "cam": cfg.cam, "lambda": cfg.lam, "loss": cfg.loss, "schedule": cfg.schedule,
                "seed": cfg.seed, "epochs": cfg.epochs, "run": str(out),
            }
            sha = models.save_checkpoint(out / "model.pt", raw, meta)
            arrays = {k: ev[k] for k in ("index", "label", "pred", "correct", "confidence", "dist", "ssim",
                                         "dist_self", "ssim_self", "maps")}
            if ref_means is not None:
                arrays["means"] = ref_means
            if ema:
                arrays["ema_means"] = train_means.detach().cpu().numpy()
            atomic_write(out / "heldout.npz", lambda f: np.savez(f, **arrays))
            run_info.update(status="complete", finished=now(), final=records[-1], checkpoint_sha256=sha)
            _write_json(out / "run.json", run_info)
        ddp.barrier()
        hook.remove()
        if evaluator is not None:
            evaluator.engine.close()
        records = ddp.broadcast(records)
        return TrainResult(out=str(out), epochs=len(records), records=records, final=records[-1],
                           world_size=ddp.world, resumed_from=start_epoch, already_complete=False,
                           seconds=time.perf_counter() - start_time,
                           files=[str(out / n) for n in RUN_FILES], notes=notes)
    finally:
        if lock is not None:
            os.close(lock)
        ddp.close()


def _ema_update(means: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor,
                decay: float, ddp: _Dist) -> None:
    """Move each class mean towards the batch mean of its correct maps (all ranks together)."""
    c = means.shape[0]
    onehot = F.one_hot(labels, c).to(maps.dtype) * correct[:, None].to(maps.dtype)
    sums = onehot.T @ maps.reshape(len(maps), -1)
    counts = onehot.sum(0)
    packed = ddp.all_reduce(torch.cat([sums, counts[:, None]], dim=1))
    sums, counts = packed[:, :-1], packed[:, -1]
    has = counts > 0
    batch_mean = (sums / counts.clamp_min(1)[:, None]).reshape(means.shape).to(means.dtype)
    means[has] = decay * means[has] + (1 - decay) * batch_mean[has]
