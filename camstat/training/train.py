"""``camstat train-reg``: train a classifier with a CAM-consistency term (H2, SPEC 5).

``L_total = L_cls + lambda_e * L_cam`` where ``L_cam`` is one of
:mod:`camstat.training.losses`' terms on differentiable min-max CAMs of the
true class at the target layer, and ``lambda_e`` follows the ``--schedule``.
Lambda 0 (and every epoch whose scheduled lambda is 0) is plain
cross-entropy training, bit for bit: the CAM is not computed at all then.

Library entry point: :func:`train` with a :class:`TrainConfig`; the CLI only
parses options and shows progress. The options are resolved once into a
:class:`camstat.training.plan.Plan`; this module runs it.

A run directory (``--out runs/NAME``) holds

- ``run.json`` -- every option, the values resolved from them (learning
  rate, layer, sizes, the per-epoch ``eval_split``, ...), seed, lambda, loss,
  schedule, world size, versions, command line, device, times, and
  ``status`` (``running`` / ``complete``); once complete also ``final`` (the
  last epoch's record) and ``test`` (the final evaluation on the test split,
  kept apart from the per-epoch held-out split);
- ``metrics.jsonl`` -- one record per epoch (:data:`RECORD_KEYS`), evaluated
  on ``--eval-split`` (``val`` when the data has one, else ``test``);
- ``state.pt`` -- everything needed to resume after the last completed
  epoch (model, optimiser, LR schedule, AMP scaler, EMA means, the RNG
  states of every rank, the records); plain tensors and Python types, so
  ``torch.load(weights_only=True)`` reads it;
- ``model.pt`` -- the final weights with the metadata ``camstat extract``
  reads (model spec, classes, normalisation, size), via
  :func:`camstat.models.save_checkpoint`;
- ``heldout.npz`` -- per *test* image: ``index``, ``label``, ``pred``,
  ``correct``, ``confidence``, ``dist``, ``ssim`` (to the run's reference
  means), ``dist_self``, ``ssim_self`` (to the model's own class means,
  leave-one-out), ``maps`` (min-max CAMs of the true class at the layer
  resolution), plus ``means`` (the reference, C x h x w) -- what
  ``camstat compare`` needs for paired analyses and McNemar.

Every file is written atomically (temporary file + rename); under
``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camstat.atomic import atomic_write
from camstat.runs import read_records
from camstat.training import rundir
from camstat.training.config import TrainConfig
from camstat.training.dist import Dist
from camstat.training.evaluate import Evaluator, heldout_metrics
from camstat.training.losses import CamHook, CamLoss, training_cams
from camstat.training.plan import Plan, resolve

RECORD_KEYS = ("epoch", "lambda", "loss", "loss_cls", "loss_cam", "train_accuracy", "accuracy", "dist", "ssim",
               "dist_self", "ssim_self", "lr", "seconds")
HELDOUT_ARRAYS = ("index", "label", "pred", "correct", "confidence", "dist", "ssim", "dist_self", "ssim_self", "maps")


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
    test: dict | None = None  # the final evaluation on the test split
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update({k: self.final.get(k) for k in ("accuracy", "dist", "ssim", "loss_cam")})
        return d


class _Trainer:
    """The moving parts of one run built from its plan: model, optimiser, loader, CAM term, evaluator."""

    def __init__(self, plan: Plan, raw: nn.Module, ddp: Dist):
        from camstat import models

        cfg, device = plan.cfg, plan.device
        self.plan, self.raw, self.ddp, self.cfg = plan, raw, ddp, cfg
        self.train_means = torch.from_numpy(plan.ref_means.copy()).to(device) if plan.ref_means is not None else None
        self.cam_loss = CamLoss(cfg.weights, means=self.train_means, num_classes=plan.num_classes) \
            if plan.cam_on else None
        self.evaluator = Evaluator(raw, plan.layer, cfg.cam, cfg.eval_batch_size, cfg.workers, device) \
            if ddp.main else None
        self.hook = CamHook(models.get_layer(raw, plan.layer))
        self.model: nn.Module = raw
        if ddp.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(raw.parameters(), lr=plan.lr, momentum=cfg.momentum,
                                       nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(raw.parameters(), lr=plan.lr, weight_decay=cfg.weight_decay)
        self.sampler = torch.utils.data.DistributedSampler(plan.train_ds, num_replicas=ddp.world, rank=ddp.rank,
                                                           shuffle=True, seed=cfg.seed)
        self.loader = torch.utils.data.DataLoader(plan.train_ds, batch_size=plan.per_rank, sampler=self.sampler,
                                                  drop_last=True, num_workers=cfg.workers,
                                                  pin_memory=device.type == "cuda")
        self.steps = len(self.loader)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs * self.steps) \
            if cfg.lr_schedule == "cosine" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=plan.amp_dtype == torch.float16)
        self.records: list[dict] = []
        self.start_epoch = 0

    def resume(self) -> None:
        """Load the state after the last completed epoch."""
        state = rundir.load_state(Path(self.cfg.out))
        self.raw.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None and state.get("scheduler") is not None:
            self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.train_means is not None and state.get("means") is not None:
            self.train_means.copy_(state["means"].to(self.plan.device))
        self.records = list(state["records"])
        self.start_epoch = int(state["epoch"])
        rundir.set_rng_state(state["rng"][self.ddp.rank], self.plan.device)

    def state(self, epoch: int, rng_states: list) -> dict:
        return {
            "format": rundir.RUN_FORMAT,
            "epoch": epoch,
            "model": self.raw.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "means": self.train_means.detach().cpu() if self.plan.ema else None,
            "rng": rng_states,
            "records": self.records,
        }

    def train_epoch(self, epoch: int, progress: Callable | None) -> dict:
        """One pass over the training data; the epoch's training half of its record."""
        lam = self.plan.lambdas[epoch]
        device = self.plan.device
        self.sampler.set_epoch(epoch)
        lr_epoch = self.opt.param_groups[0]["lr"]
        # sums of: loss, loss_cls, loss_cam, correct, images
        totals = torch.zeros(5, dtype=torch.float64, device=device)
        self.model.train()
        for step_index, (images, labels, _) in enumerate(self.loader):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            step = train_step(self.model, self.hook, self.opt, images, labels, lam=lam, cam_loss=self.cam_loss,
                              cam=self.cfg.cam, amp_dtype=self.plan.amp_dtype, scaler=self.scaler)
            if self.sched is not None:
                self.sched.step()
            with torch.no_grad():
                correct = step.logits.argmax(1) == labels
                if self.plan.ema and step.maps is not None:
                    _ema_update(self.train_means, step.maps.detach(), labels, correct, self.cfg.ema_decay, self.ddp)
                b = float(len(labels))
                totals += torch.stack([
                    step.loss.detach().double() * b, step.loss_cls.detach().double() * b,
                    (step.loss_cam.detach().double() * b) if step.loss_cam is not None else totals.new_zeros(()),
                    correct.sum().double(), totals.new_tensor(b)])
            if progress is not None and self.ddp.main:
                progress(epoch * self.steps + step_index + 1, self.cfg.epochs * self.steps)
        totals = self.ddp.all_reduce(totals).cpu()
        n = float(totals[4])
        return {"epoch": epoch + 1, "lambda": lam, "loss": float(totals[0]) / n, "loss_cls": float(totals[1]) / n,
                "loss_cam": float(totals[2]) / n if lam > 0 else None, "train_accuracy": float(totals[3]) / n,
                "lr": lr_epoch}

    def evaluate(self, dataset) -> tuple[dict, dict]:
        """(per-image arrays, their means) of one held-out split (rank 0)."""
        ev = self.evaluator(self.raw, dataset)
        return ev, heldout_metrics(ev, self.plan.ref_means, self.plan.num_classes, self.plan.input_size)

    def close(self) -> None:
        self.hook.remove()
        if self.evaluator is not None:
            self.evaluator.engine.close()


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
    use_cam = lam > 0  # the one test of "is the CAM term on": the plan's lambda of this epoch
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


