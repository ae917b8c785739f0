"""Controls of an H1 analysis (SPEC 4): the whole pipeline under the null, and randomised weights.

``--control permuted``: :func:`null_pipeline`, correctness shuffled within
group ``--null-repeats`` times with leave-one-out references rebuilt and
every test rerun; the rejection rate at alpha must be near alpha.

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
from camstat import nullsim, stats
from camstat.errors import CamstatError
from camstat.h1.options import rng
from camstat.h1.tables import median
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
                   strata: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Per metric: trained vs randomised-weights maps of the same images (Adebayo et al. 2018).

    Both within-class AUCs (the headline: can the random maps' consistency
    tell correct from incorrect images *of the same class*?) and both
    marginal AUCs, in H1's orientation, with bootstrap CIs (within
    ``strata``: the pooled tests' strata); medians and the paired
    trained - random difference per image.
    """
    out = {}
    for key in trained:
        t, r = trained[key], random.get(key)
        higher = metrics_mod.orientation(key)
        if r is None or higher is None:
            continue
        row: dict[str, Any] = {"higher_is_more_consistent": higher,
                               "median_trained": median(t), "median_random": median(r),
                               "median_random_correct": median(r[correct]),
                               "median_random_incorrect": median(r[~correct]),
                               "n_undefined_random": int(np.isnan(r).sum())}
        mt, mr = row["median_trained"], row["median_random"]
        row["random_over_trained"] = (mr / mt) if (mt not in (None, 0) and mr is not None) else None
        for name, v in (("trained", t), ("random", r)):
            ok = ~np.isnan(v)
            w = stats.within_class_auc(v[ok], correct[ok], strata[ok], higher_is_more_consistent=higher,
                                       n_boot=n_boot, seed=int(rng(seed, "auc-within", name, key).integers(2**31)))
            m = stats.marginal_auc(v[ok], correct[ok], higher_is_more_consistent=higher, n_boot=n_boot,
                                   seed=int(rng(seed, "auc-marginal", name, key).integers(2**31)))
            row[f"auc_within_class_{name}"] = w.auc_within_class
            row[f"auc_within_class_{name}_ci95"] = list(w.auc_within_class_ci95)
            row[f"auc_marginal_{name}"] = m.auc_marginal
            row[f"auc_marginal_{name}_ci95"] = list(m.auc_marginal_ci95)
        both = ~np.isnan(t) & ~np.isnan(r)
        row["paired_trained_minus_random"] = stats.paired_test(t[both], r[both]).to_dict()
        out[key] = jsonable(row)
    return out


def null_pipeline(maps: np.ndarray, correct: np.ndarray, groups: np.ndarray, names: list[str], *, repeats: int,
                  alpha: float, seed: int, q: float, strata: np.ndarray) -> dict:
    """SPEC 4 ``controls.null_pipeline``: the whole pipeline ``repeats`` times under the null.

    :func:`camstat.nullsim.null_pipeline` (correctness shuffled within
    ``strata`` (the grouping's), leave-one-out references rebuilt per group, every metric recomputed, van
    Elteren's test) over the metrics that need no masks (mask-based ones do
    not depend on the labels' references). Adds each rejection rate's exact
    (Clopper-Pearson) 95 % CI over the repeats and the flag
    ``rejection_near_alpha`` (alpha inside that CI).
    """
    from scipy.stats import binomtest

    usable = [m for m in names if not metrics_mod.PER_IMAGE[m].needs_masks]
    res = nullsim.null_pipeline(maps, correct, groups, strata=strata, metric_names=usable, repeats=repeats,
                                alpha=alpha, seed=seed, q=q).to_dict()
    for m in res["metrics"].values():
        n, rate = m["n_tests"], m["rejection_rate"]
        if n and rate is not None:
            ci = binomtest(int(round(rate * n)), n).proportion_ci(0.95, method="exact")
            m["rejection_rate_ci95"] = [float(ci.low), float(ci.high)]
            m["rejection_near_alpha"] = bool(ci.low <= alpha <= ci.high)
        else:
            m["rejection_rate_ci95"], m["rejection_near_alpha"] = [None, None], None
    res["metrics_left_out"] = [m for m in names if m not in usable]
    return jsonable(res)
