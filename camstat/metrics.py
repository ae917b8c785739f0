"""Consistency metrics of analysis maps: per image, pairwise and per group.

Plain functions on arrays, in the style of :mod:`skimage.metrics`. Maps are
float arrays of shape ``(N, H, W)``; in camstat they are min-max scaled
analysis maps in [0, 1], but no function here relies on that except SSIM,
whose constants assume ``data_range = 1`` (as SPEC section 3 fixes). Every
function is batched (one call per chunk of images, no Python loop over
images) and returns ``float64`` numpy arrays.

Per-image metrics (SPEC section 3). The first five compare a map with its
*reference* (the mean map of the correctly classified images of its class,
normally leave-one-out -- see :func:`loo_references`):

* ``dist`` -- mean squared difference to the reference; lower = more consistent
* ``ssim`` -- SSIM to the reference (skimage's defaults, data_range 1); higher = more consistent
* ``iou`` -- IoU of the top-q masks of map and reference; higher = more consistent
* ``corr`` -- Pearson correlation with the reference; higher = more consistent
* ``com`` -- distance between the centres of mass of map and reference, in
  fractions of width and height; lower = more consistent
* ``entropy`` -- normalised Shannon entropy of the map; a *concentration*
  metric (no reference): lower = more concentrated
* ``spread`` -- radius of gyration / image diagonal; *concentration*: lower = more concentrated
* ``pointing`` -- peak inside the ground-truth mask (needs masks); higher = better
* ``energy`` -- fraction of the map's mass inside the mask (needs masks); higher = better

:data:`PER_IMAGE` describes each of them (reference needed, direction,
function); :func:`per_image_metrics` computes any subset in one call.

Degenerate maps give NaN only for ``iou``. The conventions, chosen so that
a map without structure gets the value of a *uniform* map wherever that is
defined:

* all-zero map: treated as uniform by ``entropy`` (1.0), ``spread``
  (the uniform map's, about 0.2887 for square maps), ``com`` ((0.5, 0.5)) and
  ``energy`` (the mask's area fraction);
* constant map (any value): ``corr`` is 0.0 (no linear association can be
  measured); ``pointing`` is 0.0 (a map without a unique peak points
  nowhere); ``iou`` is NaN (a constant map has no top-q region; taking its
  first pixels in raster order would be an artefact), so callers count
  and drop it like an undefined reference;
  ``ssim`` is defined by its stabilising constants (two equal constant
  maps give 1, as skimage);
* apart from ``iou`` of constant maps, the only NaN produced is for an
  *undefined reference* (a class with no other correctly classified image,
  :func:`loo_references`); callers drop those rows.

References
----------
Wang, Z., Bovik, A. C., Sheikh, H. R. & Simoncelli, E. P. (2004). Image
    quality assessment: from error visibility to structural similarity.
    IEEE Trans. Image Processing 13(4), 600-612.
van der Walt, S. et al. (2014). scikit-image: image processing in Python.
    PeerJ 2:e453 (``skimage.metrics.structural_similarity``, matched here).
Selvaraju, R. R. et al. (2017). Grad-CAM: visual explanations from deep
    networks via gradient-based localization. ICCV.
Zhang, J. et al. (2016). Top-down neural attention by excitation
    backprop. ECCV (the pointing game).
Pearson, K. (1895). Notes on regression and inheritance in the case of two
    parents. Proc. R. Soc. London 58, 240-242.
Shannon, C. E. (1948). A mathematical theory of communication. Bell System
    Technical Journal 27, 379-423.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from camstat.errors import CamstatError

__all__ = [
    "MetricInfo",
    "MetricInputError",
    "PER_IMAGE",
    "class_means",
    "class_sums",
    "com",
    "com_distance",
    "corr",
    "default_metric_names",
    "default_threads",
    "dist",
    "entropy",
    "group_consistency",
    "iou",
    "loo_references",
    "pairwise_iou",
    "pairwise_ssim",
    "per_image_metrics",
    "pointing",
    "references_from_means",
    "spread",
    "ssim",
    "top_q_masks",
]

#: SSIM parameters: scikit-image's defaults for ``structural_similarity``
#: with ``data_range=1.0`` (uniform 7x7 window, sample covariance).
WIN_SIZE = 7
K1 = 0.01
K2 = 0.03
DATA_RANGE = 1.0
_C1 = (K1 * DATA_RANGE) ** 2
_C2 = (K2 * DATA_RANGE) ** 2
_NP = WIN_SIZE * WIN_SIZE
_COV_NORM = _NP / (_NP - 1.0)  # skimage's use_sample_covariance=True

#: default fraction of pixels in a top-q mask (SPEC section 3)
DEFAULT_Q = 0.2


class MetricInputError(CamstatError, ValueError):
    """Invalid input to a metric: a :class:`ValueError` for library callers,
    a :class:`~camstat.errors.CamstatError` (``error: ...``, exit 2) for the CLI."""


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------


def _maps(x: Any, name: str = "maps") -> np.ndarray:
    """(N, H, W) float64 (no copy if it already is); finite values only."""
    a = np.asarray(x)
    if a.ndim != 3:
        raise MetricInputError(f"{name} must have shape (N, H, W), got {a.shape}")
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise MetricInputError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.size and not np.isfinite(a).all():
        raise MetricInputError(f"{name} contains NaN or inf")
    return a


def _ref(ref: Any, maps: np.ndarray, name: str = "ref") -> np.ndarray:
    """Reference as (N, H, W) float64 (a broadcast view for an (H, W) one)."""
    r = np.asarray(ref)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or r.shape[1:] != maps.shape[1:] or r.shape[0] not in (1, maps.shape[0]):
        raise MetricInputError(
            f"{name} must have shape (H, W) or (N, H, W) matching maps {maps.shape}, got {np.shape(ref)}"
        )
    r = r.astype(np.float64, copy=False)
    if r.size and not np.isfinite(r).all():
        raise MetricInputError(f"{name} contains NaN or inf (drop rows with undefined references first)")
    return np.broadcast_to(r, maps.shape)


def _nonneg(a: np.ndarray, name: str) -> None:
    if a.size and a.min() < 0:
        raise MetricInputError(
            f"{name} has negative values ({a.min():.3g}); mass-based metrics need non-negative maps "
            "(Grad-CAM maps are non-negative after the ReLU)"
        )


def _check_q(q: float) -> float:
    q = float(q)
    if not 0.0 < q <= 1.0:
        raise MetricInputError(f"q must be in (0, 1], got {q}")
    return q


def _check_ssim_size(shape: tuple[int, ...]) -> None:
    h, w = shape[-2:]
    if min(h, w) < WIN_SIZE:
        raise MetricInputError(
            f"SSIM needs maps of at least {WIN_SIZE}x{WIN_SIZE} (scikit-image's default window), got {h}x{w}; "
            "compare at a larger analysis size"
        )


# --------------------------------------------------------------------------
# simple per-image metrics
# --------------------------------------------------------------------------


def dist(maps: Any, ref: Any) -> np.ndarray:
    """Mean squared difference to the reference, per image.

    ``dist_i = (1 / HW) * sum_p (maps_i[p] - ref_i[p])**2`` -- the per-pixel
    value of the H2 loss ``L_cam = ||CAM - mean_CAM||_2^2`` (SPEC section 1).
    Lower is more consistent.

    Parameters
    ----------
    maps : (N, H, W) array
    ref : (H, W) or (N, H, W) array

    Returns
    -------
    (N,) float64
    """
    x = _maps(maps)
    r = _ref(ref, x)
    d = x - r
    return np.einsum("nhw,nhw->n", d, d) / max(1, x.shape[1] * x.shape[2])


def corr(maps: Any, ref: Any) -> np.ndarray:
    """Pearson correlation with the reference, per image.

    ``r_i = sum_p (x_p - xbar)(y_p - ybar) / sqrt(sum_p (x_p - xbar)^2 * sum_p (y_p - ybar)^2)``
    over the H*W pixels (Pearson 1895). Higher is more consistent.

    Degenerate: if the map or its reference is constant (max == min), the
    correlation is undefined; it is reported as **0.0** (no measurable
    linear association), never NaN.
    """
    x = _maps(maps)
    y = _ref(ref, x)
    n = x.shape[0]
    xf = x.reshape(n, -1)
    yf = y.reshape(n, -1)
    xc = xf - xf.mean(axis=1, keepdims=True)
    yc = yf - yf.mean(axis=1, keepdims=True)
    num = np.einsum("np,np->n", xc, yc)
    den = np.sqrt(np.einsum("np,np->n", xc, xc) * np.einsum("np,np->n", yc, yc))
    # decide "constant" on the raw values: after centring, rounding can leave
    # a constant map with tiny non-zero residuals whose "correlation" is noise
    const = (np.ptp(xf, axis=1) == 0) | (np.ptp(yf, axis=1) == 0) if xf.shape[1] else np.ones(n, bool)
    out = np.zeros(n)
    ok = ~const & (den > 0)
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def _mass(x: np.ndarray) -> np.ndarray:
    """Sum-normalised maps (N, H*W); an all-zero map becomes uniform."""
    n = x.shape[0]
    f = x.reshape(n, -1)
    s = f.sum(axis=1, keepdims=True)
    zero = s[:, 0] <= 0
    p = np.empty_like(f)
    np.divide(f, s, out=p, where=~zero[:, None])
    p[zero] = 1.0 / max(1, f.shape[1])
    return p


def entropy(maps: Any) -> np.ndarray:
    """Normalised Shannon entropy of each map, in [0, 1].

    The map is normalised to a distribution ``p = x / sum(x)`` and
    ``H = -sum_p p log p / log(H*W)`` (Shannon 1948; ``0 log 0 = 0``). A
    *concentration* metric (no reference): lower = more concentrated
    (one-hot map 0, uniform map 1).

    Maps must be non-negative. Degenerate: an all-zero map is treated as
    uniform (entropy **1.0**); a 1x1 map has entropy 0.
    """
    x = _maps(maps)
    _nonneg(x, "maps")
    p = _mass(x)
    hw = p.shape[1]
    if hw <= 1:
        return np.zeros(x.shape[0])
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    h = -np.einsum("np,np->n", p, logp) / math.log(hw)
    return np.clip(h, 0.0, 1.0)


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (row + 0.5, col + 0.5) flattened in raster order."""
    rr, cc = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return rr.ravel(), cc.ravel()


