"""Datasets behind ``--data SPEC --split train|test`` (SPEC 2.2).

Specs:

- ``builtin:digits`` -- scikit-learn's bundled 8x8 handwritten digits, scaled
  to [0, 1] and resized bilinearly to 32x32; a fixed stratified split
  (``train_test_split(test_size=0.25, random_state=0, stratify=...)``),
  each split in the original order.
- ``builtin:shapes[?OPTIONS]`` -- procedurally generated shapes with
  ground-truth object masks and an optional class-coded decoy; see
  :func:`make_shapes` and ``SHAPES_DEFAULTS``. Options, ``&``-separated:
  ``n`` (images in the split; default 2000 train / 1000 test),
  ``decoy`` (fraction of images carrying the decoy patch; default 0),
  ``seed`` (default 0), ``classes`` (2-6, default 6), ``noise`` (pixel
  noise sd, default 0.05), ``positions`` (0 = objects near the centre;
  P >= 2 plants P known object positions, a composition to recover).
  Example: ``builtin:shapes?n=3000&decoy=0.5``.
- ``cifar10:ROOT`` -- torchvision's ``cifar-10-batches-py`` pickles (ROOT is
  that folder or its parent), read without executing pickled code.
- ``imagefolder:ROOT`` -- ``ROOT/<class>/<image>``; when ``ROOT/train`` or
  ``ROOT/test`` exists, ``ROOT/<split>`` is the split and the classes are the
  union over the split folders (so label numbers agree across splits);
  otherwise ROOT itself serves every split.
- ``stanford-cars:ROOT`` -- torchvision's StanfordCars layout
  (``ROOT/stanford_cars/devkit/cars_meta.mat`` ...; ROOT may also be the
  ``stanford_cars`` folder itself); the annotations' bounding boxes become
  object masks.
- ``npz:PATH[?classes=a,b,...]`` -- MedMNIST's ``.npz`` layout:
  ``{split}_images`` (N, H, W) or (N, H, W, 3) and ``{split}_labels`` (N, 1)
  for splits ``train``, ``val``, ``test``; grayscale is replicated to 3
  channels; classes are named by ``classes`` or numbered (counted over every
  split in the file).

Images are decoded by the ``intensity`` rule of :mod:`camstat.decoding`
(by the file's or array's own depth, or per-image min-max), resized straight
to ``size`` (no crop, so overlays and masks line up with the whole image),
turned into float tensors in [0, 1] and normalised. Native sizes: 32x32 for
digits, shapes and CIFAR-10; the first image's size for an image folder;
224x224 for Stanford Cars; the arrays' size for ``npz:``.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from camstat.decoding import DICOM_EXTENSIONS, check_intensity, decode_file, image_size, to_unit, unit_to_uint8
from camstat.decoding import orient, stored_geometry, verify_file
from camstat.errors import CamstatError

Normalize = tuple[tuple[float, ...], tuple[float, ...]]

NORMALIZE_PRESETS: dict[str, Normalize] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # the CIFAR-10 training set's own per-channel statistics
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
SPLITS = ("train", "test")
NPZ_SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", *DICOM_EXTENSIONS)
SMALL_IMAGE = 64  # up to this side, augmentation is pad-and-crop; beyond, random-resized-crop
BAD_PATHS_SHOWN = 3
SCAN_CHUNK = 1024


# --------------------------------------------------------------------------
# normalisation


def _normalize_from_values(mean: Sequence, std: Sequence, source: str) -> Normalize:
    try:
        mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError) as exc:
        raise CamstatError(f"normalisation {source} is not numeric") from exc
    if len(mean_t) == 1:
        mean_t *= 3
    if len(std_t) == 1:
        std_t *= 3
    if len(mean_t) != 3 or len(std_t) != 3:
        raise CamstatError(f"normalisation {source} needs 1 or 3 values each for mean and std")
    if not all(math.isfinite(v) for v in mean_t + std_t) or min(std_t) <= 0:
        raise CamstatError(f"normalisation {source} needs finite values and std > 0")
    return mean_t, std_t


def parse_normalize(text: str | None, meta: dict | None) -> Normalize:
    """``imagenet``, ``cifar``, ``none``, or ``MEAN,STD`` -> ((mean x3), (std x3)).

    ``MEAN,STD`` is either one value each for all channels (``0.5,0.25``) or
    three colon-separated values each (``0.49:0.48:0.45,0.25:0.24:0.26``).
    ``None``/empty: the checkpoint metadata's ``normalize`` when camstat
    trained it, else imagenet.
    """
    if not text:
        if meta and meta.get("normalize") is not None:
            stored = meta["normalize"]
            if not (isinstance(stored, (list, tuple)) and len(stored) == 2):
                raise CamstatError(
                    "checkpoint metadata 'normalize' is not [[mean...], [std...]]; pass --normalize"
                )
            return _normalize_from_values(stored[0], stored[1], "in the checkpoint metadata")
        return NORMALIZE_PRESETS["imagenet"]
    name = text.strip().lower()
    if name in NORMALIZE_PRESETS:
        return NORMALIZE_PRESETS[name]
    parts = name.split(",")
    if len(parts) != 2:
        raise CamstatError(
            f"bad --normalize {text!r}; use imagenet, cifar, none, MEAN,STD or m1:m2:m3,s1:s2:s3"
        )
    return _normalize_from_values(parts[0].split(":"), parts[1].split(":"), f"{text!r}")


def _as_normalize(value: str | Sequence | None) -> Normalize:
    if value is None or isinstance(value, str):
        return parse_normalize(value, None)
    mean, std = value
    return _normalize_from_values(mean, std, "argument")


# --------------------------------------------------------------------------
# image sources: the native pixels of item i of the full split


class _ArrayImages:
    """Decoded images (N, H, W[, C]) held in memory, in their own dtype."""

    def __init__(self, images: np.ndarray, source: str):
        self.images = images
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int, intensity: str) -> np.ndarray:
        return to_unit(self.images[i], intensity, f"{self.source} image {i}")


class _FileImages:
    """Image files, decoded on demand."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int, intensity: str) -> np.ndarray:
        return decode_file(self.paths[i], intensity)


