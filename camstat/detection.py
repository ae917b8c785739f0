"""Can CAMs tell when the model is wrong? (``camstat detect-errors``, SPEC 4.1)

Every image of a store is scored for "this prediction is an error" by

* each consistency metric (SPEC 3: ``dist``, ``ssim``, ``iou``, ``corr``,
  ``com``) of its map (target = predicted class) against the mean map of its
  **predicted** class, built from the correct maps of a *reference* store --
  the same model on another split (train, or val; never test), so that the detector
  never uses the analysed images' correctness. Oriented by H1's direction,
  fixed in advance: distances as they are, similarities negated;
* the softmax baselines from the stored logits (Hendrycks & Gimpel 2017):
  maximum softmax probability (scored as ``-log(MSP / (1 - MSP))``, an
  increasing function of 1 - MSP computed without rounding MSP to 1, so
  every rank metric is MSP's), the top-1 minus top-2 logit margin (negated)
  and the predictive entropy;
* a combined logistic model ``P(error | best baseline, CAM scores)``
  (standardised features, sklearn's default L2 penalty) whose score for an
  image comes from the model fitted on the other folds of a seeded
  stratified k-fold split: no image is scored by a model that saw it.

The *best baseline* is the baseline with the highest AUROC on the analysed
data themselves. That choice is optimistic for the baseline, i.e.
conservative for any claim that CAMs beat or add to confidence. Each CAM score
and the combined model are compared with it: AUROC difference with a paired
bootstrap 95 % CI and the DeLong p (Holm-adjusted over the comparisons for the
flags). Metric definitions and the bootstrap: :mod:`camstat.detection_stats`.

Calibration (tests/test_detection.py): DeLong's rejection rate for two equally
good correlated scores is in [0.03, 0.07]; the combined model against the best
baseline is conservative under the null of CAM scores that only copy the
confidence (0 of 200 simulated rejections, mean AUROC difference -0.04: the
out-of-fold model pays for its estimation noise, and the baseline was picked
on the same data). The bootstrap holds the fitted combined scores fixed; it
does not refit the model.

References
----------
Hendrycks, D. & Gimpel, K. (2017). A baseline for detecting misclassified
    and out-of-distribution examples in neural networks. ICLR.
Geifman, Y. & El-Yaniv, R. (2017). Selective classification for deep neural
    networks. NeurIPS.
DeLong, E. R., DeLong, D. M. & Clarke-Pearson, D. L. (1988). Biometrics 44, 837-845.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import logsumexp

from camstat import detection_stats as ds
from camstat import metrics as metrics_mod
from camstat.errors import CamstatError
from camstat.records import jsonable
from camstat.references import group_means
from camstat.stats import adjust
from camstat.store import Store, open_store

__all__ = ["BASELINES", "CAM_METRICS", "DetectionResult", "cam_scores", "check_reference", "detect_errors",
           "out_of_fold_scores", "parse_cam_metrics", "reference_means", "softmax_scores"]

#: the consistency family of SPEC 3: the CAM scores
CAM_METRICS = tuple(name for name, m in metrics_mod.PER_IMAGE.items() if m.kind == "consistency")
#: the softmax baselines, oriented so that higher = more likely an error
BASELINES = ("msp", "logit_margin", "predictive_entropy")
COMBINED = "combined"
ALPHA = 0.05
BASELINE_RULE = "highest_auroc_on_the_same_data"


def softmax_scores(logits: Any) -> dict[str, np.ndarray]:
    """The softmax baselines from logits (N, C), each oriented so that higher = more likely an error.

    ``msp``: ``-(z_top - logsumexp(z_others))``, the negative log-odds of the
    maximum softmax probability (rank-equal to ``1 - MSP``);
    ``logit_margin``: ``-(z_(1) - z_(2))``; ``predictive_entropy``:
    ``-sum_c p_c log p_c`` with ``p = softmax(z)``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2 or not np.isfinite(z).all():
        raise CamstatError(f"logits must be finite (N, C >= 2), got shape {z.shape}; re-extract the store")
    top2 = -np.sort(-z, axis=1)[:, :2]
    top = np.argmax(z, axis=1)
    others = z.copy()
    others[np.arange(len(z)), top] = -np.inf
    logp = z - logsumexp(z, axis=1, keepdims=True)
    return {
        "msp": -(top2[:, 0] - logsumexp(others, axis=1)),
        "logit_margin": -(top2[:, 0] - top2[:, 1]),
        "predictive_entropy": -(np.exp(logp) * logp).sum(axis=1),
    }


def parse_cam_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """``--metrics``: a comma list of consistency metrics (default all of them)."""
    if metrics is None:
        return list(CAM_METRICS)
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = [m for m in names if m not in CAM_METRICS]
    if bad or not names:
        raise CamstatError(f"invalid --metrics {', '.join(bad) or '(empty)'}; choose from {', '.join(CAM_METRICS)}")
    return list(dict.fromkeys(names))


