"""Composition features and clusters (issue 12): planted positions recovered, K chosen, embeddings stored."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from camstat import composition as comp
from camstat import models
from camstat.cli import main
from camstat.data import load_dataset, make_shapes
from camstat.embedding import find_head
from camstat.errors import CamstatError
from camstat.extract import extract
from camstat.store import open_store

N = 240
POSITIONS = 4


@pytest.fixture(scope="module")
def planted():
    """Shapes whose objects sit at 4 planted positions, every class spread over them."""
    return make_shapes(N, "test", positions=POSITIONS, seed=0)


def planted_subset(data, keep):
    """The same data set (class names kept) restricted to ``keep``."""
    return type(data)(data.images[keep], data.labels[keep], data.masks[keep], data.decoy[keep], data.classes,
                      data.position[keep])


def _cluster(feats, k, data, **kw):
    return comp.cluster(feats, k, features="mask", classes=data.labels, class_names=data.classes, **kw)


# -- features ----------------------------------------------------------------


def test_mask_features_of_a_known_rectangle():
    masks = np.zeros((2, 20, 40), bool)
    masks[0, 2:6, 10:30] = True  # 4 rows x 20 columns
    masks[1, 10:20, 0:5] = True  # 10 x 5
    f = comp.mask_features(masks)
    np.testing.assert_allclose(f[0], [20 / 40, 4 / 20, np.sqrt(80 / 800), np.log(20 / 4)])
    np.testing.assert_allclose(f[1], [2.5 / 40, 15 / 20, np.sqrt(50 / 800), np.log(5 / 10)])
    masks[1] = False
    with pytest.raises(CamstatError, match="1 image.*empty object mask"):
        comp.mask_features(masks)


def test_thumbnail_and_hog_shapes(planted):
    thumbs = comp.thumbnail_features(planted.images[:5])
    assert thumbs.shape == (5, 64) and 0 <= thumbs.min() and thumbs.max() <= 1
    hogs = comp.hog_features(planted.images[:5])
    assert hogs.shape == (5, 324) and np.isfinite(hogs).all()


# -- planted composition (issue 18, item 5) -------------------------------------------


def test_mask_clusters_recover_the_planted_positions(planted):
    c = _cluster(comp.mask_features(planted.masks), POSITIONS, planted)
    assert adjusted_rand_score(planted.position, c.labels) >= 0.8
    # the same clustering of noise in place of the features recovers nothing: the check above bites
    noise = np.random.default_rng(0).normal(size=(N, 4))
    assert adjusted_rand_score(planted.position, _cluster(noise, POSITIONS, planted).labels) < 0.2


def test_hog_clusters_recover_three_planted_positions():
    data = make_shapes(120, "test", positions=3, seed=1)
    c = comp.cluster(comp.hog_features(data.images), 3, features="hog", classes=data.labels,
                     class_names=data.classes)
    assert adjusted_rand_score(data.position, c.labels) >= 0.8


def test_planted_positions_reach_the_data_spec():
    ds = load_dataset(f"builtin:shapes?n=48&positions={POSITIONS}", "test")
    truth = make_shapes(48, "test", positions=POSITIONS).position
    c = comp.cluster(comp.mask_features(ds.masks(np.arange(48))), POSITIONS, features="mask",
                     classes=ds.labels, class_names=ds.classes)
    assert adjusted_rand_score(truth, c.labels) >= 0.8
    with pytest.raises(CamstatError, match="positions 0 or 2-8"):
        load_dataset("builtin:shapes?n=8&positions=1", "test")


def test_default_shapes_unchanged_by_the_positions_option():
    # positions=0 draws every random number as before: the data set of earlier stores is the same
    a, b = make_shapes(12, "train"), make_shapes(12, "train", positions=0)
    assert np.array_equal(a.images, b.images) and (a.position == -1).all()
    planted = make_shapes(12, "train", positions=3)
    assert np.array_equal(planted.labels, a.labels) and not np.array_equal(planted.masks, a.masks)


# -- K ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_auto_k_picks_the_planted_k(k):
    rng = np.random.default_rng(k)
    centres = 8.0 * np.eye(k, 10)  # well separated: 11.3 apart, unit noise
    truth = np.repeat(np.arange(k), 40)
    feats = centres[truth] + rng.normal(size=(truth.size, 10))
    c = comp.cluster(feats, "auto", features="embedding", classes=np.zeros(truth.size, int), class_names=["a"])
    assert c.k == {"all": k} and c.k_selection == "auto" and c.k_range == comp.K_RANGE
    assert set(c.k_scores["all"]) == set(range(2, 11)) and max(c.k_scores["all"].values()) == c.k_scores["all"][k]
    assert adjusted_rand_score(truth, c.labels) == 1.0


def test_auto_k_on_planted_mask_positions(planted):
    c = _cluster(comp.mask_features(planted.masks), "auto", planted)
    assert c.k == {"all": POSITIONS}


# -- the result ------------------------------------------------------------------


def test_result_numbers(planted):
    feats = comp.mask_features(planted.masks)
    c = _cluster(feats, POSITIONS, planted, seed=3)
    assert c.names == [f"cluster {j}" for j in range(POSITIONS)]
    assert c.sizes.tolist() == sorted(c.sizes.tolist(), reverse=True) and c.sizes.sum() == N
    assert np.array_equal(c.class_counts.sum(axis=1), c.sizes)
    assert np.array_equal(c.class_counts.sum(axis=0), np.bincount(planted.labels))
    assert c.silhouette.shape == (POSITIONS,) and (c.silhouette > 0.3).all()
    # the same seed gives the same clusters; other images are assigned to the nearest centroid
    assert np.array_equal(_cluster(feats, POSITIONS, planted, seed=3).labels, c.labels)
    assert np.array_equal(c.predict(feats), c.labels)
    d = c.to_dict()
    assert d["features"] == "mask" and d["k"] == POSITIONS and d["n_clusters"] == POSITIONS
    assert sum(d["class_counts"]["cluster 0"].values()) == d["sizes"][0]


def test_per_cluster_silhouette_equals_sklearn(planted):
    from sklearn.metrics import silhouette_samples

    feats = comp.mask_features(planted.masks)
    c = _cluster(feats, 3, planted)
    x = comp.Scaler.fit(feats).transform(feats)
    s = silhouette_samples(x, c.labels)
    np.testing.assert_allclose(c.silhouette, [s[c.labels == j].mean() for j in range(3)])


def test_within_class(planted):
    feats = comp.mask_features(planted.masks)
    c = _cluster(feats, 2, planted, within_class=True)
    assert len(c.names) == 2 * len(planted.classes) and c.names[0] == "circle cluster 0"
    # every cluster holds one class only, and each class's clusters are numbered by size
    assert ((c.class_counts > 0).sum(axis=1) == 1).all()
    assert np.array_equal(c.predict(feats, planted.labels), c.labels)
    # an image of a class without clusters here joins none
    first = planted.labels == 0
    alone = _cluster(feats[~first], 2, planted_subset(planted, ~first), within_class=True)
    assert (alone.predict(feats[first], planted.labels[first]) == -1).all()
    d = c.to_dict()
    assert d["within_class"] and d["k"] == {name: 2 for name in planted.classes}


def test_bad_input(planted):
    feats = comp.mask_features(planted.masks)
    for bad, message in ((1, "at least 2"), ("many", "invalid --clusters"), (N + 1, "exceeds the number")):
        with pytest.raises(CamstatError, match=message):
            _cluster(feats, bad, planted)
    feats[0, 0] = np.nan
    with pytest.raises(CamstatError, match="non-finite"):
        _cluster(feats, 2, planted)


# -- embeddings stored at extraction ---------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, one_thread):
    path = tmp_path_factory.mktemp("composition") / "s.zarr"
    extract("camstat:smallcnn", "builtin:shapes?n=40&positions=4", path, split="test", methods="gradcam",
            device="cpu", chunk=16, batch_size=8)
    return path


def test_embedding_is_the_head_input(store):
    s = open_store(store)
    emb = s.embedding()
    assert emb.shape == (40, 64) and emb.dtype == np.float16
    assert s.attrs["embedding"]["module"] == "fc" and s.attrs["embedding"]["dim"] == 64
    torch.manual_seed(0)  # extraction seeds the model's random weights with its seed
    net = models.load_model("camstat:smallcnn", num_classes=6).module.eval()
    ds = load_dataset("builtin:shapes?n=40&positions=4", "test")
    x = torch.stack([ds[i][0] for i in range(40)])
    with torch.no_grad():
        direct = net.pool(net.features(x)).flatten(1).numpy()
        logits = net.fc(torch.from_numpy(emb.astype(np.float32))).numpy()
    np.testing.assert_allclose(emb, direct.astype(np.float16), rtol=1e-3, atol=1e-3)
    # from the same forward pass as the logits stored beside it
    np.testing.assert_allclose(logits, s.samples["logits"], atol=2e-2)


def test_store_without_embedding_is_refused(store, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    shutil.rmtree(old / "samples" / "embedding")  # as a store extracted before embeddings were stored
    s = open_store(old)
    assert not s.has_embedding
    with pytest.raises(CamstatError, match="holds no embeddings.*re-extract"):
        comp.store_features(s, "embedding")


HEADLESS = textwrap.dedent(
    """
    from torch import nn

    def net(num_classes=2):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    """
)


def test_model_without_linear_head_stores_no_embedding(tmp_path):
    factory = tmp_path / "headless.py"
    factory.write_text(HEADLESS)
    net = models.build_model(f"{factory}:net", 2)
    head = find_head(net, torch.zeros(3, 8, 8))
    assert head.module is None and "no nn.Linear" in head.reason
    path = tmp_path / "h.zarr"
    extract(f"{factory}:net", "builtin:shapes?n=8&classes=2", path, methods="gradcam", layer="0", device="cpu")
    s = open_store(path)
    assert not s.has_embedding and s.attrs["embedding"]["dim"] is None
    with pytest.raises(CamstatError, match="no nn.Linear head"):
        s.embedding()


# -- camstat consistency --by cluster --------------------------------------------------

FAST_CLI = ["--metrics", "dist", "--permutations", "99", "--bootstrap", "50"]


def test_cli_clusters_recover_the_planted_positions(store, tmp_path):
    out = tmp_path / "c.json"
    code = main(["consistency", str(store), "--by", "cluster", "--features", "mask", "--clusters", "auto",
                 *FAST_CLI, "--json", str(out)])
    assert code == 0
    d = json.loads(out.read_text())
    c = d["clusters"]
    assert c["features"] == "mask" and c["k"] == POSITIONS and c["k_selection"] == "auto"
    assert sum(c["sizes"]) == 40 and len(c["silhouette"]) == POSITIONS
    assert d["params"]["features"] == "mask" and d["params"]["clusters"] == "auto"
    # the assignment is stored with the result, and it is the planted composition
    saved = open_store(store).read_derived(d["derived"].removeprefix("derived/"), d["params"])
    assigned = saved.arrays["cluster"]
    truth = make_shapes(40, "test", positions=POSITIONS).position
    assert adjusted_rand_score(truth, assigned) >= 0.8


def test_cli_within_class_embedding(store, tmp_path):
    out = tmp_path / "c.json"
    assert main(["consistency", str(store), "--by", "cluster", "--features", "embedding", "--clusters", "2",
                 "--within-class", "--no-save", *FAST_CLI, "--json", str(out)]) == 0
    c = json.loads(out.read_text())["clusters"]
    assert c["within_class"] and all(k == 2 for k in c["k"].values())
    assert all(len(mix) == 1 for mix in c["class_counts"].values())


def test_cli_refuses_bad_cluster_options(store, tmp_path, capsys):
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    shutil.rmtree(old / "samples" / "embedding")  # as a store extracted before embeddings were stored
    assert main(["consistency", str(old), "--by", "cluster", "--features", "embedding"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no embeddings" in err and "re-extract" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    for args in (["--clusters", "1"], ["--clusters", "many"], ["--features", "pixels"]):
        assert main(["consistency", str(store), "--by", "cluster", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_embedding_from_the_engines_own_forward(store, tmp_path):
    # ScoreCAM runs extra forwards on masked images; the stored embedding stays that of the images themselves
    path = tmp_path / "score.zarr"
    extract("camstat:smallcnn", "builtin:shapes?n=40&positions=4", path, split="test", methods="gradcam,scorecam",
            device="cpu", chunk=16, batch_size=8, limit=8)
    s, ref = open_store(path), open_store(store)
    rows = np.searchsorted(ref.samples["index"], s.samples["index"])
    np.testing.assert_array_equal(s.embedding(), ref.embedding()[rows])


def test_reference_store_joins_its_class_clusters(store, tmp_path):
    from camstat.h1 import analyze

    ref = tmp_path / "train.zarr"
    extract("camstat:smallcnn", "builtin:shapes?n=40&positions=4", ref, split="train", methods="gradcam",
            device="cpu", chunk=16, batch_size=8)
    d = analyze(store, by="cluster", features="mask", clusters=2, within_class=True, reference=ref, metrics="dist",
                permutations=99, n_boot=50, save=False).to_dict()
    s, r = open_store(store), open_store(ref)
    predicted = set(s.samples["pred"].tolist())  # classes with clusters here (the untrained model predicts few)
    counts = d["params"]["reference"]["counts"]
    assert set(counts) == set(d["clusters"]["names"])
    # the reference's correct images enter the means of their class's clusters
    in_clustered = np.isin(r.samples["pred"], list(predicted)) & r.samples["correct"]
    assert sum(counts.values()) == int(in_clustered.sum())


def test_each_clustering_keeps_its_own_derived_result(store, tmp_path):
    saved = []
    for features, k in (("mask", "auto"), ("hog", "3")):
        out = tmp_path / f"{features}.json"
        assert main(["consistency", str(store), "--by", "cluster", "--features", features, "--clusters", k,
                     *FAST_CLI, "--json", str(out)]) == 0
        saved.append(json.loads(out.read_text()))
    assert saved[0]["derived"] != saved[1]["derived"]
    for d in saved:  # the first is not replaced by the second
        assert open_store(store).read_derived(d["derived"].removeprefix("derived/"), d["params"]) is not None