@dataclass
class _Split:
    """One split before selection: every item, with labels known without decoding."""

    classes: list[str]
    labels: np.ndarray
    images: _ArrayImages | _FileImages
    native_size: tuple[int, int] | None  # None: the first selected file's size
    masks: np.ndarray | _BoxMasks | None = None


# --------------------------------------------------------------------------
# builtin:digits


def _digits(options: dict[str, str], split: str, size: tuple[int, int] | None) -> _Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _reject_options(options, {}, "builtin:digits")
    digits = load_digits()
    positions = np.arange(len(digits.target))
    train, test = train_test_split(positions, test_size=0.25, random_state=0, stratify=digits.target)
    chosen = np.sort(train if split == "train" else test)
    pixels = torch.from_numpy(digits.images[chosen] / 16.0).float().unsqueeze(1)
    big = torch.nn.functional.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
    gray = (big.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return _Split(
        classes=[str(d) for d in range(10)],
        labels=digits.target[chosen].astype(np.int64),
        images=_ArrayImages(gray, "builtin:digits"),
        native_size=(32, 32),
    )


# --------------------------------------------------------------------------
# builtin:shapes

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "ring", "diamond")
# the decoy's colour encodes the class in training images
DECOY_COLOURS = np.array(
    [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)], dtype=np.float64
)
SHAPES_DEFAULTS = {"n": None, "decoy": 0.0, "seed": 0, "classes": 6, "noise": 0.05, "positions": 0}
MAX_POSITIONS = 8
SHAPES_N = {"train": 2000, "test": 1000}
_SPLIT_STREAM = {"train": 0, "test": 1}


@dataclass
class Shapes:
    images: np.ndarray  # uint8 (n, H, W, 3)
    labels: np.ndarray  # int64 (n,)
    masks: np.ndarray  # bool (n, H, W): the object's silhouette (a ring's hole included)
    decoy: np.ndarray  # int64 (n,): the decoy's colour index, -1 where there is none
    classes: list[str]
    position: np.ndarray  # int64 (n,): the planted position's number, -1 where none was planted


def _silhouette(shape: str, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(silhouette, painted) masks in coordinates scaled by the object's radius."""
    radius = np.hypot(dx, dy)
    if shape == "circle":
        inside = radius <= 1
    elif shape == "square":
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= 0.8
    elif shape == "triangle":
        inside = (dy <= 0.75) & (np.abs(dx) <= 0.9 * (dy + 1) / 1.75)
    elif shape == "cross":
        inside = ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1))
    elif shape == "ring":
        inside = radius <= 1
        return inside, inside & (radius >= 0.55)
    else:  # diamond
        inside = np.abs(dx) + np.abs(dy) <= 1
    return inside, inside


