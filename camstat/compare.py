"""``camstat compare``: H2 -- do regularised runs beat the baseline? (SPEC 5)

Two arms of ``camstat train-reg`` runs (several seeds each). Per arm: mean,
SD and 95 % CI over runs of held-out accuracy and of consistency -- ``dist``
(mean per-image mean squared distance of the held-out true-class min-max
maps to their class mean) and ``ssim`` (mean SSIM to it). Across arms:
paired tests over seeds (runs are paired by ``--seed``), and the exact
McNemar test on per-image correctness of each seed pair.

The consistency reference is, by default, each run's *own* class means
(of its correctly classified held-out maps, leave-one-out), so both arms are
measured with the same yardstick -- not against the means one arm was
trained towards. ``means=STORE`` measures every run against that store's
class means instead (e.g. the baseline's training-set means).

Library entry point: :func:`compare_runs`, returning a :class:`CompareResult`
whose ``to_dict()`` is what ``--json`` writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from camstat.errors import CamstatError

METRICS = ("accuracy", "dist", "ssim")
HELDOUT_KEYS = ("index", "label", "pred", "correct", "dist_self", "ssim_self", "maps")


@dataclass
class RunData:
    """One finished ``train-reg`` run as compare reads it."""

    path: str
    seed: int
    lam: float
    loss: str
    info: dict  # run.json
    heldout: dict[str, np.ndarray]
    final: dict

    @property
    def resolved(self) -> dict:
        return self.info.get("resolved", {})


def load_run(path: str | Path) -> RunData:
    """Read ``run.json`` and ``heldout.npz`` of a complete run (CamstatError otherwise)."""
    path = Path(path)
    run_json = path / "run.json"
    if not run_json.is_file():
        raise CamstatError(f"{path} is not a camstat train-reg run (no run.json)")
    try:
        info = json.loads(run_json.read_text())
    except ValueError:
        raise CamstatError(f"{run_json} is not valid JSON") from None
    if info.get("status") != "complete" or not (path / "heldout.npz").is_file():
        raise CamstatError(
            f"run {path} is not complete; finish it by rerunning its `camstat train-reg` command (it resumes)"
        )
    with np.load(path / "heldout.npz", allow_pickle=False) as npz:
        heldout = {k: npz[k] for k in npz.files}
    missing = [k for k in HELDOUT_KEYS if k not in heldout]
    if missing:
        raise CamstatError(f"{path}/heldout.npz lacks {', '.join(missing)}; was it written by camstat train-reg?")
    return RunData(path=str(path), seed=int(info.get("seed", 0)), lam=float(info.get("lambda", 0.0)),
                   loss=str(info.get("loss", "")), info=info, heldout=heldout, final=info.get("final", {}))


def _arm_name(runs: list[RunData], fallback: str) -> str:
    keys = {(r.lam, r.loss if r.lam > 0 else "", r.info.get("schedule") if r.lam > 0 else "") for r in runs}
    if len(keys) != 1:
        return fallback
    lam, loss, schedule = keys.pop()
    if lam == 0:
        return "lambda=0"
    return f"lambda={lam:g} {loss}" + ("" if schedule == "constant" else f" {schedule}")


def _run_consistency(run: RunData, means: np.ndarray | None) -> tuple[float, float]:
    """(mean dist, mean ssim) of a run's held-out maps to the reference."""
    h = run.heldout
    if means is None:
        dist, ssim = h["dist_self"], h["ssim_self"]
    else:
        from camstat import metrics
        from camstat.train import _ssim_pairs

        if means.shape[-2:] != h["maps"].shape[-2:]:
            raise CamstatError(f"--means maps are {means.shape[-2:]}, run {run.path} has {h['maps'].shape[-2:]}")
        refs = means[h["label"]]
        dist = np.asarray(metrics.dist(h["maps"], refs), np.float64)
        ssim = _ssim_pairs(h["maps"], refs, tuple(run.resolved.get("input_size", h["maps"].shape[-2:])))
    fin = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
    return fin(dist), fin(ssim)


@dataclass
class CompareResult:
    """Arms, paired tests and McNemar tests; ``to_dict()`` is the ``--json`` output."""

    names: tuple[str, str]
    runs: dict[str, list[str]]
    seeds: dict[str, list[int]]
    values: dict[str, dict[str, list[float]]]  # arm -> metric -> per run
    summaries: dict[str, dict]  # arm -> metric -> Summary
    pairs: list[dict]
    paired: dict  # metric -> PairedResult
    mcnemar: dict
    reference: str  # "self" (own leave-one-out class means) or the --means store
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        a, b = self.names
        return {
            "arms": {
                name: {
                    "runs": self.runs[name],
                    "seeds": self.seeds[name],
                    **{m: {**self.summaries[name][m].to_dict(), "values": self.values[name][m]} for m in METRICS},
                }
                for name in self.names
            },
            "paired": {
                "difference": f"{a} - {b}",
                "pairs": self.pairs,
                **{m: (self.paired[m].to_dict() if self.paired.get(m) is not None else None) for m in METRICS},
            },
            "mcnemar": self.mcnemar,
            "reference": self.reference,
            "runs": [*self.runs[a], *self.runs[b]],
            "notes": self.notes,
        }