def com(maps: Any) -> np.ndarray:
    """Centre of mass ``(x, y)`` of each map, as fractions of width and height.

    ``x = sum_p p_p (col_p + 0.5) / W``, ``y = sum_p p_p (row_p + 0.5) / H``
    with ``p = map / sum(map)`` (pixel centres; (0.5, 0.5) is the image
    centre). Maps must be non-negative. Degenerate: an all-zero map is
    treated as uniform, giving **(0.5, 0.5)**.

    Returns
    -------
    (N, 2) float64, columns x then y.
    """
    x = _maps(maps)
    _nonneg(x, "maps")
    n, h, w = x.shape
    p = _mass(x)
    rr, cc = _coords(h, w)
    return np.stack([p @ cc / w, p @ rr / h], axis=1)


def com_distance(maps: Any, ref: Any) -> np.ndarray:
    """Euclidean distance between the centres of mass of map and reference.

    ``d_i = ||com(maps_i) - com(ref_i)||_2`` in the fractional coordinates of
    :func:`com` (a shift of the whole width is 1.0). This is the scalar
    ``com`` metric of :data:`PER_IMAGE`; lower is more consistent.
    All-zero maps or references count as uniform (centre (0.5, 0.5)).
    """
    x = _maps(maps)
    r = _ref(ref, x)
    a = com(x)
    b = com(r[:1]) if r.strides[0] == 0 else com(r)
    return np.sqrt(((a - b) ** 2).sum(axis=1))


