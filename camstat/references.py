"""Class means and leave-one-out references of a store's maps (SPEC 3): the one rule for each.

The *reference* of image i is the mean analysis map of the included
(usually: correctly classified) images of its group, leave-one-out when the
image itself is included. The rule for a group without any included map,
everywhere in camstat's analyses and figures: its mean is NaN, and so is
every reference taken from it -- such images are counted and left out of the
reference-based tests, never compared with a made-up map.

Everything streams over the store in blocks (``blocks``: an iterable of
``(slice, maps)`` as :meth:`camstat.store.Store.iter_maps` yields), so
memory holds one block, whatever the store's size.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from camstat import metrics

Blocks = Iterable[tuple[slice, np.ndarray]]


def group_sums(blocks: Blocks, groups: np.ndarray, includes: Sequence[np.ndarray],
               n_groups: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-group sums (G, H, W) float64 and counts (G,) of the maps of each ``include`` mask, in one pass."""
    acc: list[list] = [[None, None] for _ in includes]
    for sl, maps in blocks:
        for a, include in zip(acc, includes):
            s, c = metrics.class_sums(maps, groups[sl], include[sl], n_groups)
            if a[0] is None:
                a[0], a[1] = np.array(s, dtype=np.float64), np.array(c, dtype=np.int64)
            else:
                a[0] += s
                a[1] += c
    return [(a[0], a[1]) for a in acc]


def group_means(blocks: Blocks, groups: np.ndarray, include: np.ndarray,
                n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(means (G, H, W), counts (G,)) of the included maps per group; NaN means for empty groups."""
    [(sums, counts)] = group_sums(blocks, groups, [include], n_groups)
    return metrics.class_means(sums, counts), counts


def representatives(blocks: Blocks, groups: np.ndarray, include: np.ndarray, means: np.ndarray,
                    counts: np.ndarray) -> np.ndarray:
    """Per group, the included image whose map is closest (mean squared difference) to the mean; -1 if none."""
    n_groups = len(counts)
    best = np.full(n_groups, np.inf)
    rep = np.full(n_groups, -1, dtype=np.int64)
    for sl, maps in blocks:
        c = groups[sl]
        ok = include[sl] & (counts[c] > 0)
        if not ok.any():
            continue
        d = np.full(len(c), np.inf)
        d[ok] = metrics.dist(maps[ok], means[c[ok]])
        for j in np.unique(c[ok]):
            members = np.flatnonzero((c == j) & ok)
            i = members[np.argmin(d[members])]
            if d[i] < best[j]:
                best[j], rep[j] = d[i], sl.start + i
    return rep
