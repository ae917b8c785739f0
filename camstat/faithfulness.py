"""``camstat faithfulness``: do a store's maps show what its model uses? (SPEC 4.2)

Reruns the store's model (model spec and checkpoint from its provenance, the checkpoint's SHA-256
checked; images rebuilt from its data spec, split, size and normalisation) on images whose most
(MoRF) or least (LeRF) relevant pixels were removed by ROAD's noisy linear imputation
(:mod:`camstat.road`), for three kinds of map on the same images:

- the store's maps of each method (min-max analysis maps at the input size),
- random maps (i.i.d. uniform pixels, seeded per image): a map that carries no information,
- the class-mean map of the predicted class (mean of the correct images' maps of that method):
  where the model looks *on average*, without the image's own evidence.

Per image the ROAD scores are averaged over the percentiles as pytorch-grad-cam's ``ROADCombined``
does: ``combined = (mean LeRF - mean MoRF) / 2`` (higher = more faithful). Per method the result
holds the mean MoRF, LeRF and combined scores with percentile-bootstrap 95 % CIs, and for each
baseline the paired difference ``delta = mean(combined_method - combined_baseline)`` (positive:
the method's maps beat the baseline) with its bootstrap CI and the two-sided Wilcoxon signed-rank
p (Wilcoxon 1945), over all images and within correct and within incorrect predictions.

Work goes in blocks of images; after each block the scores so far are kept in a scratch file
beside the store (``STORE.faithfulness-partial.npz``), so an interrupted run continues where it
stopped with the same numbers (every random draw is seeded per image and map, never per block).
The per-image scores and the result are written under ``derived/faithfulness/<layer>/pred`` in
one step at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.stats
import torch

from camstat.errors import CamstatError
from camstat.store import Store

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
BASELINES = ("random", "class_mean")
BLOCK_BYTES = 256 * 2**20  # perturbed images held at once


@dataclass
class PairedDelta:
    """``delta`` = mean(a - b) over the n pairs with finite values, its percentile-bootstrap 95 % CI,
    and the two-sided Wilcoxon signed-rank p (None when n < 2 or all differences are 0)."""

    delta: float
    delta_ci95: tuple[float, float]
    p_value: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FaithfulnessResult:
    """What ``--json`` reports (SPEC 4.2); ``methods[m]`` holds the numbers described in the module doc."""

    n: int
    n_correct: int
    percentiles: list[float]
    road_noise: float
    seed: int
    layer: str
    target: str
    methods: dict
    store: str
    derived: str | None
    seconds: float
    images_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------


def mean_ci(x: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float]:
    """Percentile-bootstrap 95 % CI of the mean of the finite values (``scipy.stats.bootstrap``).

    NaN for fewer than 2 values; (x, x) when they are all equal.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    res = scipy.stats.bootstrap((x,), np.mean, n_resamples=n_boot, method="percentile", batch=100, rng=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x: np.ndarray) -> float:
    """Mean of the finite values (NaN when there are none, without numpy's warning)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def paired_delta(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> PairedDelta:
    """Paired comparison of per-image scores ``a`` vs ``b`` (NaN pairs left out); see :class:`PairedDelta`.

    The Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped as in
    Wilcoxon's original procedure) tests whether the differences are symmetric about 0, which is
    what exchangeable maps (no faithfulness difference) imply.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return PairedDelta(float("nan"), (float("nan"), float("nan")), None, 0)
    p = None
    if d.size >= 2 and np.any(d != 0):
        p = float(scipy.stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return PairedDelta(float(d.mean()), mean_ci(d, rng, n_boot), p, int(d.size))


# --------------------------------------------------------------------------
# the store's model, images and maps
# --------------------------------------------------------------------------


def store_model(store: Store, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The store's model in eval mode, from its provenance; the checkpoint must have the recorded SHA-256.

    ``checkpoint`` overrides the recorded path (a moved file); its hash is checked all the same.
    A store extracted without checkpoint (random weights) is rebuilt with its seed, as extraction did.
    """
    from camstat import models
    from camstat.provenance import sha256_file

    a = store.attrs
    expected = a.get("checkpoint_sha256")
    path = checkpoint or a.get("checkpoint")
    if expected and not path:
        raise CamstatError(f"store {store.path} records no checkpoint path; pass --checkpoint PATH")
    if path is not None and not expected:
        raise CamstatError(f"store {store.path} was extracted without a checkpoint (random weights); drop --checkpoint")
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CamstatError(f"checkpoint {path} of store {store.path} not found; pass --checkpoint PATH")
        digest = sha256_file(path)
        if digest != expected:
            raise CamstatError(
                f"checkpoint {path} has SHA-256 {digest[:12]}..., but store {store.path} was extracted with "
                f"{str(expected)[:12]}...; pass the checkpoint the store was made from"
            )
    torch.manual_seed(int(a.get("seed", 0)))  # as extraction did for a model without checkpoint
    loaded = models.load_model(a["model"], num_classes=a.get("num_classes"), checkpoint=path)
    return loaded.module.eval().requires_grad_(False)


def store_images(store: Store):
    """The store's dataset, rebuilt from its provenance (:meth:`camstat.store.Store.dataset`)."""
    return store.dataset()


def _seed(seed: int, index: int, name: str) -> np.random.SeedSequence:
    """A stream per (seed, dataset index, name): the same numbers whatever the blocks, jobs or resumes."""
    return np.random.SeedSequence([seed, int(index), zlib.crc32(name.encode())])


def _kinds(methods: Sequence[str]) -> list[str]:
    """Map kinds scored per image: ``random``, then per method its maps and ``class_mean:<method>``."""
    return ["random"] + [k for m in methods for k in (m, f"class_mean:{m}")]


def _block_maps(store: Store, methods: Sequence[str], layer: str, sl: slice, rows: np.ndarray,
                means: dict[str, np.ndarray], pred: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
    """(n, K, H, W) maps of the block's images ``rows`` (positions in ``sl``), in :func:`_kinds` order.

    An image whose class has no correct image gets an all-zero class-mean map (its scores are set
    to NaN afterwards).
    """
    h, w = store.input_size
    out = np.empty((len(rows), 1 + 2 * len(methods), h, w), dtype=np.float32)
    for j, i in enumerate(rows):
        out[j, 0] = np.random.default_rng(_seed(seed, index[i], "random-map")).random((h, w), dtype=np.float32)
    for k, m in enumerate(methods):
        out[:, 1 + 2 * k] = store.maps(m, layer, "pred", indices=sl)[rows - sl.start]
        out[:, 2 + 2 * k] = np.nan_to_num(means[m][pred[rows]], nan=0.0)
    return out


# --------------------------------------------------------------------------
# scratch file (resume)
# --------------------------------------------------------------------------


def _scratch_path(store: Store) -> Path:
    return store.path.with_name(store.path.name + ".faithfulness-partial.npz")


def _load_scratch(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return {key: z[key] for key in ("done", "morf", "lerf")}
    except (OSError, ValueError, KeyError):
        return None  # an unreadable scratch file is only lost progress


def _save_scratch(path: Path, fingerprint: str, state: dict) -> None:
    from camstat.atomic import atomic_write

    atomic_write(path, lambda fh: np.savez(fh, fingerprint=np.array(fingerprint), **state))


# --------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------


def _parse_percentiles(percentiles: str | Sequence[float]) -> list[float]:
    if isinstance(percentiles, str):
        try:
            percentiles = [float(p) for p in percentiles.split(",") if p.strip()]
        except ValueError:
            raise CamstatError(f"bad --percentiles {percentiles!r}; give numbers like 10,20,...,90") from None
    values = [float(p) for p in percentiles]
    if not values or any(not 0 < p < 100 for p in values) or len(set(values)) != len(values):
        raise CamstatError(f"bad --percentiles {values}; give distinct numbers strictly between 0 and 100")
    return [int(p) if p.is_integer() else p for p in values]


def _summary(morf: np.ndarray, lerf: np.ndarray, correct: np.ndarray, rng: np.random.Generator,
             n_boot: int) -> dict:
    """Numbers of one method from its (n, 3, P) scores (kinds: maps, random, class mean).

    NaN scores (a class without correct images has no class mean) are left out.
    """
    m_avg, l_avg = morf.mean(axis=-1), lerf.mean(axis=-1)
    combined = (l_avg - m_avg) / 2  # pytorch-grad-cam's ROADCombined
    own = combined[:, 0]
    out = {
        "road_combined_mean": _mean(own), "road_combined_ci95": mean_ci(own, rng, n_boot),
        "road_morf_mean": _mean(m_avg[:, 0]), "road_morf_ci95": mean_ci(m_avg[:, 0], rng, n_boot),
        "road_lerf_mean": _mean(l_avg[:, 0]), "road_lerf_ci95": mean_ci(l_avg[:, 0], rng, n_boot),
        "by_correct": {}, "versus": {},
        "curves": {kind: {"morf": [_mean(v) for v in morf[:, k].T], "lerf": [_mean(v) for v in lerf[:, k].T]}
                   for k, kind in enumerate(("maps", *BASELINES))},
    }
    groups = (("correct", correct), ("incorrect", ~correct))
    for group, sel in groups:
        out["by_correct"][group] = {"n": int(sel.sum()), "road_combined_mean": _mean(own[sel]),
                                    "road_combined_ci95": mean_ci(own[sel], rng, n_boot)}
    for k, base in enumerate(BASELINES, start=1):
        entry = paired_delta(own, combined[:, k], rng, n_boot).to_dict()
        entry["baseline_combined_mean"] = _mean(combined[:, k])
        for group, sel in groups:
            entry[group] = paired_delta(own[sel], combined[sel, k], rng, n_boot).to_dict()
        out["versus"][base] = entry
    return out


def _save(store: Store, layer: str, params: dict, result: dict, positions: np.ndarray, kinds: list[str],
          morf: np.ndarray, lerf: np.ndarray) -> str:
    """Per-image scores and the result under ``derived/faithfulness/<layer>/pred``, in one step."""
    from camstat.provenance import now
    from camstat.records import jsonable

    name = f"faithfulness/{layer}/pred"
    dims = ("image", "kind", "percentile")
    store.write_derived(name, params,
                        {"position": positions, "morf": morf, "lerf": lerf},
                        {"kinds": kinds, "created": now(), "result": jsonable(result)},
                        dims={"position": dims[:1], "morf": dims, "lerf": dims})
    return f"derived/{name}"


@dataclass
class _Job:
    """Everything the scoring loop needs; ``fingerprint`` identifies a resumable scratch file."""

    store: Store
    net: torch.nn.Module
    dataset: torch.utils.data.Dataset
    methods: list[str]
    layer: str
    positions: np.ndarray
    percentiles: list[float]
    road_noise: float
    seed: int
    means: dict[str, np.ndarray]
    params: dict

    @property
    def kinds(self) -> list[str]:
        return _kinds(self.methods)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.params, self.positions.tolist()]).encode()).hexdigest()


def _score(job: _Job, jobs: int, batch_size: int,
           progress: Callable[[int, int], None] | None) -> tuple[dict, int, float]:
    """Per-image scores of every kind, block by block, resuming from and updating the scratch file.

    Returns (state with ``done``, ``morf``, ``lerf`` (n, K, P)), images scored now, seconds.
    """
    from camstat.road import road_scores

    s, positions = job.store, job.positions
    samples = s.samples
    pred, index = samples["pred"], samples["index"]
    n, k, p = len(positions), len(job.kinds), len(job.percentiles)
    scratch = _scratch_path(s)
    state = _load_scratch(scratch, job.fingerprint) or {
        "done": np.zeros(n, bool), "morf": np.zeros((n, k, p), np.float32), "lerf": np.zeros((n, k, p), np.float32)}
    h, w = s.input_size
    block = int(max(1, min(s.chunk, BLOCK_BYTES // (k * 2 * p * 3 * h * w * 4))))
    start, scored = time.perf_counter(), 0
    for lo in range(0, s.n, block):
        sl = slice(lo, min(lo + block, s.n))
        at = np.flatnonzero((positions >= sl.start) & (positions < sl.stop) & ~state["done"])
        if not at.size:
            continue
        rows = positions[at]
        maps = _block_maps(s, job.methods, job.layer, sl, rows, job.means, pred, index, job.seed)
        images = torch.stack([job.dataset[int(i)][0] for i in rows])
        seeds = [[_seed(job.seed, index[i], kind) for kind in job.kinds] for i in rows]
        morf, lerf = road_scores(job.net, images, maps, pred[rows], job.percentiles, job.road_noise, seeds,
                                 jobs=jobs, batch_size=batch_size)
        state["morf"][at], state["lerf"][at], state["done"][at] = morf, lerf, True
        _save_scratch(scratch, job.fingerprint, state)
        scored += len(rows)
        if progress:
            progress(int(state["done"].sum()), n)
    return state, scored, time.perf_counter() - start


def _prepare(s: Store, methods, layer, limit, percentiles, road_noise, seed, device, checkpoint) -> _Job:
    """Checked options, the store's model and images, the class means and the images to score."""
    from camstat.data import stratified_order
    from camstat.devices import resolve_device
    from camstat.references import group_means

    s.require_complete()
    method_list = ([m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str)
                   else list(methods or s.methods))
    layer = layer or s.layers[0]
    for m in method_list:
        s.raw_maps(m, layer, "pred", slice(0, 0))  # the store's own error for an unknown method/layer
    pct = _parse_percentiles(percentiles)
    if road_noise < 0 or (limit is not None and limit < 1):
        raise CamstatError("--road-noise must be >= 0 and --limit at least 1")
    samples = s.samples
    positions = np.arange(s.n) if limit is None or limit >= s.n else np.sort(
        stratified_order(samples["label"], seed)[:limit])
    net = store_model(s, checkpoint).to(resolve_device(device))
    dataset = store_images(s)
    means = {m: group_means(s.iter_maps(m, layer, "pred"), samples["pred"], samples["correct"].astype(bool),
                            len(s.classes))[0] for m in method_list}
    params = {"methods": method_list, "layer": layer, "limit": limit, "percentiles": pct,
              "road_noise": float(road_noise), "seed": seed, "checkpoint_sha256": s.attrs.get("checkpoint_sha256")}
    return _Job(s, net, dataset, method_list, layer, positions, pct, float(road_noise), seed, means, params)


def saved_result(store: str | Path | Store, layer: str | None = None) -> dict | None:
    """The result dict of the last ``camstat faithfulness`` run on ``store`` (None if never scored):
    what ``camstat report`` and ``camstat compare`` show."""
    s = store if isinstance(store, Store) else Store(store)
    found = s.read_derived(f"faithfulness/{layer or s.layers[0]}/pred", None)
    return None if found is None else found.attrs["result"]


def faithfulness(
    store: str | Path,
    *,
    methods: str | Sequence[str] | None = None,
    layer: str | None = None,
    limit: int | None = None,
    percentiles: str | Sequence[float] = DEFAULT_PERCENTILES,
    road_noise: float = 0.01,
    seed: int = 0,
    jobs: int = 1,
    device: str = "auto",
    batch_size: int = 256,
    checkpoint: str | Path | None = None,
    n_boot: int = 2000,
    save: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FaithfulnessResult:
    """ROAD faithfulness of a store's maps against random and class-mean maps; see the module doc.

    ``methods`` defaults to all of the store's, ``layer`` to its first; ``limit`` scores a seeded
    class-stratified subset of N images; ``jobs`` processes solve the imputations; ``progress(done,
    total)`` is called after every block; rerunning an interrupted call with the same arguments resumes.
    """
    if jobs < 1 or batch_size < 1 or n_boot < 1:
        raise CamstatError("--jobs, --batch-size and the bootstrap count must be at least 1")
    s = store if isinstance(store, Store) else Store(store)
    job = _prepare(s, methods, layer, limit, percentiles, road_noise, seed, device, checkpoint)
    state, scored, seconds = _score(job, jobs, batch_size, progress)

    n, positions = len(job.positions), job.positions
    samples = s.samples
    correct = samples["correct"][positions].astype(bool)
    morf, lerf = state["morf"].astype(np.float64), state["lerf"].astype(np.float64)
    for j, m in enumerate(job.methods):  # undefined where the class had no correct image to average
        missing = ~np.isfinite(job.means[m][samples["pred"][positions]].reshape(n, -1)).all(axis=1)
        morf[missing, 2 + 2 * j] = lerf[missing, 2 + 2 * j] = np.nan
    per_method = {m: _summary(morf[:, [1 + 2 * j, 0, 2 + 2 * j]], lerf[:, [1 + 2 * j, 0, 2 + 2 * j]], correct,
                              np.random.default_rng(_seed(seed, 0, f"bootstrap:{m}")), n_boot)
                  for j, m in enumerate(job.methods)}  # a bootstrap stream per method: independent of the others
    result = FaithfulnessResult(
        n=n, n_correct=int(correct.sum()), percentiles=job.percentiles, road_noise=job.road_noise, seed=seed,
        layer=job.layer, target="pred", methods=per_method, store=str(s.path), derived=None, seconds=seconds,
        images_per_second=scored / seconds if scored and seconds > 0 else float("nan"),
    )
    if save:
        result.derived = _save(s, job.layer, job.params, result.to_dict(), positions, job.kinds,
                               state["morf"], state["lerf"])
    _scratch_path(s).unlink(missing_ok=True)
    return result
