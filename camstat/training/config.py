"""The options of ``camstat train-reg`` and what follows from them alone (SPEC 5).

Every option is validated here, once (:meth:`TrainConfig.validate`); the
decisions the rest of training reads are made here, once, too:

- :func:`loss_weights` -- the weighted terms of ``--loss`` (``--hybrid``
  parsed only here);
- :func:`lambdas` -- lambda of every epoch under ``--schedule``; the CAM term
  is on in an epoch exactly when its lambda is > 0 (lambda 0 is plain
  training, bit for bit);
- :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.to_args` -- the one
  representation of the options in files (``"lambda"``) and on a command line
  (``--lambda``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from camstat.decoding import INTENSITIES
from camstat.errors import CamstatError

LOSSES = ("mean", "variance", "spread", "neg-variance", "hybrid")
SCHEDULES = ("constant", "linear", "curriculum")
CAM_METHODS = ("gradcam", "gradcam++")
EVAL_SPLITS = ("val", "test")
HYBRID_TERMS = ("mean", "variance", "spread", "neg-variance")
DEFAULT_HYBRID = "mean=1,spread=1"
# Options that may change between an interrupted run and its resumption.
NON_IDENTITY = ("out", "overwrite", "device", "workers")
# Option names whose command-line spelling is not the field name with dashes.
CLI_NAMES = {"lam": "--lambda"}
ALWAYS_ARGS = ("model", "data", "out")
CHOICES = {"loss": LOSSES, "cam": CAM_METHODS, "schedule": SCHEDULES, "means_update": ("none", "ema"),
           "optimizer": ("sgd", "adamw"), "lr_schedule": ("cosine", "constant"), "eval_split": EVAL_SPLITS,
           "intensity": INTENSITIES}


@dataclass
class TrainConfig:
    """Options of ``camstat train-reg`` (see the CLI help for each).

    ``lr=None`` means ``0.1 * batch_size / 128`` (SGD) or ``1e-3 * batch_size / 128``
    (AdamW). ``batch_size`` is the global batch (split over torchrun ranks).
    ``eval_split=None`` means ``val`` when the data has one, else ``test``.
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
    intensity: str = "dtype"
    limit: int | None = None
    eval_limit: int | None = None
    eval_split: str | None = None
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

    def to_args(self) -> list[str]:
        """The ``camstat train-reg`` arguments that give this configuration (defaults left out but the model,
        data and run directory, which a reader of the command wants to see)."""
        args: list[str] = []
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if value is None or (value == default and f.name not in ALWAYS_ARGS):
                continue
            flag = CLI_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            else:
                args += [flag, str(value)]
        return args

    def identity(self) -> dict:
        d = self.to_dict()
        for key in NON_IDENTITY:
            d.pop(key, None)
        return d

    @property
    def weights(self) -> dict[str, float]:
        return loss_weights(self.loss, self.hybrid)

    @property
    def uses_means(self) -> bool:
        """Whether the CAM term (when on) pulls maps towards stored class means."""
        return self.weights.get("mean", 0) > 0

    def validate(self) -> None:
        """Bad options -> CamstatError (exit code 2 on the command line)."""
        self.lam = _weight(self.lam, "--lambda", " (0 = plain training)")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise CamstatError(f"unknown --{name.replace('_', '-')} {value!r}; choose from {', '.join(allowed)}")
        self._validate_numbers()
        if self.lam > 0 and self.uses_means and not self.means:
            raise CamstatError(
                f"--loss {self.loss} needs class mean maps: pass --means STORE (the baseline's train-split store,"
                " from `camstat extract --split train`)"
            )
        if self.means_update == "ema" and not (self.uses_means and self.means):
            raise CamstatError("--means-update ema refreshes the --means maps of --loss mean|hybrid; pass --means")

    def _validate_numbers(self) -> None:
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


def _weight(value, what: str, zero_means: str = "") -> float:
    """A loss weight (``--lambda``, a ``--hybrid`` term): a finite number >= 0."""
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise CamstatError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise CamstatError(f"{what} must be finite and >= 0{zero_means}, not {value}")
    return weight


def loss_weights(loss: str, hybrid: str | dict | None = None) -> dict[str, float]:
    """The weighted terms of ``--loss``: ``{loss: 1.0}``, or ``--hybrid``'s terms for ``hybrid``."""
    return parse_hybrid(hybrid) if loss == "hybrid" else {loss: 1.0}


def parse_hybrid(text: str | dict | None) -> dict[str, float]:
    """``"mean=1,spread=0.5"`` -> ``{"mean": 1.0, "spread": 0.5}`` (terms of ``--loss hybrid``)."""
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in (text or DEFAULT_HYBRID).split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise CamstatError(f"bad --hybrid term {part!r}; write TERM=WEIGHT, e.g. {DEFAULT_HYBRID}")
            items.append((key.strip(), value.strip()))
    weights: dict[str, float] = {}
    for key, value in items:
        if key not in HYBRID_TERMS:
            raise CamstatError(f"unknown --hybrid term {key!r}; choose from {', '.join(HYBRID_TERMS)}")
        weights[key] = _weight(value, f"--hybrid weight of {key}")
    if not any(weights.values()):
        raise CamstatError("--hybrid needs at least one positive weight")
    return weights


# --------------------------------------------------------------------------
# lambda schedules


def curriculum_defaults(epochs: int, warmup: int | None, ramp: int | None) -> tuple[int, int]:
    """Curriculum warm-up and ramp lengths (epochs); each defaults to 20 % of the epochs."""
    default = max(1, round(0.2 * epochs)) if epochs > 1 else 0
    return (default if warmup is None else int(warmup)), (default if ramp is None else int(ramp))


def lambda_at(epoch: int, lam: float, schedule: str, epochs: int, warmup: int = 0, ramp: int = 0) -> float:
    """Lambda in epoch ``epoch`` (0-based) of ``epochs``.

    ``constant``: ``lam`` throughout. ``linear``: ``lam * (epoch + 1) / epochs``,
    reaching ``lam`` in the last epoch. ``curriculum``: 0 for ``warmup``
    epochs (plain training), then a linear ramp over ``ramp`` epochs that
    reaches ``lam`` in its last one, then ``lam``.
    """
    if lam == 0:
        return 0.0
    if schedule == "constant":
        return float(lam)
    if schedule == "linear":
        return float(lam) * (epoch + 1) / max(1, epochs)
    if epoch < warmup:
        return 0.0
    if ramp <= 0:
        return float(lam)
    return float(lam) * min(1.0, (epoch - warmup + 1) / ramp)


def lambdas(cfg: TrainConfig) -> list[float]:
    """Lambda of each epoch of a validated configuration (0 where the CAM term is off)."""
    warmup, ramp = curriculum_defaults(cfg.epochs, cfg.cam_warmup, cfg.cam_ramp)
    return [lambda_at(e, cfg.lam, cfg.schedule, cfg.epochs, warmup, ramp) for e in range(cfg.epochs)]