def _identity(store: Store) -> tuple:
    """What makes two stores the same model: spec and weights (the seed, for randomly initialised weights)."""
    a = store.attrs
    sha = a.get("checkpoint_sha256")
    return a.get("model"), sha, None if sha else a.get("seed")


def check_reference(ref: Store, store: Store, method: str, layer: str) -> None:
    """Refuse a reference that is not the same model's correct maps of another split (each with what to give).

    Any other split will do (train, or val when the test split is analysed), except the test split itself: it is
    kept for the final evaluation, so no statistic of another split may be built from its images."""
    give = "give the same model's store of its train split (camstat extract ... --split train) or of another split"
    if ref.path.resolve() == store.path.resolve():
        raise CamstatError(f"--reference is the analysed store itself; {give}")
    if _identity(ref) != _identity(store):
        raise CamstatError(f"reference store {ref.path} is of another model ({ref.attrs.get('model')}, checkpoint "
                           f"sha256 {str(ref.attrs.get('checkpoint_sha256'))[:12]}) than {store.path} "
                           f"({store.attrs.get('model')}, {str(store.attrs.get('checkpoint_sha256'))[:12]}); {give}")
    if ref.classes != store.classes:
        raise CamstatError(f"reference store {ref.path} has other classes than {store.path}; {give}")
    for what, have, want in (("method", ref.methods, method), ("layer", ref.layers, layer)):
        if want not in have:
            raise CamstatError(f"reference store {ref.path} has no {what} {want!r} (it holds {', '.join(have)}); "
                               f"re-extract it with --methods {method} --layer {layer}, or pick another --{what}")
    a, b = ref.attrs, store.attrs
    if (a.get("data"), a.get("split")) == (b.get("data"), b.get("split")):
        raise CamstatError(f"reference store {ref.path} holds the same images as {store.path}; {give}")
    if a.get("split") == "test":
        raise CamstatError(f"reference store {ref.path} is of the test split, which is kept for the final "
                           f"evaluation; {give}")
    ref.require_complete()


