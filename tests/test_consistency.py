"""H1 analysis of a store: planted effect found, controls vanish, LOO exact, streaming, derived results."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from camstat import metrics, stats
from camstat.cli import main
from camstat.h1 import analyze
from camstat.present.text import reference_kind, verdict_text
from camstat.errors import CamstatError
from camstat.extract import extract
from camstat.store import Store, open_store

N = 240
K = 6
FAST = dict(permutations=499, n_boot=200)
SPEC_ROW_KEYS = {"class", "n_correct", "n_incorrect", "median_correct", "median_incorrect", "p_value", "p_adjusted",
                 "cliffs_delta", "ci95"}
SPEC_POOLED_KEYS = {"p_permutation", "p_adjusted", "odds_ratio_per_sd", "p_lrt", "odds_ratio_per_sd_given_confidence",
                    "odds_ratio_ci95_given_confidence", "p_lrt_given_confidence", "auc_within_class",
                    "auc_within_class_ci95", "auc_marginal", "auc_marginal_ci95"}
SPEC_VERDICT_KEYS = {"primary", "supported", "p_adjusted", "auc_within_class", "auc_within_class_ci95"}


def _prototype(c: int, h: int = 8, w: int = 8) -> np.ndarray:
    """A class's map: a Gaussian blob at a class-specific place."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cy, cx = 1.5 + (c % 3) * 2.5, 2.0 + (c // 3) * 4.0
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0).astype(np.float32)


def _plant(path: Path, seed: int, split: str = "test") -> dict:
    """Overwrite a store's predictions and raw maps with a planted H1 effect.

    Correct images' maps are their (predicted) class prototype plus a little
    noise, incorrect images' maps a weak prototype under strong noise.
    Class 4 (by prediction) is always right (skipped: no incorrect images);
    class 5 has exactly one correct image (its LOO reference is undefined).
    """
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="r+")
    n = root["samples/index"].shape[0]
    pred = np.arange(n) % K
    correct = rng.random(n) < 0.65
    correct[pred == 4] = True
    five = np.flatnonzero(pred == 5)
    correct[five] = False
    correct[five[0]] = True
    label = np.where(correct, pred, (pred + 1 + rng.integers(0, K - 1, n)) % K)
    maps = np.empty((n, 8, 8), np.float32)
    for i in range(n):
        proto = _prototype(int(pred[i]))
        noise = rng.random((8, 8)).astype(np.float32)
        maps[i] = proto + 0.15 * noise if correct[i] else 0.35 * proto + 0.9 * noise
    logits = rng.normal(size=(n, K)).astype(np.float32)
    samples = root["samples"]
    samples["pred"][:] = pred
    samples["label"][:] = label
    samples["correct"][:] = correct
    samples["confidence"][:] = rng.uniform(0.3, 1.0, n).astype(np.float32)
    samples["logits"][:] = logits
    root["maps/gradcam/features/pred"][:] = maps
    return {"pred": pred, "correct": correct, "label": label}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("consistency")
    kw = dict(methods="gradcam", device="cpu", chunk=64, batch_size=64)
    extract("camstat:smallcnn", f"builtin:shapes?n={N}", tmp / "main.zarr", split="test", **kw)
    # the randomised-weights store: the same model without checkpoint, maps as extracted
    shutil.copytree(tmp / "main.zarr", tmp / "random.zarr")
    extract("camstat:smallcnn", f"builtin:shapes?n={N}", tmp / "train.zarr", split="train", **kw)
    _plant(tmp / "main.zarr", seed=1)
    _plant(tmp / "train.zarr", seed=2, split="train")
    return {"main": tmp / "main.zarr", "random": tmp / "random.zarr", "train": tmp / "train.zarr", "tmp": tmp}


@pytest.fixture(scope="module")
def h1(stores) -> dict:
    return analyze(stores["main"], by="correct", control="permuted", null_repeats=40, save=False, seed=1,
                   **FAST).to_dict()