def compare_runs(
    runs_a: Sequence[str | Path],
    runs_b: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    means: str | Path | None = None,
) -> CompareResult:
    """Compare two arms of finished runs; differences are ``a - b``.

    Runs pair by seed (a seed may occur once per arm). All runs must hold the
    same held-out images (same data, split selection and classes).
    ``means``: a train-split store whose class means are the consistency
    reference (default: each run's own leave-one-out class means).
    """
    from camstat import stats

    if not runs_a or not runs_b:
        raise CamstatError("compare needs runs on both sides: camstat compare RUN... --vs RUN...")
    arm_a = [load_run(p) for p in runs_a]
    arm_b = [load_run(p) for p in runs_b]
    if names is None:
        name_a, name_b = _arm_name(arm_a, "A"), _arm_name(arm_b, "B")
        if name_a == name_b:
            name_a, name_b = "A", "B"
    else:
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise CamstatError("--names needs two different names, e.g. --names reg,base")
        name_a, name_b = names
    arms = {name_a: arm_a, name_b: arm_b}

    everyone = arm_a + arm_b
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
    notes: list[str] = []
    models = {r.resolved.get("model") for r in everyone}
    if len(models) > 1:
        notes.append(f"the runs use different models: {', '.join(sorted(map(str, models)))}")

    ref_means = None
    reference = "self"
    if means is not None:
        from camstat.losses import class_means_from_store

        keys = {(r.resolved.get("model"), r.info.get("cam"), r.resolved.get("layer"),
                 tuple(r.resolved.get("layer_size", ()))) for r in everyone}
        if len(keys) != 1:
            raise CamstatError("--means needs runs of one model, --cam and layer; compare without --means instead")
        model, cam, layer, layer_size = keys.pop()
        ref_means = class_means_from_store(means, model=model, classes=first.resolved["classes"], method=cam,
                                           layer=layer, size=layer_size).means
        reference = str(means)

    values: dict[str, dict[str, list[float]]] = {}
    summaries: dict[str, dict] = {}
    seeds: dict[str, list[int]] = {}
    for name, runs in arms.items():
        seen = [r.seed for r in runs]
        dup = sorted({s for s in seen if seen.count(s) > 1})
        if dup:
            raise CamstatError(f"arm {name} has several runs of seed {dup[0]}; runs pair by seed, give one per seed")
        seeds[name] = seen
        cons = [_run_consistency(r, ref_means) for r in runs]
        values[name] = {
            "accuracy": [float(np.mean(r.heldout["correct"])) for r in runs],
            "dist": [c[0] for c in cons],
            "ssim": [c[1] for c in cons],
        }
        summaries[name] = {m: stats.summarize(_finite(values[name][m])) for m in METRICS}

    by_seed_b = {r.seed: i for i, r in enumerate(arm_b)}
    pairs = [(i, by_seed_b[r.seed]) for i, r in enumerate(arm_a) if r.seed in by_seed_b]
    unpaired = sorted(set(seeds[name_a]) ^ set(seeds[name_b]))
    if unpaired:
        notes.append(f"seeds without a partner left out of the paired tests: {', '.join(map(str, unpaired))}")
    paired: dict = {}
    for m in METRICS:
        a = np.array([values[name_a][m][i] for i, _ in pairs])
        b = np.array([values[name_b][m][j] for _, j in pairs])
        ok = np.isfinite(a) & np.isfinite(b)
        paired[m] = stats.paired_test(a[ok], b[ok]) if pairs else None
    if not pairs:
        notes.append("no seed occurs in both arms: no paired tests or McNemar tests")

    per_pair = []
    for i, j in pairs:
        ra, rb = arm_a[i], arm_b[j]
        res = stats.mcnemar_exact(ra.heldout["correct"], rb.heldout["correct"])
        per_pair.append({"seed": ra.seed, "run_a": ra.path, "run_b": rb.path, **res.to_dict()})
    pooled = None
    if len(pairs) > 1:
        res = stats.mcnemar_exact(np.concatenate([arm_a[i].heldout["correct"] for i, _ in pairs]),
                                  np.concatenate([arm_b[j].heldout["correct"] for _, j in pairs]))
        pooled = {**res.to_dict(), "pairs": len(pairs),
                  "note": "discordant images summed over seed pairs; each image counts once per pair, so the"
                          " pairs are not independent: read it as descriptive next to the per-pair tests"}
    mcnemar = {"b_means": f"{name_a} right, {name_b} wrong", "c_means": f"{name_a} wrong, {name_b} right",
               "per_pair": per_pair, "pooled": pooled}
    return CompareResult(
        names=(name_a, name_b),
        runs={name: [r.path for r in runs] for name, runs in arms.items()},
        seeds=seeds,
        values=values,
        summaries=summaries,
        pairs=[{"seed": arm_a[i].seed, "run_a": arm_a[i].path, "run_b": arm_b[j].path} for i, j in pairs],
        paired=paired,
        mcnemar=mcnemar,
        reference=reference,
        notes=notes,
    )


def _finite(values: list[float]) -> np.ndarray:
    a = np.asarray(values, np.float64)
    return a[np.isfinite(a)]