def spread(maps: Any) -> np.ndarray:
    """Radius of gyration of each map around its centre of mass, / image diagonal.

    ``R_g = sqrt(sum_p p_p ((row_p - ybar)^2 + (col_p - xbar)^2))`` in pixels
    (pixel centres, ``p = map / sum(map)``, ``(ybar, xbar)`` the centre of
    mass), divided by ``sqrt(H^2 + W^2)``. A *concentration* metric (no
    reference): lower = more concentrated; a single hot pixel gives 0, a
    uniform map ``sqrt((H^2 - 1 + W^2 - 1) / 12) / sqrt(H^2 + W^2)``
    (about 0.2887 for large square maps).

    Maps must be non-negative. Degenerate: an all-zero map is treated as
    uniform.
    """
    x = _maps(maps)
    _nonneg(x, "maps")
    n, h, w = x.shape
    p = _mass(x)
    rr, cc = _coords(h, w)
    ybar = p @ rr
    xbar = p @ cc
    # E[r^2] - E[r]^2 cancels badly only when the spread is far below a
    # pixel, where the clip at 0 is the exact answer anyway
    var = (p @ (rr * rr) - ybar**2) + (p @ (cc * cc) - xbar**2)
    return np.sqrt(np.clip(var, 0.0, None)) / math.hypot(h, w)


def pointing(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pointing game and energy inside the ground-truth mask, per image.

    * ``hit_i = 1.0`` if the map's peak (``argmax``; ties go to the first
      maximum in raster order) lies inside ``masks_i``, else ``0.0``
      (Zhang et al. 2016).
    * ``energy_i = sum_{p in mask} map_p / sum_p map_p``, the fraction of the
      map's mass inside the mask.

    Maps must be non-negative. Degenerate: a constant map (all-zero
    included) has no peak and scores ``hit = 0.0``; an all-zero map is
    treated as uniform for the energy (= the mask's area fraction); an empty
    mask gives 0.0 for both.

    Parameters
    ----------
    maps : (N, H, W) array
    masks : (N, H, W) bool array (or (H, W), shared)

    Returns
    -------
    (hit, energy) : two (N,) float64 arrays
    """
    x = _maps(maps)
    _nonneg(x, "maps")
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != x.shape[1:] or m.shape[0] not in (1, x.shape[0]):
        raise MetricInputError(f"masks must have shape (N, H, W) matching maps {x.shape}, got {np.shape(masks)}")
    m = np.broadcast_to(m.astype(bool, copy=False), x.shape)
    n = x.shape[0]
    f = x.reshape(n, -1)
    mf = m.reshape(n, -1)
    peak = np.argmax(f, axis=1) if f.shape[1] else np.zeros(n, int)
    const = np.ptp(f, axis=1) == 0 if f.shape[1] else np.ones(n, bool)
    hit = np.take_along_axis(mf, peak[:, None], axis=1)[:, 0] & ~const
    p = _mass(x)
    energy = np.einsum("np,np->n", p, mf.astype(np.float64))
    return hit.astype(np.float64), np.clip(energy, 0.0, 1.0)


# --------------------------------------------------------------------------
# top-q masks and IoU
# --------------------------------------------------------------------------


def _k_of(q: float, hw: int) -> int:
    return min(hw, max(1, int(round(q * hw))))


def top_q_masks(maps: Any, q: float = DEFAULT_Q) -> np.ndarray:
    """Boolean masks of the ``k = round(q * H * W)`` (at least 1) highest pixels.

    Exactly ``k`` pixels per map: ties at the threshold are broken
    deterministically by raster order (row-major, the lower flat index
    wins), as a stable sort of ``-maps`` would, so a constant map selects its
    first ``k`` pixels (:func:`iou` leaves such maps out). O(H W) per map:
    the threshold is the k-th largest value (``np.partition``), then the
    tied pixels are taken in raster order.

    Returns
    -------
    (N, H, W) bool
    """
    x = _maps(maps)
    q = _check_q(q)
    n, h, w = x.shape
    f = x.reshape(n, -1)
    k = _k_of(q, h * w)
    thr = -np.partition(-f, k - 1, axis=1)[:, k - 1 : k]
    above = f > thr
    tied = f == thr
    need = k - np.count_nonzero(above, axis=1)
    out = above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))
    return out.reshape(n, h, w)


def _constant(x: np.ndarray) -> np.ndarray:
    """(N,) bool: maps whose pixels are all equal (no top-q region exists)."""
    f = x.reshape(x.shape[0], -1)
    return (f == f[:, :1]).all(axis=1)


def iou(maps: Any, ref: Any, q: float = DEFAULT_Q) -> np.ndarray:
    """IoU of the top-q masks of map and reference, per image.

    ``IoU_i = |M(maps_i) & M(ref_i)| / |M(maps_i) | M(ref_i)|`` where ``M``
    is :func:`top_q_masks` (``k = round(q*H*W)`` pixels each, ties in raster
    order). Both masks have ``k >= 1`` pixels, so the union is never empty
    and the value is in [0, 1]; disjoint masks give 0, equal masks 1.
    Higher is more consistent.

    A constant map or reference has no top-q region (every pixel ties): its
    IoU is **NaN**, so that callers count and leave it out, rather than the
    IoU of its first k pixels in raster order, an artefact of the tie rule.
    """
    x = _maps(maps)
    r = _ref(ref, x)
    q = _check_q(q)
    mx = top_q_masks(x, q).reshape(x.shape[0], -1)
    if r.strides[0] == 0:
        mr = np.broadcast_to(top_q_masks(r[:1], q).reshape(1, -1), mx.shape)
        flat = np.broadcast_to(_constant(r[:1]), (x.shape[0],))
    else:
        mr = top_q_masks(r, q).reshape(x.shape[0], -1)
        flat = _constant(r)
    k = _k_of(q, mx.shape[1])
    inter = np.count_nonzero(mx & mr, axis=1).astype(np.float64)
    out = inter / (2 * k - inter)
    out[flat | _constant(x)] = np.nan
    return out


def pairwise_iou(maps: Any, q: float = DEFAULT_Q) -> np.ndarray:
    """Top-q IoU of every pair of maps, (N, N), symmetric with diagonal 1.

    Same definition as :func:`iou` (rows and columns of constant maps are
    NaN); the intersections of all pairs are one matrix product of the masks.
    """
    x = _maps(maps)
    q = _check_q(q)
    n = x.shape[0]
    m = top_q_masks(x, q).reshape(n, -1).astype(np.float32)
    k = _k_of(q, m.shape[1])
    # counts are integers <= H*W, exact in float32 up to 2**24 pixels
    inter = (m @ m.T).astype(np.float64)
    out = inter / (2 * k - inter)
    np.fill_diagonal(out, 1.0)
    flat = _constant(x)
    out[flat, :] = np.nan
    out[:, flat] = np.nan
    return out


# --------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------


def _box_valid(a: np.ndarray, size: int = WIN_SIZE) -> np.ndarray:
    """Mean over every ``size x size`` window lying fully inside the map.

    Equals ``crop(uniform_filter(a, size), (size - 1) // 2)`` for any edge
    mode -- the crop removes exactly the windows that touch the border.
    Separable sliding sums built by doubling (1+1, 2+2, 4+2, 6+1 terms):
    four vectorised additions per axis, each sum exact to a few ulps
    (no long running sums whose rounding would build up).
    """
    if size != WIN_SIZE:
        raise NotImplementedError("only the 7x7 window")
    s2 = a[..., :-1] + a[..., 1:]
    s4 = s2[..., :-2] + s2[..., 2:]
    s6 = s4[..., :-2] + s2[..., 4:]
    r = s6[..., :-1]
    r += a[..., 6:]
    s2 = r[..., :-1, :] + r[..., 1:, :]
    s4 = s2[..., :-2, :] + s2[..., 2:, :]
    s6 = s4[..., :-2, :] + s2[..., 4:, :]
    out = s6[..., :-1, :]
    out += r[..., 6:, :]
    out *= 1.0 / (size * size)
    return out


def _chunk_len(per_item: int, target: int = 1 << 16) -> int:
    """Items per chunk so that a chunk holds about ``target`` elements (cache-sized)."""
    return max(1, target // max(1, per_item))


def ssim(a: Any, b: Any) -> np.ndarray:
    """Mean structural similarity of each map in ``a`` with ``b``.

    Wang et al. (2004), as computed by
    ``skimage.metrics.structural_similarity(a_i, b_i, data_range=1.0)`` with
    its defaults: local statistics over a uniform 7x7 window, sample
    (co)variances (``use_sample_covariance=True``, factor 49/48),
    ``C1 = (0.01 * 1)^2``, ``C2 = (0.03 * 1)^2``::

        S(p) = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))

    averaged over the windows that lie fully inside the map (skimage's
    ``crop(S, 3)``). Agrees with skimage to ~1e-7 (computed in float64;
    skimage works in float32 for float32 input). Higher is more consistent.

    Degenerate: the constants keep the value defined; two identical maps
    (constant or all-zero included) give 1.0, as skimage.

    Parameters
    ----------
    a : (N, H, W) array, H and W >= 7
    b : (H, W) or (N, H, W) array

    Returns
    -------
    (N,) float64
    """
    x = _maps(a, "a")
    _check_ssim_size(x.shape)
    y = _ref(b, x, "b")
    n, h, w = x.shape
    shared = y.strides[0] == 0
    if shared:  # the reference's statistics once, not per image
        uy_s = _box_valid(y[:1])
        vy_s = _COV_NORM * (_box_valid(y[:1] * y[:1]) - uy_s * uy_s)
    out = np.empty(n)
    # chunks of images keep every temporary in cache; each line is one pass
    step = _chunk_len(h * w)
    for i0 in range(0, n, step):
        xc = x[i0 : i0 + step]
        yc = y[i0 : i0 + step]
        ux = _box_valid(xc)
        if shared:
            uy, vy = uy_s, vy_s
        else:
            uy = _box_valid(yc)
            vy = _box_valid(yc * yc)
            vy -= uy * uy
            vy *= _COV_NORM
        vx = _box_valid(xc * xc)
        vx -= ux * ux
        vx *= _COV_NORM
        vxy = _box_valid(xc * yc)
        uxuy = ux * uy
        vxy -= uxuy
        vxy *= 2 * _COV_NORM
        vxy += _C2  # A2
        uxuy *= 2
        uxuy += _C1  # A1
        uxuy *= vxy  # numerator
        ux *= ux
        ux += uy * uy
        ux += _C1  # B1
        vx += vy
        vx += _C2  # B2
        ux *= vx
        uxuy /= ux
        out[i0 : i0 + len(xc)] = uxuy.mean(axis=(1, 2))
    return out


def _window_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window means and sample variances (N, H-6, W-6), float64.

    In chunks of images, so the temporaries stay small whatever N is.
    """
    n, h, w = x.shape
    mu = np.empty((n, h - WIN_SIZE + 1, w - WIN_SIZE + 1))
    var = np.empty_like(mu)
    step = _chunk_len(h * w)
    for i0 in range(0, n, step):
        xc = x[i0 : i0 + step]
        m = mu[i0 : i0 + step] = _box_valid(xc)
        v = _box_valid(xc * xc)
        v -= m * m
        v *= _COV_NORM
        var[i0 : i0 + step] = np.clip(v, 0.0, None)
    return mu, var