def _shape_image(
    rng: np.random.Generator, label: int, split: str, size: tuple[int, int], options: dict, position: int = -1
) -> tuple[np.ndarray, np.ndarray, int]:
    """One image, its mask and decoy colour. Every random number is drawn
    whatever the options, so the same seed gives the same objects with or
    without decoys -- a controlled comparison."""
    height, width = size
    side = min(height, width)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    # background: a tinted grey with two soft gratings as texture
    base = rng.uniform(0.3, 0.7)
    tint = rng.normal(0.0, 0.06, 3)
    freq = rng.uniform(1.0, 4.0, (2, 2))
    phase = rng.uniform(0, 2 * np.pi, 2)
    texture = sum(
        0.08 * np.sin(2 * np.pi * (freq[k, 0] * xs + freq[k, 1] * ys) / side + phase[k]) for k in range(2)
    )
    image = np.clip(base + tint + texture[..., None], 0, 1)
    # object: near the centre (composition-consistent), contrasting in brightness
    jitter = rng.uniform(-0.15, 0.15, 2)
    if position < 0:
        centre = np.array([height, width]) * (0.5 + jitter)
    else:  # planted: on a circle of radius 0.2 around the centre, little jitter, so positions stay apart
        angle = 2 * np.pi * position / options["positions"]
        centre = np.array([height, width]) * (0.5 + 0.2 * np.array([np.sin(angle), np.cos(angle)]) + jitter / 3)
    radius = side * rng.uniform(0.2, 0.3)
    darker = base > 0.5 if rng.random() < 0.8 else base <= 0.5
    level = base + (-1 if darker else 1) * rng.uniform(0.3, 0.45)
    colour = np.clip(level + rng.uniform(-0.2, 0.2, 3), 0, 1)
    silhouette, painted = _silhouette(
        SHAPE_NAMES[label], (xs - centre[1]) / radius, (ys - centre[0]) / radius
    )
    image[painted] = colour
    # decoy: a small square in the corner farthest from the object
    has_decoy = rng.random() < options["decoy"]
    random_colour = int(rng.integers(options["classes"]))
    decoy = (label if split == "train" else random_colour) if has_decoy else -1
    if decoy >= 0:
        patch = max(2, round(0.16 * side))
        margin = max(1, round(0.03 * side))
        top = margin if centre[0] > height / 2 else height - margin - patch
        left = margin if centre[1] > width / 2 else width - margin - patch
        image[top : top + patch, left : left + patch] = DECOY_COLOURS[decoy]
    image = image + options["noise"] * rng.standard_normal(image.shape)
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return pixels, silhouette, decoy


