"""The H1 analysis of one store: :func:`analyze` (see :mod:`camstat.h1`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from camstat import references
from camstat.errors import CamstatError
from camstat.h1 import controls, groups as grouping, options, tables, verdicts
from camstat.h1.streaming import MapStream, Progress, Streamed, stream_metrics
from camstat.records import jsonable
from camstat.store import Store


@dataclass
class ConsistencyResult:
    """What :func:`analyze` found: ``to_dict()`` is the ``--json`` result (SPEC 4 keys)."""

    data: dict
    values: dict[str, np.ndarray] = field(repr=False)
    undefined: np.ndarray = field(repr=False)
    groups: np.ndarray = field(repr=False)
    controls: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    derived: str | None = None
    strata: np.ndarray | None = field(default=None, repr=False)  # the pooled tests' (params.strata says what)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.data))

    @property
    def by(self) -> str:
        return self.data["by"]


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 over arrays' dtype, shape and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def provenance(store: Store) -> dict:
    from camstat.provenance import command_line, versions

    a = store.attrs
    return {"model": a.get("model"), "checkpoint": a.get("checkpoint"),
            "checkpoint_sha256": a.get("checkpoint_sha256"), "data": a.get("data"), "split": a.get("split"),
            "store_created": a.get("created"), "command": command_line(), "versions": versions()}


def check_reference(ref: Store, store: Store, method: str, layer: str, target: str) -> str:
    """A clear error unless ``ref`` can give class means for ``store``; the reference's target to read."""
    if ref.path.resolve() == store.path.resolve():
        raise CamstatError("--reference is the analysed store itself; leave it out to use leave-one-out references")
    if ref.classes != store.classes:
        raise CamstatError(f"reference store {ref.path} has other classes than {store.path}; it must be the same task")
    for what, have, want in (("method", ref.methods, method), ("layer", ref.layers, layer)):
        if want not in have:
            raise CamstatError(f"reference store {ref.path} has no {what} {want!r} (it holds {', '.join(have)})")
    a, b = ref.attrs, store.attrs
    if (a.get("data"), a.get("split"), a.get("checkpoint_sha256")) == (b.get("data"), b.get("split"),
                                                                       b.get("checkpoint_sha256")):
        raise CamstatError(f"reference store {ref.path} holds the same images and model as {store.path}; its means "
                           "would contain each image itself; use leave-one-out references (no --reference)")
    ref.require_complete()
    # Only correct maps enter the means, and for them pred == true: either target gives the same maps.
    for alt in (target, "pred", "true"):
        if alt in ref.targets:
            return alt
    raise CamstatError(f"reference store {ref.path} has no target {target!r} (it holds {', '.join(ref.targets)})")


def reference_means(ref: Store, spec: MapStream, opts: options.Options, g: grouping.Grouping,
                    ref_target: str) -> tuple[np.ndarray, dict]:
    """Group means of the reference store's correct maps, and what to record about them."""
    ref_spec = MapStream(opts.method, opts.layer, ref_target, opts.size, block=opts.block, progress=spec.progress,
                         total=spec.total)
    n_groups = len(g.names)
    # -1: a reference image of a class without clusters here (within-class clusters); it enters no mean
    grouped = g.ref_groups >= 0
    means, counts = references.group_means(ref_spec.iterate(ref), np.where(grouped, g.ref_groups, 0),
                                           ref.samples["correct"].astype(bool) & grouped, n_groups)
    spec.done = ref_spec.done
    info = {**ref.identity(), "target": ref_target,
            "counts": {g.names[j]: int(counts[j]) for j in range(n_groups)},
            "groups_without_reference": [g.names[j] for j in range(n_groups) if counts[j] == 0],
            "means_sha256": fingerprint(means)}
    return means, info


def run_controls(s: Store, rnd: Store | None, spec: MapStream, opts: options.Options, g: grouping.Grouping,
                 correct: np.ndarray, values: dict, maps: np.ndarray | None, loo: bool
                 ) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """The null-pipeline control and the randomised-weights control: results and per-image arrays."""
    out: dict[str, Any] = {"null_pipeline": None, "random_weights": None}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    if opts.control == "permuted":
        # references from another store do not depend on the labels: only leave-one-out ones are rebuilt
        out["null_pipeline"] = (controls.null_pipeline(maps, correct, g.groups, opts.metrics,
                                                       repeats=opts.null_repeats, alpha=options.ALPHA,
                                                       seed=opts.seed, q=opts.q, strata=g.strata)
                                if loo else {"skipped": "fixed_reference"})
    if rnd is not None:
        n_groups = len(g.names)
        rnd_run = stream_metrics(rnd, spec, opts.metrics, g.groups, correct, n_groups, q=opts.q,
                                 masks=opts.needs_masks, group_level=opts.grouped)
        arrays["random_weights"] = rnd_run.values
        rc = out["random_weights"] = {
            "store": rnd.identity(),
            "metrics": controls.random_control(values, rnd_run.values, correct, g.strata, n_boot=opts.n_boot,
                                               seed=opts.seed),
            "undefined_reference": int(rnd_run.undefined.sum()),
        }
        if opts.grouped:
            rc["groups"] = grouping.group_level(rnd, spec, rnd_run, g.groups, None, g.names,
                                                pair_sample=opts.pair_sample, seed=opts.seed, q=opts.q,
                                                label=opts.label, subsets=("all",))
    return out, arrays


