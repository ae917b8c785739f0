"""``camstat compare``: H2 with the seed as the unit of replication (SPEC 5).

Two arms of ``camstat train-reg`` runs, several seeds each, measured on the
test split each run saved (``heldout.npz``). Per run one number per metric:

- ``accuracy`` -- the fraction of test images classified correctly;
- consistency, on the images *this run gets right* only, so accuracy cannot
  pass for consistency: ``dist`` (mean per-pixel squared distance of the
  true-class min-max map to its class mean, lower = more consistent) and
  ``ssim`` (SSIM to it, higher = more consistent);
- concentration, on the same images, so flatter maps cannot pass for
  consistency unseen: ``entropy`` (Shannon entropy of the sum-normalised
  map) and ``spread`` (its radius of gyration / diagonal), see
  :mod:`camstat.metrics`.

The class mean is, by default, each run's *own* (its correct test maps,
leave-one-out), so both arms are measured with their own yardstick;
``means=STORE`` measures every run against that store's class means instead.

Faithfulness, when the runs' test stores have been scored: a run's scored
test store is found at the conventional path ``RUN/test.zarr`` (made by
``camstat extract --checkpoint RUN/model.pt --split test --store
RUN/test.zarr`` and scored by ``camstat faithfulness RUN/test.zarr``; its
checkpoint must be the run's ``model.pt``). Per run, for the maps of the
run's ``--cam``: ``road_combined`` (mean ROAD combined score, higher = more
faithful), ``road_vs_random`` and ``road_vs_class_mean`` (mean paired
difference of combined against random maps and against the class-mean map,
positive = the maps carry image-specific evidence the model uses); see
:mod:`camstat.faithfulness`. Runs whose store is missing or unscored count as
missing values for these metrics (named in ``faithfulness.unscored``); every
scored store must have been scored with the same options (same images).

Per arm: mean, SD and t-based 95 % CI over seeds. Between arms, paired by
seed: :func:`camstat.seedtests.compare_seeds` (mean difference with its t CI,
exact sign-flip p, Wilcoxon from 6 pairs). The exact McNemar test of each
seed pair is descriptive only, next to the same statistic between two seeds
of one arm (run-to-run scale); it is never the H2 verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from camstat.errors import CamstatError
from camstat.runs import DEFAULT_CAM, Run, arm_key, arm_name, find_runs, load_run, read_info

METRICS = ("accuracy", "dist", "ssim", "entropy", "spread")
CONSISTENCY = ("dist", "ssim")
CONCENTRATION = ("entropy", "spread")
FAITHFULNESS = ("road_combined", "road_vs_random", "road_vs_class_mean")
TEST_STORE = "test.zarr"  # a run's scored test store, inside its run directory
# faithfulness options that must agree between runs for their numbers to be comparable
FAITHFULNESS_SETTINGS = ("n", "percentiles", "road_noise", "seed", "layer")


def run_values(run: Run, means: np.ndarray | None = None) -> dict[str, float]:
    """One number per metric for one run (see the module docstring); NaN where no image qualifies."""
    from camstat import metrics

    h = run.heldout
    ok = h["correct"].astype(bool)
    maps = h["maps"][ok]
    if means is None:
        dist, ssim = h["dist_self"][ok], h["ssim_self"][ok]
    else:
        from camstat.training.evaluate import ssim_pairs

        if means.shape[-2:] != h["maps"].shape[-2:]:
            raise CamstatError(f"--means maps are {means.shape[-2:]}, run {run.path} has {h['maps'].shape[-2:]}")
        refs = means[h["label"][ok]]
        dist = np.asarray(metrics.dist(maps, refs), np.float64)
        ssim = ssim_pairs(maps, refs, tuple(run.resolved.get("input_size", maps.shape[-2:])))
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
    concentration = {"entropy": metrics.entropy(maps), "spread": metrics.spread(maps)} if len(maps) else \
        {"entropy": np.zeros(0), "spread": np.zeros(0)}
    return {"accuracy": float(np.mean(ok)), "dist": mean(dist), "ssim": mean(ssim),
            **{k: mean(np.asarray(v, np.float64)) for k, v in concentration.items()}}


def measured(faithfulness: dict | None) -> tuple[str, ...]:
    """The metrics of a comparison: :data:`METRICS`, and :data:`FAITHFULNESS` when some run was scored."""
    return METRICS + (FAITHFULNESS if faithfulness else ())


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def run_faithfulness(run: Run) -> dict | None:
    """ROAD faithfulness of the run's ``--cam`` maps from its scored test store ``RUN/test.zarr``.

    Returns ``{"method", "settings", "values"}`` (``values``: one number per :data:`FAITHFULNESS`
    metric), or None when the run has no such store or it was never scored.
    """
    from camstat.faithfulness import saved_result
    from camstat.store import Store

    path = Path(run.path) / TEST_STORE
    if not path.exists():
        return None
    store = Store(path)
    layer = run.resolved.get("layer")
    d = saved_result(store, layer if layer in store.layers else None)
    if d is None:
        return None
    if store.attrs.get("checkpoint_sha256") != run.info.get("checkpoint_sha256"):
        raise CamstatError(f"{path} was extracted from another checkpoint than {run.path}/model.pt; re-extract it "
                           f"with camstat extract --checkpoint {run.path}/model.pt --split test --store {path} "
                           "--overwrite, then score it again")
    if store.attrs.get("split") != "test":
        raise CamstatError(f"{path} holds the {store.attrs.get('split')!r} split; a run's {TEST_STORE} must be "
                           "its test split (camstat extract --split test)")
    method = str(run.info.get("cam") or DEFAULT_CAM)
    m = d["methods"].get(method)
    if m is None:
        raise CamstatError(f"{path} was scored for {', '.join(d['methods'])}, not the run's --cam {method}; run "
                           f"camstat faithfulness {path} --method {method}")
    values = {"road_combined": m["road_combined_mean"], "road_vs_random": m["versus"]["random"]["delta"],
              "road_vs_class_mean": m["versus"]["class_mean"]["delta"]}
    return {"method": method, "settings": {k: d[k] for k in FAITHFULNESS_SETTINGS},
            "values": {k: _number(v) for k, v in values.items()}}


def _faithfulness(everyone: list[Run]) -> dict | None:
    """Every run's faithfulness (None when no run's test store has been scored); options must agree."""
    found = {r.path: run_faithfulness(r) for r in everyone}
    scored = {p: f for p, f in found.items() if f is not None}
    if not scored:
        return None
    settings = [f["settings"] for f in scored.values()]
    if any(s != settings[0] for s in settings[1:]):
        raise CamstatError("the runs' test stores were scored by camstat faithfulness with different options "
                           f"({', '.join(FAITHFULNESS_SETTINGS)}); score every {TEST_STORE} with the same ones")
    return {"store": TEST_STORE, "settings": settings[0], "methods": {p: f["method"] for p, f in scored.items()},
            "values": {p: f["values"] for p, f in scored.items()},
            "unscored": [p for p, f in found.items() if f is None]}


@dataclass
class CompareResult:
    """Arms, paired comparisons over seeds and descriptive McNemar tables; ``to_dict()`` is ``--json``."""

    names: tuple[str, str]
    runs: dict[str, list[str]]
    seeds: dict[str, list[int]]
    values: dict[str, dict[str, list[float]]]  # arm -> metric -> per run
    summaries: dict[str, dict]  # arm -> metric -> stats.Summary
    pairs: list[dict]
    paired: dict  # metric -> seedtests.SeedComparison or None
    mcnemar: dict
    reference: str  # "self" (own leave-one-out class means) or the --means store
    unpaired_seeds: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    faithfulness: dict | None = None  # see _faithfulness; None when no run's test store was scored

    @property
    def metrics(self) -> tuple[str, ...]:
        return measured(self.faithfulness)

    def to_dict(self) -> dict:
        a, b = self.names
        families = {"consistency": list(CONSISTENCY), "concentration": list(CONCENTRATION)}
        if self.faithfulness:
            families["faithfulness"] = list(FAITHFULNESS)
        return {
            "arms": {
                name: {
                    "runs": self.runs[name],
                    "seeds": self.seeds[name],
                    **{m: {**self.summaries[name][m].to_dict(), "values": self.values[name][m]}
                       for m in self.metrics},
                }
                for name in self.names
            },
            "paired": {
                "difference": f"{a} - {b}",
                "pairs": self.pairs,
                **{m: (self.paired[m].to_dict() if self.paired.get(m) is not None else None) for m in self.metrics},
            },
            "families": families,
            "faithfulness": self.faithfulness,
            "consistency_images": "correct",
            "mcnemar": self.mcnemar,
            "reference": self.reference,
            "runs": [*self.runs[a], *self.runs[b]],
            "unpaired_seeds": self.unpaired_seeds,
            "models": self.models,
        }


def _check_comparable(everyone: list[Run]) -> None:
    first = everyone[0]
    for run in everyone[1:]:
        for key in ("data", "classes"):
            if run.resolved.get(key) != first.resolved.get(key):
                raise CamstatError(f"runs {first.path} and {run.path} differ in {key}; compare runs of one data set")
        if not np.array_equal(run.heldout["index"], first.heldout["index"]):
            raise CamstatError(
                f"runs {first.path} and {run.path} were evaluated on different held-out images"
                " (--eval-limit or data differ); paired tests need the same images"
            )


def _reference_means(means: str | Path, everyone: list[Run]) -> np.ndarray:
    from camstat.training.means import class_means_from_store

    keys = {(r.resolved.get("model"), r.info.get("cam"), r.resolved.get("layer"),
             tuple(r.resolved.get("layer_size", ()))) for r in everyone}
    if len(keys) != 1:
        raise CamstatError("--means needs runs of one model, --cam and layer; compare without --means instead")
    model, cam, layer, layer_size = keys.pop()
    return class_means_from_store(means, model=model, classes=everyone[0].resolved["classes"], method=cam,
                                  layer=layer, size=layer_size).means


def _arm_names(arm_a: list[Run], arm_b: list[Run], names: Sequence[str] | None) -> tuple[str, str]:
    if names is not None:
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise CamstatError("--names needs two different names, e.g. --names reg,base")
        return names[0], names[1]
    keys_a, keys_b = {r.key for r in arm_a}, {r.key for r in arm_b}
    name_a = arm_name(keys_a.pop()) if len(keys_a) == 1 else "A"
    name_b = arm_name(keys_b.pop()) if len(keys_b) == 1 else "B"
    return ("A", "B") if name_a == name_b else (name_a, name_b)


def _mcnemar_rows(pairs: list[tuple[Run, Run]]) -> list[dict]:
    from camstat import stats

    return [{"seed_a": ra.seed, "seed_b": rb.seed, "run_a": ra.path, "run_b": rb.path,
             **stats.mcnemar_exact(ra.heldout["correct"], rb.heldout["correct"]).to_dict()} for ra, rb in pairs]


def _mcnemar(arms: dict[str, list[Run]], pairs: list[tuple[Run, Run]]) -> dict:
    """Exact McNemar per seed pair between the arms, and between every two seeds within each arm (descriptive)."""
    per_pair = [{"seed": row["seed_a"], **row} for row in _mcnemar_rows(pairs)]
    within = {name: _mcnemar_rows(list(combinations(sorted(runs, key=lambda r: r.seed), 2)))
              for name, runs in arms.items()}
    return {"descriptive": True, "per_pair": per_pair, "within_arm": within, "pooled": None}


def _arm_stats(runs: list[Run], name: str, ref: np.ndarray | None, faith: dict | None) -> tuple[list[int], dict, dict]:
    from camstat import stats

    seeds = [r.seed for r in runs]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise CamstatError(f"arm {name} has several runs of seed {dup[0]}; runs pair by seed, give one per seed")
    metrics = measured(faith)
    scored = faith["values"] if faith else {}
    per_run = [{**run_values(r, ref), **scored.get(r.path, dict.fromkeys(FAITHFULNESS, float("nan")))}
               for r in runs]
    values = {m: [v[m] for v in per_run] for m in metrics}
    finite = lambda xs: [x for x in xs if np.isfinite(x)]
    return seeds, values, {m: stats.summarize(finite(values[m])) for m in metrics}


def compare_runs(
    runs_a: Sequence[str | Path],
    runs_b: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    means: str | Path | None = None,
) -> CompareResult:
    """Compare two arms of finished runs; differences are ``a - b``.

    Runs pair by seed (a seed may occur once per arm). All runs must hold the
    same test images (same data, selection and classes). ``means``: a
    train-split store whose class means are the consistency reference
    (default: each run's own leave-one-out class means).
    """
    from camstat.seedtests import compare_seeds

    if not runs_a or not runs_b:
        raise CamstatError("compare needs runs on both sides: camstat compare RUN... --vs RUN...")
    arm_a, arm_b = [load_run(p) for p in runs_a], [load_run(p) for p in runs_b]
    name_a, name_b = _arm_names(arm_a, arm_b, names)
    arms = {name_a: arm_a, name_b: arm_b}
    everyone = arm_a + arm_b
    _check_comparable(everyone)
    ref = _reference_means(means, everyone) if means is not None else None
    faith = _faithfulness(everyone)
    seeds, values, summaries = {}, {}, {}
    for name, runs in arms.items():
        seeds[name], values[name], summaries[name] = _arm_stats(runs, name, ref, faith)
    index_b = {r.seed: j for j, r in enumerate(arm_b)}
    idx = [(i, index_b[r.seed]) for i, r in enumerate(arm_a) if r.seed in index_b]
    pairs = [(arm_a[i], arm_b[j]) for i, j in idx]
    paired = {}
    for m in measured(faith):
        x = np.array([values[name_a][m][i] for i, _ in idx])
        y = np.array([values[name_b][m][j] for _, j in idx])
        ok = np.isfinite(x) & np.isfinite(y)
        paired[m] = compare_seeds(x[ok], y[ok]) if idx else None
    return CompareResult(
        names=(name_a, name_b), runs={n: [r.path for r in rs] for n, rs in arms.items()}, seeds=seeds,
        values=values, summaries=summaries,
        pairs=[{"seed": ra.seed, "run_a": ra.path, "run_b": rb.path} for ra, rb in pairs],
        paired=paired, mcnemar=_mcnemar(arms, pairs), reference="self" if means is None else str(means),
        unpaired_seeds=sorted(set(seeds[name_a]) ^ set(seeds[name_b])),
        models=sorted({str(r.resolved.get("model")) for r in everyone}), faithfulness=faith,
    )


@dataclass
class SweepComparison:
    """Every arm of a sweep folder compared with its lambda-0 arm."""

    root: str
    comparisons: list[CompareResult]  # each: an arm (first) against the lambda-0 arm of its cam

    def to_dict(self) -> dict:
        return {"sweep": self.root, "comparisons": [c.to_dict() for c in self.comparisons]}


def compare_sweep(root: str | Path, *, means: str | Path | None = None) -> SweepComparison:
    """``camstat compare runs/NAME``: each arm of ``runs/NAME/<arm>/s<seed>/`` against the lambda-0 arm."""
    paths = find_runs(root)
    if not paths:
        raise CamstatError(f"{root} holds no runs (expected {root}/<arm>/s<seed>/run.json); run `camstat sweep` first")
    return compare_with_baseline(paths, means=means, root=str(root))


def compare_with_baseline(paths: Sequence[str | Path], *, means: str | Path | None = None,
                          root: str = "the runs") -> SweepComparison:
    """Every arm among the runs ``paths`` (grouped by configuration) against the lambda-0 arm of its cam."""
    arms: dict[tuple, list[Path]] = {}
    for path in paths:
        arms.setdefault(arm_key(read_info(path)), []).append(Path(path))
    bases = {k[3]: k for k in arms if k[0] == 0}  # a baseline per cam: the cam makes the maps measured
    others = sorted((k for k in arms if k[0] > 0), key=lambda k: (k[0], k[1:]))
    if not bases:
        raise CamstatError(f"{root} has no lambda-0 arm to compare with; add --lambda 0 to the sweep")
    if not others:
        raise CamstatError(f"{root} holds only lambda-0 arms; nothing to compare them with")
    missing = sorted({k[3] for k in others} - set(bases))
    if missing:
        raise CamstatError(f"{root} has no lambda-0 arm with --cam {missing[0]}; add it to the sweep")
    return SweepComparison(str(root), [compare_runs(arms[k], arms[bases[k[3]]], means=means) for k in others])
