"""``camstat extract``: run a model over a data split, store predictions and raw CAMs.

The samples are cut into fixed chunks (the store's chunk size) and batches
never cross a chunk, so every chunk is computed from the same batches
whether the run is whole, resumed or sharded: the stores are bitwise equal.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from camstat import data as data_mod
from camstat import models
from camstat.cams import CamEngine, parse_methods, parse_targets
from camstat.decoding import describe_intensity
from camstat.devices import distributed_rank, resolve_device
from camstat.embedding import HeadInput, find_head
from camstat.errors import CamstatError
from camstat.provenance import command_line, now, versions
from camstat.store import StoreWriter, chunk_range, parse_shard

DEFAULT_CHUNK = 256


@dataclass
class ExtractResult:
    """What ``--json`` reports (SPEC 2.3)."""

    n: int
    accuracy: float
    methods: list[str]
    layers: list[str]
    seconds: float
    images_per_second: float
    store: str
    processed: int
    complete: bool
    owned_chunks: int  # chunks this process (shard) owns; 0: a shard with nothing to do

    def to_dict(self) -> dict:
        return asdict(self)


def layer_shapes(module: torch.nn.Module, layers: Sequence[str], sample: torch.Tensor) -> dict[str, list[int]]:
    """Spatial shape (h, w) of each target layer's output for one input."""
    shapes: dict[str, list[int]] = {}
    named = dict(module.named_modules())
    handles = [named[name].register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, list(o.shape[-2:])))
               for name in layers]
    try:
        with torch.no_grad():
            module(sample[None])
    finally:
        for h in handles:
            h.remove()
    return {name: shapes[name] for name in layers}


def extract(
    model: str,
    data: str,
    store: str | Path,
    *,
    split: str = "test",
    checkpoint: str | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
    checkpoint_prefix: str | None = None,
    methods: str | Sequence[str] = "gradcam,gradcam++",
    layer: str = "auto",
    target: str = "pred",
    size: int | None = None,
    normalize: str | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    mode: str = "new",
    shard: str | None = None,
    on_bad_image: str = "skip",
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    intensity: str | None = None,
) -> ExtractResult:
    """Extract predictions and CAMs into a Zarr store; see SPEC 2.3.

    ``mode`` is ``new`` (refuse an existing store), ``resume`` or ``overwrite``; ``progress(done, total)`` is
    called after every batch; ``intensity`` None: the checkpoint's rule (as trained), else ``dtype``.
    """
    method_list = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    target_list = parse_targets(target)
    shard_kn = _shard(shard)
    if shard_kn is not None and mode == "new":
        mode = "resume"  # shards fill one store together: each joins the store its siblings made
    if batch_size < 1 or chunk < 1:
        raise CamstatError("--batch-size and --chunk must be at least 1")
    dev = resolve_device(device)
    loaded, dataset = _model_and_data(model, data, split, checkpoint=checkpoint, num_classes=num_classes,
                                      trust_checkpoint=trust_checkpoint, checkpoint_prefix=checkpoint_prefix, size=size,
                                      normalize=normalize, limit=limit, on_bad_image=on_bad_image, seed=seed,
                                      intensity=intensity)
    dataset[0]  # a first image that cannot be decoded is refused before any store exists
    net = loaded.module.eval().requires_grad_(False).to(dev)
    # one traced forward names the layers and gives their grid shapes (token and channels-last outputs read as grids)
    layer_maps = models.resolve_layer_maps(net, layer, dataset.size)
    layers = [info.name for info in layer_maps]
    head = find_head(net, dataset[0][0].to(dev))
    attrs = {
        "model": model, "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": loaded.checkpoint_sha256, "num_classes": loaded.num_classes, "data": data,
        "split": split, "limit": limit, "classes": list(dataset.classes), "input_size": list(dataset.size),
        "normalize": [list(dataset.normalize[0]), list(dataset.normalize[1])],
        "intensity": dataset.intensity, "decoding": describe_intensity(dataset.intensity),  # camstat.decoding's rule
        "methods": method_list, "layers": layers,
        "layer_shapes": {info.name: list(info.out_shape[1:]) for info in layer_maps}, "targets": target_list,
        "n": len(dataset), "chunk": chunk, "seed": seed, "bad_images": list(dataset.bad_images), "created": now(),
        "command": command_line(), "versions": versions(), "device": str(dev), "embedding": head.to_attrs(),
    }
    mask_shape = tuple(dataset.size) if dataset.has_masks else None
    chunks = chunk_range(len(dataset), chunk, shard_kn)
    start = time.perf_counter()
    with StoreWriter(store, attrs, num_classes=loaded.num_classes, mask_shape=mask_shape, mode=mode,
                     chunks=chunks) as writer:
        with CamEngine(net, layers, method_list, seed=seed) as engine, HeadInput(net, head) as head_input:
            processed = _fill(writer, engine, head_input, dataset, dev, target_list, batch_size=batch_size,
                              workers=workers, chunk=chunk, progress=progress)
    seconds = time.perf_counter() - start
    from camstat.store import Store

    samples = Store(store).samples
    done = samples["done"]
    accuracy = float(samples["correct"][done].mean()) if done.any() else float("nan")
    return ExtractResult(
        n=len(dataset), accuracy=accuracy, methods=method_list, layers=layers, seconds=seconds,
        images_per_second=processed / seconds if seconds > 0 else float("nan"), store=str(store),
        processed=processed, complete=bool(done.all()), owned_chunks=len(chunks),
    )


