"""Controls of an H1 analysis (SPEC 4): correctness permuted within group, and randomised weights.

``random_store``: the Adebayo et al. (2018) sanity check. The same metrics
on the maps of the same architecture with randomised weights, for the same
images; groups and correctness are the *trained* store's (a random model's
predictions are meaningless), so the comparison isolates the maps.

Reference: Adebayo, J. et al. (2018). Sanity checks for saliency maps. NeurIPS 31.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from camstat import metrics as metrics_mod
from camstat import stats
from camstat.errors import CamstatError
from camstat.h1.options import rng
from camstat.h1.tables import direction, median
from camstat.records import jsonable
from camstat.store import Store


def random_mismatch(rnd: Store, store: Store) -> list[str]:
    """Why ``rnd`` is not a randomised-weights store of the same model and images as ``store`` (empty: it is)."""
    a, b = rnd.attrs, store.attrs
    if rnd.path.resolve() == store.path.resolve():
        return ["it is the analysed store itself"]
    problems = []
    if rnd.n != store.n:
        problems.append(f"n {rnd.n} vs {store.n}")
    if a.get("model") != b.get("model"):
        problems.append(f"model {a.get('model')!r} vs {b.get('model')!r}")
    if (a.get("data"), a.get("split")) != (b.get("data"), b.get("split")):
        problems.append(f"data {a.get('data')} ({a.get('split')}) vs {b.get('data')} ({b.get('split')})")
    if rnd.classes != store.classes:
        problems.append("classes")
    if not problems and not np.array_equal(rnd.samples["index"], store.samples["index"]):
        problems.append("other images (dataset index differs)")
    if b.get("checkpoint_sha256") and a.get("checkpoint_sha256") == b.get("checkpoint_sha256"):
        problems.append("the same checkpoint (randomised weights need no --checkpoint)")
    return problems


def check_random(rnd: Store, store: Store, method: str, layer: str, target: str) -> None:
    """A clear error unless ``rnd`` is a complete randomised-weights twin of ``store`` holding these maps."""
    problems = random_mismatch(rnd, store)
    if problems:
        raise CamstatError(f"random store {rnd.path} does not match {store.path}: {'; '.join(problems)}; "
                           "extract it with the same --model, --data, --split and --limit and no --checkpoint")
    rnd.require_complete()
    for what, have, want in (("method", rnd.methods, method), ("layer", rnd.layers, layer),
                             ("target", rnd.targets, target)):
        if want not in have:
            raise CamstatError(f"random store {rnd.path} has no {what} {want!r} (it holds {', '.join(have)})")


def random_control(trained: dict[str, np.ndarray], random: dict[str, np.ndarray], correct: np.ndarray,
                   groups: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Per metric: trained vs randomised-weights maps of the same images (Adebayo et al. 2018)."""
    out = {}
    for key in trained:
        t, r = trained[key], random.get(key)
        if r is None:
            continue
        row: dict[str, Any] = {"higher_is_more_consistent": metrics_mod.orientation(key),
                               "median_trained": median(t), "median_random": median(r),
                               "median_random_correct": median(r[correct]),
                               "median_random_incorrect": median(r[~correct]),
                               "n_undefined_random": int(np.isnan(r).sum())}
        mt, mr = row["median_trained"], row["median_random"]
        row["random_over_trained"] = (mr / mt) if (mt not in (None, 0) and mr is not None) else None
        for name, v in (("trained", t), ("random", r)):
            ok = ~np.isnan(v)
            a = stats.auc_test(v[ok], correct[ok], groups[ok], n_boot=n_boot,
                               seed=int(rng(seed, "auc", key).integers(2**31)))
            row[f"auc_{name}"] = a.auc
            row[f"auc_{name}_ci95"] = list(a.ci95)
        both = ~np.isnan(t) & ~np.isnan(r)
        row["paired_trained_minus_random"] = stats.paired_test(t[both], r[both]).to_dict()
        out[key] = jsonable(row)
    return out


def permuted_labels(groups: np.ndarray, correct: np.ndarray, seed: int) -> np.ndarray:
    """Correctness shuffled within each group (:func:`camstat.stats.permuted_control`)."""
    return np.asarray(stats.permuted_control(groups, correct, seed=seed), dtype=bool)


def artefact(values: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, *, permutations: int,
             seed: int) -> dict:
    """Pooled stratified permutation test per metric (pipeline-level null diagnostic)."""
    out = {}
    for key, v in values.items():
        ok = ~np.isnan(v)
        r = stats.stratified_permutation_test(v[ok], labels[ok], groups[ok], permutations,
                                              seed=int(rng(seed, "artefact", key).integers(2**31)))
        higher = metrics_mod.orientation(key)
        signed = None
        if higher is not None and r.statistic == r.statistic:
            signed = direction(r.statistic if higher else -r.statistic)
        out[key] = jsonable({"statistic": r.statistic, "p_permutation": r.p_value, "direction": signed,
                             "n": int(ok.sum())})
    return out
