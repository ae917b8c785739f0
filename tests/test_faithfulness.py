"""``camstat faithfulness``: ROAD equal to pytorch-grad-cam, seeded and resumable, and able to fail."""

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
import zarr
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from camstat import models
from camstat.cli import main
from camstat.data import load_dataset
from camstat.extract import extract
from camstat.faithfulness import faithfulness, paired_delta, saved_result, store_images, store_model
from camstat.present.faithfulness import curves_figure
from camstat.records import jsonable
from camstat.road import impute, keep_masks, road_scores
from camstat.store import Store

DATA = "builtin:shapes?n=600"
PCT = [10, 50, 90]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A smallcnn trained briefly on shapes (about 0.8 test accuracy) and its Grad-CAM store of 48 test images."""
    root = tmp_path_factory.mktemp("faith")
    torch.manual_seed(0)
    ds = load_dataset(DATA, "train", normalize="none")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.as_tensor(ds.labels)
    net = models.build_model("camstat:smallcnn", 6)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(10):
        net.train()
        perm = torch.randperm(len(x))
        for b in range(0, len(x), 32):
            i = perm[b:b + 32]
            loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    ckpt = root / "model.pt"
    models.save_checkpoint(ckpt, net.eval(), {"model": "camstat:smallcnn", "num_classes": 6, "normalize": "none"})
    store = root / "test.zarr"
    extract("camstat:smallcnn", DATA, store, checkpoint=str(ckpt), methods="gradcam,gradcam++", limit=48,
            normalize="none", device="cpu", chunk=16)
    return root, ckpt, store


def pgc_scores(model, x, cams, classes, most_first: bool) -> np.ndarray:
    """pytorch-grad-cam's per-image scores (N, P) with noise-free imputation."""
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    order = RemoveMostRelevantFirst if most_first else RemoveLeastRelevantFirst
    return np.stack([PerturbationConfidenceMetric(order(p, NoisyLinearImputer(noise=0)))(x, cams, targets, model)
                     for p in PCT], axis=1)


def test_imputation_equals_pytorch_grad_cam_including_borders_and_ties():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.standard_normal((3, 11, 14)).astype(np.float32))
    cam = np.round(rng.random((11, 14)), 1).astype(np.float32)  # ties at the thresholds
    cam[0, :] = 1.0  # a removed border row
    for p in (10, 35, 50, 90):
        for most_first, cls in ((True, RemoveMostRelevantFirst), (False, RemoveLeastRelevantFirst)):
            ref = cls(p, NoisyLinearImputer(noise=0))(img, torch.from_numpy(cam)).numpy()
            mine = impute(img.numpy(), keep_masks(cam[None], p, most_first)[0])
            np.testing.assert_allclose(mine, ref, atol=1e-6, rtol=0)
    wide = torch.from_numpy(rng.standard_normal((3, 5, 120)).astype(np.float32))  # band > BANDED_MAX: SuperLU
    wide_cam = rng.random((5, 120)).astype(np.float32)
    ref = RemoveMostRelevantFirst(20, NoisyLinearImputer(noise=0))(wide, torch.from_numpy(wide_cam)).numpy()
    np.testing.assert_allclose(impute(wide.numpy(), keep_masks(wide_cam[None], 20, True)[0]), ref, atol=1e-6, rtol=0)
    flat = np.full((11, 14), 0.5, np.float32)  # nothing kept: every pixel tied at the threshold
    ref = RemoveMostRelevantFirst(50, NoisyLinearImputer(noise=0))(img, torch.from_numpy(flat)).numpy()
    np.testing.assert_array_equal(impute(img.numpy(), keep_masks(flat[None], 50, True)[0]), ref)


def test_store_scores_equal_pytorch_grad_cam(trained):
    _, _, store = trained
    res = faithfulness(store, methods="gradcam", percentiles=PCT, road_noise=0, limit=12, device="cpu", n_boot=50)
    s = Store(store)
    g = s.root[res.derived]
    pos = g["position"][:]
    kinds = g.attrs["kinds"]
    assert kinds == ["random", "gradcam", "class_mean:gradcam"] and len(pos) == 12
    model = store_model(s)
    ds = store_images(s)
    x = torch.stack([ds[int(i)][0] for i in pos])
    cams = s.maps("gradcam", indices=slice(None))[pos]
    pred = s.samples["pred"][pos]
    morf_ref, lerf_ref = (pgc_scores(model, x, cams, pred, mf) for mf in (True, False))
    k = kinds.index("gradcam")
    np.testing.assert_allclose(g["morf"][:][:, k], morf_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(g["lerf"][:][:, k], lerf_ref, atol=1e-5, rtol=0)
    # ROADCombined's averaging: (LeRF average - MoRF average) / 2, per image, then the mean
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in pred]
    avg = {mf: AveragerAcrossThresholds(lambda p, o=o: PerturbationConfidenceMetric(o(p, NoisyLinearImputer(noise=0))),
                                        PCT)(x, cams, targets, model)
           for mf, o in ((True, RemoveMostRelevantFirst), (False, RemoveLeastRelevantFirst))}
    combined = (avg[False] - avg[True]) / 2
    r = res.methods["gradcam"]
    assert abs(r["road_combined_mean"] - combined.mean()) <= 1e-5
    assert abs(r["road_morf_mean"] - avg[True].mean()) <= 1e-5
    assert abs(r["road_lerf_mean"] - avg[False].mean()) <= 1e-5


