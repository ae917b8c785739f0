"""The Zarr v3 store: one checkpoint x one data split.

Layout (see README, "Store layout")::

    STORE.zarr/
      zarr.json                  root attributes: schema, provenance, options
      samples/index|label|pred|confidence|correct|logits|done   (N, ...)
      samples/mask               (N, H, W) bool, only when the data has masks
      samples/embedding          (N, D) float16, the classifier head's input (camstat.embedding), when found
      maps/<method>/<layer>/<target>   (N, h, w) float32 raw maps after ReLU
      derived/<name>/...         analysis results with the parameters used (see camstat.derived)
    .STORE.zarr.camstat-lock     beside the store: the writers' locks (see camstat.locks)

Every array is chunked along samples, compressed with zstd and checksummed
with crc32c, and names its dimensions (``sample``, ``class``, ``y``, ``x``);
the root holds consolidated metadata, so xarray, dask and tensorstore read a
store as they find it (see camstat.integrity for the checks).

Writers fill whole sample chunks; a chunk's ``done`` flags are written after
its data (Zarr writes each chunk file atomically), so an interrupted run
leaves only complete chunks marked done and resumes from the rest. A store
is created with the root attribute ``camstat_creating`` and gets its real
attributes last, in one write: a folder carrying the marker is a creation cut
short, which any writer starts afresh; a folder that is not ours is never
written to or deleted, not even with ``--overwrite``. Writers lock the byte
range of their chunks in the lock file, so shards fill one store side by side
while a second writer of the same chunks is refused; a shard that owns no
chunk locks nothing.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import zarr

from camstat import derived as derived_mod
from camstat.errors import CamstatError, spell
from camstat.integrity import BadChunk, checked_read, compressors, has_checksum, scan_array, write_config
from camstat.locks import CREATE_BYTE, LEGACY_LOCK, LockFile, lock_path

SCHEMA_VERSION = 1
SAMPLE_FIELDS = ("index", "label", "pred", "confidence", "correct")
# Root attributes every reader relies on (checked when a store is opened).
REQUIRED_ATTRS = ("model", "data", "split", "classes", "input_size", "normalize", "methods", "layers",
                  "layer_shapes", "targets", "n", "chunk")
# Root attribute of a store being created (replaced by the real attributes, written last).
CREATING = "camstat_creating"
# Dimension names of the per-sample arrays (maps and masks: sample, y, x).
SAMPLE_DIMS = {"logits": ("sample", "class"), "mask": ("sample", "y", "x"), "embedding": ("sample", "feature")}


def _root_attributes(path: Path) -> dict | None:
    meta = Path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    attributes = doc.get("attributes") if isinstance(doc, dict) else None
    return attributes if isinstance(attributes, dict) else None


def is_store(path: Path) -> bool:
    """A folder whose root ``zarr.json`` carries camstat's attributes (written last, in one write)."""
    return "camstat_schema" in (_root_attributes(path) or {})


def _is_ours(path: Path) -> bool:
    """A folder a camstat writer made: a store, one whose creation was cut short or whose root metadata was
    damaged (it holds our ``samples/done`` array), or a store of an older camstat (its lock file inside)."""
    path = Path(path)
    attributes = _root_attributes(path) or {}
    return ("camstat_schema" in attributes or CREATING in attributes or (path / LEGACY_LOCK).is_file()
            or (path / "samples" / "done" / "zarr.json").is_file())