def _files(path: Path, skip_derived: bool = True) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and not (skip_derived and rel.startswith("derived")) and rel != "camstat.lock":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_h1_detected_with_the_right_sign(h1):
    assert h1["by"] == "correct" and h1["n"] == N
    for key in ("dist", "ssim", "corr", "iou", "com"):
        m = h1["metrics"][key]
        assert m["higher_is_more_consistent"] == metrics.PER_IMAGE[key].higher_is_more_consistent
        assert m["finding"]["direction"] == "supported", key
        assert m["finding"]["significant"] and m["finding"]["outcome"] == "better", key
        assert m["pooled"]["p_permutation"] < 0.01
        assert m["pooled"]["auc_within_class"] > 0.8  # H1's orientation, whatever the metric's
    dist = h1["metrics"]["dist"]
    assert dist["pooled"]["statistic"] < 0  # lower distance for correct images (delta of the metric as given)
    assert dist["pooled"]["auc_within_class"] == pytest.approx((1 - dist["pooled"]["statistic"]) / 2)
    for row in dist["per_class"]:
        assert row["median_correct"] < row["median_incorrect"] and row["cliffs_delta"] < 0
    assert h1["metrics"]["ssim"]["pooled"]["statistic"] > 0
    # degenerate classes are reported, not dropped
    skipped = dict(dist["skipped"])
    assert "n_incorrect=0" in skipped[open_store_classes()[4]]
    assert "n_correct=0" in skipped[open_store_classes()[5]]  # its one correct image has no reference
    # the only correct image of class 5 has no LOO reference: NaN, counted
    assert h1["undefined_reference"]["n"] == 1
    assert dist["n_undefined"] == 1 and dist["pooled"]["n_nan_dropped"] == 1
    assert h1["metrics"]["entropy"]["n_undefined"] == 0  # reference-free metrics stay defined
    assert "pointing" in h1["metrics"] and "energy" in h1["metrics"]  # the shapes data has masks
    assert list(h1["metrics"]) == metrics.default_metric_names(True)
    assert "text" not in h1["metrics"]["ssim"]["finding"]  # results hold numbers and flags; words are present/'s
    assert "correct images' maps more consistent" in verdict_text("ssim", h1["metrics"]["ssim"])


def open_store_classes() -> list[str]:
    from camstat.data import SHAPE_NAMES

    return list(SHAPE_NAMES[:K])


def test_json_keys_are_spec_4(h1):
    assert {"method", "layer", "by", "metrics"} <= set(h1)
    assert {"n", "accuracy", "params", "controls", "store", "provenance"} <= set(h1)
    assert h1["method"] == "gradcam" and h1["layer"] == "features"
    for m in h1["metrics"].values():
        assert {"per_class", "pooled", "skipped"} <= set(m)
        assert m["per_class"], "planted classes 0-3 have both groups"
        for row in m["per_class"]:
            assert set(row) == SPEC_ROW_KEYS
        assert SPEC_POOLED_KEYS <= set(m["pooled"])
    prov = h1["provenance"]
    assert {"checkpoint_sha256", "command", "versions"} <= set(prov)
    assert h1["params"]["seed"] == 1 and h1["params"]["permutations"] == FAST["permutations"]
    json.dumps(h1, allow_nan=False)  # strict JSON: no NaN


def test_verdict_rule_and_roles(h1):
    """SPEC 4's verdict: the primary metric only, adjusted p < alpha and within-class AUC CI above 0.5."""
    v = h1["verdict"]
    assert SPEC_VERDICT_KEYS <= set(v) and v["primary"] == "dist" == h1["primary"]
    dist = h1["metrics"]["dist"]["pooled"]
    assert v["p_adjusted"] == dist["p_adjusted"] == dist["p_permutation"]  # a family of one analysis
    assert v["auc_within_class"] == dist["auc_within_class"] and v["auc_within_class_ci95"] == dist[
        "auc_within_class_ci95"]
    assert v["supported"] is (v["p_adjusted"] < 0.05 and v["auc_within_class_ci95"][0] > 0.5) is True
    roles = {k: m["role"] for k, m in h1["metrics"].items()}
    assert roles == {"dist": "primary", "ssim": "secondary", "iou": "secondary", "corr": "secondary",
                     "com": "secondary", "entropy": "concentration", "spread": "concentration",
                     "pointing": "localisation", "energy": "localisation"}
    assert {k: m["family"] for k, m in h1["metrics"].items()} == {k: metrics.family(k) for k in h1["metrics"]}
    # secondary metrics adjusted across themselves (Holm), concentration across itself
    from statsmodels.stats.multitest import multipletests

    for role in ("secondary", "concentration"):
        names = [k for k, r in roles.items() if r == role]
        p = [h1["metrics"][k]["pooled"]["p_permutation"] for k in names]
        np.testing.assert_allclose([h1["metrics"][k]["pooled"]["p_adjusted"] for k in names],
                                   multipletests(p, method="holm")[1])


