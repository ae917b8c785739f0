"""Models: build architectures from a ``--model`` spec, load checkpoints safely,
and find the layers a CAM can target.

Model specs (SPEC 2.1):

- ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, weights=None)``;
- ``camstat:resnet20`` -- the CIFAR ResNet-20 of He et al. 2016 (option-A
  shortcuts, 0.27 M parameters); ``camstat:smallcnn`` -- a ~25 k-parameter
  CNN for tests and the demo;
- ``timm:NAME`` -- ``timm.create_model(NAME, pretrained=False)`` when timm is
  installed;
- ``path/to/file.py:factory`` and ``package.module:factory`` -- the user's
  code, called with ``num_classes=`` only when the factory accepts it;
- ``torchscript:PATH`` -- a TorchScript archive (TorchScript modules cannot
  carry Python hooks, so they predict but cannot be CAM targets).

Nothing is ever downloaded: every architecture is built with random weights,
and weights come only from ``--checkpoint``; its keys are matched to the
model through wrapper prefixes (``module.``, ``_orig_mod.``) and sub-module
prefixes (Lightning's ``model.``, ``net.``) or ``--checkpoint-prefix``.

Target layers come from one traced forward (:class:`LayerTrace`): a layer
qualifies when its output reads as an image grid larger than 1x1
(:mod:`camstat.grids`: CNN maps, channels-last stages, ViT tokens) that the
class scores depend on.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import re
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from camstat.atomic import atomic_write
from camstat.errors import CamstatError
from camstat.grids import GridLayout, declared_prefix_tokens, grid_layout, to_grid
from camstat.provenance import sha256_file

MODEL_FORMS = (
    "torchvision:NAME, camstat:resnet20, camstat:smallcnn, timm:NAME, "
    "path/to/file.py:factory, package.module:factory, torchscript:PATH"
)
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")
# DataParallel/DDP and torch.compile wrap a whole model: their prefix is on every key
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# how deep to look for a sub-module prefix such as Lightning's "model." or "net.backbone."
MAX_PREFIX_DEPTH = 3
MAX_NAMED_KEYS = 5


def _first_line(exc: BaseException) -> str:
    """Library messages span lines; the CLI prints one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# --------------------------------------------------------------------------
