"""Per-metric tables of an H1 analysis: the tests (by correct / cluster) or medians (by class), and the verdict.

Numbers and flags only; the sentences are written by :mod:`camstat.present`.
"""

from __future__ import annotations

import numpy as np

from camstat import metrics as metrics_mod
from camstat import stats
from camstat.h1.options import ALPHA


def median(x: np.ndarray) -> float | None:
    """Median over the finite values; None when there is none."""
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else None


def direction(signed: float) -> str:
    """``supported`` / ``opposite`` / ``none``: the sign of an effect oriented so that > 0 is H1's direction."""
    return "supported" if signed > 0 else "opposite" if signed < 0 else "none"


def verdict(pooled: dict, higher: bool | None, alpha: float = ALPHA) -> dict:
    """Does the pooled effect go the way H1 predicts (correct maps *better*), and is it significant?

    ``auc_consistency`` is the AUC oriented so that > 0.5 means the better
    (more consistent / concentrated / localised) maps predict correctness
    (:func:`camstat.metrics.oriented_auc`).
    """
    stat, p = pooled.get("statistic"), pooled.get("p_permutation")
    significant = p is not None and p < alpha
    if higher is None or stat is None:
        return {"direction": "undefined", "significant": significant, "auc_consistency": None,
                "auc_consistency_ci95": [None, None]}
    auc_c, ci_c = metrics_mod.oriented_auc(pooled.get("auc"), pooled.get("auc_ci95"), higher)
    return {"direction": direction(stat if higher else -stat), "significant": significant,
            "auc_consistency": auc_c, "auc_consistency_ci95": ci_c}


def h1_tables(values: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray, confidence: np.ndarray,
              names: list[str], *, correction: str, min_group: int, permutations: int, n_boot: int,
              seed: int) -> dict:
    """Per metric: :func:`camstat.stats.h1_analysis`'s tables, the metric's family and direction, the verdict."""
    res = stats.h1_analysis(values, correct, groups, confidence, class_names=names, correction=correction,
                            min_group=min_group, permutations=permutations, n_boot=n_boot, seed=seed).to_dict()
    out = {}
    for key, table in res.items():
        higher = metrics_mod.orientation(key)
        out[key] = {
            "per_class": table["per_class"],
            "skipped": table["skipped"],
            "pooled": table["pooled"],
            "kind": metrics_mod.family(key),
            "higher_is_more_consistent": higher,
            "n_undefined": int(np.isnan(values[key]).sum()),
            "verdict": verdict(table["pooled"], higher),
        }
    return out


def median_tables(values: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray,
                  names: list[str]) -> dict:
    """Per-image metric medians per group (all, correct, incorrect) and overall."""
    out = {}
    for key, v in values.items():
        rows = []
        for k, name in enumerate(names):
            m = groups == k
            rows.append({"class": name, "n": int(m.sum()), "n_correct": int((m & correct).sum()),
                         "n_incorrect": int((m & ~correct).sum()), "median": median(v[m]),
                         "median_correct": median(v[m & correct]), "median_incorrect": median(v[m & ~correct]),
                         "n_undefined": int(np.isnan(v[m]).sum())})
        out[key] = {
            "per_class": rows,
            "pooled": {"n": int(v.size), "median": median(v), "median_correct": median(v[correct]),
                       "median_incorrect": median(v[~correct]), "n_undefined": int(np.isnan(v).sum())},
            "kind": metrics_mod.family(key),
            "higher_is_more_consistent": metrics_mod.orientation(key),
        }
    return out