def _holds_chunks(path: Path) -> bool:
    """Whether a folder holds anything besides Zarr metadata and a lock file (i.e. array chunks)."""
    return any(f.is_file() and f.name not in ("zarr.json", LEGACY_LOCK)
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
        if not is_store(self.path):
            raise CamstatError(
                f"{self.path} is not a camstat store (no camstat attributes in zarr.json); give a store made by"
                " `camstat extract`"
            )
        try:
            # Not through the consolidated metadata: it may lag a derived result being put in place.
            self.root = zarr.open_group(str(self.path), mode=mode, use_consolidated=False)
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

    def read(self, name: str, selection=slice(None)) -> np.ndarray:
        """``name``'s values (a path in the store); a damaged chunk is a CamstatError naming it."""
        return checked_read(self.root[name], selection, self.path)

    @property
    def done(self) -> np.ndarray:
        return self.read("samples/done")

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def samples(self) -> dict[str, np.ndarray]:
        """``index``, ``label``, ``pred``, ``confidence``, ``correct``, ``logits``, ``done``."""
        return {name: self.read(f"samples/{name}") for name in (*SAMPLE_FIELDS, "logits", "done")}

    @property
    def has_masks(self) -> bool:
        return "mask" in self.root["samples"]

    def masks(self, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        if not self.has_masks:
            raise CamstatError(f"store {self.path} holds no ground-truth masks (its data has none)")
        return self.read("samples/mask", indices)

    @property
    def has_embedding(self) -> bool:
        return "embedding" in self.root["samples"]

    def embedding(self, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The classifier head's input (N, D) as stored (float16), taken in the extraction's forward pass."""
        if not self.has_embedding:
            why = (self.attrs.get("embedding") or {}).get("reason") or "it was extracted before camstat stored them"
            raise CamstatError(f"store {self.path} holds no embeddings ({why}); re-extract it with"
                               " `camstat extract ... --overwrite` or choose other --features")
        return self.read("samples/embedding", indices)

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
        """Raw maps (N, h, w) at the layer's resolution, float32, as stored: un-normalised, after ReLU.

        The lossless source of every analysis map; equal to
        ``maps(method, layer, target, size="layer", normalize=None)``.
        ``layer=None`` means the store's first layer; ``indices`` selects samples.
        """
        array = self._map_array(method, layer, target)
        return checked_read(array, indices, self.path)

    def maps(
        self,
        method: str,
        layer: str | None = None,
        target: str = "pred",
        size: tuple[int, int] | Literal["layer"] | None = None,
        normalize: str | None = "minmax",
        indices: np.ndarray | slice = slice(None),
    ) -> np.ndarray:
        """Analysis maps (N, H, W) float32.

        ``size``: ``None`` means the input size, ``"layer"`` the layer's own
        resolution (no resizing), or ``(H, W)``. ``normalize``: ``minmax``
        (pytorch-grad-cam's scaling, exactly), ``sum`` (maps sum to 1), or
        ``none``/``None`` (raw values, resized only).
        """
        raw = self.raw_maps(method, layer, target, indices)
        if isinstance(size, str) and size != "layer":
            raise CamstatError(f"unknown size {size!r}; give (H, W), 'layer' or None (the input size)")
        shape = raw.shape[-2:] if size == "layer" else tuple(size) if size else self.input_size
        from camstat.cams import scale_maps  # torch, loaded when maps are first read, not with the store

        return scale_maps(raw, shape, "none" if normalize is None else normalize)

    def iter_maps(self, method: str, layer: str | None = None, target: str = "pred", size=None,
                  normalize: str | None = "minmax", block: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Analysis maps in blocks of samples, so memory does not grow with the store."""
        block = block or max(self.chunk, 1)
        for start in range(0, self.n, block):
            sl = slice(start, min(start + block, self.n))
            yield sl, self.maps(method, layer, target, size, normalize, sl)

    # -- derived results ---------------------------------------------------
    def write_derived(self, name: str, params: dict, arrays: Mapping[str, np.ndarray], attrs: Mapping | None = None,
                      *, dims: Mapping[str, Sequence[str]] | None = None, wait: bool = True) -> str:
        """Write ``derived/<name>`` whole and put it in place atomically; returns its path in the store.

        ``params`` are the parameters that made the result (readers compare
        them), ``attrs`` anything else to keep. A concurrent writer of the same
        result makes this one wait (``wait=True``, with a message) or refuses it
        (``wait=False``); see :mod:`camstat.derived`.
        """
        return derived_mod.write_derived(self.path, name, params, arrays, attrs, dims=dims, n=self.n,
                                         chunk=self.chunk, on_wait=derived_mod.say_waiting if wait else None)

    def read_derived(self, name: str, params: dict | None) -> derived_mod.Derived | None:
        """``derived/<name>`` (arrays in memory), or None when absent or made with parameters other than ``params``."""
        return derived_mod.read_derived(self.path, name, params)

    # -- identity, content, checks: the one place for each ----------------------
    def require(self, method: str, layer: str | None, target: str) -> None:
        """A clear error unless the store holds maps of (method, layer, target)."""
        self._map_array(method, layer, target)

    def identity(self) -> dict:
        """Which store this is: path, model, checkpoint (and its SHA-256), data, split, n, created."""
        a = self.attrs
        return {"path": str(self.path), "model": a.get("model"), "checkpoint": a.get("checkpoint"),
                "checkpoint_sha256": a.get("checkpoint_sha256"), "data": a.get("data"), "split": a.get("split"),
                "n": self.n, "created": a.get("created")}

    def fingerprint(self) -> str:
        """SHA-256 over the sample arrays and raw maps (what every analysis is derived from)."""
        import hashlib

        h = hashlib.sha256()
        for name in ("index", "label", "pred", "confidence", "correct", "logits"):
            a = np.ascontiguousarray(self.read(f"samples/{name}"))
            h.update(f"{name}:{a.dtype}:{a.shape}".encode())
            h.update(a.tobytes())
        for method in self.methods:
            for layer in self.layers:
                for target in self.targets:
                    path = f"maps/{method}/{layer}/{target}"
                    arr = self.root[path]
                    h.update(f"{path}:{arr.dtype}:{arr.shape}".encode())
                    step = max(1, self.chunk)
                    for start in range(0, arr.shape[0], step):
                        h.update(np.ascontiguousarray(self.read(path, slice(start, start + step))).tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        """What the store holds (``camstat info --json``): provenance, contents, n, accuracy, completeness."""
        a = self.attrs
        samples = self.samples
        done = samples["done"]
        return {
            "store": str(self.path), "model": a["model"], "checkpoint": a.get("checkpoint"),
            "checkpoint_sha256": a.get("checkpoint_sha256"), "data": a["data"], "split": a["split"],
            "classes": a["classes"], "input_size": a["input_size"], "normalize": a["normalize"],
            "methods": a["methods"], "layers": a["layers"], "layer_shapes": a["layer_shapes"],
            "targets": a["targets"], "n": self.n, "done": int(done.sum()), "complete": bool(done.all()),
            "accuracy": float(samples["correct"][done].mean()) if done.any() else None,
            "has_masks": self.has_masks, "bad_images": len(a.get("bad_images", [])),
            "derived": sorted(self.root["derived"].group_keys()) if "derived" in self.root else [],
            "created": a.get("created"), "command": a.get("command"), "versions": a.get("versions"),
        }

    def dataset(self):
        """The store's dataset, rebuilt from its provenance; an error when its images no longer match."""
        from camstat.data import load_dataset

        a = self.attrs
        norm = a.get("normalize")
        ds = load_dataset(a["data"], a["split"], size=tuple(a["input_size"]),
                          normalize=(tuple(norm[0]), tuple(norm[1])) if norm else None,
                          limit=a.get("limit"), seed=int(a.get("seed", 0)), intensity=a.get("intensity", "dtype"))
        index = self.samples["index"]
        if len(ds) != len(index) or not np.array_equal(np.asarray(ds.index), index):
            raise CamstatError(
                f"the images of {a['data']} ({a['split']}) no longer match store {self.path} "
                f"({len(ds)} vs {len(index)} images, or a different order); rebuild the store with camstat extract")
        return ds

    # -- integrity ---------------------------------------------------------
    def verify(self) -> "Verification":
        """Decode every chunk of every array; what is damaged, and whether the arrays carry checksums."""
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        try:
            done = self.done
        except CamstatError:  # a damaged done array is reported below, like any other
            done = np.zeros(self.n, bool)
        with warnings.catch_warnings():  # a store of an older camstat holds its lock file inside
            warnings.filterwarnings("ignore", message=f"Object at {LEGACY_LOCK} is not recognized")
            arrays = [node for _, node in root.members(max_depth=None) if isinstance(node, zarr.Array)]
        bad: list[BadChunk] = []
        for array in arrays:
            # Which chunk files must exist (checksummed arrays are written with every chunk): all of a derived
            # result; of a per-sample array, the chunks whose samples are done.
            required = None
            if has_checksum(array):
                c = array.chunks[0]
                finished = np.array([array.path.startswith("derived/") or bool(done[k * c:(k + 1) * c].all())
                                     for k in range(array.cdata_shape[0])])
                required = np.broadcast_to(finished.reshape((-1,) + (1,) * (array.ndim - 1)), array.cdata_shape)
            bad += scan_array(array, self.path, required)
        unchecked = [a.path for a in arrays if not has_checksum(a)]
        return Verification(str(self.path), len(arrays), sum(int(np.prod(a.cdata_shape)) for a in arrays),
                            unchecked, bad)


@dataclass(frozen=True)
class Verification:
    """What ``camstat verify`` found: arrays and chunks checked, arrays without checksums, damaged chunks."""

    store: str
    arrays: int
    chunks: int
    unchecksummed: list[str]
    bad: list[BadChunk]

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict:
        return {"store": self.store, "arrays": self.arrays, "chunks": self.chunks, "ok": self.ok,
                "unchecksummed": self.unchecksummed, "bad": [vars(b) for b in self.bad]}


def open_store(path: str | Path) -> Store:
    """Open a camstat store for reading (the notebook entry point)."""
    return Store(path)


# -- writing -----------------------------------------------------------------


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
        self.chunks = chunks if chunks is not None else range(max(1, -(-self.n // self.chunk)))
        if mode == "new" and is_store(self.path):
            raise CamstatError(_exists_message(self.path))
        if self.path.exists() and not self.path.is_dir():
            raise CamstatError(f"{self.path} exists and is not a directory; choose another {spell('--store', 'store')}")
        # Never write into (or, with --overwrite, delete) a folder that camstat did not make. Checked before the
        # lock file beside it is made, unless a writer made one: then it may be creating the store right now
        # (its metadata half-written), and the check waits for the creation lock below.
        if not lock_path(self.path).exists():
            self._refuse_foreign()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._locks = LockFile(self.path)
        try:
            # Claim our chunks first, so an overwrite never deletes a store under a running writer. A shard
            # that owns no chunk claims nothing: it only joins (or creates) the store.
            if self.chunks and not self._locks.lock(self.chunks.start, len(self.chunks)):
                first, last = self.chunks.start, self.chunks.stop - 1
                which = f"chunk {first} is" if first == last else f"chunks {first} to {last} are"
                raise CamstatError(f"store {self.path} is being written by another process ({which} locked);"
                                   f" wait for it or use another {spell('--store', 'store')}")
            self._locks.lock(CREATE_BYTE, blocking=True)
            try:
                self._refuse_foreign()
                self.path.mkdir(exist_ok=True)
                self._open_or_create(mode, num_classes, mask_shape)
            finally:
                self._locks.unlock(CREATE_BYTE)
        except BaseException:
            self._locks.close()
            raise

    def _refuse_foreign(self) -> None:
        if self.path.exists() and any(self.path.iterdir()) and not _is_ours(self.path):
            raise CamstatError(f"{self.path} exists and is not a camstat store; choose another"
                               f" {spell('--store', 'store')} path")

    def _open_or_create(self, mode: str, num_classes: int, mask_shape) -> None:
        exists = is_store(self.path)
        if exists and mode == "new":
            raise CamstatError(_exists_message(self.path))
        overwrite = spell("--overwrite", "mode='overwrite'")
        # Ours but without camstat's attributes: a creation cut short holds only metadata, while a store
        # whose root zarr.json was damaged still holds chunks, which only --overwrite may delete.
        damaged = not exists and _holds_chunks(self.path)
        if damaged and mode != "overwrite":
            raise CamstatError(
                f"store {self.path} is damaged (its root zarr.json is unreadable or lacks camstat's attributes, but"
                f" it holds data); pass {overwrite} to extract it again"
            )
        if (exists or damaged) and mode == "overwrite":
            if not self._locks.lock(0, 0):  # every byte: no chunk writer, derived writer or reader at work
                raise CamstatError(f"store {self.path} is being written or read by another process; cannot"
                                   " overwrite it")
            _empty(self.path)
            exists = False
        if exists:
            self.root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
            found = dict(self.root.attrs)
            if found.get("camstat_schema") != SCHEMA_VERSION:
                raise CamstatError(
                    f"store {self.path} has schema version {found.get('camstat_schema')}, this camstat writes version"
                    f" {SCHEMA_VERSION}; cannot resume it (pass {overwrite} to extract it again)"
                )
            diff = _compatible(found, self.attrs, IDENTITY_KEYS)
            if diff:
                raise CamstatError(
                    f"store {self.path} was made with different {', '.join(diff)}; resume with the same options"
                    f" or pass {overwrite}"
                )
            damage = _damage(self.root, found)
            if damage:
                raise CamstatError(f"store {self.path} is damaged ({damage}); pass {overwrite} to extract it again")
            return
        # Not a store yet, but ours (see __init__): a creation cut short (killed, disk full) before the
        # attributes were written, so no chunk was ever written either. Start it afresh.
        _empty(self.path)
        self._create(num_classes, mask_shape)

    def _create(self, num_classes: int, mask_shape) -> None:
        n, c = self.n, self.chunk
        root = zarr.create_group(str(self.path), attributes={CREATING: SCHEMA_VERSION})

        def array(group, name, shape, dtype, dims):
            group.create_array(name, shape=shape, chunks=(c, *shape[1:]), dtype=dtype,
                               fill_value=np.zeros((), dtype)[()], compressors=compressors(), dimension_names=dims)

        samples = root.create_group("samples")
        for name, dtype in (("index", "int64"), ("label", "int64"), ("pred", "int64"),
                            ("confidence", "float32"), ("correct", "bool"), ("done", "bool")):
            array(samples, name, (n,), dtype, ("sample",))
        array(samples, "logits", (n, num_classes), "float32", SAMPLE_DIMS["logits"])
        if mask_shape is not None:
            array(samples, "mask", (n, *mask_shape), "bool", SAMPLE_DIMS["mask"])
        dim = (self.attrs.get("embedding") or {}).get("dim")
        if dim:
            array(samples, "embedding", (n, dim), "float16", SAMPLE_DIMS["embedding"])
        maps = root.create_group("maps")
        for method in self.attrs["methods"]:
            for layer, (h, w) in self.attrs["layer_shapes"].items():
                for target in self.attrs["targets"]:
                    array(maps.require_group(f"{method}/{layer}"), target, (n, h, w), "float32", ("sample", "y", "x"))
        # Attributes last and in one write (attrs.update writes zarr.json once per key, schema first): a
        # store without them is not yet a store (see is_store), one with them is complete.
        root.attrs.put({"camstat_schema": SCHEMA_VERSION, **self.attrs})
        derived_mod.consolidate(self.path)
        self.root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)

    def pending(self) -> list[int]:
        """Our chunks whose samples are not all done yet."""
        done = checked_read(self.root["samples/done"], slice(None), self.path)
        return [k for k in self.chunks if not done[self.chunk_slice(k)].all()]

    def chunk_slice(self, k: int) -> slice:
        return slice(k * self.chunk, min((k + 1) * self.chunk, self.n))

    def write_chunk(self, k: int, samples: dict[str, np.ndarray], maps: dict[tuple[str, str, str], np.ndarray],
                    masks: np.ndarray | None = None) -> None:
        """Write one whole chunk; its ``done`` flags go last."""
        sl = self.chunk_slice(k)
        group = self.root["samples"]
        with zarr.config.set(write_config()):
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
        self._locks.close()  # releases our locks

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _exists_message(path: Path) -> str:
    resume, overwrite = spell("--resume", "mode='resume'"), spell("--overwrite", "mode='overwrite'")
    return f"store {path} already exists; pass {resume} to continue it or {overwrite} to replace it"


def _empty(path: Path) -> None:
    """Delete everything in a store folder of ours (the lock file lies beside it, not in it)."""
    for child in path.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


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
        raise CamstatError(f"invalid {spell('--shard', 'shard')} {text!r}; use K/N with 0 <= K < N, e.g. 0/4") from None
    if not (total >= 1 and 0 <= k < total):
        raise CamstatError(f"invalid {spell('--shard', 'shard')} {text!r}; need 0 <= K < N (shards are numbered from 0)")
    return k, total