def make_shapes(
    n: int,
    split: str,
    size: tuple[int, int] = (32, 32),
    *,
    decoy: float = 0.0,
    seed: int = 0,
    classes: int = 6,
    noise: float = 0.05,
    positions: int = 0,
) -> Shapes:
    """Generate the shapes data set, deterministically.

    Classes cycle (``label = i % classes``) through circle, square, triangle,
    cross, ring, diamond; each object sits near the centre (+-15 % jitter,
    radius 20-30 % of the side) in a random colour that contrasts with a
    textured background. With probability ``decoy`` an image carries a small
    saturated square in the corner farthest from the object: in training
    images its colour encodes the class, in test images it is random (the
    same rate, no information), so a model that learned the shortcut looks in
    the wrong place and errs. With ``positions`` P >= 2 the object of image i
    sits at planted position ``(i // classes) % P`` (on a circle of radius
    20 % of the side around the centre, +-5 % jitter), every class spread
    evenly over the positions: a known composition for clustering to find.
    Image i depends only on (seed, split, i).
    """
    options = {"decoy": decoy, "classes": classes, "noise": noise, "positions": positions}
    height, width = size
    images = np.empty((n, height, width, 3), np.uint8)
    masks = np.empty((n, height, width), bool)
    decoys = np.empty(n, np.int64)
    labels = np.arange(n, dtype=np.int64) % classes
    position = (np.arange(n, dtype=np.int64) // classes) % positions if positions >= 2 else np.full(n, -1)
    for i in range(n):
        rng = np.random.default_rng((seed, _SPLIT_STREAM[split], i))
        images[i], masks[i], decoys[i] = _shape_image(rng, int(labels[i]), split, size, options, int(position[i]))
    return Shapes(images, labels, masks, decoys, list(SHAPE_NAMES[:classes]), position)


def _shape_options(options: dict[str, str], split: str) -> dict:
    _reject_options(options, SHAPES_DEFAULTS, "builtin:shapes")
    parsed = dict(SHAPES_DEFAULTS)
    casts: dict[str, Callable] = {"n": int, "decoy": float, "seed": int, "classes": int, "noise": float,
                                  "positions": int}
    for key, text in options.items():
        try:
            parsed[key] = casts[key](text)
        except ValueError as exc:
            raise CamstatError(
                f"builtin:shapes option {key}={text!r} is not a {casts[key].__name__}"
            ) from exc
    parsed["n"] = SHAPES_N[split] if parsed["n"] is None else parsed["n"]
    checks = {
        "n": parsed["n"] >= 1,
        "decoy": 0.0 <= parsed["decoy"] <= 1.0,
        "classes": 2 <= parsed["classes"] <= len(SHAPE_NAMES),
        "noise": 0.0 <= parsed["noise"] <= 1.0,
        "seed": parsed["seed"] >= 0,
        "positions": parsed["positions"] in (0, *range(2, MAX_POSITIONS + 1)),
    }
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise CamstatError(
            f"builtin:shapes option {bad[0]}={parsed[bad[0]]} out of range "
            f"(n >= 1, 0 <= decoy <= 1, 2 <= classes <= {len(SHAPE_NAMES)}, 0 <= noise <= 1, seed >= 0,"
            f" positions 0 or 2-{MAX_POSITIONS})"
        )
    return parsed


def _shapes(options: dict[str, str], split: str, size: tuple[int, int] | None) -> _Split:
    opts = _shape_options(options, split)
    data = make_shapes(opts.pop("n"), split, size or (32, 32), **opts)
    return _Split(
        classes=data.classes,
        labels=data.labels,
        images=_ArrayImages(data.images, "builtin:shapes"),
        native_size=data.images.shape[1:3],
        masks=data.masks,
    )


def _reject_options(options: dict[str, str], allowed: dict, what: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise CamstatError(f"unknown option {unknown[0]!r} for {what}; valid options: {valid}")


def _parse_query(query: str, what: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise CamstatError(f"bad option {item!r} in {what}; write key=value pairs joined by &")
        if key in options:
            raise CamstatError(f"option {key!r} given twice in {what}")
        options[key] = value
    return options


def with_class_names(spec: str, names: str | None) -> str:
    """``spec`` with ``classes=a,b,...`` added (the ``--classes`` option of npz data, kept in the spec so that
    the store's provenance rebuilds the same class names)."""
    if not names:
        return spec
    kind, _, rest = spec.partition(":")
    if kind != "npz":
        raise CamstatError(f"--classes names the classes of npz: data only (got {kind}:); other kinds name their own")
    path, _, query = rest.partition("?")
    if "classes" in _parse_query(query, "npz"):
        raise CamstatError("class names given twice: in --classes and in the npz spec's ?classes=")
    return f"npz:{path}?{'&'.join(filter(None, [query, f'classes={names}']))}"


BUILTINS = {"digits": _digits, "shapes": _shapes}


def _builtin(rest: str, split: str, size: tuple[int, int] | None) -> _Split:
    name, _, query = rest.partition("?")
    if name not in BUILTINS:
        raise CamstatError(f"unknown builtin data {name!r}; choose from: {', '.join(BUILTINS)}")
    _check_split(split, SPLITS, f"builtin:{name}")
    return BUILTINS[name](_parse_query(query, f"builtin:{name}"), split, size)


# --------------------------------------------------------------------------
# cifar10:ROOT


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what rebuilds numpy arrays, so a
    planted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # unpickling raises many types on foreign files
        raise CamstatError(f"{path} is not a CIFAR-10 batch file ({exc})") from exc
    if not isinstance(batch, dict):
        raise CamstatError(f"{path} is not a CIFAR-10 batch file (no dict inside)")
    return batch


def _field(batch: dict, key: str, path: Path):
    # the original files are Python 2 pickles (bytes keys); re-saved ones may use str
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise CamstatError(f"{path} has no {key!r} entry; is it a CIFAR-10 batch file?")


def _cifar10(rest: str, split: str, size: tuple[int, int] | None) -> _Split:
    _check_split(split, SPLITS, "cifar10")
    root = _existing_dir(rest, "cifar10")
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in names + ["batches.meta"] if not (base / name).is_file()]
    if missing:
        raise CamstatError(
            f"{base} lacks {', '.join(missing)}; expected torchvision's cifar-10-batches-py folder"
        )
    meta_path = base / "batches.meta"
    label_names = _field(_unpickle_batch(meta_path), "label_names", meta_path)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in label_names]
    images, labels = [], []
    for name in names:
        batch = _unpickle_batch(base / name)
        data = np.asarray(_field(batch, "data", base / name), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise CamstatError(f"{base / name}: data has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(_field(batch, "labels", base / name), dtype=np.int64))
    return _Split(
        classes=classes,
        labels=_checked_labels(np.concatenate(labels), len(classes), base),
        images=_ArrayImages(np.ascontiguousarray(np.concatenate(images)), str(base)),
        native_size=(32, 32),
    )


# --------------------------------------------------------------------------
# imagefolder:ROOT


def _class_dirs(folder: Path) -> set[str]:
    return {e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")}


def _image_files(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    return found


def _imagefolder(rest: str, split: str, size: tuple[int, int] | None) -> _Split:
    root = _existing_dir(rest, "imagefolder")
    split_dirs = [name for name in SPLITS if (root / name).is_dir()]
    if split_dirs:
        folder = root / split
        if not folder.is_dir():
            raise CamstatError(f"{root} has no {split!r} folder; use --split {'|'.join(split_dirs)}")
        classes = sorted(set().union(*(_class_dirs(root / name) for name in {*split_dirs, split})))
    else:
        folder = root
        classes = sorted(_class_dirs(root))
    if not classes:
        raise CamstatError(f"no class folders in {folder}; expected {folder}/<class>/<image files>")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(folder / name) if (folder / name).is_dir() else []
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise CamstatError(
            f"no images in {folder}/<class>/ (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return _Split(classes, np.asarray(labels, np.int64), _FileImages(paths), native_size=None)


# --------------------------------------------------------------------------
# npz:PATH (MedMNIST)


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, ValueError (pickled object arrays) ...
        raise CamstatError(f"cannot read {key!r} from {path} ({type(exc).__name__}: {exc}); the file is corrupt") from exc


def _npz_labels(labels: np.ndarray, key: str, path: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise CamstatError(
            f"{path}: {key} has shape {labels.shape}; expected (N, 1) class numbers (multi-label data is not supported)"
        )
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise CamstatError(f"{path}: {key} must hold class numbers 0, 1, ... (found {labels.dtype})")
    return labels.astype(np.int64)


def _npz(rest: str, split: str, size: tuple[int, int] | None) -> _Split:
    text, _, query = rest.partition("?")
    options = _parse_query(query, "npz")
    _reject_options(options, {"classes": None}, "npz:PATH")
    _check_split(split, NPZ_SPLITS, f"npz:{text}")
    path = Path(text).expanduser()
    if not text or not path.is_file():
        raise CamstatError(f"npz file not found: {path} (from --data npz:{text})")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # BadZipFile, OSError, ValueError, EOFError on foreign or cut files
        raise CamstatError(f"cannot read {path} as an .npz file ({type(exc).__name__}: {exc})") from exc
    if not hasattr(archive, "files"):
        raise CamstatError(f"{path} holds a single array, not an .npz archive in MedMNIST's layout")
    with archive:
        keys = [f"{split}_images", f"{split}_labels"]
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise CamstatError(
                f"{path} lacks {', '.join(missing)} (it holds {', '.join(sorted(archive.files)) or 'nothing'}); "
                "expected MedMNIST's layout: {split}_images (N, H, W[, 3]), {split}_labels (N, 1)"
            )
        images = _npz_array(archive, keys[0], path)
        labels = _npz_labels(_npz_array(archive, keys[1], path), keys[1], path)
        # classes are counted over every split, so label numbers agree between them
        top = max(
            int(_npz_labels(_npz_array(archive, f"{s}_labels", path), f"{s}_labels", path).max(initial=-1))
            for s in NPZ_SPLITS if f"{s}_labels" in archive.files
        )
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise CamstatError(f"{path}: {keys[0]} has shape {images.shape}; expected (N, H, W) or (N, H, W, 3)")
    if len(images) != len(labels):
        raise CamstatError(f"{path}: {keys[0]} holds {len(images)} images but {keys[1]} {len(labels)} labels")
    classes = options["classes"].split(",") if "classes" in options else [str(k) for k in range(top + 1)]
    if len(classes) <= top:
        raise CamstatError(
            f"{path} has labels up to {top} but ?classes= names {len(classes)} classes; name one per label number"
        )
    return _Split(classes, labels, _ArrayImages(images, f"{path} {keys[0]}"), native_size=images.shape[1:3])


# --------------------------------------------------------------------------
# stanford-cars:ROOT


def _loadmat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        content = loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # scipy raises ValueError/TypeError/... on foreign files
        raise CamstatError(f"cannot read {path} as a MATLAB file ({exc})") from exc
    if key not in content:
        raise CamstatError(f"{path} has no {key!r}; is it from the Stanford Cars devkit?")
    # squeeze_me turns a single record into a 0-d array
    return np.atleast_1d(content[key])


class _BoxMasks:
    """Object masks from bounding boxes, drawn on demand at the dataset's size.

    A box ``(x1, y1, x2, y2)`` is in the devkit's 1-based, inclusive pixel
    coordinates of the image as stored (MATLAB ignores EXIF orientation), so
    the mask is drawn in that frame, turned as the image is turned, and resized
    with nearest-neighbour sampling (pixel centres) to the model's size.
    """

    def __init__(self, paths: list[str], boxes: np.ndarray):
        self.paths = paths
        self.boxes = boxes

    def render(self, positions: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        masks = np.empty((len(positions), *size), bool)
        for j, position in enumerate(positions):
            masks[j] = self._one(int(position), size)
        return masks

    def _one(self, position: int, size: tuple[int, int]) -> np.ndarray:
        path = self.paths[position]
        try:
            height, width, orientation = stored_geometry(path)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CamstatError(f"cannot read the size of {path} ({exc}); fix or remove the file") from exc
        x1, y1, x2, y2 = np.rint(self.boxes[position]).astype(int)
        stored = np.zeros((height, width), np.uint8)
        stored[max(y1 - 1, 0) : max(y2, 0), max(x1 - 1, 0) : max(x2, 0)] = 255
        picture = orient(Image.fromarray(stored), orientation).resize((size[1], size[0]), Image.NEAREST)
        return np.asarray(picture) > 127


def _stanford_cars(rest: str, split: str, size: tuple[int, int] | None) -> _Split:
    _check_split(split, SPLITS, "stanford-cars")
    root = _existing_dir(rest, "stanford-cars")
    base = root / "stanford_cars" if (root / "stanford_cars").is_dir() else root
    devkit = base / "devkit"
    if split == "train":
        annotation_options = [devkit / "cars_train_annos.mat"]
    else:  # torchvision keeps it beside the devkit; some copies put it inside
        annotation_options = [
            base / "cars_test_annos_withlabels.mat",
            devkit / "cars_test_annos_withlabels.mat",
        ]
    annotations_path = next((p for p in annotation_options if p.is_file()), annotation_options[0])
    images_dir = base / f"cars_{split}"
    missing = [p for p in (devkit / "cars_meta.mat", annotations_path, images_dir) if not p.exists()]
    if missing:
        raise CamstatError(
            f"Stanford Cars layout incomplete: missing {', '.join(map(str, missing))} "
            "(expected torchvision's ROOT/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
            "cars_test_annos_withlabels.mat, cars_train/, cars_test/})"
        )
    classes = [str(name) for name in _loadmat(devkit / "cars_meta.mat", "class_names")]
    records = _loadmat(annotations_path, "annotations")
    if records.dtype.names is None or not {"fname", "class"} <= set(records.dtype.names):
        raise CamstatError(
            f"{annotations_path} lacks fname/class fields; the labelled annotations are needed"
        )
    paths = [str(images_dir / str(record["fname"])) for record in records]
    labels = np.asarray([int(record["class"]) - 1 for record in records], np.int64)  # 1-based in the .mat
    labels = _checked_labels(labels, len(classes), annotations_path)
    box_fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
    masks = None
    if set(box_fields) <= set(records.dtype.names):
        boxes = np.asarray([[float(record[f]) for f in box_fields] for record in records]).reshape(-1, 4)
        masks = _BoxMasks(paths, boxes)
    return _Split(classes, labels, _FileImages(paths), native_size=(224, 224), masks=masks)


# --------------------------------------------------------------------------
# shared checks


def _existing_dir(text: str, kind: str) -> Path:
    if not text:
        raise CamstatError(f"{kind} needs a folder: --data {kind}:ROOT")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise CamstatError(f"data folder not found: {root} (from --data {kind}:{text})")
    return root


def _check_split(split: str, valid: Sequence[str], what: str) -> None:
    if split not in valid:
        raise CamstatError(f"unknown split {split!r} for {what}; use --split {'|'.join(valid)}")


def _checked_labels(labels: np.ndarray, n_classes: int, source: Path) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise CamstatError(f"labels in {source} fall outside the {n_classes} classes")
    return labels


def _parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise CamstatError(f"bad --size {size!r}; give a positive side or (height, width)")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------
# selection: --limit and unreadable files


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation in which every prefix holds the classes in about
    their overall proportions (each item ranked by its quantile within its
    class), so ``--limit`` never takes only the first classes."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    quantile = np.empty(len(labels))
    for label in np.unique(labels):
        members = perm[labels[perm] == label]
        quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
    return perm[np.argsort(quantile[perm], kind="stable")]


def _scan(paths: list[str], on_bad_image: str) -> list[str | None]:
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 4)) as pool:
        reasons = list(pool.map(verify_file, paths, chunksize=64))
    if on_bad_image == "fail":
        for path, reason in zip(paths, reasons):
            if reason is not None:
                raise CamstatError(
                    f"unreadable image {path} ({reason}); fix or remove it, or pass --on-bad-image skip"
                )
    return reasons


def _select(data: _Split, limit: int | None, seed: int, on_bad_image: str) -> tuple[np.ndarray, list[str]]:
    """Positions (in the full split) of the items kept, ascending, and the
    unreadable paths met. With a limit only as many files are verified as needed."""
    total = len(data.labels)
    order = stratified_order(data.labels, seed) if limit is not None and limit < total else np.arange(total)
    wanted = total if limit is None else min(limit, total)
    if not isinstance(data.images, _FileImages):
        return np.sort(order[:wanted]), []
    kept: list[int] = []
    bad: list[str] = []
    for start in range(0, total, SCAN_CHUNK):
        chunk = order[start : start + SCAN_CHUNK]
        reasons = _scan([data.images.paths[i] for i in chunk], on_bad_image)
        for position, reason in zip(chunk, reasons):
            if reason is None:
                kept.append(int(position))
            else:
                bad.append(data.images.paths[position])
        if len(kept) >= wanted:
            break
    return np.sort(np.asarray(kept[:wanted], dtype=np.int64)), bad


def _report_bad(bad: list[str], spec: str) -> None:
    if bad:
        shown = ", ".join(bad[:BAD_PATHS_SHOWN]) + (", ..." if len(bad) > BAD_PATHS_SHOWN else "")
        warnings.warn(f"{spec}: skipped {len(bad)} unreadable image(s): {shown}", stacklevel=3)


# --------------------------------------------------------------------------
# the dataset


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W, 3) uint8 or float32 pixels; floats go channel
    by channel through Pillow's 32-bit float mode, with the same filter as 8-bit."""
    if pixels.shape[:2] == size:
        return pixels
    if pixels.dtype == np.uint8:
        return np.array(Image.fromarray(pixels).resize((size[1], size[0]), Image.BILINEAR))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode="F").resize((size[1], size[0]), Image.BILINEAR))
        for c in range(pixels.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def _augmenter(size: tuple[int, int]) -> torch.nn.Module:
    from torchvision.transforms import v2

    if max(size) <= SMALL_IMAGE:
        return v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


class CamDataset(Dataset):
    """Items are ``(image, label, i)``: a normalised float tensor (3, H, W),
    the int label, and the item's position i in this dataset; ``index[i]`` is
    its position in the full split (before ``--limit`` and skipping)."""

    def __init__(
        self,
        *,
        spec: str,
        split: str,
        classes: list[str],
        labels: np.ndarray,
        index: np.ndarray,
        images: _ArrayImages | _FileImages,
        size: tuple[int, int],
        normalize: Normalize,
        masks: np.ndarray | _BoxMasks | None = None,
        bad_images: list[str] | None = None,
        augment: bool = False,
        intensity: str = "dtype",
    ):
        self.spec = spec
        self.split = split
        self.classes = classes
        self.labels = labels
        self.index = index
        self.size = size
        self.normalize = normalize
        self.bad_images = bad_images or []
        self.augment = augment
        self.intensity = intensity
        self._images = images
        self._masks = masks
        self._mean = torch.tensor(normalize[0]).view(3, 1, 1)
        self._std = torch.tensor(normalize[1]).view(3, 1, 1)
        self._augmenter = _augmenter(size) if augment else None

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    def __len__(self) -> int:
        return len(self.index)

    def raw_image(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3) at ``size``, unnormalised and unaugmented, for overlays."""
        return np.array(unit_to_uint8(_resize(self._images.read(int(self.index[i]), self.intensity), self.size)))

    def masks(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Ground-truth object masks, bool (n, H, W) at ``size``, for items ``idx``."""
        if self._masks is None:
            raise CamstatError(
                f"{self.spec} has no ground-truth masks (builtin:shapes and stanford-cars have them)"
            )
        positions = self.index[np.asarray(idx, dtype=np.int64)]
        if isinstance(self._masks, _BoxMasks):
            return self._masks.render(positions, self.size)
        return self._masks[positions]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        native = self._images.read(int(self.index[i]), self.intensity)
        if self._augmenter is not None and max(self.size) > SMALL_IMAGE:
            # random-resized-crop works from the full-resolution image
            pixels = self._augmenter(_to_chw(native))
        else:
            pixels = _to_chw(_resize(native, self.size))
            if self._augmenter is not None:
                pixels = self._augmenter(pixels)
        unit = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
        image = (unit - self._mean) / self._std
        return image, int(self.labels[i]), i


def _to_chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)


LOADERS: dict[str, Callable[[str, str, tuple[int, int] | None], _Split]] = {
    "builtin": _builtin,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "stanford-cars": _stanford_cars,
    "npz": _npz,
}
DATA_FORMS = (
    "builtin:digits, builtin:shapes[?n=..&decoy=..], cifar10:ROOT, imagefolder:ROOT, stanford-cars:ROOT, "
    "npz:PATH[?classes=a,b]"
)


def load_dataset(
    spec: str,
    split: str,
    *,
    size: int | Sequence[int] | None = None,
    normalize: str | Normalize | None = None,
    limit: int | None = None,
    on_bad_image: str = "skip",
    augment: bool = False,
    seed: int = 0,
    intensity: str = "dtype",
) -> CamDataset:
    """Open ``--data spec`` at ``--split split``.

    ``size`` None keeps the native size; ``normalize`` is a name/``MEAN,STD``
    string or a (mean, std) pair (None: imagenet); ``limit`` keeps N items
    chosen by a ``seed``-ed class-stratified permutation, in dataset order;
    ``on_bad_image`` is ``skip`` (report and leave out) or ``fail``;
    ``augment`` adds random crops and flips for training; ``intensity``
    (``dtype`` or ``minmax``) maps pixel values to [0, 1] as
    :mod:`camstat.decoding` describes.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in LOADERS:
        raise CamstatError(f"unknown data spec {spec!r}; use one of: {DATA_FORMS}")
    if on_bad_image not in ("skip", "fail"):
        raise CamstatError(f"bad --on-bad-image {on_bad_image!r}; use skip or fail")
    if limit is not None and limit < 1:
        raise CamstatError(f"bad --limit {limit}; give a positive number of images")
    size = _parse_size(size)
    check_intensity(intensity)
    data = LOADERS[kind](rest, split, size)
    index, bad = _select(data, limit, seed, on_bad_image)
    _report_bad(bad, spec)
    if not len(index):
        raise CamstatError(f"no readable images in {spec} ({split}); {len(bad)} unreadable")
    if size is None:
        size = data.native_size or image_size(data.images.paths[index[0]])
    return CamDataset(
        spec=spec,
        split=split,
        classes=data.classes,
        labels=data.labels[index],
        index=index,
        images=data.images,
        size=size,
        normalize=_as_normalize(normalize),
        masks=data.masks,
        bad_images=bad,
        augment=augment,
        intensity=intensity,
    )