def test_dispersion_and_null_pipeline_keys(h1):
    disp = h1["dispersion"]
    assert {"per_class", "pooled"} <= set(disp) and {"statistic", "p_permutation"} <= set(disp["pooled"])
    for row in disp["per_class"]:
        assert {"class", "dispersion_correct", "dispersion_incorrect", "p_value"} <= set(row)
        # planted: incorrect maps are noise around a weak prototype, far less consistent among themselves
        assert row["dispersion_incorrect"] > row["dispersion_correct"]
    assert disp["pooled"]["statistic"] > 0 and disp["pooled"]["p_permutation"] < 0.01
    npl = h1["controls"]["null_pipeline"]
    assert npl["repeats"] == 40 and npl["alpha"] == 0.05
    assert set(npl["metrics"]) == set(h1["metrics"]) - {"pointing", "energy"}  # mask metrics need no reference
    for m in npl["metrics"].values():
        assert {"rejection_rate", "delta_quantiles", "auc_within_class_quantiles"} <= set(m)
        assert len(m["delta_quantiles"]) == len(m["auc_within_class_quantiles"]) == 3
        assert m["rejection_rate_ci95"][0] <= m["rejection_rate"] <= m["rejection_rate_ci95"][1]
    cb = h1["confidence_baseline"]
    assert 0 <= cb["auc_within_class"] <= 1 and cb["n"] == N