def pairwise_ssim(
    maps: Any, *, block_size: int = 64, max_chunk_bytes: int = 16 << 20, threads: int | None = None
) -> np.ndarray:
    """SSIM of every pair of maps, (N, N): ``out[i, j] == ssim(maps[i], maps[j])``.

    Same definition and agreement with scikit-image (to ~1e-7) as
    :func:`ssim`; symmetric, diagonal exactly 1 (SSIM(x, x) = 1 for every
    map, constant ones included).

    How it is fast. Per map, the window means ``mu`` and variances ``s^2``
    are computed once. The only pairwise quantity is the window covariance
    ``s_ij(p) = 1/48 sum_{q in W(p)} (x_i(q) - mu_i(p)) (x_j(q) - mu_j(p))``;
    for a chunk of window positions, every map's *window-centred* patches
    form a matrix, so the covariances of a block of pairs are one batched
    matrix product (``torch.bmm``), followed by the closed-form SSIM of
    each pair and position and a sum over positions. Only the upper
    triangle of blocks is computed. Centring each window before the
    product keeps float32 exact to ~1e-7 relative to the local variance
    (uncentred ``E[xy] - E[x]E[y]`` in float32 would lose ~1e-4 in flat
    regions, where the denominator is only C2).

    Cost: time ~ N^2 (H-6)(W-6) (about 100 flops per pair and window
    position; ``studies/benchmarks/ssim_speed.py`` measures it against
    skimage). Memory: the (N, N) result, per-map window statistics
    (O(N H W)), the patches of one chunk of window positions (bounded by
    ``max_chunk_bytes``, but at least one row of windows: 200 (W-6) N
    bytes) and a few megabytes of scratch per thread -- about 0.2 GB for
    N = 2000 maps of 32x32.

    Parameters
    ----------
    maps : (N, H, W) array, H and W >= 7
    block_size : pairs are processed in blocks of ``block_size x block_size`` maps
    max_chunk_bytes : bound on the float32 patch matrix of one chunk of positions
    threads : worker threads over blocks of pairs (default :func:`default_threads`).
        Torch itself is set to one thread while they run (and restored
        after), so other torch work in the same process runs single-threaded
        meanwhile.

    Returns
    -------
    (N, N) float64
    """
    x = _maps(maps)
    _check_ssim_size(x.shape)
    n, h, w = x.shape
    if n == 0:
        return np.zeros((0, 0))
    if threads is None:
        threads = default_threads()
    out = _pairwise_ssim_sum(x, int(block_size), int(max_chunk_bytes), int(threads))
    out /= (h - WIN_SIZE + 1) * (w - WIN_SIZE + 1)
    iu = np.triu_indices(n, 1)
    out.T[iu] = out[iu]
    np.fill_diagonal(out, 1.0)
    return out