def test_seeded_and_resumable(trained, tmp_path):
    _, _, store = trained
    kw = dict(methods="gradcam", percentiles=PCT, road_noise=0.01, limit=24, device="cpu", n_boot=50)
    whole = faithfulness(store, seed=3, **kw).to_dict()
    first = Store(store).root["derived/faithfulness/features/pred/morf"][:]

    calls = []

    def stop_after_first_block(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        faithfulness(store, seed=3, progress=stop_after_first_block, **kw)
    assert Path(str(store) + ".faithfulness-partial.npz").exists() and 0 < calls[0] < 24
    resumed = faithfulness(store, seed=3, progress=lambda done, total: calls.append(done), **kw).to_dict()
    assert calls[1] > calls[0]  # the first block was not redone
    assert not Path(str(store) + ".faithfulness-partial.npz").exists()
    for d in (whole, resumed):
        d.pop("seconds"), d.pop("images_per_second")
    assert resumed == whole
    assert saved_result(store)["methods"] == jsonable(whole["methods"])
    np.testing.assert_array_equal(Store(store).root["derived/faithfulness/features/pred/morf"][:], first)
    other = faithfulness(store, seed=4, **kw)
    assert other.methods["gradcam"]["road_combined_mean"] != whole["methods"]["gradcam"]["road_combined_mean"]


@pytest.mark.slow
def test_trained_gradcam_beats_random_and_anti_object_map_loses(trained, tmp_path):
    _, _, store = trained
    res = faithfulness(store, methods="gradcam", road_noise=0.01, device="cpu", jobs=2, n_boot=500)
    vs = res.methods["gradcam"]["versus"]["random"]
    assert vs["delta"] > 0 and vs["delta_ci95"][0] > 0 and vs["p_value"] < 0.01
    # a map that ranks pixels by their distance from the object: anti-correlated with the evidence
    s = Store(store)
    model, ds = store_model(s), store_images(s)
    x = torch.stack([ds[i][0] for i in range(s.n)])
    masks = s.masks()
    rng = np.random.default_rng(0)
    far = np.stack([scipy.ndimage.distance_transform_edt(~m) for m in masks])
    anti = far / far.max(axis=(1, 2), keepdims=True) + 1e-3 * rng.random(far.shape)
    maps = np.stack([anti, rng.random(anti.shape)], axis=1).astype(np.float32)
    seeds = [[np.random.SeedSequence([i, k]) for k in range(2)] for i in range(s.n)]
    morf, lerf = road_scores(model, x, maps, s.samples["pred"], PCT, 0.01, seeds, jobs=2)
    combined = (lerf.mean(-1) - morf.mean(-1)) / 2
    worse = paired_delta(combined[:, 0], combined[:, 1], np.random.default_rng(0), 500)
    assert worse.delta < 0 and worse.delta_ci95[1] < 0 and worse.p_value < 0.01
    path = curves_figure(res.to_dict(), tmp_path)[1]
    assert (tmp_path / path).stat().st_size > 10_000


def test_paired_test_is_calibrated_and_has_power():
    """Exchangeable skewed score pairs (no difference between maps): FPR in [0.03, 0.07] over 2,000
    simulations (an FPR of 0.10 would pass with probability < 1e-4); a shift of 0.4 SD is found."""
    rng = np.random.default_rng(0)
    n_sim, n = 2000, 60
    base = rng.gamma(2.0, 0.05, (n_sim, n))
    a = base + rng.gamma(1.5, 0.04, (n_sim, n))
    b = base + rng.gamma(1.5, 0.04, (n_sim, n))
    p = np.array([paired_delta(a[i], b[i], rng, 20).p_value for i in range(n_sim)])
    assert 0.03 <= np.mean(p < 0.05) <= 0.07
    sd = np.std(a - b)
    shifted = np.array([paired_delta(a[i] + 0.4 * sd, b[i], rng, 20).p_value for i in range(200)])
    assert np.mean(shifted < 0.05) > 0.8


def test_checkpoint_hash_mismatch_exits_2(trained, tmp_path, capsys):
    _, ckpt, store = trained
    other = tmp_path / "other.pt"
    models.save_checkpoint(other, models.build_model("camstat:smallcnn", 6), {"model": "camstat:smallcnn"})
    code = main(["faithfulness", str(store), "--checkpoint", str(other), "--limit", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: checkpoint") and "SHA-256" in err and len(err.strip().splitlines()) == 1
    assert not zarr.open_group(str(store), mode="r").get("derived/faithfulness/features/pred/other")


def test_cli_json_has_the_spec_keys(trained, tmp_path, capsys):
    _, _, store = trained
    out = tmp_path / "f.json"
    assert main(["faithfulness", str(store), "--method", "gradcam", "--limit", "4", "--percentiles", "30,70",
                 "--device", "cpu", "--json", str(out)]) == 0
    import json

    d = json.loads(out.read_text())
    assert d["n"] == 4 and d["percentiles"] == [30, 70] and d["road_noise"] == 0.01
    r = d["methods"]["gradcam"]
    assert {"road_combined_mean", "road_combined_ci95", "road_morf_mean", "road_lerf_mean"} <= set(r)
    for base in ("random", "class_mean"):
        assert {"delta", "delta_ci95", "p_value"} <= set(r["versus"][base])
    assert "Grad-CAM" in capsys.readouterr().out


def test_bad_percentiles_exit_2(trained, capsys):
    _, _, store = trained
    assert main(["faithfulness", str(store), "--percentiles", "0,50"]) == 2
    assert "between 0 and 100" in capsys.readouterr().err