def test_loo_reference_never_contains_the_image(stores):
    res = analyze(stores["main"], metrics="dist,corr", save=False, permutations=9, n_boot=0)
    s = open_store(stores["main"])
    maps = s.maps("gradcam", "features").astype(np.float64)
    pred, correct = s.samples["pred"], s.samples["correct"]
    naive_dist = np.full(s.n, np.nan)
    naive_corr = np.full(s.n, np.nan)
    for i in range(s.n):
        others = np.flatnonzero((pred == pred[i]) & correct)
        others = others[others != i]
        if others.size == 0:
            continue
        ref = maps[others].mean(axis=0)
        naive_dist[i] = ((maps[i] - ref) ** 2).mean()
        naive_corr[i] = np.corrcoef(maps[i].ravel(), ref.ravel())[0, 1]
    np.testing.assert_allclose(res.values["dist"], naive_dist, rtol=1e-4, atol=1e-7, equal_nan=True)
    np.testing.assert_allclose(res.values["corr"], naive_corr, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert np.isnan(res.values["dist"]).sum() == 1
    # including the image itself would give a smaller distance for correct images
    ref_with_self = np.stack([maps[(pred == pred[i]) & correct].mean(axis=0) for i in range(s.n)])
    with_self = ((maps - ref_with_self) ** 2).mean(axis=(1, 2))
    ok = correct & ~np.isnan(naive_dist)
    assert np.all(with_self[ok] < res.values["dist"][ok])


def test_reference_store(stores):
    d = analyze(stores["main"], reference=stores["train"], metrics="dist,ssim", save=False, **FAST).to_dict()
    ref = d["params"]["reference"]
    assert ref["path"] == str(stores["train"]) and ref["split"] == "train" and len(ref["means_sha256"]) == 64
    assert d["undefined_reference"]["n"] == 0  # every class has correct training maps
    assert d["metrics"]["dist"]["finding"]["outcome"] == "better" and d["verdict"]["supported"]
    # references from another store do not depend on the labels: no null pipeline to rebuild
    e = analyze(stores["main"], reference=stores["train"], metrics="dist", control="permuted", null_repeats=5,
                save=False, **FAST).to_dict()
    assert e["controls"]["null_pipeline"] == {"skipped": "fixed_reference"}
    with pytest.raises(CamstatError, match="itself"):
        analyze(stores["main"], reference=stores["main"], save=False)
    assert main(["consistency", str(stores["main"]), "--reference", str(stores["tmp"] / "nope.zarr")]) == 2


def test_by_class(stores):
    d = analyze(stores["main"], by="class", save=False, pair_sample=30, **FAST).to_dict()
    assert d["by"] == "class" and len(d["groups"]) == K
    g0 = d["groups"][0]
    assert g0["n"] == N // K and g0["n_correct"] + g0["n_incorrect"] == g0["n"]
    assert g0["all"]["n_sampled"] == 30 and g0["all"]["n"] == N // K
    # planted: correct maps agree with each other more than incorrect ones
    assert g0["correct"]["mean_pairwise_ssim"] > g0["incorrect"]["mean_pairwise_ssim"]
    assert g0["correct"]["mean_dist_to_mean"] < g0["incorrect"]["mean_dist_to_mean"]
    assert d["groups"][4]["incorrect"] == {"n": 0, "n_sampled": 0}  # class 4 has no incorrect image: no pairs
    rows = d["metrics"]["dist"]["per_class"]
    assert rows[0]["median_correct"] < rows[0]["median_incorrect"]
    # the streamed group-level values follow metrics.group_consistency's definitions: the non-pairwise ones
    # exactly over all maps, the pairwise ones over the sample (here the whole correct subset: 24 <= 30 maps)
    s = open_store(stores["main"])
    pred, correct = s.samples["pred"], s.samples["correct"]
    whole = metrics.group_consistency(s.maps("gradcam", indices=np.flatnonzero(pred == 0)), max_pairs_sample=None)
    for key in ("com_dispersion", "mean_dist_to_mean"):
        assert g0["all"][key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12)
    members = np.flatnonzero((pred == 0) & correct)
    assert g0["correct"]["n_sampled"] == members.size and not g0["correct"]["sampled"]
    exact = metrics.group_consistency(s.maps("gradcam", indices=members), max_pairs_sample=None)
    for key in ("mean_pairwise_ssim", "mean_pairwise_iou", "com_dispersion", "mean_dist_to_mean"):
        assert g0["correct"][key] == pytest.approx(exact[key], rel=1e-9, abs=1e-12)


def test_by_cluster(stores):
    res = analyze(stores["main"], by="cluster", clusters=3, save=False, pair_sample=20, **FAST)
    d = res.to_dict()
    # clusters across classes: the pooled tests' strata are cluster x class cells
    s = open_store(stores["main"])
    pred, correct = s.samples["pred"].astype(np.int64), s.samples["correct"].astype(bool)
    assert d["params"]["strata"] == "cluster x class"
    cells = res.groups * len(s.classes) + pred  # the same partition, numbered 0.. in order
    np.testing.assert_array_equal(res.strata, np.unique(cells, return_inverse=True)[1].ravel())
    assert len(np.unique(res.strata)) > len(np.unique(res.groups))  # the clusters do mix classes here
    # the dispersion test runs within the same cells, named "cluster k, class"
    rows = {r["class"] for r in d["dispersion"]["per_class"]} | {c for c, _ in d["dispersion"]["skipped"]}
    assert rows == {f"cluster {g}, {s.classes[c]}" for g, c in zip(res.groups, pred)}
    ok = np.isfinite(res.values["dist"])
    cells = stats.within_class_auc(res.values["dist"][ok], correct[ok], res.strata[ok],
                                   higher_is_more_consistent=False, n_boot=0)
    assert d["metrics"]["dist"]["pooled"]["auc_within_class"] == pytest.approx(cells.auc_within_class, abs=1e-12)
    # the permutation test's statistic is the same within-cell delta (the metric as given: dist, lower = better)
    assert d["metrics"]["dist"]["pooled"]["statistic"] == pytest.approx(1 - 2 * cells.auc_within_class, abs=1e-12)
    assert analyze(stores["main"], save=False, metrics="dist", **FAST).to_dict()["params"]["strata"] == "class"
    c = d["clusters"]
    assert c["k"] == 3 and sum(c["sizes"]) == N and c["sizes"] == sorted(c["sizes"], reverse=True)
    assert [g["cluster"] for g in d["groups"]] == ["cluster 0", "cluster 1", "cluster 2"]
    dist = d["metrics"]["dist"]
    assert {row["class"] for row in dist["per_class"]} <= {"cluster 0", "cluster 1", "cluster 2"}
    assert dist["pooled"]["n"] > 0 and dist["pooled"]["p_permutation"] is not None
    assert d["params"]["reference_from"] == "leave-one-out" and reference_kind(d).endswith("same cluster")


def test_random_store_sanity_check(stores):
    res = analyze(stores["main"], random_store=stores["random"], metrics="dist,ssim,entropy", save=False, **FAST)
    d = res.to_dict()
    rc = d["controls"]["random_weights"]
    assert rc["store"]["path"] == str(stores["random"])
    for key in ("dist", "ssim", "entropy"):
        row = rc["metrics"][key]
        assert {"median_trained", "median_random", "auc_within_class_trained", "auc_within_class_random",
                "auc_within_class_random_ci95", "auc_marginal_random", "random_over_trained",
                "paired_trained_minus_random"} <= set(row)
        assert row["median_trained"] == pytest.approx(np.nanmedian(res.values[key]), rel=1e-9)
        assert row["median_random"] == pytest.approx(np.nanmedian(res.controls["random_weights"][key]), rel=1e-9)
    # the planted (trained) effect is strong; the random model's maps know nothing about correctness
    dist = rc["metrics"]["dist"]
    assert dist["auc_within_class_trained"] == d["metrics"]["dist"]["pooled"]["auc_within_class"]
    assert dist["auc_within_class_random_ci95"][0] < 0.5 < dist["auc_within_class_random_ci95"][1]
    assert dist["auc_within_class_trained_ci95"][0] > 0.9
    with pytest.raises(CamstatError, match="does not match"):
        analyze(stores["main"], random_store=stores["train"], save=False)


def test_same_seed_same_json(stores):
    kw = dict(by="correct", metrics="dist,iou", control="permuted", null_repeats=10, save=False, permutations=199,
              n_boot=100)
    a = analyze(stores["main"], seed=3, **kw).to_dict()
    b = analyze(stores["main"], seed=3, **kw).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = analyze(stores["main"], seed=4, **kw).to_dict()
    assert c["controls"]["null_pipeline"]["metrics"]["dist"] != a["controls"]["null_pipeline"]["metrics"]["dist"]


def test_derived_results_leave_primary_data_untouched(stores):
    before = _files(stores["main"])
    attributes = json.loads((stores["main"] / "zarr.json").read_text())["attributes"]
    res = analyze(stores["main"], metrics="dist,ssim", **FAST)
    after = _files(stores["main"])
    # Every primary byte unchanged but the root's consolidated metadata, which now lists the derived result.
    assert {k: v for k, v in after.items() if k != "zarr.json"} == {k: v for k, v in before.items() if k != "zarr.json"}
    assert json.loads((stores["main"] / "zarr.json").read_text())["attributes"] == attributes
    name = "consistency/gradcam/features/pred/correct"
    assert res.derived == f"derived/{name}"
    group = zarr.open_group(str(stores["main"] / "derived" / name), mode="r")
    attrs = dict(group.attrs)
    assert attrs["params"]["metrics"] == ["dist", "ssim"] and attrs["params"]["seed"] == 0
    assert attrs["result"]["metrics"]["dist"]["pooled"] == res.to_dict()["metrics"]["dist"]["pooled"]
    arr = group["dist"]
    assert arr.dtype == np.float32 and arr.chunks == (64,)
    np.testing.assert_array_equal(arr[:], res.values["dist"].astype(np.float32))
    assert group["reference_undefined"][:].sum() == 1
    # the store still reads as before
    s = open_store(stores["main"])
    s.require_complete()
    assert "derived" in s.root


def test_streaming_reads_blocks(stores, monkeypatch):
    seen = []
    original = Store.maps

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out.shape[0])
        return out

    monkeypatch.setattr(Store, "maps", spy)
    analyze(stores["main"], metrics="dist", save=False, permutations=9, n_boot=0, block=32)
    assert seen and max(seen) <= 32
    assert sum(seen) == 2 * N  # pass 1 (class sums) + pass 2 (references and metrics), nothing more
    seen.clear()
    d = analyze(stores["main"], metrics="dist", save=False, permutations=9, n_boot=0, size=16).to_dict()
    assert max(seen) <= 64  # default block: the store's chunk
    assert d["params"]["size"] == [16, 16]