def default_threads() -> int:
    """Worker threads :func:`pairwise_ssim` uses by default: torch's thread setting, at most the CPU count."""
    import torch  # here, not at import: the CLI and the statistics load without torch

    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


class _single_threaded_torch:
    """Run torch ops single-threaded inside the block (restored on exit).

    Parallelism comes from our own worker threads instead: the per-block
    ops are small, and torch's intra-op pool, when a core is busy with
    another process, waits for a descheduled thread at every op barrier
    (measured 100x slowdowns on a shared 2-core machine).
    """

    def __enter__(self) -> None:
        import torch

        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.n)


def _pairwise_ssim_sum(
    x: np.ndarray, block: int, max_chunk_bytes: int, threads: int, sub_elems: int = 1 << 18
) -> np.ndarray:
    """sum_p S_ij(p) for i <= j by blocks (lower triangle of blocks left 0); float64 (N, N)."""
    import torch

    n, h, w = x.shape
    hv, wv = h - WIN_SIZE + 1, w - WIN_SIZE + 1
    # near-equal blocks (less work wasted on the full diagonal blocks), in multiples of 16 floats, which the
    # matrix-product and vector kernels handle fastest (a 50-wide block costs about as much as a 64-wide one)
    balanced = -(-n // -(-n // max(1, block)))
    block = max(1, min(block, -(-balanced // 16) * 16))
    mu, var = _window_stats(x)
    # Patches are scaled so that their product is 2 s_ij, and get a constant
    # column sqrt(C2), so the matrix product yields A2 = 2 s_ij + C2 directly.
    # Positions-major layout (H, W, N): a window's entries for all maps are
    # contiguous rows, which makes building the patch matrix a fast copy.
    # float32 throughout: rounding mu or x changes the centred values by a per-window constant (whose products
    # with zero-sum residuals vanish) or by ~6e-8 relative, far below the 1e-5 agreement required.
    scale = math.sqrt(2.0 / (_NP - 1))
    xt = torch.from_numpy(np.ascontiguousarray((x * scale).transpose(1, 2, 0), dtype=np.float32))
    pos = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(1, 2, 0), dtype=np.float32))
    mut = pos(mu * scale)
    m2 = pos(math.sqrt(2.0) * mu)  # m2_i * m2_j = 2 mu_i mu_j
    qq = pos(mu * mu + _C1 / 2)  # q_i + q_j = mu_i^2 + mu_j^2 + C1
    ww = pos(var + _C2 / 2)  # w_i + w_j = s_i^2 + s_j^2 + C2
    kk = _NP + 1
    rows = max(1, min(hv, max_chunk_bytes // max(1, 4 * kk * n * wv)))
    out = torch.zeros(n, n, dtype=torch.float64)
    pairs = [(i0, j0) for i0 in range(0, n, block) for j0 in range(i0, n, block)]
    scratch = threading.local()

    def run_block(pat: torch.Tensor, m2c: torch.Tensor, qc: torch.Tensor, wc: torch.Tensor, i0: int, j0: int) -> None:
        i1, j1 = min(n, i0 + block), min(n, j0 + block)
        bi, bj = i1 - i0, j1 - j0
        npos = pat.shape[0]
        # sub-chunks of positions keep the (positions, bi, bj) temporaries
        # cache-sized: every pass over them is memory-bound
        step = max(1, sub_elems // (bi * bj))
        # per-thread scratch, reused: fresh megabyte-sized tensors would be
        # paid in page faults on every call
        key = (step, bi, bj)
        if getattr(scratch, "key", None) != key:
            scratch.key, scratch.bufs = key, tuple(torch.empty(key) for _ in range(3))
        a2, t1, t2 = scratch.bufs
        acc = torch.zeros(bi, bj, dtype=torch.float64)
        for p0 in range(0, npos, step):
            p1 = min(npos, p0 + step)
            k = p1 - p0
            A2, T1, T2 = a2[:k], t1[:k], t2[:k]
            torch.bmm(pat[p0:p1, :, i0:i1].transpose(1, 2), pat[p0:p1, :, j0:j1], out=A2)
            # numerator (2 mu_i mu_j + C1)(2 s_ij + C2)
            torch.mul(m2c[p0:p1, i0:i1, None], m2c[p0:p1, None, j0:j1], out=T1)
            T1.add_(_C1).mul_(A2)
            # denominator (mu_i^2 + mu_j^2 + C1)(s_i^2 + s_j^2 + C2)
            torch.add(qc[p0:p1, i0:i1, None], qc[p0:p1, None, j0:j1], out=A2)
            torch.add(wc[p0:p1, i0:i1, None], wc[p0:p1, None, j0:j1], out=T2)
            A2.mul_(T2)
            T1.div_(A2)
            acc += T1.sum(0)
        out[i0:i1, j0:j1] += acc

    # one buffer for all chunks: fresh allocations of this size would be
    # paid again in page faults every chunk
    buf = torch.empty(rows * wv, kk, n, dtype=torch.float32)
    with _single_threaded_torch(), ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for r0 in range(0, hv, rows):
            r1 = min(hv, r0 + rows)
            npos = (r1 - r0) * wv
            # (npos, 50, N): window-centred patches, built straight from the
            # (nr, wv, N, 7, 7) window view of the positions-major maps
            pat = buf[:npos]
            win = xt[r0 : r1 + WIN_SIZE - 1].unfold(0, WIN_SIZE, 1).unfold(1, WIN_SIZE, 1)
            dst = pat[:, :_NP].view(r1 - r0, wv, WIN_SIZE, WIN_SIZE, n)
            torch.sub(win.permute(0, 1, 3, 4, 2), mut[r0:r1, :, None, None, :], out=dst)
            pat[:, _NP] = math.sqrt(_C2)
            args = (pat, m2[r0:r1].reshape(npos, n), qq[r0:r1].reshape(npos, n), ww[r0:r1].reshape(npos, n))
            for f in [pool.submit(run_block, *args, i0, j0) for i0, j0 in pairs]:
                f.result()
    return out.numpy()


# --------------------------------------------------------------------------
# registry and one-call computation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """Description of one scalar per-image metric (an entry of :data:`PER_IMAGE`).

    Attributes
    ----------
    name : key in :data:`PER_IMAGE` and in :func:`per_image_metrics`'s result
    kind : ``"consistency"`` (compares the map with its reference),
        ``"concentration"`` (how peaked the map is; no reference) or
        ``"localisation"`` (against a ground-truth mask)
    needs_reference : computed against the image's reference map
    needs_masks : needs ground-truth masks (``pointing``, ``energy``)
    higher_is_more_consistent : direction. For consistency metrics: True if
        a higher value means the map is *more consistent* with its
        reference (``ssim``, ``iou``, ``corr``), False for distances
        (``dist``, ``com``). For concentration metrics False: lower means
        *more concentrated* (``entropy``, ``spread``). For localisation
        metrics True: higher means better localised.
    description : one line for reports
    compute : ``compute(maps, refs, masks, q) -> (N,)``; ``refs``/``masks``
        may be None when not needed
    """

    name: str
    kind: str
    needs_reference: bool
    needs_masks: bool
    higher_is_more_consistent: bool
    description: str
    compute: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None, float], np.ndarray]

    @property
    def family(self) -> str:
        """``consistency``, ``concentration`` or ``localisation`` (SPEC 3's families)."""
        return self.kind

    @property
    def label(self) -> str:
        """What a better value means, in words: ``more consistent``, ``more concentrated``, ``better localised``."""
        return FAMILY_LABELS[self.kind]

    def oriented(self, auc: Any, ci: Any = None) -> tuple[Any, list]:
        """This metric's AUC for correctness, oriented so that > 0.5 means better maps predict correctness."""
        return oriented_auc(auc, ci, self.higher_is_more_consistent)


FAMILY_LABELS = {"consistency": "more consistent", "concentration": "more concentrated",
                 "localisation": "better localised"}


def oriented_auc(auc: Any, ci: Any, higher: bool | None) -> tuple[Any, list]:
    """The AUC of *consistency* for correctness: ``auc``, or ``1 - auc`` (CI flipped) where lower is better.

    The one place where a metric's orientation turns its AUC around; a
    missing or non-finite value stays None. ``higher`` None (no direction)
    leaves the AUC as it is.
    """
    ci = list(ci) if ci else [None, None]
    if higher is None or higher:
        return auc, ci

    def flip(v: Any) -> Any:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return 1.0 - v if ok else None

    return flip(auc), [flip(ci[1]), flip(ci[0])]


def orientation(name: str) -> bool | None:
    """Higher-is-more-consistent of a metric of :data:`PER_IMAGE` (None for an unknown name)."""
    info = PER_IMAGE.get(name)
    return None if info is None else bool(info.higher_is_more_consistent)


def family(name: str) -> str:
    """The family of a metric of :data:`PER_IMAGE` (``consistency`` for an unknown name)."""
    info = PER_IMAGE.get(name)
    return "consistency" if info is None else info.kind


def _pointing_hit(maps: np.ndarray, refs: Any, masks: Any, q: float) -> np.ndarray:
    return pointing(maps, masks)[0]


def _pointing_energy(maps: np.ndarray, refs: Any, masks: Any, q: float) -> np.ndarray:
    return pointing(maps, masks)[1]


#: Every scalar per-image metric of SPEC section 3, by name.
PER_IMAGE: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("dist", "consistency", True, False, False,
                   "mean squared difference to the reference (lower = more consistent)",
                   lambda x, r, k, q: dist(x, r)),
        MetricInfo("ssim", "consistency", True, False, True,
                   "SSIM to the reference (skimage defaults, data_range 1; higher = more consistent)",
                   lambda x, r, k, q: ssim(x, r)),
        MetricInfo("iou", "consistency", True, False, True,
                   "IoU of the top-q masks of map and reference (higher = more consistent)",
                   lambda x, r, k, q: iou(x, r, q)),
        MetricInfo("corr", "consistency", True, False, True,
                   "Pearson correlation with the reference (higher = more consistent)",
                   lambda x, r, k, q: corr(x, r)),
        MetricInfo("com", "consistency", True, False, False,
                   "distance between centres of mass of map and reference, in fractions of width/height "
                   "(lower = more consistent)",
                   lambda x, r, k, q: com_distance(x, r)),
        MetricInfo("entropy", "concentration", False, False, False,
                   "normalised Shannon entropy of the map (lower = more concentrated)",
                   lambda x, r, k, q: entropy(x)),
        MetricInfo("spread", "concentration", False, False, False,
                   "radius of gyration / image diagonal (lower = more concentrated)",
                   lambda x, r, k, q: spread(x)),
        MetricInfo("pointing", "localisation", False, True, True,
                   "peak inside the ground-truth mask (1/0; higher = better localised)",
                   _pointing_hit),
        MetricInfo("energy", "localisation", False, True, True,
                   "fraction of the map's mass inside the ground-truth mask (higher = better localised)",
                   _pointing_energy),
    )
}


def default_metric_names(masks: bool = False) -> list[str]:
    """Every per-image metric that applies: all, with ``pointing``/``energy`` only given masks."""
    return [n for n, m in PER_IMAGE.items() if masks or not m.needs_masks]


def per_image_metrics(
    maps: Any,
    refs: Any | None,
    names: Sequence[str] | None = None,
    masks: Any | None = None,
    q: float = DEFAULT_Q,
) -> dict[str, np.ndarray]:
    """Compute several per-image metrics for a chunk of images in one call.

    Parameters
    ----------
    maps : (N, H, W) analysis maps
    refs : (N, H, W) each image's own reference (see :func:`loo_references`),
        or None when only reference-free metrics are asked for. An all-NaN
        row marks an *undefined* reference (:func:`loo_references`):
        reference metrics are NaN for that image (the only NaN this module
        produces; drop them), reference-free metrics are computed as usual.
        A partly-NaN row is an error.
    names : metric names (keys of :data:`PER_IMAGE`); default every metric
        that applies (:func:`default_metric_names`: ``pointing`` and
        ``energy`` only when ``masks`` is given)
    masks : (N, H, W) bool ground-truth masks, for ``pointing``/``energy``
    q : top-q fraction for ``iou``

    Returns
    -------
    dict name -> (N,) float64, in the order of ``names``
    """
    x = _maps(maps)
    n = x.shape[0]
    names = list(default_metric_names(masks is not None) if names is None else names)
    unknown = [nm for nm in names if nm not in PER_IMAGE]
    if unknown:
        raise MetricInputError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(PER_IMAGE)}")
    infos = [PER_IMAGE[nm] for nm in names]
    q = _check_q(q)
    if any(m.needs_masks for m in infos) and masks is None:
        raise MetricInputError("pointing/energy need ground-truth masks")
    valid = np.ones(n, dtype=bool)
    r = None
    if any(m.needs_reference for m in infos):
        if refs is None:
            raise MetricInputError(f"metrics {', '.join(m.name for m in infos if m.needs_reference)} need references")
        r = np.asarray(refs, dtype=np.float64)
        if r.shape != x.shape:
            raise MetricInputError(f"refs must have the shape of maps {x.shape}, got {r.shape}")
        nan = np.isnan(r)
        valid = ~nan.all(axis=(1, 2))
        if nan[valid].any():
            raise MetricInputError("refs has rows that are partly NaN; an undefined reference is a whole NaN row")
    out: dict[str, np.ndarray] = {}
    hit_energy: tuple[np.ndarray, np.ndarray] | None = None
    for m in infos:
        if m.needs_masks:
            if hit_energy is None:
                hit_energy = pointing(x, masks)
            out[m.name] = hit_energy[0] if m.name == "pointing" else hit_energy[1]
        elif m.needs_reference:
            v = np.full(n, np.nan)
            if valid.any():
                v[valid] = m.compute(x[valid], r[valid], None, q)
            out[m.name] = v
        else:
            out[m.name] = m.compute(x, None, None, q)
    return out


# --------------------------------------------------------------------------
# references: class sums, leave-one-out means, stored means
# --------------------------------------------------------------------------


def _classes(classes: Any, n: int, n_classes: int | None = None) -> np.ndarray:
    c = np.asarray(classes)
    if c.shape != (n,):
        raise MetricInputError(f"classes must have shape ({n},), got {c.shape}")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.equal(np.mod(c, 1), 0)):
            raise MetricInputError("classes must be integer class indices")
    c = c.astype(np.int64)
    if c.size and (c.min() < 0 or (n_classes is not None and c.max() >= n_classes)):
        raise MetricInputError(f"class indices must lie in [0, {n_classes}), got [{c.min()}, {c.max()}]")
    return c


def _include(include: Any, n: int) -> np.ndarray:
    inc = np.asarray(include)
    if inc.shape != (n,):
        raise MetricInputError(f"include must have shape ({n},), got {inc.shape}")
    return inc.astype(bool)


def class_sums(maps: Any, classes: Any, include: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums and counts of the *included* maps (e.g. correct ones).

    Accumulable over chunks: the sums and counts of two chunks add up to
    those of their union, so a store can be streamed::

        S, K = 0, 0
        for chunk in chunks:
            s, k = class_sums(chunk.maps, chunk.classes, chunk.correct, C)
            S, K = S + s, K + k

    Parameters
    ----------
    maps : (N, H, W)
    classes : (N,) int class of each image, in [0, n_classes)
    include : (N,) bool, which maps enter the sums
    n_classes : C

    Returns
    -------
    sums : (C, H, W) float64
    counts : (C,) int64
    """
    x = _maps(maps)
    n, h, w = x.shape
    c = _classes(classes, n, int(n_classes))
    inc = _include(include, n)
    sums = np.zeros((int(n_classes), h * w))
    cls = c[inc]
    counts = np.bincount(cls, minlength=int(n_classes)).astype(np.int64)
    if cls.size:
        # group by class and add each group in one reduction (O(N*H*W),
        # unlike a one-hot product whose cost grows with the class count)
        order = np.argsort(cls, kind="stable")
        cs = cls[order]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        sums[cs[starts]] = np.add.reduceat(x[inc].reshape(-1, h * w)[order], starts, axis=0)
    return sums.reshape(int(n_classes), h, w), counts


def class_means(sums: Any, counts: Any) -> np.ndarray:
    """Class mean maps ``sums / counts`` (C, H, W); NaN for classes with no map."""
    s = np.asarray(sums, dtype=np.float64)
    k = np.asarray(counts)
    if s.ndim != 3 or k.shape != (s.shape[0],):
        raise MetricInputError(f"sums must be (C, H, W) and counts (C,), got {s.shape} and {k.shape}")
    out = np.full(s.shape, np.nan)
    ok = k > 0
    out[ok] = s[ok] / k[ok, None, None]
    return out


def loo_references(maps: Any, classes: Any, include: Any, sums: Any, counts: Any) -> np.ndarray:
    """Leave-one-out reference of every image: the mean of the other included maps of its class.

    ``ref_i = (sums[c_i] - include_i * maps_i) / (counts[c_i] - include_i)``
    where ``sums``/``counts`` come from :func:`class_sums` over *all*
    images (any number of chunks), with the same maps. Image i never enters
    its own reference; an image that is not included (e.g. misclassified)
    gets the full class mean.

    Undefined references: when no *other* included map of its class exists
    (count 0 after leaving it out), the row is **NaN**; callers drop those
    images (``per_image_metrics`` gives NaN for them).

    Parameters
    ----------
    maps : (N, H, W) this chunk's maps
    classes : (N,) int class of each image
    include : (N,) bool, whether each image is in the sums
    sums, counts : from :func:`class_sums`

    Returns
    -------
    (N, H, W) float64
    """
    x = _maps(maps)
    n = x.shape[0]
    s = np.asarray(sums, dtype=np.float64)
    k = np.asarray(counts)
    if s.ndim != 3 or s.shape[1:] != x.shape[1:] or k.shape != (s.shape[0],):
        raise MetricInputError(
            f"sums must be (C, H, W) with H, W of maps {x.shape} and counts (C,), got {s.shape} and {k.shape}"
        )
    c = _classes(classes, n, s.shape[0])
    inc = _include(include, n)
    own = inc.astype(np.float64)
    den = k[c] - own
    if np.any(den < 0):
        bad = int(np.flatnonzero(den < 0)[0])
        raise MetricInputError(
            f"image {bad} is included but its class {c[bad]} has count 0: "
            "sums/counts must come from class_sums over the same maps"
        )
    ref = s[c] - own[:, None, None] * x
    ok = den > 0
    ref[ok] /= den[ok, None, None]
    ref[~ok] = np.nan
    return ref


def references_from_means(classes: Any, means: Any) -> np.ndarray:
    """References taken from stored class means (``--reference STORE``).

    ``ref_i = means[classes_i]``; classes whose mean is undefined (NaN, no
    map in the reference store) give NaN rows, to be dropped as for
    :func:`loo_references`.

    Parameters
    ----------
    classes : (N,) int
    means : (C, H, W), e.g. :func:`class_means` of another store

    Returns
    -------
    (N, H, W) float64
    """
    m = np.asarray(means, dtype=np.float64)
    if m.ndim != 3:
        raise MetricInputError(f"means must have shape (C, H, W), got {m.shape}")
    c = np.asarray(classes)
    if c.ndim != 1:
        raise MetricInputError(f"classes must have shape (N,), got {c.shape}")
    return m[_classes(c, c.shape[0], m.shape[0])]


# --------------------------------------------------------------------------
# group level
# --------------------------------------------------------------------------


def group_consistency(
    maps: Any, max_pairs_sample: int | None = 500, seed: int = 0, q: float = DEFAULT_Q
) -> dict[str, Any]:
    """Consistency of a group of maps (a class, a cluster): SPEC section 3.

    * ``mean_pairwise_ssim``: mean SSIM over all pairs i < j
      (:func:`pairwise_ssim`);
    * ``mean_pairwise_iou``: mean top-q IoU over all pairs i < j
      (:func:`pairwise_iou`), pairs with a constant map left out;
    * ``com_dispersion``: mean Euclidean distance of the maps' centres of
      mass (:func:`com`, fractions) to their mean;
    * ``mean_dist_to_mean``: mean :func:`dist` of the maps to the group's
      mean map.

    The two pairwise means cost O(n^2); when the group has more than
    ``max_pairs_sample`` maps they are computed on a uniform random subset
    of that many maps (without replacement, ``numpy.random.default_rng(seed)``,
    so the same seed gives the same result). ``n_sampled`` and ``sampled``
    say so. Everything else uses all maps. With fewer than 2 (sampled) maps
    the pairwise means are NaN.

    Returns
    -------
    dict with ``n``, ``n_sampled``, ``sampled``, ``max_pairs_sample``,
    ``seed``, ``q``, ``mean_pairwise_ssim``, ``mean_pairwise_iou``,
    ``com_dispersion``, ``mean_dist_to_mean`` (Python scalars)
    """
    x = _maps(maps)
    q = _check_q(q)
    n = x.shape[0]
    if n == 0:
        raise MetricInputError("group_consistency needs at least one map")
    if max_pairs_sample is not None and int(max_pairs_sample) < 2:
        raise MetricInputError("max_pairs_sample must be >= 2 (or None for all maps)")
    sampled = max_pairs_sample is not None and n > int(max_pairs_sample)
    if sampled:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(n, size=int(max_pairs_sample), replace=False))
        xs = x[idx]
    else:
        xs = x
    m = xs.shape[0]
    if m >= 2:
        iu = np.triu_indices(m, 1)
        pw_ssim = float(pairwise_ssim(xs)[iu].mean())
        pairs = pairwise_iou(xs, q)[iu]
        pairs = pairs[~np.isnan(pairs)]  # pairs with a constant map are left out (see iou)
        pw_iou = float(pairs.mean()) if pairs.size else math.nan
    else:
        pw_ssim = pw_iou = math.nan
    c = com(x)
    return {
        "n": int(n),
        "n_sampled": int(m),
        "sampled": bool(sampled),
        "max_pairs_sample": None if max_pairs_sample is None else int(max_pairs_sample),
        "seed": int(seed),
        "q": q,
        "mean_pairwise_ssim": pw_ssim,
        "mean_pairwise_iou": pw_iou,
        "com_dispersion": float(np.sqrt(((c - c.mean(axis=0)) ** 2).sum(axis=1)).mean()),
        "mean_dist_to_mean": float(dist(x, x.mean(axis=0)).mean()),
    }
