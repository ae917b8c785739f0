"""detect-errors: detection statistics against references, DeLong calibration, out-of-fold, stores, CLI."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from camstat import detection_stats as ds
from camstat.cli import main
from camstat.detection import (BASELINES, CAM_METRICS, detect_errors, out_of_fold_scores, softmax_scores)
from camstat.errors import CamstatError
from camstat.extract import extract
from camstat.models import load_model
from camstat.store import open_store

N = 240
K = 6
FAST = dict(n_boot=300, folds=3)


def _data(seed: int, n: int = 300, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    error = rng.random(n) < 0.3
    score = rng.normal(size=n) + error
    return (np.round(score, 1) if ties else score), error


# --------------------------------------------------------------------------
# the statistics against references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    score, error = _data(seed)
    m = {k: v[0] for k, v in ds.curve_metrics(score, error).items()}
    assert m["auroc"] == pytest.approx(roc_auc_score(error, score), abs=1e-12)
    assert ds.auroc(score, error) == pytest.approx(roc_auc_score(error, score), abs=1e-12)
    assert m["aupr_error"] == pytest.approx(average_precision_score(error, score), abs=1e-12)
    fpr, tpr, _ = roc_curve(error, score, drop_intermediate=False)
    assert m["fpr_at_95tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    # a bootstrap weighting is the same as repeating images: sklearn with sample weights
    w = np.random.default_rng(seed).integers(0, 3, (3, score.size)).astype(float)
    mw = ds.curve_metrics(score, error, w)
    for i in range(3):
        assert mw["auroc"][i] == pytest.approx(roc_auc_score(error, score, sample_weight=w[i]), abs=1e-12)
        assert mw["aupr_error"][i] == pytest.approx(average_precision_score(error, score, sample_weight=w[i]),
                                                    abs=1e-12)


def test_aurc_from_its_definition():
    # accepted from the lowest score: risks 0/1, 1/2, 1/3, 2/4, 3/5 -> AURC = (0 + 1/2 + 1/3 + 1/2 + 3/5) / 5
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    error = np.array([0, 1, 0, 1, 1], bool)
    assert ds.aurc(score, error) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2 + 3 / 5) / 5, abs=1e-12)
    # oracle: both correct first, risks 0, 0, 1/3, 2/4, 3/5
    assert ds.eaurc(score, error) == pytest.approx(0.1, abs=1e-12)
    assert ds.eaurc(error.astype(float), error) == pytest.approx(0.0, abs=1e-12)
    cov, risk = ds.risk_coverage(score, error)
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(cov, [0.2, 0.4, 0.6, 0.8, 1.0])


def test_aurc_with_ties_is_the_mean_over_tie_orders():
    score = np.array([0.1, 0.2, 0.2, 0.5, 0.5, 0.5, 0.9])
    error = np.array([0, 1, 0, 0, 1, 1, 1], bool)
    direct = []
    for perm in itertools.permutations(range(7)):
        order = np.argsort(score + 1e-6 * np.array(perm))
        direct.append(np.mean(np.cumsum(error[order]) / np.arange(1, 8)))
    assert ds.aurc(score, error) == pytest.approx(np.mean(direct), abs=1e-12)


def _delong_structural(a: np.ndarray, b: np.ndarray, error: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) as written there: psi over all (error, correct) pairs, O(mn)."""
    comps = []
    for s in (a, b):
        x, y = s[error][:, None], s[~error][None, :]
        psi = (x > y) + 0.5 * (x == y)
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = comps
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    cov = s10 / error.sum() + s01 / (~error).sum()
    z = (auc_a - auc_b) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return auc_a, auc_b, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1])
def test_delong_equals_structural_components(seed):
    a, error = _data(seed, n=150)
    b = np.round(a + np.random.default_rng(seed + 10).normal(size=a.size), 1)
    res = ds.delong_test(a, b, error)
    auc_a, auc_b, p = _delong_structural(a, b, error)
    assert res.auc_a == pytest.approx(auc_a, abs=1e-12) and res.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert ds.delong_test(a, a, error).p_value == 1.0