def test_cli(stores, tmp_path, capsys):
    path = str(stores["main"])
    out = tmp_path / "h1.json"
    code = main(["consistency", path, "--metrics", "dist,ssim", "--permutations", "199", "--bootstrap", "100",
                 "--control", "permuted", "--null-repeats", "5", "--no-save", "--json", str(out)])
    assert code == 0
    d = json.loads(out.read_text())
    assert set(d["metrics"]) == {"dist", "ssim"} and d["controls"]["null_pipeline"]["repeats"] == 5
    text = capsys.readouterr().out
    assert "p_perm" in text and "verdict: H1 supported (primary metric dist" in text
    assert main(["consistency", path, "--metrics", "dist,ssim", "--primary", "entropy"]) == 2
    assert "not a consistency metric" in capsys.readouterr().err
    assert main(["consistency", path, "--metrics", "dist", "--primary", "ssim"]) == 2
    assert "add it to --metrics" in capsys.readouterr().err
    assert main(["consistency", path, "--by", "bogus"]) == 2
    assert "'bogus' is not one of 'correct', 'class', 'cluster'" in capsys.readouterr().err  # --help lists them too
    assert main(["consistency", path, "--metrics", "dist,foo"]) == 2
    err = capsys.readouterr().err
    assert "foo" in err and "ssim" in err and "valid" in err
    assert main(["consistency", str(tmp_path)]) == 2
    assert "not a camstat store" in capsys.readouterr().err
    assert main(["consistency", path, "--control", "shuffle"]) == 2
    assert main(["consistency", path, "--class-of", "true"]) == 2