# camstat's own architectures


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels, so the
    residual path adds no parameters (He et al. 2016, CIFAR experiments)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, self.extra_channels - pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = _PadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20. Parameter names follow the widely shared
    ``akamaster/pytorch_resnet_cifar10`` checkpoints, so those load as they are."""

    def __init__(self, num_classes: int = 10, blocks_per_stage: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_BasicBlock(in_planes, planes, stride)]
        layers += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # adaptive pooling, so sizes other than 32x32 work too
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _conv_stage(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        # not in place: a hooked BatchNorm output must not be overwritten by the ReLU
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Three conv stages (16/32/64 channels, two 2x poolings), global average
    pooling and a linear head: ~25 k parameters, trains in seconds on CPU and
    keeps an 8x8 map at 32x32 input. ``features`` ends in ``features.stage3``."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                stage1=_conv_stage(3, width, pool=True),
                stage2=_conv_stage(width, 2 * width, pool=True),
                stage3=_conv_stage(2 * width, 4 * width, pool=False),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


CAMSTAT_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": ResNet20,
    "smallcnn": SmallCNN,
}


# --------------------------------------------------------------------------
# building from a spec


def _split_spec(spec: str) -> tuple[str, str]:
    """Return (kind, rest), kind in torchvision|camstat|timm|torchscript|file|module."""
    for kind in ("torchvision", "camstat", "timm", "torchscript"):
        if spec.startswith(kind + ":"):
            return kind, spec[len(kind) + 1 :]
    target, sep, _ = spec.rpartition(":")
    if sep and target.endswith(".py"):
        return "file", spec
    if sep and target and all(part.isidentifier() for part in target.split(".")):
        return "module", spec
    raise CamstatError(f"unknown model spec {spec!r}; use one of: {MODEL_FORMS}")


def _takes_num_classes(kind: str) -> bool:
    return kind in ("torchvision", "camstat", "timm")


def _build_torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        # substrings first ("vit" -> vit_b_16...), then near spellings ("resnet1234" -> resnet18...)
        close = [n for n in names if name.lower() in n or n in name.lower()]
        close += [n for n in difflib.get_close_matches(name.lower(), names, n=8, cutoff=0.6) if n not in close]
        close = close[:8] or names[:8]
        raise CamstatError(
            f"unknown torchvision model {name!r}; e.g. {', '.join(close)} "
            "(all: torchvision.models.list_models())"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _build_camstat(name: str, num_classes: int | None) -> nn.Module:
    if name not in CAMSTAT_MODELS:
        raise CamstatError(
            f"unknown camstat model {name!r}; choose from: {', '.join(sorted(CAMSTAT_MODELS))}"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return CAMSTAT_MODELS[name](**kwargs)


def _build_timm(name: str, num_classes: int | None) -> nn.Module:
    if importlib.util.find_spec("timm") is None:
        raise CamstatError(f"model 'timm:{name}' needs timm; install timm (pip install timm)")
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise CamstatError(
            f"timm cannot build {name!r} ({_first_line(exc)}); see timm.list_models()"
        ) from exc


def _import_file(path_text: str):
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise CamstatError(f"model file not found: {path}; check the path in --model")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"camstat_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # registered before executing, as dataclasses and pickling look it up there
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CamstatError(f"error while importing {path}: {type(exc).__name__}: {_first_line(exc)}") from exc
    return module


def _import_dotted(name: str):
    # like `python -m`, the working directory counts, though console scripts omit it
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CamstatError(
            f"cannot import module {name!r} ({_first_line(exc)}); is it installed or on PYTHONPATH?"
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)


def _accepts_num_classes(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)


def _build_from_factory(kind: str, spec: str, num_classes: int | None) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    module = _import_file(target) if kind == "file" else _import_dotted(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise CamstatError(
            f"{target} has no factory {attr!r}; callables there: {', '.join(found[:10]) or 'none'}"
        )
    kwargs = {"num_classes": num_classes} if num_classes is not None and _accepts_num_classes(factory) else {}
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise CamstatError(f"{spec} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise CamstatError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _build_torchscript(path_text: str) -> nn.Module:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise CamstatError(f"TorchScript file not found: {path}")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise CamstatError(f"cannot load TorchScript archive {path}: {_first_line(exc)}") from exc


def build_model(spec: str, num_classes: int | None) -> nn.Module:
    """Build the architecture named by ``spec`` with random weights.

    ``num_classes=None`` keeps the architecture's own default (1000 for
    torchvision/timm, 10 for camstat models, the factory's default).
    """
    kind, rest = _split_spec(spec)
    if kind == "torchvision":
        return _build_torchvision(rest, num_classes)
    if kind == "camstat":
        return _build_camstat(rest, num_classes)
    if kind == "timm":
        return _build_timm(rest, num_classes)
    if kind == "torchscript":
        return _build_torchscript(rest)
    return _build_from_factory(kind, spec, num_classes)


# --------------------------------------------------------------------------
# checkpoints


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CamstatError(f"cannot read safetensors file {path}: {_first_line(exc)}") from exc
    meta = json.loads(header["camstat"]) if "camstat" in header else {}
    return state, meta


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust:
            raise CamstatError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
        found = re.search(r"GLOBAL (\S+)", str(exc))
        reason = f"it refers to Python object {found.group(1)}" if found else "it is not plain tensors"
        raise CamstatError(
            f"checkpoint {path} needs full unpickling ({reason}), which can run arbitrary code; "
            "refused. Rerun with --trust-checkpoint only if you trust its source"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CamstatError(
            f"cannot read checkpoint {path}: not a PyTorch or .safetensors file ({_first_line(exc)})"
        ) from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap_state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, nn.Module):  # a whole pickled model (only with --trust-checkpoint)
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if _is_state_dict(inner):
                return inner
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise CamstatError(
        f"no state_dict found in {path} (looked for a dict of tensors, or one under "
        f"{', '.join(STATE_DICT_KEYS)}; found: {keys})"
    )


def _strip_wrappers(state: dict) -> dict:
    """Strip ``module.`` and ``_orig_mod.`` -- only when every key carries the
    prefix, so a genuine submodule of that name survives."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _under(state: dict, prefix: str) -> dict:
    """The entries under ``prefix``, with it (and any wrapper prefix after it) stripped."""
    return _strip_wrappers({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def _sub_prefixes(state: dict) -> list[str]:
    """``model.``, ``net.``, ``model.net.``...: the dotted heads of the keys, shortest first."""
    found: dict[str, None] = {}
    for key in state:
        parts = key.split(".")
        for depth in range(1, min(MAX_PREFIX_DEPTH, len(parts) - 1) + 1):
            found.setdefault(".".join(parts[:depth]) + ".")
    return sorted(found, key=lambda p: (p.count("."), p))


def _normal_prefix(prefix: str) -> str:
    return prefix if prefix == "" or prefix.endswith(".") else prefix + "."


def fit_prefix(state: dict, model_keys: set[str], prefix: str | None = None) -> dict:
    """The checkpoint entries that belong to the model.

    ``prefix`` (``--checkpoint-prefix``) names them explicitly: the keys under
    it, stripped; everything else (a loss's ``criterion.weight``...) is left
    out. Without it the keys are taken as they are if they fit, else with
    ``module.``/``_orig_mod.`` stripped, else the sub-module prefix whose keys
    fit the model exactly (Lightning's ``model.``, ``net.``; two such prefixes
    are refused as ambiguous); failing all that, unchanged, for
    :func:`load_state_strict` to report.
    """
    if prefix is not None:
        prefix = _normal_prefix(prefix)
        chosen = _under(state, prefix)
        if not chosen:
            raise CamstatError(
                f"no checkpoint key starts with {prefix!r}; prefixes there: {', '.join(_sub_prefixes(state)[:8])}"
                " (pass one with --checkpoint-prefix, or '' for none)"
            )
        return chosen
    if set(state) == model_keys:
        return state
    stripped = _strip_wrappers(state)
    if set(stripped) == model_keys:
        return stripped
    fits = [head for head in _sub_prefixes(stripped) if set(_under(stripped, head)) == model_keys]
    if len(fits) > 1:  # e.g. the model and its EMA copy: which one is the user's call
        raise CamstatError(
            f"the checkpoint holds this model's weights under several prefixes ({', '.join(fits)}); "
            "choose one with --checkpoint-prefix"
        )
    return _under(stripped, fits[0]) if fits else stripped


def likely_prefix(state: dict, model_keys: set[str]) -> str | None:
    """The sub-module prefix whose keys overlap the model's most, if it beats no prefix."""
    best, overlap = None, len(set(state) & model_keys)
    for head in _sub_prefixes(state):
        hits = len(set(_under(state, head)) & model_keys)
        if hits > overlap:
            best, overlap = head, hits
    return best


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> tuple[dict, dict]:
    """Return ``(state_dict, meta)``; ``meta`` is camstat's metadata or ``{}``.

    ``torch.load`` runs with ``weights_only=True`` unless ``trust``; a file that
    needs full unpickling is refused, never executed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CamstatError(f"checkpoint not found: {path}; check --checkpoint")
    if _is_safetensors(path):
        state, meta = _load_safetensors(path)
    else:
        obj = _torch_load(path, trust)
        state = _unwrap_state_dict(obj, path)
        meta = obj.get("camstat", {}) if isinstance(obj, dict) else {}
        meta = meta if isinstance(meta, dict) else {}
    return _strip_wrappers(dict(state)), dict(meta)


def _check_plain(value: Any, where: str) -> None:
    """Metadata must survive ``weights_only`` loading and JSON: plain types only."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"metadata key {key!r} at {where} is not a str")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise TypeError(f"metadata value at {where} is a {type(value).__name__}, not a plain type")


def _portable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, module: nn.Module, meta: dict) -> str:
    """Write ``{"state_dict": ..., "camstat": meta}`` atomically; return its SHA-256.

    A ``.safetensors`` path stores the weights as safetensors with ``meta`` as
    JSON under the ``camstat`` metadata key; any other path uses ``torch.save``.
    """
    _check_plain(meta, "meta")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _portable_state(module)

    def write(handle) -> None:
        if _is_safetensors(path):
            from safetensors.torch import save

            handle.write(save(state, metadata={"camstat": json.dumps(meta)}))
        else:
            torch.save({"state_dict": state, "camstat": meta}, handle)

    atomic_write(path, write)
    return sha256_file(path)


# --------------------------------------------------------------------------
# loading a model with its weights


@dataclass
class LoadedModel:
    module: nn.Module
    spec: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    meta: dict = field(default_factory=dict)
    num_classes: int | None = None


def _infer_num_classes(state: dict) -> int | None:
    """The head is the last 2-D weight in registration order (fc, linear, classifier...)."""
    for key in reversed(list(state)):
        if key.endswith("weight") and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMED_KEYS])
    return shown + (", ..." if len(keys) > MAX_NAMED_KEYS else "")