def _run_info(tr: _Trainer, prep: dict) -> dict:
    """``run.json`` while the run is going (its options, resolved values and provenance)."""
    from camstat.provenance import command_line, now, versions

    cfg, plan = tr.cfg, tr.plan
    found = prep["run"] or {}
    resuming = prep["action"] == "resume"
    return {
        "camstat_run": rundir.RUN_FORMAT,
        "status": "running",
        "options": cfg.to_dict(),
        "seed": cfg.seed,
        "lambda": cfg.lam,
        "loss": cfg.loss,
        "schedule": cfg.schedule,
        "cam": cfg.cam,
        "eval_split": plan.eval_split,
        "world_size": tr.ddp.world,
        "resolved": plan.resolved(tr.steps),
        "versions": versions(),
        "command": command_line(),
        "device": str(plan.device),
        "created": found["created"] if resuming else now(),
        "resumes": found.get("resumes", []) + ([{"epoch": tr.start_epoch, "time": now(), "device": str(plan.device)}]
                                               if resuming else []),
    }


def _epochs(tr: _Trainer, progress: Callable | None, on_epoch: Callable | None) -> dict | None:
    """Train the remaining epochs, saving state and records after each; the last evaluation's arrays."""
    out, ev = Path(tr.cfg.out), None
    for epoch in range(tr.start_epoch, tr.cfg.epochs):
        t0 = time.perf_counter()
        record = tr.train_epoch(epoch, progress)
        rng_states = tr.ddp.gather(rundir.rng_state(tr.plan.device))
        if tr.ddp.main:
            ev, metrics = tr.evaluate(tr.plan.eval_ds)
            record.update(metrics)
            record["seconds"] = time.perf_counter() - t0
            tr.records.append({k: record.get(k) for k in RECORD_KEYS})
            rundir.save_state(out / "state.pt", tr.state(epoch + 1, rng_states))
            rundir.write_records(out / "metrics.jsonl", tr.records)
        tr.ddp.barrier()
        if tr.ddp.main and on_epoch is not None:
            on_epoch(tr.records[-1])
    return ev