def test_delong_false_positive_rate_under_the_null():
    """Two equally good, correlated scores (rho 0.5): the rejection rate at 0.05 lies in [0.03, 0.07].

    2,000 replicates: at a true rate of 0.05 the sd is 0.0049 (the interval is +-4 sd); at 0.10 (twice alpha)
    the chance of a rate <= 0.07 is < 1e-5.
    """
    rng = np.random.default_rng(7)
    reps, n = 2000, 200
    error = np.zeros(n, bool)
    error[:60] = True
    common = rng.normal(size=(reps, 1, n))
    noise = np.sqrt(0.5) * common + np.sqrt(0.5) * rng.normal(size=(reps, 2, n))
    scores = 0.8 * error + noise
    auc, cov = ds.delong_covariance(scores, error)
    z = (auc[:, 0] - auc[:, 1]) / np.sqrt(cov[:, 0, 0] + cov[:, 1, 1] - 2 * cov[:, 0, 1])
    rate = np.mean(2 * norm.sf(np.abs(z)) < 0.05)
    assert 0.03 <= rate <= 0.07, rate
    # and it is not blind: a better score (shift 1.2 vs 0.8) is found most of the time
    better = scores + np.array([0.4, 0.0])[None, :, None] * error
    auc, cov = ds.delong_covariance(better[:200], error)
    z = (auc[:, 0] - auc[:, 1]) / np.sqrt(cov[:, 0, 0] + cov[:, 1, 1] - 2 * cov[:, 0, 1])
    assert np.mean(2 * norm.sf(np.abs(z)) < 0.05) > 0.5


def test_bootstrap_is_paired_seeded_and_agrees_with_delong():
    a, error = _data(3, n=400, ties=False)
    b = a + np.random.default_rng(4).normal(size=a.size)
    boot = ds.bootstrap_metrics({"a": a, "b": b}, error, 2000, seed=5)
    again = ds.bootstrap_metrics({"a": a, "b": b}, error, 2000, seed=5)
    np.testing.assert_array_equal(boot["a"]["auroc"], again["a"]["auroc"])
    # the bootstrap sd of the AUROC and of the paired difference match DeLong's within 15 %
    auc, cov = ds.delong_covariance(np.stack([a, b]), error)
    assert np.std(boot["a"]["auroc"]) == pytest.approx(np.sqrt(cov[0, 0]), rel=0.15)
    diff = boot["a"]["auroc"] - boot["b"]["auroc"]
    assert np.std(diff) == pytest.approx(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), rel=0.15)
    # stratified: every resample keeps the numbers of errors and correct predictions, so no NaN
    assert np.isfinite(boot["b"]["aurc"]).all()


def test_softmax_baselines():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4)) * 3
    z[0] = [40.0, 0.0, 0.0, 0.0]  # MSP rounds to 1.0 in float64; its log-odds does not
    s = softmax_scores(z)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    msp = p.max(1)
    np.testing.assert_allclose(1 / (1 + np.exp(s["msp"][1:])), msp[1:], rtol=1e-10)  # -log-odds -> MSP
    srt = np.sort(z, 1)
    np.testing.assert_allclose(s["logit_margin"], -(srt[:, -1] - srt[:, -2]))
    np.testing.assert_allclose(s["predictive_entropy"], -(p * np.log(p + 1e-300)).sum(1), atol=1e-12)
    assert np.isfinite(s["msp"][0]) and s["msp"][0] < s["msp"][1:].min()


# --------------------------------------------------------------------------
# out-of-fold