def _shape_mismatches(module: nn.Module, state: dict) -> list[str]:
    own = module.state_dict()
    return [
        f"{k} (checkpoint {list(v.shape)} vs model {list(own[k].shape)})"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]


def load_state_strict(module: nn.Module, state: dict, spec: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or misshapen key
    is a one-line CamstatError naming them (and the likely --checkpoint-prefix)."""
    hint = f"check --model ({spec}) and --num-classes"
    head = likely_prefix(state, set(module.state_dict()))
    if head is not None:
        hint = f"the keys under {head!r} fit this model best: pass --checkpoint-prefix {head.rstrip('.')}, or {hint}"
    wrong = _shape_mismatches(module, state)
    if wrong:
        raise CamstatError(
            f"checkpoint does not fit the model: {len(wrong)} shape mismatches: {_preview(wrong)}; {hint}"
        )
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise CamstatError(
            f"checkpoint does not fit the model: {len(missing)} missing keys"
            f"{' (' + _preview(missing) + ')' if missing else ''}, {len(unexpected)} unexpected keys"
            f"{' (' + _preview(unexpected) + ')' if unexpected else ''}; {hint}"
        )


def load_model(
    spec: str | None,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    checkpoint_prefix: str | None = None,
) -> LoadedModel:
    """Build ``spec`` and load ``checkpoint`` into it (strictly), on CPU in eval mode.

    The checkpoint's keys are matched to the model by :func:`fit_prefix`;
    ``checkpoint_prefix`` names the sub-module prefix explicitly.

    ``spec=None`` takes the model spec from the checkpoint's camstat metadata.
    ``num_classes`` falls back to the metadata, then to the checkpoint's head;
    without a checkpoint it is required for torchvision/camstat/timm models.
    """
    state, meta, digest = None, {}, None
    if checkpoint is not None:
        state, meta = load_checkpoint(checkpoint, trust=trust_checkpoint)
        if checkpoint_prefix is not None:
            state = fit_prefix(state, set(), checkpoint_prefix)
        digest = sha256_file(Path(checkpoint).expanduser())
    spec = spec or meta.get("model")
    if not spec:
        raise CamstatError("no model given; pass --model (e.g. camstat:resnet20)")
    kind, _ = _split_spec(spec)
    if num_classes is None:
        num_classes = meta.get("num_classes")
    if num_classes is None and state is not None:
        num_classes = _infer_num_classes(state)
    if num_classes is None and _takes_num_classes(kind):
        raise CamstatError(f"number of classes unknown for {spec}; pass --num-classes N")
    module = build_model(spec, num_classes)
    if state is not None:
        if checkpoint_prefix is None:
            state = fit_prefix(state, set(module.state_dict()))
        load_state_strict(module, state, spec)
    module = module.to("cpu").eval()
    if num_classes is None:
        num_classes = _infer_num_classes(module.state_dict())
    return LoadedModel(
        module=module,
        spec=spec,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=digest,
        meta=meta,
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------
# target layers


@dataclass(frozen=True)
class LayerInfo:
    """A layer whose output reads as an image grid: ``out_shape`` is (C, h, w) of one
    image after :func:`camstat.grids.to_grid` with ``layout``."""

    name: str
    type: str
    out_shape: tuple[int, ...]
    layout: GridLayout


@dataclass(frozen=True)
class _Call:
    """One module call of the traced forward (outputs themselves are not kept)."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]  # per image, batch dimension removed
    layout: GridLayout | None
    reads_image: bool  # its input is the image itself (stem, patch embedding)
    informative: bool = True  # the class scores' gradient reaches its grid


_POOLING = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
)