def test_pooled_fit_given_confidence_uses_the_stored_logits(stores):
    """The pooled "given confidence" numbers are :func:`camstat.stats.confidence_adjusted_test` (checked against
    statsmodels in tests/test_stats_confidence.py) on the analysed values and the store's logits."""
    from camstat import stats

    # the unplanted store (the model's own maps and logits): no separation, every fit converges
    res = analyze(stores["random"], by="correct", metrics="dist", save=False, seed=1, permutations=99, n_boot=0)
    pooled = res.to_dict()["metrics"]["dist"]["pooled"]
    samples = open_store(stores["random"]).samples
    ok = ~np.isnan(res.values["dist"])
    want = stats.confidence_adjusted_test(res.values["dist"][ok], samples["correct"][ok].astype(bool),
                                          res.groups[ok], samples["logits"][ok].astype(np.float64),
                                          higher_is_more_consistent=False)
    assert np.isfinite(want.p_lrt_given_confidence)
    assert pooled["p_lrt_given_confidence"] == pytest.approx(want.p_lrt_given_confidence, rel=1e-9)
    assert pooled["odds_ratio_per_sd_given_confidence"] == pytest.approx(want.odds_ratio_per_sd_given_confidence,
                                                                         rel=1e-9)
    assert pooled["p_lrt_given_confidence"] != pytest.approx(pooled["p_lrt"], rel=1e-3)  # confidence did enter