def test_out_of_fold_catches_an_image_identity_leak():
    """A one-hot image-identity feature lets an in-sample fit memorise random labels; out of fold it cannot."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n = 200
    error = rng.random(n) < 0.3
    features = np.column_stack([rng.normal(size=n), np.eye(n)])
    oof = out_of_fold_scores(features, error, folds=5, seed=0)
    assert abs(roc_auc_score(error, oof) - 0.5) < 0.12  # noise, as it must be
    # the same features fitted in-sample would look like a detector: the test above can fail
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    insample = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, error)
    assert roc_auc_score(error, insample.predict_proba(features)[:, 1]) > 0.95
    np.testing.assert_array_equal(oof, out_of_fold_scores(features, error, folds=5, seed=0))


@pytest.mark.slow
def test_combined_model_under_the_null_never_claims_to_add():
    """CAM scores that are noisy copies of the confidence add nothing: the "adds" decision stays below alpha.

    Confidence informative and miscalibrated (P(correct) = MSP^0.5), the baseline picked on the same data.
    The out-of-fold model pays for its estimation noise, so the comparison is conservative (measured: 0 of
    200 rejections, mean dAUROC -0.04); 200 replicates would show a rate of 2x alpha (0.10) above 0.07 with
    probability 0.92. An in-sample fit gives a mean dAUROC of +0.025 and fails the second assertion.
    """
    rng = np.random.default_rng(11)
    reps, n = 200, 200
    rejected, deltas = 0, []
    for r in range(reps):
        logits = rng.normal(size=(n, 5)) * 2
        p = np.exp(logits - logits.max(1, keepdims=True))
        error = rng.random(n) > (p.max(1) / p.sum(1)) ** 0.5
        base = softmax_scores(logits)
        best = max(BASELINES, key=lambda b: ds.auroc(base[b], error))
        cams = rng.normal(size=(n, 5)) + 0.5 * base["msp"][:, None]
        combined = out_of_fold_scores(np.column_stack([base[best], cams]), error, folds=3, seed=r)
        res = ds.delong_test(combined, base[best], error)
        deltas.append(res.delta)
        rejected += res.p_value < 0.05 and res.delta > 0
    assert rejected / reps <= 0.07
    assert np.mean(deltas) < 0


# --------------------------------------------------------------------------
# stores


def _prototype(c: int) -> np.ndarray:
    yy, xx = np.mgrid[0:8, 0:8] + 0.5
    return np.exp(-((yy - 1.5 - (c % 3) * 2.5) ** 2 + (xx - 2.0 - (c // 3) * 4.0) ** 2) / 3.0)


def _plant(path: Path, seed: int, cam_signal: bool, logit_signal: bool) -> None:
    """Overwrite predictions, logits and maps: errors' maps are noise (if cam_signal), errors' logits flat."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="r+")
    n = root["samples/index"].shape[0]
    pred = np.arange(n) % K
    correct = rng.random(n) < 0.6
    label = np.where(correct, pred, (pred + 1 + rng.integers(0, K - 1, n)) % K)
    protos = np.stack([_prototype(c) for c in range(K)])
    noise = rng.random((n, 8, 8))
    good = correct if cam_signal else rng.random(n) < 0.6
    maps = np.where(good[:, None, None], protos[pred] + 0.2 * noise, 0.3 * protos[pred] + noise)
    logits = rng.normal(size=(n, K))
    gap = np.where(correct, 3.0, 0.5) if logit_signal else rng.uniform(0.5, 3.0, n)
    logits[np.arange(n), pred] = logits.max(1) + gap
    s = root["samples"]
    s["pred"][:], s["label"][:], s["correct"][:] = pred, label, correct
    s["logits"][:] = logits.astype(np.float32)
    root["maps/gradcam/features/pred"][:] = maps.astype(np.float32)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, one_thread) -> dict:
    tmp = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    ckpt = tmp / "net.pt"
    torch.save(load_model("camstat:smallcnn", num_classes=K).module.state_dict(), ckpt)
    kw = dict(device="cpu", chunk=64, batch_size=64, checkpoint=str(ckpt))
    data = f"builtin:shapes?n={N}"
    extract("camstat:smallcnn", data, tmp / "test.zarr", split="test", methods="gradcam,gradcam++", **kw)
    extract("camstat:smallcnn", data, tmp / "train.zarr", split="train", methods="gradcam", **kw)
    out = {"tmp": tmp, "test": tmp / "test.zarr", "train": tmp / "train.zarr"}
    for name, cam, logit in (("cam", True, False), ("conf", False, True)):
        for split in ("test", "train"):
            out[f"{name}_{split}"] = tmp / f"{name}_{split}.zarr"
            shutil.copytree(out[split], out[f"{name}_{split}"])
            _plant(out[f"{name}_{split}"], seed=len(split) + 3 * cam, cam_signal=cam, logit_signal=logit)
    return out