def _shard(text: str | None) -> tuple[int, int] | None:
    """``--shard K/N``, else the torchrun rank and world size, else None (one process)."""
    shard_kn = parse_shard(text)
    if shard_kn is None:
        rank, world = distributed_rank()
        shard_kn = (rank, world) if world > 1 else None
    return shard_kn


def _model_and_data(model: str, data: str, split: str, *, checkpoint: str | None, num_classes: int | None,
                    trust_checkpoint: bool, checkpoint_prefix: str | None, size: int | None,
                    normalize: str | None, limit: int | None, on_bad_image: str, seed: int, intensity: str | None):
    """(loaded model, dataset): the checkpoint's metadata decides size, normalisation and intensity rule unless
    given; without one, the data decides the number of classes."""

    def build(n_classes):
        # Seeded so that a model without checkpoint (the randomised-weights control) is reproducible.
        torch.manual_seed(seed)
        return models.load_model(model, num_classes=n_classes, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint,
                                 checkpoint_prefix=checkpoint_prefix)

    loaded = build(num_classes) if checkpoint is not None or num_classes is not None else None
    meta = loaded.meta if loaded else {}
    if size is None and meta.get("size"):
        size = int(meta["size"][0])
    dataset = data_mod.load_dataset(data, split, size=size, normalize=data_mod.parse_normalize(normalize, meta),
                                    limit=limit, on_bad_image=on_bad_image, seed=seed,
                                    intensity=intensity or meta.get("intensity") or "dtype")
    if len(dataset) == 0:
        raise CamstatError(f"data {data!r} split {split!r} holds no images")
    loaded = loaded or build(len(dataset.classes))
    if loaded.num_classes != len(dataset.classes):
        raise CamstatError(
            f"model has {loaded.num_classes} outputs but data {data!r} has {len(dataset.classes)} classes;"
            " pass the right --num-classes or checkpoint"
        )
    return loaded, dataset


def _images_in(writer: StoreWriter, chunks: list[int]) -> int:
    return sum(writer.chunk_slice(k).stop - writer.chunk_slice(k).start for k in chunks)


def incomplete_note(writer: StoreWriter) -> str:
    """What a run stopped by bad data leaves: an incomplete store (no analysis reads it) of intact chunks."""
    left = _images_in(writer, writer.pending())
    return (f"{writer.path} is left incomplete ({writer.n - left} of {writer.n} images done, every written chunk "
            f"intact; analyses refuse it): after fixing the data rerun with --resume, or with other options "
            f"--overwrite")


def _fill(writer: StoreWriter, engine: CamEngine, head_input: HeadInput, dataset, dev, targets: list[str], *,
          batch_size: int, workers: int, chunk: int, progress: Callable[[int, int], None] | None) -> int:
    """Run the pending chunks batch by batch, writing each chunk when complete; the number of images run.

    Bad data met on the way (an image out of range, non-finite logits or maps) stops the run with what the store
    holds and how to go on."""
    pending = writer.pending()
    total = _images_in(writer, pending)
    batches = [list(range(s, min(s + batch_size, sl.stop)))
               for sl in map(writer.chunk_slice, pending) for s in range(sl.start, sl.stop, batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers)
    processed = 0
    parts: list = []
    try:
        for images, labels, idx in loader:
            out = engine(images.to(dev), labels.to(dev), targets)
            parts.append((idx.numpy(), labels.numpy(), out, head_input.take()))
            processed += len(idx)
            if progress:
                progress(processed, total)
            k = int(idx[0]) // chunk
            if int(idx[-1]) + 1 == writer.chunk_slice(k).stop:
                _write_chunk(writer, k, parts, dataset)
                parts = []
    except CamstatError as exc:
        raise CamstatError(f"{exc}. {incomplete_note(writer)}") from None
    return processed


def _write_chunk(writer: StoreWriter, k: int, parts: list, dataset) -> None:
    positions = np.concatenate([p[0] for p in parts])
    logits = torch.cat([p[2].logits for p in parts]).float().cpu()
    if not torch.isfinite(logits).all():
        bad = positions[~torch.isfinite(logits).all(dim=1).numpy()]
        raise CamstatError(
            f"the model produced non-finite logits for {len(bad)} image(s) (dataset indices "
            f"{', '.join(map(str, dataset.index[bad][:5]))}); check the checkpoint and --normalize"
        )
    # The same argmax the engine used for the "pred" target.
    pred = logits.argmax(dim=1)
    confidence = torch.softmax(logits, dim=1).gather(1, pred[:, None])[:, 0]
    labels = np.concatenate([p[1] for p in parts])
    samples = {
        "index": dataset.index[positions],
        "label": labels,
        "pred": pred.numpy(),
        "confidence": confidence.numpy(),
        "correct": pred.numpy() == labels,
        "logits": logits.numpy(),
    }
    if parts[0][3] is not None:
        samples["embedding"] = torch.cat([p[3] for p in parts]).cpu().numpy().astype(np.float16)
    maps = {key: torch.cat([p[2].maps[key] for p in parts]).float().cpu().numpy() for key in parts[0][2].maps}
    for (method, layer, target), values in maps.items():
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():  # stored, a NaN map would only surface later as an obscure analysis error
            bad = positions[~finite]
            raise CamstatError(
                f"the {method} maps at layer {layer} (target {target}) are non-finite (NaN or inf) for {len(bad)}"
                f" image(s) (dataset indices {', '.join(map(str, dataset.index[bad][:5]))}): the layer's"
                " activations or gradients overflow; check the checkpoint and --normalize, or choose another --layer"
            )
    masks = dataset.masks(positions) if dataset.has_masks else None
    writer.write_chunk(k, samples, maps, masks)