def _reject_torchscript(module: nn.Module) -> None:
    if isinstance(module, torch.jit.ScriptModule):
        raise CamstatError(
            "TorchScript models cannot be hooked, so they have no CAM target layers; "
            "use the architecture's Python code (path/to/file.py:factory) with --checkpoint"
        )


def _dummy_input(module: nn.Module, input_size: tuple[int, int], channels: int) -> torch.Tensor:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    device = torch.device("cpu") if tensor is None else tensor.device
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    # random, not zeros: a zero image leaves ReLU networks without any gradient
    dummy = torch.randn(1, channels, *input_size, generator=torch.Generator().manual_seed(0))
    return dummy.to(device=device, dtype=dtype).requires_grad_(True)


def _mark_informative(calls: list[_Call], outputs: list[torch.Tensor], scores: Any) -> list[_Call]:
    """Flag the grids that the gradient of ``scores`` never reaches: in a ViT only
    the class token is read after the last block, so its patch tokens get no
    gradient there and every gradient CAM would be zero."""
    wanted = [i for i, c in enumerate(calls) if c.layout is not None and outputs[i].requires_grad]
    if not (isinstance(scores, torch.Tensor) and scores.is_floating_point() and scores.requires_grad and wanted):
        return calls
    # random directions: a plain sum could cancel
    directions = torch.randn(scores.shape, generator=torch.Generator().manual_seed(1)).to(scores)
    grads = torch.autograd.grad(scores, [outputs[i] for i in wanted], directions, allow_unused=True)
    reached = {i: g is not None and bool(to_grid(g, calls[i].layout).ne(0).any()) for i, g in zip(wanted, grads)}
    return [replace(c, informative=reached.get(i, True)) for i, c in enumerate(calls)]


