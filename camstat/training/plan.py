"""A training run's plan: the options resolved once against the data, the model and the means.

:func:`resolve` loads the splits, builds the (seeded) model, picks the target
layer and its resolution, loads the class means and fixes lambda per epoch;
the training loop only reads the resulting :class:`Plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from camstat.errors import CamstatError
from camstat.training.config import TrainConfig, curriculum_defaults, lambdas
from camstat.training.dist import Dist
from camstat.training.evaluate import ssim_size
from camstat.training.rundir import seed_all

DATA_SELECTION_SEED = 0  # --limit picks the same images whatever --seed is, so seeds pair on one data set


@dataclass
class Plan:
    """Everything a run needs, decided before the first step."""

    cfg: TrainConfig
    device: torch.device
    world: int
    train_ds: object
    eval_ds: object  # evaluated each epoch (--eval-split)
    eval_split: str
    test_ds: object  # evaluated once at the end (the same object as eval_ds when eval_split is test)
    norm: tuple
    layer: str
    layer_hw: tuple[int, int]
    lambdas: list[float]  # per epoch; the CAM term is on exactly where lambda > 0
    lr: float
    amp_dtype: torch.dtype | None
    means: dict | None = None  # {"means": (C,h,w), "counts", "fallback", "cached"} from --means
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.train_ds.classes)

    @property
    def num_classes(self) -> int:
        return len(self.train_ds.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.train_ds.size)

    @property
    def per_rank(self) -> int:
        return self.cfg.batch_size // self.world

    @property
    def cam_on(self) -> bool:
        """Whether any epoch trains with the CAM term (lambda 0 never builds it)."""
        return any(lam > 0 for lam in self.lambdas)

    @property
    def ref_means(self) -> np.ndarray | None:
        return None if self.means is None else self.means["means"]

    @property
    def ema(self) -> bool:
        return self.cfg.means_update == "ema" and self.cam_on and self.means is not None

    def resolved(self, steps: int) -> dict:
        """``run.json``'s ``resolved`` block: the values the options led to."""
        cfg, curriculum = self.cfg, self.cfg.schedule == "curriculum"
        warmup, ramp = curriculum_defaults(cfg.epochs, cfg.cam_warmup, cfg.cam_ramp)
        return {
            "model": cfg.model, "data": cfg.data, "layer": self.layer, "layer_size": list(self.layer_hw),
            "input_size": list(self.input_size), "normalize": [list(self.norm[0]), list(self.norm[1])],
            "classes": self.classes, "num_classes": self.num_classes, "lr": self.lr,
            "batch_size_per_rank": self.per_rank, "steps_per_epoch": steps, "n_train": len(self.train_ds),
            "n_heldout": len(self.eval_ds), "eval_split": self.eval_split, "n_test": len(self.test_ds),
            "lambdas": self.lambdas, "cam_warmup": warmup if curriculum else None,
            "cam_ramp": ramp if curriculum else None, "hybrid": cfg.weights if cfg.loss == "hybrid" else None,
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "reference": "means" if self.means is not None else "self",
            "ssim_size": list(ssim_size(self.layer_hw, self.input_size)),
            "means": None if self.means is None else {k: v for k, v in self.means.items() if k != "means"},
            "data_selection_seed": DATA_SELECTION_SEED,
        }


def _load_data(cfg: TrainConfig, world: int):
    """(train, per-epoch held-out, its split name, test, normalisation) as the options select them."""
    from camstat import data as data_mod

    norm = data_mod.parse_normalize(cfg.normalize, None)
    train_ds = data_mod.load_dataset(cfg.data, "train", size=cfg.size, normalize=norm, limit=cfg.limit,
                                     augment=cfg.augment, seed=DATA_SELECTION_SEED, intensity=cfg.intensity)
    held = lambda split: data_mod.load_dataset(cfg.data, split, size=train_ds.size, normalize=norm,
                                               limit=cfg.eval_limit, seed=DATA_SELECTION_SEED,
                                               intensity=cfg.intensity)
    test_ds = held("test")
    eval_split, eval_ds = cfg.eval_split, None
    if eval_split in (None, "val"):
        try:
            eval_ds, eval_split = held("val"), "val"
        except CamstatError:
            if cfg.eval_split == "val":
                raise CamstatError(f"--eval-split val: {cfg.data} has no validation split; use --eval-split test") from None
    if eval_ds is None:
        eval_ds, eval_split = test_ds, "test"
    for split, ds in ((eval_split, eval_ds), ("test", test_ds)):
        if list(ds.classes) != list(train_ds.classes):
            raise CamstatError(f"{cfg.data}: the {split} split's classes differ from the train split's")
    if cfg.batch_size % world:
        raise CamstatError(f"--batch-size {cfg.batch_size} is not divisible by the {world} torchrun processes")
    if len(train_ds) // world < cfg.batch_size // world:
        raise CamstatError(
            f"{len(train_ds)} training images are fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )
    return train_ds, eval_ds, eval_split, test_ds, norm


def _build_model(cfg: TrainConfig, num_classes: int, size: tuple[int, int], device: torch.device):
    """The seeded model (the same initial weights for every arm), its target layer and the layer's resolution."""
    from camstat import models
    from camstat.extract import layer_shapes

    seed_all(cfg.seed)
    raw = models.build_model(cfg.model, num_classes).to(device)
    raw.train()
    layer_list = models.resolve_layers(raw, cfg.layer, size)
    if len(layer_list) != 1:
        raise CamstatError(f"train-reg regularises one layer; --layer names {len(layer_list)}")
    layer = layer_list[0]
    # the layer's resolution from a zero image in eval mode: no BN buffer moves, no random number is drawn
    raw.eval()
    layer_hw = tuple(layer_shapes(raw, [layer], torch.zeros(3, *size, device=device))[layer])
    raw.train()
    return raw, layer, layer_hw


def _load_means(cfg: TrainConfig, classes: list[str], layer: str, layer_hw, ddp: Dist) -> dict | None:
    if not cfg.means:
        return None
    from camstat.training.means import class_means_from_store

    def load():
        cm = class_means_from_store(cfg.means, model=cfg.model, classes=classes, method=cfg.cam, layer=layer,
                                    size=layer_hw)
        return {"means": cm.means, "counts": cm.counts.tolist(), "fallback": cm.fallback, "cached": cm.cached}

    return ddp.on_main(load)


def resolve(cfg: TrainConfig, ddp: Dist, device: torch.device) -> tuple[Plan, nn.Module]:
    """The plan of a validated configuration, and the freshly initialised model it trains."""
    train_ds, eval_ds, eval_split, test_ds, norm = _load_data(cfg, ddp.world)
    raw, layer, layer_hw = _build_model(cfg, len(train_ds.classes), tuple(train_ds.size), device)
    means = _load_means(cfg, list(train_ds.classes), layer, layer_hw, ddp)
    lr = cfg.lr if cfg.lr is not None else (0.1 if cfg.optimizer == "sgd" else 1e-3) * cfg.batch_size / 128
    amp_dtype, notes = None, []
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif cfg.amp:
        notes.append(f"--amp applies to CUDA only; trained in float32 on {device}")
    plan = Plan(cfg=cfg, device=device, world=ddp.world, train_ds=train_ds, eval_ds=eval_ds, eval_split=eval_split,
                test_ds=test_ds, norm=norm, layer=layer, layer_hw=layer_hw, lambdas=lambdas(cfg), lr=lr,
                amp_dtype=amp_dtype, means=means, notes=notes)
    return plan, raw
