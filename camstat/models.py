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
and weights come only from ``--checkpoint``.
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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from camstat.atomic import atomic_write
from camstat.errors import CamstatError
from camstat.provenance import sha256_file

MODEL_FORMS = (
    "torchvision:NAME, camstat:resnet20, camstat:smallcnn, timm:NAME, "
    "path/to/file.py:factory, package.module:factory, torchscript:PATH"
)
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")
STRIPPED_PREFIXES = ("module.", "model.")
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


def _strip_prefixes(state: dict) -> dict:
    """Strip DataParallel's ``module.`` and Lightning's ``model.`` -- only when
    every key carries the prefix, so a genuine submodule named ``model`` survives."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


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
    return _strip_prefixes(dict(state)), dict(meta)


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
    is a one-line CamstatError naming them."""
    hint = f"check --model ({spec}) and --num-classes"
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
) -> LoadedModel:
    """Build ``spec`` and load ``checkpoint`` into it (strictly), on CPU in eval mode.

    ``spec=None`` takes the model spec from the checkpoint's camstat metadata.
    ``num_classes`` falls back to the metadata, then to the checkpoint's head;
    without a checkpoint it is required for torchvision/camstat/timm models.
    """
    state, meta, digest = None, {}, None
    if checkpoint is not None:
        state, meta = load_checkpoint(checkpoint, trust=trust_checkpoint)
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
    name: str
    type: str
    out_shape: tuple[int, ...]  # (C, H, W) of one image


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


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _trace_feature_maps(
    module: nn.Module, input_size: tuple[int, int], channels: int
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Every call of a submodule returning a 4-D tensor, in order of completion
    (a container completes after its children), from one dummy forward."""
    _reject_torchscript(module)
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def recorder(name: str):
        def hook(mod: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                calls.append((name, mod, tuple(output.shape[1:])))

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in module.named_modules() if n]
    was_training = module.training
    try:
        module.eval()
        dummy = torch.zeros(1, channels, *input_size, device=_device_of(module))
        with torch.no_grad():
            module(dummy)
    except Exception as exc:
        raise CamstatError(
            f"the model fails on a {channels}x{input_size[0]}x{input_size[1]} input "
            f"({type(exc).__name__}: {_first_line(exc)}); check --size"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return calls


def candidate_layers(
    module: nn.Module, input_size: tuple[int, int] = (32, 32), channels: int = 3
) -> list[LayerInfo]:
    """Modules whose output is a 4-D feature map, in forward order (first call)."""
    seen: dict[str, LayerInfo] = {}
    for name, mod, shape in _trace_feature_maps(module, tuple(input_size), channels):
        seen.setdefault(name, LayerInfo(name, type(mod).__name__, shape))
    return list(seen.values())


def _auto_layer(module: nn.Module, input_size: tuple[int, int]) -> str:
    """The last spatial (H*W > 1) feature map before global pooling. Because a
    container completes after its children, the last such call is already the
    coarsest container holding that output (``layer4``, ``features``...).
    Pooling modules are passed over: VGG's adaptive 7x7 pool is not a stage."""
    calls = _trace_feature_maps(module, tuple(input_size), 3)
    spatial = [
        name for name, mod, shape in calls if shape[1] * shape[2] > 1 and not isinstance(mod, _POOLING)
    ]
    if not spatial:
        raise CamstatError(
            f"no layer keeps a spatial map at input size {tuple(input_size)}; "
            "pass a larger --size or name a layer with --layer"
        )
    return spatial[-1]


def _layer_hint(module: nn.Module, input_size: tuple[int, int]) -> str:
    names = [info.name for info in candidate_layers(module, input_size)[-8:]]
    return ", ".join(names) + " (all: camstat layers)"


def resolve_layers(module: nn.Module, layer_spec: str, input_size: tuple[int, int] = (32, 32)) -> list[str]:
    """``auto`` or a comma list of module names -> validated layer names.

    ``auto`` is the last module before global pooling whose output is still
    spatial (more than 1x1 at ``input_size``): ``layer4`` for torchvision
    ResNets at 64 px and up, ``layer3`` for camstat:resnet20, ``features`` for
    VGG/DenseNet/MobileNet/EfficientNet/ConvNeXt and camstat:smallcnn.
    """
    text = (layer_spec or "").strip()
    if text == "auto":
        return [_auto_layer(module, input_size)]
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise CamstatError("empty --layer; use auto or module names such as layer4")
    known = dict(module.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CamstatError(
            f"unknown layer {', '.join(unknown)}; candidates: {_layer_hint(module, input_size)}"
        )
    maps = {info.name for info in candidate_layers(module, input_size)}
    flat = [n for n in names if n not in maps]
    if flat:
        raise CamstatError(
            f"layer {', '.join(flat)} gives no (N,C,H,W) feature map; "
            f"candidates: {_layer_hint(module, input_size)}"
        )
    return names


def get_layer(module: nn.Module, name: str) -> nn.Module:
    layer = dict(module.named_modules()).get(name)
    if layer is None or name == "":
        raise CamstatError(f"model has no layer {name!r}; see camstat layers")
    return layer
