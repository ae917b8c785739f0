"""The streaming core of an H1 analysis: per-image metrics against group references, block by block.

Maps are read in blocks of the store's chunk: pass 1 sums the included maps
per group (:mod:`camstat.references`), pass 2 builds each block's references
from those sums and computes the per-image metrics. Memory holds one block
of maps plus one float per image and metric, whatever the store's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from camstat import metrics as metrics_mod
from camstat import references
from camstat.store import Store

Progress = Callable[[int, int], None]


@dataclass
class MapStream:
    """Which maps to analyse, and the progress counter shared by all passes."""

    method: str
    layer: str
    target: str
    size: tuple[int, int]
    block: int | None = None
    progress: Progress | None = None
    total: int = 0
    done: int = 0

    def iterate(self, store: Store) -> Iterator[tuple[slice, np.ndarray]]:
        for sl, maps in store.iter_maps(self.method, self.layer, self.target, size=self.size,
                                        normalize="minmax", block=self.block):
            yield sl, maps
            self.done += sl.stop - sl.start
            if self.progress:
                self.progress(self.done, max(self.total, self.done))


@dataclass
class Streamed:
    """What the two passes give: per-image metrics, undefined references, exact group-level parts."""

    values: dict[str, np.ndarray]
    undefined: np.ndarray
    com: np.ndarray | None = None  # (N, 2) centres of mass
    dist_all: np.ndarray | None = None  # dist to the mean of the image's whole group
    dist_own: np.ndarray | None = None  # dist to the mean of its group's correct (or incorrect) maps
    maps: np.ndarray | None = None  # (N, H, W) float32 analysis maps, when kept


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks at the analysis size (nearest neighbour)."""
    if masks.shape[-2:] == tuple(size):
        return masks
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (F.interpolate(t, size=size, mode="nearest")[:, 0] > 0.5).numpy()


def stream_metrics(store: Store, spec: MapStream, names: list[str], groups: np.ndarray, include: np.ndarray,
                   n_groups: int, *, q: float, means: np.ndarray | None = None, masks: bool = False,
                   group_level: bool = False, keep_maps: bool = False) -> Streamed:
    """Per-image metrics of every map against its group reference, in two streamed passes.

    Without ``means``: pass 1 sums the included maps per group, pass 2 takes
    leave-one-out references from the sums (:func:`metrics.loo_references`).
    With ``means`` (another store's class means) pass 1 is needed only for
    ``group_level``. ``group_level`` also sums all maps and the excluded
    ones per group, so that pass 2 gives each map's centre of mass and its
    distance to the mean of its whole group and of its own side (included
    or not): the exact, non-pairwise group-level metrics. ``keep_maps``
    keeps pass 2's maps (``Streamed.maps``, float32) for the tests that need
    every map at once (the dispersion test, the null pipeline).
    """
    n = store.n
    sums = counts = all_means = side_means = None
    if means is None or group_level:
        includes = [include] + ([np.ones(n, bool), ~include] if group_level else [])
        parts = references.group_sums(spec.iterate(store), groups, includes, n_groups)
        sums, counts = parts[0]
        if group_level:
            all_means = metrics_mod.class_means(*parts[1])
            side_means = np.stack([metrics_mod.class_means(*parts[2]), metrics_mod.class_means(sums, counts)])
    out = Streamed({name: np.full(n, np.nan) for name in names}, np.zeros(n, dtype=bool))
    if group_level:
        out.com, out.dist_all, out.dist_own = np.full((n, 2), np.nan), np.full(n, np.nan), np.full(n, np.nan)
    if keep_maps:
        out.maps = np.empty((n, *spec.size), dtype=np.float32)
    needs_ref = any(metrics_mod.PER_IMAGE[m].needs_reference for m in names)
    for sl, maps in spec.iterate(store):
        g = groups[sl]
        if keep_maps:
            out.maps[sl] = maps
        refs = None
        if needs_ref:
            refs = (metrics_mod.loo_references(maps, g, include[sl], sums, counts) if means is None
                    else metrics_mod.references_from_means(g, means))
            out.undefined[sl] = np.isnan(refs).any(axis=(1, 2))
        block_masks = resize_masks(store.masks(sl), spec.size) if masks else None
        for key, v in metrics_mod.per_image_metrics(maps, refs, names, masks=block_masks, q=q).items():
            out.values[key][sl] = v
        if group_level:
            out.com[sl] = metrics_mod.com(maps)
            out.dist_all[sl] = metrics_mod.dist(maps, all_means[g])
            out.dist_own[sl] = metrics_mod.dist(maps, side_means[include[sl].astype(np.int64), g])
    return out