def _copy_with(stores: dict, name: str, **attrs) -> Path:
    path = stores["tmp"] / name
    if not path.exists():
        shutil.copytree(stores["train"], path)
        root = zarr.open_group(str(path), mode="r+")
        root.attrs.update(attrs)
    return path


def test_end_to_end_json_keys_and_seed(stores, tmp_path):
    out = tmp_path / "d.json"
    assert main(["detect-errors", str(stores["cam_test"]), "--reference", str(stores["cam_train"]), "--bootstrap", "200",
                 "--folds", "3", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert set(d["scores"]) == {*CAM_METRICS, *BASELINES, "combined"}
    for row in d["scores"].values():
        assert {"auroc", "auroc_ci95", "aupr_error", "fpr_at_95tpr", "aurc", "eaurc"} <= set(row)
    for row in d["versus_baseline"].values():
        assert {"baseline", "delta_auroc", "delta_auroc_ci95", "p_delong"} <= set(row)
        assert row["baseline"] == d["best_baseline"] in BASELINES
    assert set(d["versus_baseline"]) == {*CAM_METRICS, "combined"}
    assert d["folds"] == 3 and d["reference"]["split"] == "train"
    assert d["best_baseline"] == max(BASELINES, key=lambda b: d["scores"][b]["auroc"])
    again = tmp_path / "e.json"
    assert main(["detect-errors", str(stores["cam_test"]), "--reference", str(stores["cam_train"]), "--bootstrap", "200",
                 "--folds", "3", "--json", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_scores_use_the_reference_means_of_the_predicted_class(stores):
    res = detect_errors(stores["cam_test"], stores["cam_train"], metrics="dist,corr", **FAST)
    ref, s = open_store(stores["cam_train"]), open_store(stores["cam_test"])
    rm, ok, lab = ref.maps("gradcam"), ref.samples["correct"], ref.samples["label"]
    means = np.stack([rm[ok & (lab == c)].mean(0) for c in range(K)])
    maps, pred = s.maps("gradcam"), s.samples["pred"]
    dist = ((maps - means[pred]) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(res.per_image["dist"], dist, rtol=1e-5)
    assert set(res.scores) == {"dist", "corr", *BASELINES, "combined"}


def test_planted_cam_signal_beats_and_adds_to_confidence(stores):
    res = detect_errors(stores["cam_test"], stores["cam_train"], **FAST)
    assert res.scores["dist"]["auroc"] > 0.9 and res.scores["msp"]["auroc"] < 0.7
    assert res.cam_beats_baseline and res.cam_adds_to_baseline
    assert res.versus_baseline["combined"]["delta_auroc_ci95"][0] > 0


def test_planted_confidence_only_cam_adds_nothing(stores):
    res = detect_errors(stores["conf_test"], stores["conf_train"], **FAST)
    assert res.scores[res.best_baseline]["auroc"] > 0.9
    assert abs(res.scores["dist"]["auroc"] - 0.5) < 0.15
    assert not res.cam_beats_baseline and not res.cam_adds_to_baseline


def test_figures_tables_and_verdict(stores, tmp_path, capsys):
    from camstat.present.detection import figures, render, table_scores, table_versus, verdict

    res = detect_errors(stores["cam_test"], stores["cam_train"], **FAST)
    d = res.to_dict()
    figs = figures(res, tmp_path / "report", "detect-0")
    assert [f for _, f, _ in figs] == ["fig-detect-0-roc.png", "fig-detect-0-risk-coverage.png"]
    for _, f, _ in figs:
        assert (tmp_path / "report" / f).stat().st_size > 10_000
    assert verdict(d).startswith("CAM consistency adds")
    scores = table_scores(d, "scores", "s")
    assert len(scores.rows) == len(d["scores"])  # one row per score, every number from the result
    row = next(r for r in scores.rows if r[0] == "dist")
    assert row[1].startswith(f"{d['scores']['dist']['auroc']:.3f} [")
    versus = table_versus(d, "versus_baseline", "v")
    assert [r[0] for r in versus.rows] == [*CAM_METRICS[:-1], "com distance", "baseline + CAM (out-of-fold)"]
    assert all(r[-1] == ("yes" if v["better"] else "no") for r, v in zip(versus.rows, d["versus_baseline"].values()))
    assert isinstance(render(d)[-1], str) and render(d)[-1] == verdict(d)


def test_reference_class_without_correct_maps_is_refused(stores):
    path = stores["tmp"] / "no_correct_c0.zarr"
    if not path.exists():
        shutil.copytree(stores["cam_train"], path)
        root = zarr.open_group(str(path), mode="r+")
        correct = root["samples/correct"][:]
        correct[root["samples/label"][:] == 0] = False
        root["samples/correct"][:] = correct
    with pytest.raises(CamstatError, match="no correct image of class"):
        detect_errors(stores["cam_test"], path, **FAST)


def test_a_val_reference_is_accepted(stores):
    """Another split than the analysed one, not the test split: a val store's means for the test store."""
    ref = stores["tmp"] / "cam_val.zarr"
    shutil.copytree(stores["cam_train"], ref)
    zarr.open_group(str(ref), mode="r+").attrs.update(split="val")
    assert detect_errors(stores["cam_test"], ref, **FAST).to_dict()["reference"]["split"] == "val"


@pytest.mark.parametrize("case, match", [
    ("itself", "itself"),
    ("model", "another model"),
    ("classes", "other classes"),
    ("method", "no method"),
    ("layer", "no layer"),
    ("split", "same images"),
    ("test-reference", "kept for the final evaluation"),
    ("metrics", "invalid --metrics"),
])
def test_refusals_exit_2(stores, capsys, case, match):
    store, ref, extra = stores["test"], stores["train"], []
    if case == "itself":
        ref = store
    elif case == "model":
        ref = _copy_with(stores, "other_model.zarr", checkpoint_sha256="0" * 64)
    elif case == "classes":
        ref = _copy_with(stores, "other_classes.zarr", classes=[f"c{k}" for k in range(K)])
    elif case == "method":
        extra = ["--method", "gradcam++"]  # the test store has it, the train store does not
    elif case == "layer":
        extra = ["--layer", "nope"]
    elif case == "metrics":
        extra = ["--metrics", "dist,entropy"]  # a concentration metric is no consistency score
    elif case == "split":
        ref = _copy_with(stores, "test_split.zarr", split="test")
    else:  # a val store analysed against the test split's means
        store = _copy_with(stores, "val_split.zarr", split="val")
        ref = _copy_with(stores, "test_split.zarr", split="test")
    with pytest.raises(CamstatError, match=match):
        options = {"--method": "method", "--layer": "layer", "--metrics": "metrics"}
        detect_errors(store, ref, **{options[k]: v for k, v in zip(extra[::2], extra[1::2])}, **FAST)
    capsys.readouterr()
    assert main(["detect-errors", str(store), "--reference", str(ref), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