def _plant_null(path: Path, seed: int) -> None:
    """Maps independent of correctness: each image's map is its class prototype at a random strength plus noise."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="r+")
    pred = root["samples/pred"][:]
    strength = rng.uniform(0.2, 1.0, pred.size).astype(np.float32)
    noise = rng.random((pred.size, 8, 8)).astype(np.float32)
    protos = np.stack([_prototype(int(c)) for c in pred])
    root["maps/gradcam/features/pred"][:] = strength[:, None, None] * protos + 0.6 * noise


def test_null_pipeline_rejects_near_alpha_on_null_data(stores):
    """--control permuted: on maps unrelated to correctness the whole pipeline rejects in about alpha of repeats;
    on the planted effect's maps it is the leave-one-out asymmetry (correct images' references lack the image)
    that the rebuilt references show, in the direction against H1, which the control exists to catch."""
    null = stores["tmp"] / "null.zarr"
    if not null.exists():
        shutil.copytree(stores["main"], null)
        _plant_null(null, seed=5)
    d = analyze(null, metrics="dist,ssim,corr,entropy", control="permuted", null_repeats=300, save=False,
                seed=2, permutations=199, n_boot=100).to_dict()
    npl = d["controls"]["null_pipeline"]
    for key, m in npl["metrics"].items():
        assert m["n_tests"] == 300
        assert 0.02 <= m["rejection_rate"] <= 0.09, (key, m["rejection_rate"])
        assert 0.45 < m["auc_within_class_quantiles"][1] < 0.55
    assert not d["verdict"]["supported"]
    # the planted effect's maps: correct maps form a tight mode, so under shuffled labels the leave-one-out
    # reference of a correct-labelled image leans away from its own mode and the null rejections pile up on
    # the side *against* H1 (AUC below 0.5), far above alpha
    e = analyze(stores["main"], metrics="dist", control="permuted", null_repeats=100, save=False, seed=2,
                permutations=99, n_boot=0).to_dict()
    m = e["controls"]["null_pipeline"]["metrics"]["dist"]
    assert m["rejection_rate"] > 0.2 and m["auc_within_class_quantiles"][1] < 0.5
    assert m["rejection_near_alpha"] is False


def test_primary_verdicts_adjust_across_the_commands_analyses():
    """Holm across the primary metric's analyses (methods x layers x targets), then the CI rule, per analysis."""
    from camstat.h1.verdicts import primary_verdicts

    def result(method: str, p: float, auc: float, ci: list) -> dict:
        pooled = {"p_permutation": p, "auc_within_class": auc, "auc_within_class_ci95": ci}
        return {"method": method, "layer": "l", "target": "pred", "primary": "dist", "params": {"correction": "holm"},
                "metrics": {"dist": {"pooled": pooled, "higher_is_more_consistent": False}}}

    a, b, c = result("a", 0.02, 0.60, [0.55, 0.65]), result("b", 0.03, 0.58, [0.51, 0.64]), result(
        "c", 0.001, 0.45, [0.40, 0.49])
    by_class = {"method": "d", "primary": None, "metrics": {}}
    primary_verdicts([a, b, c, by_class])
    # Holm over three: 0.001 * 3, 0.02 * 2, 0.03 * 1
    assert [d["verdict"]["p_adjusted"] for d in (a, b, c)] == pytest.approx([0.04, 0.04, 0.003])
    assert a["verdict"]["supported"] and b["verdict"]["supported"]
    assert not c["verdict"]["supported"] and c["verdict"]["significant"]  # significant, but CI below 0.5
    assert c["metrics"]["dist"]["finding"]["outcome"] == "worse"
    assert a["verdict"]["family_size"] == 3 and by_class["verdict"] is None
    assert a["metrics"]["dist"]["pooled"]["p_adjusted"] == a["verdict"]["p_adjusted"]
    primary_verdicts([a])  # alone, the same analysis keeps its own p
    assert a["verdict"]["p_adjusted"] == 0.02 and a["verdict"]["family_size"] == 1