def reference_means(ref: Store, method: str, layer: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the mean min-max map (C, H, W) at ``size`` of the reference store's correct maps, and their counts.

    The one rule of :mod:`camstat.references`; a class without any correct reference map has no
    mean, and is refused here: its predictions could not be scored.
    """
    target = "true" if "true" in ref.targets else ref.targets[0]  # equal maps on correct images
    samples = ref.samples
    means, counts = group_means(ref.iter_maps(method, layer, target, size=size), samples["label"].astype(np.int64),
                                samples["correct"].astype(bool), len(ref.classes))
    empty = [ref.classes[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise CamstatError(f"reference store {ref.path} has no correct image of class(es) {', '.join(empty[:5])}; "
                           "give a reference store with more images (a larger --limit)")
    return means, counts


def cam_scores(store: Store, means: np.ndarray, method: str, layer: str, names: Sequence[str],
               size: tuple[int, int], progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Each consistency metric of every map against its predicted class's mean, oriented: higher = more likely an error."""
    pred = store.samples["pred"].astype(np.int64)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for sl, maps in store.iter_maps(method, layer, "pred", size=size):
        refs = metrics_mod.references_from_means(pred[sl], means)
        for name, values in metrics_mod.per_image_metrics(maps, refs, names).items():
            parts[name].append(values)
        if progress:
            progress(sl.stop, store.n)
    sign = {name: -1.0 if metrics_mod.PER_IMAGE[name].higher_is_more_consistent else 1.0 for name in names}
    return {name: sign[name] * np.concatenate(v) for name, v in parts.items()}


def out_of_fold_scores(features: Any, error: Any, folds: int, seed: int) -> np.ndarray:
    """``P(error | features)`` of each image from a logistic model fitted on the other folds.

    Features are standardised and the model fitted (sklearn's
    ``LogisticRegression``, default L2 penalty) inside each training fold;
    folds are ``StratifiedKFold(folds, shuffle=True, random_state=seed)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(error).astype(bool)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    split = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=int(seed))
    return cross_val_predict(model, x, y, cv=split, method="predict_proba")[:, 1]


@dataclass(frozen=True)
class DetectionResult:
    """Numbers and flags of ``detect-errors`` (JSON keys of SPEC 4.1, and more).

    ``per_image`` (the scores) and ``error`` stay out of :meth:`to_dict`; the
    figures draw their curves from them.
    """

    scores: dict
    versus_baseline: dict
    folds: int
    reference: dict
    best_baseline: str
    baseline_rule: str
    cam_beats_baseline: bool  # some CAM score alone has a higher AUROC than the best baseline (Holm, CI)
    cam_adds_to_baseline: bool  # the combined model has a higher AUROC than the best baseline alone
    params: dict
    n: int
    n_errors: int
    per_image: dict = field(repr=False, compare=False, default_factory=dict)
    error: np.ndarray | None = field(repr=False, compare=False, default=None)

    def to_dict(self) -> dict:
        keep = {k: v for k, v in self.__dict__.items() if k not in ("per_image", "error")}
        return jsonable(keep)


def _ci(values: np.ndarray) -> list[float | None]:
    ok = values[np.isfinite(values)]
    return [float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975))] if ok.size else [None, None]


def _summaries(scores: dict[str, np.ndarray], error: np.ndarray, n_boot: int, seed: int) -> tuple[dict, dict]:
    point = {k: {m: float(v[0]) for m, v in ds.curve_metrics(s, error).items()} for k, s in scores.items()}
    boot = ds.bootstrap_metrics(scores, error, n_boot, np.random.SeedSequence([seed, 4, 1])) if n_boot else None
    out = {}
    for k in scores:
        row: dict[str, Any] = {}
        for m in ds.CURVE_METRICS:
            row[m] = point[k][m]
            row[f"{m}_ci95"] = _ci(boot[k][m]) if boot else [None, None]
        out[k] = row
    return out, boot


def _versus(scores: dict[str, np.ndarray], error: np.ndarray, best: str, contenders: list[str], summary: dict,
            boot: dict | None) -> dict:
    rows = {}
    for k in contenders:
        test = ds.delong_test(scores[k], scores[best], error)
        diff = boot[k]["auroc"] - boot[best]["auroc"] if boot else np.empty(0)
        rows[k] = {"baseline": best, "delta_auroc": summary[k]["auroc"] - summary[best]["auroc"],
                   "delta_auroc_ci95": _ci(diff), "p_delong": test.p_value, "z_delong": test.z}
    p_holm = adjust([r["p_delong"] for r in rows.values()], "holm")
    for r, p in zip(rows.values(), p_holm):
        lo = r["delta_auroc_ci95"][0]
        r["p_delong_holm"] = float(p)
        r["better"] = bool(p < ALPHA and r["delta_auroc"] > 0 and (lo is None or lo > 0))
    return rows


def detect_errors(
    store: Store | str | Path,
    reference: Store | str | Path,
    *,
    method: str | None = None,
    layer: str | None = None,
    metrics: str | Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> DetectionResult:
    """Score every image of ``store`` for being misclassified; compare CAM scores with the softmax baselines."""
    s = store if isinstance(store, Store) else open_store(store)
    ref = reference if isinstance(reference, Store) else open_store(reference)
    s.require_complete()
    method, layer = method or s.methods[0], layer or s.layers[0]
    for what, have, want in (("method", s.methods, method), ("layer", s.layers, layer), ("target", s.targets, "pred")):
        if want not in have:
            raise CamstatError(f"store {s.path} has no {what} {want!r} (it holds {', '.join(have)}); "
                               f"{'re-extract with --target pred or both' if what == 'target' else f'pick --{what}'}")
    names = parse_cam_metrics(metrics)
    if folds < 2 or n_boot < 0:
        raise CamstatError("need --folds >= 2 and --bootstrap >= 0")
    check_reference(ref, s, method, layer)
    error = ~s.samples["correct"].astype(bool)
    if min(error.sum(), (~error).sum()) < max(folds, 2):
        raise CamstatError(f"store {s.path} has {int(error.sum())} errors and {int((~error).sum())} correct "
                           f"predictions; detection needs at least --folds ({folds}) of each")
    size = s.input_size
    means, counts = reference_means(ref, method, layer, size)
    scores = {**cam_scores(s, means, method, layer, names, size, progress), **softmax_scores(s.samples["logits"])}
    base_auc = {b: ds.auroc(scores[b], error) for b in BASELINES}
    best = max(BASELINES, key=lambda b: base_auc[b])
    scores[COMBINED] = out_of_fold_scores(np.column_stack([scores[best]] + [scores[k] for k in names]),
                                          error, folds, seed)
    summary, boot = _summaries(scores, error, n_boot, seed)
    for k, row in summary.items():
        row["family"] = "cam" if k in names else "baseline" if k in BASELINES else "combined"
    versus = _versus(scores, error, best, names + [COMBINED], summary, boot)
    reference_info = {"path": str(ref.path), "split": ref.attrs.get("split"), "data": ref.attrs.get("data"),
                      "checkpoint_sha256": ref.attrs.get("checkpoint_sha256"), "n": ref.n,
                      "correct_per_class": counts.tolist()}
    params = {"store": str(s.path), "method": method, "layer": layer, "target": "pred", "metrics": names,
              "size": list(size), "seed": seed, "n_boot": n_boot, "alpha": ALPHA,
              "combined_features": [best, *names], "fold_seed": seed}
    return DetectionResult(
        scores=summary, versus_baseline=versus, folds=int(folds), reference=reference_info, best_baseline=best,
        baseline_rule=BASELINE_RULE, cam_beats_baseline=any(versus[k]["better"] for k in names),
        cam_adds_to_baseline=versus[COMBINED]["better"], params=params, n=int(error.size),
        n_errors=int(error.sum()), per_image=scores, error=error)