def _trace(module: nn.Module, input_size: tuple[int, int], channels: int) -> list[_Call]:
    """Every submodule call returning a tensor, in order of completion (a container
    completes after its children), with its grid reading: ONE forward and one
    backward of a seeded random image. The backward starts at the input of the
    last leaf called (the head's features), so that a zero-initialised head
    (torchvision's ViTs) cannot hide which layers the scores depend on."""
    _reject_torchscript(module)
    dummy = _dummy_input(module, input_size, channels)
    prefix = declared_prefix_tokens(module)
    calls: list[_Call] = []
    outputs: list[torch.Tensor] = []
    head_input: list[Any] = [None]

    def recorder(name: str):
        def hook(mod: nn.Module, inputs, output) -> None:
            if not any(True for _ in mod.children()):
                head_input[0] = inputs[0] if inputs else None
            if isinstance(output, torch.Tensor) and output.ndim >= 2:
                shape = tuple(output.shape[1:])
                reads_image = any(x is dummy for x in inputs)
                calls.append(_Call(name, mod, shape, grid_layout(shape, input_size, prefix), reads_image))
                outputs.append(output)

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in module.named_modules() if n]
    was_training = module.training
    try:
        module.eval()
        with torch.enable_grad():
            result = module(dummy)
            return _mark_informative(calls, outputs, head_input[0] if head_input[0] is not None else result)
    except Exception as exc:
        raise CamstatError(
            f"the model fails on a {channels}x{input_size[0]}x{input_size[1]} input "
            f"({type(exc).__name__}: {_first_line(exc)}); check --size"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)


def _is_attention(module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b", "a"]`` (the root, whose output is the logits, excluded)."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]


def _beside(stage: str, name: str) -> bool:
    """``name`` sits next to ``stage``, not inside a later block: its parent is the root or holds ``stage``."""
    parent = name.rpartition(".")[0]
    return parent == "" or stage.startswith(parent + ".")