def _finish(tr: _Trainer, run_info: dict, ev: dict | None) -> dict:
    """Rank 0: the final test evaluation, ``model.pt``, ``heldout.npz`` and the completed ``run.json``."""
    from camstat import models
    from camstat.provenance import now

    cfg, plan, out = tr.cfg, tr.plan, Path(tr.cfg.out)
    if ev is None or plan.eval_split != "test":  # resumed after the last epoch's state, or held out on val
        ev, test = tr.evaluate(plan.test_ds)
    else:
        test = {k: tr.records[-1][k] for k in ("accuracy", "dist", "ssim", "dist_self", "ssim_self")}
    meta = {
        "model": cfg.model, "num_classes": plan.num_classes, "classes": plan.classes,
        "normalize": [list(plan.norm[0]), list(plan.norm[1])], "size": list(plan.input_size), "data": cfg.data,
        "intensity": cfg.intensity,
        "layer": plan.layer, "cam": cfg.cam, "lambda": cfg.lam, "loss": cfg.loss, "schedule": cfg.schedule,
        "seed": cfg.seed, "epochs": cfg.epochs, "run": str(out),
    }
    sha = models.save_checkpoint(out / "model.pt", tr.raw, meta)
    arrays = {k: ev[k] for k in HELDOUT_ARRAYS}
    if plan.ref_means is not None:
        arrays["means"] = plan.ref_means
    if plan.ema:
        arrays["ema_means"] = tr.train_means.detach().cpu().numpy()
    atomic_write(out / "heldout.npz", lambda f: np.savez(f, **arrays))
    test = {"split": "test", "n": len(plan.test_ds), **test}
    run_info.update(status="complete", finished=now(), final=tr.records[-1], test=test, checkpoint_sha256=sha)
    rundir.write_json(out / "run.json", run_info)
    return test


def _complete_result(cfg: TrainConfig, run: dict, start: float) -> TrainResult:
    records = read_records(cfg.out)
    return TrainResult(out=str(cfg.out), epochs=len(records), records=records, final=records[-1] if records else {},
                       world_size=run.get("world_size", 1), resumed_from=len(records), already_complete=True,
                       seconds=time.perf_counter() - start, test=run.get("test"),
                       files=[str(Path(cfg.out) / n) for n in rundir.RUN_FILES])


def _run(cfg: TrainConfig, ddp: Dist, device: torch.device, prep: dict, progress, on_epoch, start: float) -> TrainResult:
    plan, raw = resolve(cfg, ddp, device)
    tr = _Trainer(plan, raw, ddp)
    if prep["action"] == "resume":
        tr.resume()
    resumed_from = tr.start_epoch
    run_info = _run_info(tr, prep)
    out = Path(cfg.out)
    if ddp.main:
        rundir.write_json(out / "run.json", run_info)
        rundir.write_records(out / "metrics.jsonl", tr.records)
    ev = _epochs(tr, progress, on_epoch)
    test = _finish(tr, run_info, ev) if ddp.main else None
    ddp.barrier()
    tr.close()
    records, test = ddp.broadcast((tr.records, test))
    return TrainResult(out=str(out), epochs=len(records), records=records, final=records[-1], world_size=ddp.world,
                       resumed_from=resumed_from, already_complete=False, seconds=time.perf_counter() - start,
                       test=test, files=[str(out / n) for n in rundir.RUN_FILES], notes=plan.notes)


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
    from camstat.devices import resolve_device

    cfg = TrainConfig.from_dict(config.to_dict())
    cfg.validate()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    ddp = Dist(device)
    lock = None
    try:
        lock = ddp.on_main(rundir.lock_out, Path(cfg.out), cfg.overwrite)
        lock = lock if ddp.main else None  # only rank 0 holds it
        prep = ddp.on_main(rundir.prepare_out, cfg, ddp.world)
        if prep["action"] == "complete":
            return _complete_result(cfg, prep["run"], start)
        return _run(cfg, ddp, device, prep, progress, on_epoch, start)
    finally:
        if lock is not None:
            os.close(lock)
        ddp.close()


def _ema_update(means: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor,
                decay: float, ddp: Dist) -> None:
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
