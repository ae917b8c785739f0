"""The Zarr v3 store: one checkpoint x one data split.

Layout (see README, "Store layout")::

    STORE.zarr/
      zarr.json                  root attributes: schema, provenance, options
      samples/index|label|pred|confidence|correct|logits|done   (N, ...)
      samples/mask               (N, H, W) bool, only when the data has masks
      samples/embedding          (N, D) float16, the classifier head's input (camstat.embedding), when found
      maps/<method>/<layer>/<target>   (N, h, w) float32 raw maps after ReLU
      derived/<name>/...         analysis results with the parameters used
      camstat.lock               byte-range locks of the writers

Writers fill whole sample chunks; a chunk's ``done`` flags are written after
its data (Zarr writes each chunk file atomically), so an interrupted run
leaves only complete chunks marked done and resumes from the rest. The root
attributes are written last and in one write when a store is created: a
folder of ours (it holds the lock file) without them is a creation cut short,
which any writer starts afresh; a folder that is not ours is never written to
or deleted, not even with ``--overwrite``. Writers
lock the byte range of their chunks in ``camstat.lock`` (POSIX record locks:
released by the kernel when a process dies, even by SIGKILL), so shards fill
one store side by side while a second writer of the same chunks is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr

from camstat.cams import scale_maps
from camstat.errors import CamstatError

SCHEMA_VERSION = 1
SAMPLE_FIELDS = ("index", "label", "pred", "confidence", "correct")
# Root attributes every reader relies on (checked when a store is opened).
REQUIRED_ATTRS = ("model", "data", "split", "classes", "input_size", "normalize", "methods", "layers",
                  "layer_shapes", "targets", "n", "chunk")
_CREATE_LOCK_BYTE = 1 << 40  # beyond any chunk number: the lock taken while creating the store
_LOCK_FILE = "camstat.lock"


def _is_store(path: Path) -> bool:
    """A folder whose root ``zarr.json`` carries camstat's attributes (written last, in one write)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    attributes = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attributes, dict) and "camstat_schema" in attributes


def _is_ours(path: Path) -> bool:
    """A folder a camstat writer has opened: it holds our lock file (a store, or one whose creation was cut short)."""
    return (Path(path) / _LOCK_FILE).is_file()


def _holds_chunks(path: Path) -> bool:
    """Whether a folder holds anything besides Zarr metadata and our lock file (i.e. array chunks)."""
    return any(f.is_file() and f.name not in ("zarr.json", _LOCK_FILE)
               and not (f.name.startswith("zarr.") and f.name.endswith(".partial"))  # zarr's atomic-write temp
               for f in Path(path).rglob("*"))


def _is_list_of(value, kind) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _damage(root: zarr.Group, attrs: dict) -> str | None:
    """What makes an opened store unusable (missing or ill-typed attributes, missing arrays), or None.

    Attributes are only ever read as data (JSON values checked for type here), never evaluated.
    """
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        return f"attributes missing: {', '.join(missing)}"
    wrong = [k for k in ("classes", "methods", "layers", "targets") if not _is_list_of(attrs[k], str)]
    wrong += [k for k in ("model", "data", "split") if not isinstance(attrs[k], str)]
    n, chunk, size, shapes = attrs["n"], attrs["chunk"], attrs["input_size"], attrs["layer_shapes"]
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        wrong.append("n")
    if not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1):
        wrong.append("chunk")
    if not (_is_list_of(size, int) and len(size) == 2 and min(size) >= 1):
        wrong.append("input_size")
    layers = attrs["layers"] if "layers" not in wrong else []
    if not (isinstance(shapes, dict) and all(_is_list_of(shapes.get(layer), int) and len(shapes[layer]) == 2
                                             for layer in layers)):
        wrong.append("layer_shapes")
    if wrong:
        return f"attributes of the wrong type: {', '.join(wrong)}"
    arrays = [(f"samples/{name}", None) for name in (*SAMPLE_FIELDS, "logits", "done")]
    arrays += [(f"maps/{m}/{layer}/{t}", tuple(shapes[layer])) for m in attrs["methods"] for layer in layers
               for t in attrs["targets"]]
    for name, hw in arrays:
        try:
            array = root[name]
        except Exception:  # zarr raises KeyError or its own errors for missing or unreadable nodes
            return f"array {name} is missing or unreadable"
        if not isinstance(array, zarr.Array) or array.shape[0] != n or (hw is not None and array.shape[1:] != hw):
            return f"array {name} has shape {getattr(array, 'shape', None)}, expected {n} samples"
    return None