class LayerTrace:
    """The layers of one model at one input size, from one traced forward:
    which can be CAM targets, their grid shapes, and the ``auto`` choice."""

    def __init__(self, module: nn.Module, input_size: tuple[int, int] = (32, 32), channels: int = 3):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.modules = dict(module.named_modules())
        calls = _trace(module, self.input_size, channels)
        self.counts = Counter(c.name for c in calls)
        self.first: dict[str, _Call] = {}
        for call in calls:
            self.first.setdefault(call.name, call)

    def refusal(self, name: str) -> str | None:
        """Why ``name`` cannot be a CAM target (a clause for an error message), or None."""
        call = self.first.get(name)
        h, w = self.input_size
        if call is None:
            return "gives no tensor (its output is not a tensor, or the forward never calls it)"
        if self.counts[name] > 1:
            return f"is called {self.counts[name]} times per forward (a shared module), so its map is ambiguous"
        if call.layout is None and len(call.shape) < 2:
            return f"gives no feature map (its output is a vector of {call.shape[0]} per image)"
        if call.layout is None:
            return (f"outputs {tuple(call.shape)} per image, which is not an image grid: none of (C,H,W), "
                    f"channels-last (H,W,C) or transformer tokens (T,C) after the class/register tokens fits "
                    f"the {h}x{w} input (attention internals never do)")
        if call.layout.height * call.layout.width == 1:
            return f"gives a 1x1 map at a {h}x{w} input: one value per image, so every CAM there is constant"
        if not call.informative:
            return ("gets no gradient from the class scores on its grid (in a transformer, after the last "
                    "block only the class token is read), so every gradient CAM there is zero")
        return None

    def info(self, name: str) -> LayerInfo:
        call = self.first[name]
        return LayerInfo(name, type(call.module).__name__, call.layout.shape, call.layout)

    def candidates(self) -> list[LayerInfo]:
        """Layers that can be CAM targets, in forward order (of completion)."""
        return [self.info(n) for n in self.first if self.refusal(n) is None]

    def _inside_resampling(self, call: _Call) -> bool:
        """An intermediate of a module that changes the grid: anything inside a
        strided block (a BatchNorm in an inverted residual), a norm inside a
        downsampling Sequential. Other members of a Sequential (a backbone's
        stages, VGG's last ReLU before its pooling) are the main stream."""
        norm = "norm" in type(call.module).__name__.lower()
        grid = (call.layout.height, call.layout.width)
        for parent in _ancestors(call.name):
            outer = self.first.get(parent)
            if outer is None or outer.layout is None:
                continue
            if (outer.layout.height, outer.layout.width) != grid and (
                norm or not isinstance(outer.module, nn.Sequential)
            ):
                return True
        return False

    def _auto_eligible(self, name: str, embeddings: bool = False) -> bool:
        call = self.first[name]
        return (
            self.refusal(name) is None
            and not isinstance(call.module, _POOLING)
            and (embeddings or not (call.reads_image and not any(True for _ in call.module.children())))
            and not any(_is_attention(self.modules[n]) for n in [name, *_ancestors(name)])
            and not self._inside_resampling(call)
        )

    def auto(self) -> LayerInfo:
        """The last layer whose output is a spatial map of the image that the scores
        depend on: ``layer4`` (ResNet), ``features`` (VGG, ConvNeXt, Swin), the last
        block's first norm (ViT). Trailing leaves beside the last stage (a final
        norm, a permute) give way to the stage itself."""
        # A leaf that reads the image itself (a patch embedding) only when nothing else qualifies (a one-conv net).
        eligible = ([n for n in self.first if self._auto_eligible(n)]
                    or [n for n in self.first if self._auto_eligible(n, embeddings=True)])
        if not eligible:
            raise CamstatError(
                f"no layer gives a spatial map of the image at input size {self.input_size}; "
                "pass a larger --size or name a layer with --layer"
            )
        choice = eligible[-1]
        stages = [n for n in eligible if any(True for _ in self.modules[n].children())]
        if stages:
            stage = stages[-1]
            grid = self.info(stage).out_shape[1:]
            after = eligible[eligible.index(stage) + 1 :]
            if all(self.info(n).out_shape[1:] == grid and _beside(stage, n) for n in after):
                choice = stage
        return self.info(choice)

    def hint(self) -> str:
        names = [info.name for info in self.candidates()[-8:]]
        return (", ".join(names) or "none at this size") + " (all: camstat layers)"

    def resolve(self, layer_spec: str) -> list[LayerInfo]:
        """``auto`` or a comma list of module names -> the validated layers."""
        text = (layer_spec or "").strip()
        if text == "auto":
            return [self.auto()]
        names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        if not names:
            raise CamstatError("empty --layer; use auto or module names such as layer4")
        unknown = [n for n in names if n not in self.modules or not n]
        if unknown:
            raise CamstatError(f"unknown layer {', '.join(unknown)}; candidates: {self.hint()}")
        for name in names:
            reason = self.refusal(name)
            if reason:
                raise CamstatError(f"layer {name} {reason}; pick another, e.g. {self.hint()}")
        return [self.info(n) for n in names]


def candidate_layers(
    module: nn.Module, input_size: tuple[int, int] = (32, 32), channels: int = 3
) -> list[LayerInfo]:
    """Layers whose output reads as an image grid larger than 1x1, in forward order."""
    return LayerTrace(module, input_size, channels).candidates()


def resolve_layer_maps(
    module: nn.Module, layer_spec: str, input_size: tuple[int, int] = (32, 32), channels: int = 3
) -> list[LayerInfo]:
    """``auto`` or a comma list of module names -> the layers with their grid
    shapes (C, h, w) and readings, from one traced forward at ``input_size``."""
    return LayerTrace(module, input_size, channels).resolve(layer_spec)


def resolve_layers(module: nn.Module, layer_spec: str, input_size: tuple[int, int] = (32, 32)) -> list[str]:
    """The names of :func:`resolve_layer_maps`."""
    return [info.name for info in resolve_layer_maps(module, layer_spec, input_size)]


def get_layer(module: nn.Module, name: str) -> nn.Module:
    layer = dict(module.named_modules()).get(name)
    if layer is None or name == "":
        raise CamstatError(f"model has no layer {name!r}; see camstat layers")
    return layer