def dispersion(maps: np.ndarray, correct: np.ndarray, g: grouping.Grouping, opts: options.Options) -> dict:
    """SPEC 4 ``dispersion``: are incorrect maps less consistent *among themselves*? (:mod:`camstat.dispersion`),
    within the strata of the pooled tests (cluster x class cells for clusters across classes)."""
    from camstat.dispersion import dispersion_test

    return dispersion_test(maps, correct, g.strata, class_names=g.strata_names, min_group=max(2, opts.min_group),
                           n_permutations=opts.permutations, max_pairs_sample=min(200, opts.pair_sample),
                           seed=opts.seed).to_dict()


def record_params(opts: options.Options, reference_info: dict | None, rnd: Store | None) -> dict:
    return {"method": opts.method, "layer": opts.layer, "target": opts.target, "by": opts.by,
            "metrics": opts.metrics, "class_of": opts.class_of, "reference": reference_info,
            "size": list(opts.size), "q": opts.q, "correction": opts.correction,
            "permutations": opts.permutations, "n_boot": opts.n_boot, "min_group": opts.min_group,
            "seed": opts.seed, "control": opts.control, "primary": opts.primary, "null_repeats": opts.null_repeats,
            "random_store": rnd.identity() if rnd is not None else None,
            "clusters": opts.clusters if opts.by == "cluster" else None,
            "features": opts.features if opts.by == "cluster" else None,
            "within_class": opts.within_class if opts.by == "cluster" else None, "pair_sample": opts.pair_sample,
            "reference_from": "store" if reference_info is not None else "leave-one-out"}


def undefined_summary(undefined: np.ndarray, g: grouping.Grouping) -> dict:
    return {"n": int(undefined.sum()),
            "per_group": {name: int(undefined[g.groups == j].sum()) for j, name in enumerate(g.names)
                          if undefined[g.groups == j].any()}}