class Store:
    """Read access to a camstat store (``camstat.open_store(path)``).

    ``attrs`` holds the provenance and options, ``samples`` the per-sample
    arrays, :meth:`maps` the analysis maps derived from the raw ones.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if not self.path.exists():
            raise CamstatError(f"store {self.path} does not exist; create it with `camstat extract`")
        if not _is_store(self.path):
            raise CamstatError(
                f"{self.path} is not a camstat store (no camstat attributes in zarr.json); give a store made by"
                " `camstat extract`"
            )
        try:
            self.root = zarr.open_group(str(self.path), mode=mode)
        except Exception as exc:  # zarr's own errors for a malformed zarr.json
            raise CamstatError(
                f"{self.path} is not a readable Zarr group ({type(exc).__name__}); re-extract it"
            ) from None
        version = self.root.attrs.get("camstat_schema")
        if version != SCHEMA_VERSION:
            raise CamstatError(
                f"store {self.path} has schema version {version}, this camstat reads version {SCHEMA_VERSION};"
                " re-extract it or use the matching camstat release"
            )
        damage = _damage(self.root, dict(self.root.attrs))
        if damage:
            raise CamstatError(
                f"store {self.path} is damaged ({damage}); re-extract it with `camstat extract ... --overwrite`"
            )

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def n(self) -> int:
        return int(self.root["samples/index"].shape[0])

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def methods(self) -> list[str]:
        return list(self.attrs["methods"])

    @property
    def layers(self) -> list[str]:
        return list(self.attrs["layers"])

    @property
    def targets(self) -> list[str]:
        return list(self.attrs["targets"])

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.attrs["input_size"])

    @property
    def chunk(self) -> int:
        return int(self.attrs["chunk"])

    @property
    def done(self) -> np.ndarray:
        return self.root["samples/done"][:]

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def samples(self) -> dict[str, np.ndarray]:
        """``index``, ``label``, ``pred``, ``confidence``, ``correct``, ``logits``, ``done``."""
        group = self.root["samples"]
        return {name: group[name][:] for name in (*SAMPLE_FIELDS, "logits", "done")}

    @property
    def has_masks(self) -> bool:
        return "mask" in self.root["samples"]

    def masks(self, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        if not self.has_masks:
            raise CamstatError(f"store {self.path} holds no ground-truth masks (its data has none)")
        return self.root["samples/mask"][indices]

    @property
    def has_embedding(self) -> bool:
        return "embedding" in self.root["samples"]

    def embedding(self, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The classifier head's input (N, D) as stored (float16), taken in the extraction's forward pass."""
        if not self.has_embedding:
            why = (self.attrs.get("embedding") or {}).get("reason") or "it was extracted before camstat stored them"
            raise CamstatError(f"store {self.path} holds no embeddings ({why}); re-extract it with"
                               " `camstat extract ... --overwrite` or choose other --features")
        return self.root["samples/embedding"][indices]

    def require_complete(self) -> None:
        done = self.done
        if not done.all():
            raise CamstatError(
                f"store {self.path} is incomplete ({int(done.sum())}/{done.size} samples done);"
                " finish it with `camstat extract ... --resume`"
            )

    def _map_array(self, method: str, layer: str | None, target: str) -> zarr.Array:
        layer = layer or self.layers[0]
        if method not in self.methods:
            raise CamstatError(f"store has no method {method!r}; it holds {', '.join(self.methods)}")
        if layer not in self.layers:
            raise CamstatError(f"store has no layer {layer!r}; it holds {', '.join(self.layers)}")
        if target not in self.targets:
            raise CamstatError(f"store has no target {target!r}; it holds {', '.join(self.targets)}")
        return self.root[f"maps/{method}/{layer}/{target}"]

    def raw_maps(self, method: str, layer: str | None = None, target: str = "pred", indices=slice(None)) -> np.ndarray:
        """Raw layer-resolution maps (N, h, w), float32, as stored."""
        return self._map_array(method, layer, target)[indices]

    def maps(
        self,
        method: str,
        layer: str | None = None,
        target: str = "pred",
        size: tuple[int, int] | None = None,
        normalize: str = "minmax",
        indices: np.ndarray | slice = slice(None),
    ) -> np.ndarray:
        """Analysis maps (N, H, W) float32; ``size=None`` means the input size.

        ``normalize``: ``minmax`` (pytorch-grad-cam's scaling, exactly), ``sum``
        (maps sum to 1) or ``none`` (raw values, resized).
        """
        raw = self.raw_maps(method, layer, target, indices)
        return scale_maps(raw, tuple(size) if size else self.input_size, normalize)

    def iter_maps(self, method: str, layer: str | None = None, target: str = "pred", size=None,
                  normalize: str = "minmax", block: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Analysis maps in blocks of samples, so memory does not grow with the store."""
        block = block or max(self.chunk, 1)
        for start in range(0, self.n, block):
            sl = slice(start, min(start + block, self.n))
            yield sl, self.maps(method, layer, target, size, normalize, sl)

    # -- derived results ---------------------------------------------------
    def derived_group(self, name: str, params: dict) -> zarr.Group:
        """A fresh group ``derived/<name>`` (replacing an older one) holding ``params`` as attributes."""
        root = zarr.open_group(str(self.path), mode="a")
        group = root.require_group("derived").create_group(name, overwrite=True)
        group.attrs.put(json.loads(json.dumps(params, default=str)))  # one write, not one per key
        return group


def open_store(path: str | Path) -> Store:
    """Open a camstat store for reading (the notebook entry point)."""
    return Store(path)


# -- writing -----------------------------------------------------------------


def _lock(fd: int, start: int, length: int, blocking: bool) -> bool:
    flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.lockf(fd, flags, length, start, os.SEEK_SET)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


def _compatible(existing: dict, wanted: dict, keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if json.dumps(existing.get(k), sort_keys=True) != json.dumps(wanted.get(k), sort_keys=True)]


# What must match for a run to continue (or join) an existing store.
IDENTITY_KEYS = ("model", "checkpoint_sha256", "data", "split", "classes", "input_size", "normalize",
                 "methods", "layers", "targets", "layer_shapes", "n", "chunk", "limit")


class StoreWriter:
    """Creates or reopens a store and writes whole sample chunks into it.

    ``attrs`` must hold the identity keys (:data:`IDENTITY_KEYS`) plus any
    provenance. ``mode``: ``new`` (refuse an existing store), ``resume``
    (continue or join a compatible one, create it when missing) or
    ``overwrite`` (replace it).
    """

    def __init__(self, path: str | Path, attrs: dict, *, num_classes: int, mask_shape: tuple[int, int] | None,
                 mode: str = "new", chunks: range | None = None):
        self.path = Path(path)
        self.attrs = attrs
        self.n = int(attrs["n"])
        self.chunk = int(attrs["chunk"])
        n_chunks = max(1, -(-self.n // self.chunk))
        self.chunks = chunks if chunks is not None else range(n_chunks)
        if mode == "new" and _is_store(self.path):
            raise CamstatError(
                f"store {self.path} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        if self.path.exists() and not self.path.is_dir():
            raise CamstatError(f"{self.path} exists and is not a directory; choose another --store path")
        # Never write into (or, with --overwrite, delete) a folder that camstat did not make.
        if self.path.exists() and any(self.path.iterdir()) and not _is_store(self.path) and not _is_ours(self.path):
            raise CamstatError(f"{self.path} exists and is not a camstat store; choose another --store path")
        self.path.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Claim our chunks first, so an overwrite never deletes a store under a running writer.
            if not _lock(self._fd, self.chunks.start, max(1, len(self.chunks)), blocking=False):
                raise CamstatError(
                    f"store {self.path} is being written by another process (chunks "
                    f"{self.chunks.start}-{self.chunks.stop - 1} are locked); wait for it or use another --store"
                )
            _lock(self._fd, _CREATE_LOCK_BYTE, 1, blocking=True)
            try:
                self._open_or_create(mode, num_classes, mask_shape)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _CREATE_LOCK_BYTE, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            raise

    def _open_or_create(self, mode: str, num_classes: int, mask_shape) -> None:
        exists = _is_store(self.path)
        if exists and mode == "new":
            raise CamstatError(
                f"store {self.path} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        # Ours but without camstat's attributes: a creation cut short holds only metadata, while a store
        # whose root zarr.json was damaged still holds chunks, which only --overwrite may delete.
        damaged = not exists and _holds_chunks(self.path)
        if damaged and mode != "overwrite":
            raise CamstatError(
                f"store {self.path} is damaged (its root zarr.json is unreadable or lacks camstat's attributes, but"
                " it holds data); pass --overwrite to extract it again"
            )
        if (exists or damaged) and mode == "overwrite":
            if not _lock(self._fd, 0, _CREATE_LOCK_BYTE, blocking=False):
                raise CamstatError(f"store {self.path} is being written by another process; cannot overwrite it")
            for child in self.path.iterdir():
                if child.name != _LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            exists = False
        if exists:
            self.root = zarr.open_group(str(self.path), mode="r+")
            found = dict(self.root.attrs)
            if found.get("camstat_schema") != SCHEMA_VERSION:
                raise CamstatError(
                    f"store {self.path} has schema version {found.get('camstat_schema')}, this camstat writes version"
                    f" {SCHEMA_VERSION}; cannot resume it (pass --overwrite to extract it again)"
                )
            diff = _compatible(found, self.attrs, IDENTITY_KEYS)
            if diff:
                raise CamstatError(
                    f"store {self.path} was made with different {', '.join(diff)}; resume with the same options"
                    " or pass --overwrite"
                )
            damage = _damage(self.root, found)
            if damage:
                raise CamstatError(f"store {self.path} is damaged ({damage}); pass --overwrite to extract it again")
            return
        # Not a store yet, but ours (see __init__): a creation cut short (killed, disk full) before the
        # attributes were written, so no chunk was ever written either. Start it afresh.
        for child in self.path.iterdir():
            if child.name != _LOCK_FILE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self._create(num_classes, mask_shape)

    def _create(self, num_classes: int, mask_shape) -> None:
        n, c = self.n, self.chunk
        # Not mode="w": that would delete the lock file we hold.
        root = zarr.open_group(str(self.path), mode="a")
        samples = root.create_group("samples")
        for name, dtype in (("index", "int64"), ("label", "int64"), ("pred", "int64"),
                            ("confidence", "float32"), ("correct", "bool"), ("done", "bool")):
            samples.create_array(name, shape=(n,), chunks=(c,), dtype=dtype, fill_value=0)
        samples.create_array("logits", shape=(n, num_classes), chunks=(c, num_classes), dtype="float32", fill_value=0)
        if mask_shape is not None:
            samples.create_array("mask", shape=(n, *mask_shape), chunks=(c, *mask_shape), dtype="bool", fill_value=False)
        dim = (self.attrs.get("embedding") or {}).get("dim")
        if dim:
            samples.create_array("embedding", shape=(n, dim), chunks=(c, dim), dtype="float16", fill_value=0)
        maps = root.create_group("maps")
        for method in self.attrs["methods"]:
            for layer, (h, w) in self.attrs["layer_shapes"].items():
                for target in self.attrs["targets"]:
                    maps.require_group(f"{method}/{layer}").create_array(
                        target, shape=(n, h, w), chunks=(c, h, w), dtype="float32", fill_value=0.0
                    )
        # Attributes last and in one write (attrs.update writes zarr.json once per key, schema first): a
        # store without them is not yet a store (see _is_store), one with them is complete.
        root.attrs.put({"camstat_schema": SCHEMA_VERSION, **self.attrs})
        self.root = root

    def pending(self) -> list[int]:
        """Our chunks whose samples are not all done yet."""
        done = self.root["samples/done"]
        return [k for k in self.chunks if not done[k * self.chunk:min((k + 1) * self.chunk, self.n)].all()]

    def chunk_slice(self, k: int) -> slice:
        return slice(k * self.chunk, min((k + 1) * self.chunk, self.n))

    def write_chunk(self, k: int, samples: dict[str, np.ndarray], maps: dict[tuple[str, str, str], np.ndarray],
                    masks: np.ndarray | None = None) -> None:
        """Write one whole chunk; its ``done`` flags go last."""
        sl = self.chunk_slice(k)
        group = self.root["samples"]
        for name in (*SAMPLE_FIELDS, "logits"):
            group[name][sl] = samples[name]
        if masks is not None:
            group["mask"][sl] = masks
        if "embedding" in samples and "embedding" in group:  # a store made before embeddings has none
            group["embedding"][sl] = samples["embedding"]
        for (method, layer, target), values in maps.items():
            self.root[f"maps/{method}/{layer}/{target}"][sl] = values
        group["done"][sl] = np.ones(sl.stop - sl.start, dtype=bool)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases our record locks
            self._fd = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chunk_range(n: int, chunk: int, shard: tuple[int, int] | None) -> range:
    """Chunks of shard K/N (K from 0): contiguous, chunk-aligned, as even as possible."""
    n_chunks = max(1, -(-n // chunk))
    if shard is None:
        return range(n_chunks)
    k, total = shard
    start = k * n_chunks // total
    stop = (k + 1) * n_chunks // total
    return range(start, stop)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` with 0 <= K < N, numbered like torchrun's ranks (``None`` passes through)."""
    if text is None:
        return None
    try:
        k, total = (int(p) for p in text.split("/"))
    except ValueError:
        raise CamstatError(f"invalid --shard {text!r}; use K/N with 0 <= K < N, e.g. 0/4") from None
    if not (total >= 1 and 0 <= k < total):
        raise CamstatError(f"invalid --shard {text!r}; need 0 <= K < N (shards are numbered from 0)")
    return k, total
