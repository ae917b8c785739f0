"""Tests of camstat.metrics: agreement with scikit-image, hand-made maps with
known answers, degenerate maps, leave-one-out references and group metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from camstat import metrics as M
from camstat.errors import CamstatError

TOL = 1e-5


def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, data_range=1.0))


def minmax(a: np.ndarray) -> np.ndarray:
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    return (a - lo) / (hi - lo)


def random_maps(n: int, h: int, w: int, seed: int = 0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w)).astype(dtype)


def smooth_maps(n: int, h: int, w: int, seed: int = 0, sigma: float = 2.0, dtype=np.float32) -> np.ndarray:
    a = gaussian_filter(np.random.default_rng(seed).random((n, h, w)), (0, sigma, sigma))
    return minmax(a).astype(dtype)


def blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    """Gaussian centred at (cy, cx) in pixel-centre coordinates (pixel k at k + 0.5)."""
    r = np.arange(h)[:, None] + 0.5
    c = np.arange(w)[None, :] + 0.5
    return np.exp(-((r - cy) ** 2 + (c - cx) ** 2) / (2 * sigma**2))


def hot(h: int, w: int, r: int, c: int) -> np.ndarray:
    a = np.zeros((h, w))
    a[r, c] = 1.0
    return a


# --------------------------------------------------------------------------
# SSIM against scikit-image
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 7), (8, 8), (12, 9), (9, 20), (32, 32)])
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_matches_skimage(shape, kind):
    h, w = shape
    make = random_maps if kind == "random" else smooth_maps
    a = make(5, h, w, seed=1)
    b = make(5, h, w, seed=2)
    got = M.ssim(a, b)
    want = [sk_ssim(a[i], b[i]) for i in range(5)]
    assert got.shape == (5,) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # one shared (H, W) reference
    got1 = M.ssim(a, b[0])
    np.testing.assert_allclose(got1, [sk_ssim(a[i], b[0]) for i in range(5)], atol=TOL, rtol=0)


def test_ssim_float32_and_float64_inputs_agree_with_skimage():
    a = smooth_maps(4, 16, 16, seed=3, dtype=np.float32)
    b = smooth_maps(4, 16, 16, seed=4, dtype=np.float32)
    want32 = [sk_ssim(a[i], b[i]) for i in range(4)]
    want64 = [sk_ssim(a[i].astype(np.float64), b[i].astype(np.float64)) for i in range(4)]
    np.testing.assert_allclose(M.ssim(a, b), want32, atol=TOL, rtol=0)
    np.testing.assert_allclose(M.ssim(a, b), want64, atol=1e-9, rtol=0)


def test_ssim_degenerate_maps_match_skimage_and_are_finite():
    z = np.zeros((8, 8))
    o = np.ones((8, 8))
    c = np.full((8, 8), 0.3)
    r = random_maps(1, 8, 8, seed=5)[0]
    pairs = [(z, z), (o, o), (c, c), (z, o), (c, z), (r, z), (r, c), (z, r)]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    got = M.ssim(a, b)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [sk_ssim(x, y) for x, y in pairs], atol=TOL, rtol=0)
    # identical constant maps: 1 (skimage agrees)
    np.testing.assert_allclose(got[:3], 1.0, atol=1e-12)


def test_ssim_rejects_maps_smaller_than_window():
    with pytest.raises(M.MetricInputError, match="7x7"):
        M.ssim(np.zeros((2, 6, 10)), np.zeros((6, 10)))
    with pytest.raises(CamstatError):
        M.pairwise_ssim(np.zeros((2, 10, 6)))
    with pytest.raises(ValueError, match="shape"):
        M.ssim(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))


@pytest.mark.parametrize("shape", [(8, 8), (11, 16), (32, 32)])
def test_pairwise_ssim_matches_skimage_per_pair(shape):
    h, w = shape
    maps = np.concatenate(
        [
            smooth_maps(5, h, w, seed=6),
            random_maps(4, h, w, seed=7, dtype=np.float32),
            np.zeros((1, h, w), np.float32),  # all-zero
            np.full((1, h, w), 0.7, np.float32),  # constant
        ]
    )
    n = len(maps)
    got = M.pairwise_ssim(maps)
    want = np.array([[sk_ssim(maps[i], maps[j]) for j in range(n)] for i in range(n)])
    assert got.shape == (n, n)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got, got.T)
    np.testing.assert_array_equal(np.diag(got), 1.0)


def test_pairwise_ssim_blocks_chunks_and_threads_do_not_change_the_result():
    maps = smooth_maps(23, 13, 10, seed=8)
    ref = np.stack([M.ssim(maps, maps[j]) for j in range(len(maps))], axis=1)
    np.fill_diagonal(ref, 1.0)
    for kw in (
        {},
        {"block_size": 5, "threads": 1},
        {"block_size": 7, "threads": 2, "max_chunk_bytes": 1},  # one row of windows per chunk
        {"block_size": 100, "threads": 3, "max_chunk_bytes": 20_000},
    ):
        np.testing.assert_allclose(M.pairwise_ssim(maps, **kw), ref, atol=TOL, rtol=0, err_msg=str(kw))


def test_pairwise_ssim_small_groups():
    assert M.pairwise_ssim(np.zeros((0, 8, 8))).shape == (0, 0)
    np.testing.assert_array_equal(M.pairwise_ssim(smooth_maps(1, 8, 8)), [[1.0]])


# --------------------------------------------------------------------------
# dist, corr
# --------------------------------------------------------------------------


def test_dist_hand_made():
    h, w = 4, 5
    maps = np.stack([hot(h, w, 1, 2), np.zeros((h, w)), np.full((h, w), 0.5)])
    np.testing.assert_allclose(M.dist(maps, np.zeros((h, w))), [1 / 20, 0.0, 0.25])
    # per-image references
    refs = np.stack([hot(h, w, 1, 2), hot(h, w, 0, 0), np.zeros((h, w))])
    np.testing.assert_allclose(M.dist(maps, refs), [0.0, 1 / 20, 0.25])


def test_corr_matches_numpy_and_handles_constants():
    a = random_maps(6, 9, 7, seed=9)
    b = random_maps(6, 9, 7, seed=10)
    want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(6)]
    np.testing.assert_allclose(M.corr(a, b), want, atol=1e-12)
    np.testing.assert_allclose(M.corr(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(M.corr(a, 1 - a), -1.0, atol=1e-12)
    # constant map or constant reference: defined as 0.0, not NaN
    c = np.full((2, 9, 7), 0.1)  # 0.1 is not exactly representable: centring leaves residue
    got = M.corr(np.concatenate([c, a[:1], np.zeros((1, 9, 7))]), np.concatenate([a[:2], c[:1], a[:1]]))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 0.0])


# --------------------------------------------------------------------------
# top-q masks and IoU
# --------------------------------------------------------------------------


def test_top_q_masks_exact_count_and_raster_tie_break():
    h, w = 5, 4
    m = M.top_q_masks(np.full((1, h, w), 0.5), q=0.2)  # all tied
    assert m.sum() == 4  # round(0.2 * 20)
    np.testing.assert_array_equal(m[0].ravel(), [True] * 4 + [False] * 16)
    x = np.zeros((1, h, w))
    x[0, 4, 3] = 1.0
    x[0, 2, 1] = 0.5
    m = M.top_q_masks(x, q=0.15)  # round(3.0) = 3: the two peaks, then the first tied zero
    assert m.sum() == 3 and m[0, 4, 3] and m[0, 2, 1] and m[0, 0, 0]
    assert M.top_q_masks(x, q=0.001).sum() == 1  # at least one pixel
    # many ties among many pixels (where an unstable sort reorders them)
    t = np.tile([0.5, 1.0, 0.5, 0.2], 50).reshape(1, 10, 20)
    m = M.top_q_masks(t, q=0.5)[0].ravel()  # 100 pixels: the 50 ones, then the first 50 of the 0.5s
    want = np.zeros(200, bool)
    want[t.ravel() == 1.0] = True
    want[np.flatnonzero(t.ravel() == 0.5)[:50]] = True
    np.testing.assert_array_equal(m, want)
    with pytest.raises(ValueError, match="q"):
        M.top_q_masks(x, q=0.0)


def test_iou_hand_made():
    h, w = 4, 5  # q = 0.2 -> k = 4 pixels
    ref = np.zeros((h, w))
    ref[0, :4] = 1.0  # mask: first 4 pixels of row 0
    same = ref.copy()
    disjoint = np.zeros((h, w))
    disjoint[3, 1:5] = 1.0
    half = np.zeros((h, w))
    half[0, 2:4] = 1.0  # 2 shared pixels
    half[2, 0:2] = 1.0  # 2 others
    got = M.iou(np.stack([same, disjoint, half]), ref, q=0.2)
    np.testing.assert_allclose(got, [1.0, 0.0, 2 / 6])


def test_pairwise_iou_matches_iou():
    maps = smooth_maps(7, 10, 12, seed=11)
    pw = M.pairwise_iou(maps, q=0.3)
    for j in range(7):
        np.testing.assert_allclose(pw[:, j], M.iou(maps, maps[j], q=0.3), atol=1e-12)
    np.testing.assert_array_equal(pw, pw.T)


# --------------------------------------------------------------------------
# entropy, spread, centre of mass
# --------------------------------------------------------------------------


def test_entropy_known_values():
    h, w = 6, 8
    maps = np.stack([np.ones((h, w)), hot(h, w, 2, 3), np.zeros((h, w)), hot(h, w, 0, 0) + hot(h, w, 5, 7)])
    np.testing.assert_allclose(M.entropy(maps), [1.0, 0.0, 1.0, math.log(2) / math.log(48)], atol=1e-12)
    # scale invariant (sum-normalised)
    np.testing.assert_allclose(M.entropy(3 * maps[3:]), M.entropy(maps[3:]), atol=1e-12)


def test_com_hot_pixels_blob_and_zero_map():
    h, w = 10, 16
    maps = np.stack([hot(h, w, 3, 11), np.zeros((h, w)), np.ones((h, w)), blob(h, w, 4.0, 7.5, 0.7)])
    np.testing.assert_allclose(
        M.com(maps), [[11.5 / 16, 3.5 / 10], [0.5, 0.5], [0.5, 0.5], [7.5 / 16, 4.0 / 10]], atol=1e-6
    )


def test_spread_hot_pixel_uniform_and_gaussian_blob():
    h, w = 64, 48
    sigma = 3.0
    maps = np.stack([hot(h, w, 5, 9), np.ones((h, w)), np.zeros((h, w)), blob(h, w, 32.0, 24.0, sigma)])
    diag = math.hypot(h, w)
    uniform = math.sqrt((h * h - 1) / 12 + (w * w - 1) / 12) / diag
    np.testing.assert_allclose(
        M.spread(maps), [0.0, uniform, uniform, math.sqrt(2) * sigma / diag], atol=1e-6
    )
    np.testing.assert_allclose(M.com(maps[3:]), [[0.5, 0.5]], atol=1e-9)


def test_com_distance():
    h, w = 10, 20
    a = hot(h, w, 2, 3)
    b = hot(h, w, 2, 13)  # 10 columns = half the width
    c = hot(h, w, 7, 13)  # and 5 rows = half the height
    np.testing.assert_allclose(M.com_distance(np.stack([a, b, c]), a), [0.0, 0.5, math.sqrt(0.5)], atol=1e-12)


def test_mass_metrics_reject_negative_maps():
    x = -random_maps(2, 8, 8)
    for f in (M.entropy, M.spread, M.com):
        with pytest.raises(ValueError, match="negative"):
            f(x)


# --------------------------------------------------------------------------
# pointing
# --------------------------------------------------------------------------


def test_pointing_hit_and_energy():
    h, w = 6, 6
    mask = np.zeros((h, w), bool)
    mask[1:3, 1:4] = True  # 6 pixels
    inside = hot(h, w, 2, 2) + 0.5 * hot(h, w, 5, 5)  # peak inside, 2/3 of mass inside
    outside = hot(h, w, 5, 0) + 0.5 * hot(h, w, 1, 1)  # peak outside, 1/3 inside
    const = np.full((h, w), 0.4)
    zero = np.zeros((h, w))
    maps = np.stack([inside, outside, const, zero])
    hit, energy = M.pointing(maps, np.broadcast_to(mask, maps.shape))
    np.testing.assert_array_equal(hit, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(energy, [2 / 3, 1 / 3, 6 / 36, 6 / 36], atol=1e-12)
    # a constant map has no peak, even where the mask covers every pixel
    hit, energy = M.pointing(maps[2:], np.ones((2, h, w), bool))
    np.testing.assert_array_equal(hit, [0.0, 0.0])
    np.testing.assert_allclose(energy, [1.0, 1.0])
    # empty mask: nothing inside
    hit, energy = M.pointing(maps[:1], np.zeros((1, h, w), bool))
    assert hit[0] == 0.0 and energy[0] == 0.0


# --------------------------------------------------------------------------
# degenerate maps: never NaN
# --------------------------------------------------------------------------


def test_degenerate_maps_give_finite_values_for_every_metric_but_iou():
    h, w = 9, 9
    maps = np.stack([np.zeros((h, w)), np.full((h, w), 0.25), np.ones((h, w)), smooth_maps(1, h, w)[0]])
    refs = np.stack([np.zeros((h, w)), np.zeros((h, w)), np.full((h, w), 0.25), np.zeros((h, w))])
    masks = np.zeros((4, h, w), bool)
    masks[:, 3:6, 3:6] = True
    out = M.per_image_metrics(maps, refs, masks=masks)
    assert set(out) == set(M.PER_IMAGE)
    for name, v in out.items():
        assert v.shape == (4,) and np.isfinite(v).all() == (name != "iou"), name
    # a constant map or reference has no top-q region: NaN (counted, left out), not raster-order pixels
    assert np.isnan(out["iou"]).all()
    g = M.group_consistency(maps)
    assert all(np.isfinite(g[k]) for k in ("mean_pairwise_ssim", "com_dispersion"))
    assert np.isnan(g["mean_pairwise_iou"])  # every pair has a constant map


def test_iou_leaves_out_constant_maps_only():
    maps = smooth_maps(5, 10, 12, seed=3)
    maps[2] = 0.4
    ref = smooth_maps(1, 10, 12, seed=4)[0]
    got = M.iou(maps, ref)
    assert np.isnan(got[2]) and np.isfinite(np.delete(got, 2)).all()
    pw = M.pairwise_iou(maps)
    assert np.isnan(pw[2]).all() and np.isnan(pw[:, 2]).all() and np.isfinite(np.delete(np.delete(pw, 2, 0), 2, 1)).all()
    g = M.group_consistency(maps, max_pairs_sample=None)
    keep = np.delete(np.arange(5), 2)
    iu = np.triu_indices(4, 1)
    assert g["mean_pairwise_iou"] == pytest.approx(M.pairwise_iou(maps[keep])[iu].mean(), abs=1e-12)


def test_top_q_masks_equal_a_stable_argsort_on_tied_maps():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (200, 6, 7)).astype(float)  # heavy ties at every threshold
    for q in (0.05, 0.2, 0.5, 1.0):
        f = x.reshape(200, -1)
        k = max(1, int(round(q * 42)))
        want = np.zeros(f.shape, bool)
        np.put_along_axis(want, np.argsort(-f, axis=1, kind="stable")[:, :k], True, axis=1)
        np.testing.assert_array_equal(M.top_q_masks(x, q).reshape(200, -1), want)


# --------------------------------------------------------------------------
# registry and per_image_metrics
# --------------------------------------------------------------------------


def test_registry_directions_and_kinds():
    P = M.PER_IMAGE
    assert {n for n, m in P.items() if m.needs_reference} == {"dist", "ssim", "iou", "corr", "com"}
    assert [n for n in ("ssim", "iou", "corr") if not P[n].higher_is_more_consistent] == []
    assert [n for n in ("dist", "com", "entropy", "spread") if P[n].higher_is_more_consistent] == []
    assert P["entropy"].kind == P["spread"].kind == "concentration"
    assert P["pointing"].needs_masks and P["energy"].needs_masks
    assert M.default_metric_names() == ["dist", "ssim", "iou", "corr", "com", "entropy", "spread"]
    assert M.default_metric_names(masks=True)[-2:] == ["pointing", "energy"]


def test_per_image_metrics_equals_individual_functions_and_marks_undefined_refs():
    maps = smooth_maps(6, 12, 10, seed=12)
    refs = smooth_maps(6, 12, 10, seed=13).astype(np.float64)
    refs[2] = np.nan  # undefined reference
    masks = np.zeros((6, 12, 10), bool)
    masks[:, 4:8, 3:7] = True
    out = M.per_image_metrics(maps, refs, masks=masks, q=0.25)
    ok = np.arange(6) != 2
    np.testing.assert_allclose(out["dist"][ok], M.dist(maps[ok], refs[ok]))
    np.testing.assert_allclose(out["ssim"][ok], M.ssim(maps[ok], refs[ok]))
    np.testing.assert_allclose(out["iou"][ok], M.iou(maps[ok], refs[ok], q=0.25))
    np.testing.assert_allclose(out["corr"][ok], M.corr(maps[ok], refs[ok]))
    np.testing.assert_allclose(out["com"][ok], M.com_distance(maps[ok], refs[ok]))
    for name in ("dist", "ssim", "iou", "corr", "com"):
        assert np.isnan(out[name][2]), name
    np.testing.assert_allclose(out["entropy"], M.entropy(maps))
    np.testing.assert_allclose(out["spread"], M.spread(maps))
    hit, energy = M.pointing(maps, masks)
    np.testing.assert_array_equal(out["pointing"], hit)
    np.testing.assert_allclose(out["energy"], energy)
    # reference-free metrics need no references
    assert set(M.per_image_metrics(maps, None, names=["entropy"])) == {"entropy"}
    bad = refs.copy()
    bad[4, 0, 0] = np.nan  # partly NaN: not an undefined reference but a bug upstream
    with pytest.raises(ValueError, match="partly NaN"):
        M.per_image_metrics(maps, bad)
    with pytest.raises(ValueError, match="unknown"):
        M.per_image_metrics(maps, refs, names=["ssim", "nope"])
    with pytest.raises(ValueError, match="masks"):
        M.per_image_metrics(maps, refs, names=["pointing"])
    with pytest.raises(ValueError, match="references"):
        M.per_image_metrics(maps, None, names=["dist"])


# --------------------------------------------------------------------------
# class sums and references
# --------------------------------------------------------------------------


def naive_loo(maps, classes, include):
    out = np.full(maps.shape, np.nan)
    for i in range(len(maps)):
        others = [j for j in range(len(maps)) if j != i and classes[j] == classes[i] and include[j]]
        if others:
            out[i] = maps[others].mean(axis=0)
    return out


def test_class_sums_accumulate_over_chunks_and_loo_matches_naive_loop():
    rng = np.random.default_rng(14)
    n, c = 40, 5
    maps = smooth_maps(n, 8, 9, seed=15)
    classes = rng.integers(0, c - 1, n)  # class 4 never occurs
    include = rng.random(n) < 0.6
    # class 3: exactly one included image -> its own reference is undefined
    classes[classes == 3] = 2
    classes[:2] = 3
    include[:2] = [True, False]
    s_all, k_all = M.class_sums(maps, classes, include, c)
    s, k = 0, 0
    for lo in range(0, n, 13):  # chunks
        s_c, k_c = M.class_sums(maps[lo : lo + 13], classes[lo : lo + 13], include[lo : lo + 13], c)
        s, k = s + s_c, k + k_c
    np.testing.assert_allclose(s, s_all, atol=1e-12)
    np.testing.assert_array_equal(k, k_all)
    assert k_all.dtype == np.int64 and k_all[4] == 0 and k_all[3] == 1
    for cl in range(4):
        sel = (classes == cl) & include
        np.testing.assert_allclose(s_all[cl], maps[sel].astype(np.float64).sum(axis=0), atol=1e-9)
    ref = M.loo_references(maps, classes, include, s_all, k_all)
    want = naive_loo(maps.astype(np.float64), classes, include)
    np.testing.assert_array_equal(np.isnan(ref), np.isnan(want))
    np.testing.assert_allclose(ref[~np.isnan(want)], want[~np.isnan(want)], atol=1e-9)
    assert np.isnan(ref[0]).all()  # the only included map of class 3
    np.testing.assert_allclose(ref[1], maps[0], atol=1e-9)  # not included: full class mean
    # image i never in its own reference, chunk by chunk too
    ref_chunk = M.loo_references(maps[5:17], classes[5:17], include[5:17], s_all, k_all)
    np.testing.assert_allclose(ref_chunk, ref[5:17], atol=1e-12)


def test_class_means_and_references_from_means():
    sums = np.stack([np.ones((3, 4)) * 6, np.zeros((3, 4)), np.ones((3, 4))])
    counts = np.array([3, 0, 2])
    means = M.class_means(sums, counts)
    np.testing.assert_allclose(means[0], 2.0)
    assert np.isnan(means[1]).all()
    np.testing.assert_allclose(means[2], 0.5)
    refs = M.references_from_means([2, 0, 1, 2], means)
    assert refs.shape == (4, 3, 4)
    np.testing.assert_allclose(refs[[0, 3]], 0.5)
    np.testing.assert_allclose(refs[1], 2.0)
    assert np.isnan(refs[2]).all()
    with pytest.raises(ValueError, match="class indices"):
        M.references_from_means([3], means)


def test_loo_rejects_sums_that_do_not_contain_the_maps():
    maps = smooth_maps(2, 8, 8)
    with pytest.raises(ValueError, match="same maps"):
        M.loo_references(maps, [0, 0], [True, True], np.zeros((1, 8, 8)), np.array([0]))


# --------------------------------------------------------------------------
# group level
# --------------------------------------------------------------------------


def test_group_consistency_exact_parts_and_seeded_subsampling():
    maps = smooth_maps(30, 10, 10, seed=16).astype(np.float64)
    g = M.group_consistency(maps, max_pairs_sample=None)
    iu = np.triu_indices(30, 1)
    want_ssim = np.mean([sk_ssim(maps[i], maps[j]) for i, j in zip(*iu)])
    assert g["n"] == g["n_sampled"] == 30 and not g["sampled"]
    assert abs(g["mean_pairwise_ssim"] - want_ssim) < TOL
    assert abs(g["mean_pairwise_iou"] - M.pairwise_iou(maps)[iu].mean()) < 1e-12
    c = M.com(maps)
    assert abs(g["com_dispersion"] - np.mean(np.linalg.norm(c - c.mean(0), axis=1))) < 1e-12
    assert abs(g["mean_dist_to_mean"] - np.mean(((maps - maps.mean(0)) ** 2).mean(axis=(1, 2)))) < 1e-12

    a = M.group_consistency(maps, max_pairs_sample=8, seed=3)
    b = M.group_consistency(maps, max_pairs_sample=8, seed=3)
    other = M.group_consistency(maps, max_pairs_sample=8, seed=4)
    assert a == b
    assert a["sampled"] and a["n_sampled"] == 8 and a["n"] == 30 and a["seed"] == 3
    assert a["mean_pairwise_ssim"] != other["mean_pairwise_ssim"]
    # exact parts do not depend on the subsample
    assert a["com_dispersion"] == g["com_dispersion"] and a["mean_dist_to_mean"] == g["mean_dist_to_mean"]
    # the subsample is a seeded uniform draw of maps
    idx = np.sort(np.random.default_rng(3).choice(30, 8, replace=False))
    sub = maps[idx]
    iu8 = np.triu_indices(8, 1)
    assert abs(a["mean_pairwise_ssim"] - M.pairwise_ssim(sub)[iu8].mean()) < 1e-12


def test_group_consistency_single_map():
    g = M.group_consistency(smooth_maps(1, 8, 8))
    assert g["n"] == 1 and math.isnan(g["mean_pairwise_ssim"]) and g["com_dispersion"] == 0.0