def analyze(store: Store | str | Path, *, method: str | None = None, layer: str | None = None,
            target: str = "pred", by: str = "correct", metrics: str | Sequence[str] | None = None,
            class_of: str = "pred", reference: Store | str | Path | None = None,
            size: int | Sequence[int] | None = None, q: float = 0.2, correction: str = "holm",
            permutations: int = 10000, n_boot: int = 2000, min_group: int = 5, seed: int = 0,
            control: str | None = None, random_store: Store | str | Path | None = None, clusters: int | str = 8,
            features: str = "thumbnail", within_class: bool = False, pair_sample: int = 500,
            primary: str | None = None, null_repeats: int = 200, save: bool = True, block: int | None = None,
            progress: Progress | None = None) -> ConsistencyResult:
    """Consistency metrics and H1 tests of one store (see :mod:`camstat.h1`).

    ``by``: ``correct`` (H1 tests per class and pooled), ``class``
    (group-level consistency per class, metric medians) or ``cluster``
    (k-means composition clusters of :mod:`camstat.composition`: ``features``
    thumbnail, hog, embedding or mask, ``clusters`` K or ``"auto"``,
    optionally ``within_class``; H1 tests within clusters and group-level
    consistency per cluster, the assignment saved). ``save`` writes the
    per-image arrays and the result under ``derived/``; ``block`` overrides
    the number of maps read at a time (default: the store's chunk).
    ``primary`` (default ``dist``) is the metric whose verdict this is
    (:mod:`camstat.h1.verdicts`; a command analysing several methods
    adjusts across them); ``control="permuted"`` runs the whole pipeline
    under the null ``null_repeats`` times.
    ``progress(done, total)`` counts maps read over all passes.
    """
    s = options.as_store(store)
    s.require_complete()
    opts = options.resolve(s, method=method, layer=layer, target=target, by=by, metrics=metrics,
                           class_of=class_of, size=size, q=q, correction=correction, permutations=permutations,
                           n_boot=n_boot, min_group=min_group, seed=seed, control=control, clusters=clusters,
                           features=features, within_class=within_class, pair_sample=pair_sample, block=block,
                           primary=primary, null_repeats=null_repeats)
    ref = options.as_store(reference, "reference store") if reference is not None else None
    ref_target = check_reference(ref, s, opts.method, opts.layer, target) if ref is not None else None
    rnd = options.as_store(random_store, "random store") if random_store is not None else None
    if rnd is not None:
        controls.check_random(rnd, s, opts.method, opts.layer, target)
    samples = s.samples
    correct = samples["correct"].astype(bool)
    confidence = samples["confidence"].astype(np.float64)
    logits = samples["logits"].astype(np.float64) if np.isfinite(samples["logits"]).all() else None
    spec = MapStream(opts.method, opts.layer, opts.target, opts.size, block=block, progress=progress)
    g = grouping.make_groups(s, ref, opts)
    tested = opts.by != "class"
    passes = 1 if ref is not None and by == "correct" else 2
    spec.total = passes * s.n + (ref.n if ref is not None else 0) + (2 * rnd.n if rnd is not None else 0)
    means, reference_info = reference_means(ref, spec, opts, g, ref_target) if ref is not None else (None, None)
    main_run = stream_metrics(s, spec, opts.metrics, g.groups, correct, len(g.names), q=opts.q, means=means,
                              masks=opts.needs_masks, group_level=opts.grouped, keep_maps=tested)
    if tested:
        metric_tables = tables.h1_tables(main_run.values, correct, g.groups, confidence, logits, g.names,
                                         strata=g.strata, primary=opts.primary, correction=opts.correction,
                                         min_group=opts.min_group, permutations=opts.permutations,
                                         n_boot=opts.n_boot, seed=opts.seed)
    else:
        metric_tables = tables.median_tables(main_run.values, correct, g.groups, g.names)
    result = h1_result(s, opts, g, main_run, correct, metric_tables)
    result["confidence_baseline"] = (tables.confidence_baseline(confidence, correct, g.strata, n_boot=opts.n_boot,
                                                                seed=opts.seed) if tested else None)
    result["dispersion"] = dispersion(main_run.maps, correct, g, opts) if tested else None
    result["controls"], control_values = run_controls(s, rnd, spec, opts, g, correct, main_run.values,
                                                      main_run.maps, loo=means is None)
    main_run.maps = None  # (N, H, W): not kept with the result
    result.update(params=record_params(opts, reference_info, rnd), store=str(s.path), provenance=provenance(s))
    result["params"]["strata"] = g.strata_kind if tested else None
    result = jsonable(result)
    verdicts.primary_verdicts([result], alpha=options.ALPHA, correction=opts.correction)
    derived = None
    if save:
        derived = result["derived"] = save_result(s, result, main_run, g.groups if by == "cluster" else None,
                                                  control_values)
    return ConsistencyResult(result, main_run.values, main_run.undefined, g.groups, control_values, derived,
                             g.strata)


def h1_result(s: Store, opts: options.Options, g: grouping.Grouping, run: Streamed, correct: np.ndarray,
              metric_tables: dict) -> dict:
    """The result's head: what was analysed, the metric tables, group-level consistency and clusters."""
    result: dict[str, Any] = {
        "method": opts.method, "layer": opts.layer, "target": opts.target, "by": opts.by,
        "class_of": opts.class_of, "primary": opts.primary, "n": s.n,
        "accuracy": float(correct.mean()) if s.n else None,
        "n_correct": int(correct.sum()), "n_incorrect": int((~correct).sum()), "metrics": metric_tables,
        "undefined_reference": undefined_summary(run.undefined, g),
    }
    if opts.grouped:
        spec = MapStream(opts.method, opts.layer, opts.target, opts.size)
        result["groups"] = grouping.group_level(s, spec, run, g.groups, correct, g.names,
                                                pair_sample=opts.pair_sample, seed=opts.seed, q=opts.q,
                                                label=opts.label)
    if g.info is not None:
        result["clusters"] = g.info
    return result


def save_result(s: Store, result: dict, run: Streamed, clusters: np.ndarray | None,
                control_values: dict[str, dict[str, np.ndarray]]) -> str:
    """Per-image arrays and the result under ``derived/consistency/...``; primary data untouched.

    The one place an H1 analysis writes into a store.
    """
    from camstat.provenance import now

    p = result["params"]
    # each clustering keeps its own result: features, K and within-class name it beside --by cluster
    by = result["by"] if result["by"] != "cluster" else (
        f"cluster-{p['features']}-k{p['clusters']}{'-within' if p['within_class'] else ''}")
    name = f"consistency/{result['method']}/{result['layer']}/{result['target']}/{by}"
    arrays = {key: v.astype("float32") for key, v in run.values.items()}
    arrays["reference_undefined"] = run.undefined.astype(bool)
    if clusters is not None:
        arrays["cluster"] = clusters.astype("int64")
    for cname, vals in control_values.items():
        arrays.update({f"controls/{cname}/{key}": v.astype("float32") for key, v in vals.items()})
    # Written whole and swapped in atomically: arrays and attributes always come from one run.
    return s.write_derived(name, result["params"], arrays, {"created": now(), "result": result})
