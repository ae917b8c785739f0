"""Per-metric tables of an H1 analysis: the tests (by correct / cluster) or medians (by class), and the findings.

Each metric's pooled record carries SPEC 4's keys: the stratified
permutation p and its adjusted p (within the metric's role, see
:func:`roles`), the logistic odds ratio without and with a flexible
confidence adjustment (:func:`camstat.stats.confidence_adjusted_test`), and
the within-class AUC (the headline, :func:`camstat.stats.within_class_auc`)
beside the marginal AUC (:func:`camstat.stats.marginal_auc`), both in H1's
orientation (> 0.5: correct images' maps better). Numbers and flags only;
the sentences are written by :mod:`camstat.present`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from camstat import metrics as metrics_mod
from camstat import stats
from camstat.h1.options import ALPHA, rng

#: the roles of a metric in an analysis: the primary metric decides the verdict, the other consistency
#: metrics are secondary; concentration and localisation are questions of their own
ROLES = ("primary", "secondary", "concentration", "localisation")


def median(x: np.ndarray) -> float | None:
    """Median over the finite values; None when there is none."""
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else None


def direction(signed: float) -> str:
    """``supported`` / ``opposite`` / ``none``: the sign of an effect oriented so that > 0 is H1's direction."""
    return "supported" if signed > 0 else "opposite" if signed < 0 else "none"


def role(name: str, primary: str | None) -> str:
    """``primary``, ``secondary`` (another consistency metric), ``concentration`` or ``localisation``."""
    fam = metrics_mod.family(name)
    if fam == "consistency":
        return "primary" if name == primary else "secondary"
    return fam


def finding(pooled: dict, higher: bool | None, alpha: float = ALPHA) -> dict:
    """A metric's outcome by the verdict rule: adjusted p below alpha *and* the within-class AUC CI off 0.5.

    ``outcome``: ``better`` (CI above 0.5: correct images' maps better in
    the metric's own sense), ``worse`` (CI below 0.5), ``inconclusive``, or
    ``undefined`` (no test possible). ``direction`` is the sign of the
    within-class AUC - 0.5 alone.
    """
    p, auc, ci = pooled.get("p_adjusted"), pooled.get("auc_within_class"), pooled.get("auc_within_class_ci95")
    if higher is None or auc is None or not np.isfinite(auc):
        return {"direction": "undefined", "significant": False, "auc_ci_above_half": False,
                "auc_ci_below_half": False, "outcome": "undefined"}
    significant = p is not None and bool(p < alpha)
    lo, hi = (np.nan, np.nan) if not ci or None in ci else ci
    above, below = bool(lo > 0.5), bool(hi < 0.5)
    outcome = "better" if significant and above else "worse" if significant and below else "inconclusive"
    return {"direction": direction(auc - 0.5), "significant": significant, "auc_ci_above_half": above,
            "auc_ci_below_half": below, "outcome": outcome}


def new_pooled(v: np.ndarray, correct: np.ndarray, groups: np.ndarray, logits: np.ndarray | None, higher: bool,
               *, n_boot: int, seed: int, key: str) -> dict:
    """Within-class and marginal AUC, and the odds ratio given flexible confidence, of one metric."""
    ok = ~np.isnan(v)
    v, y, g = v[ok], correct[ok], groups[ok]

    def sub(name: str) -> int:
        return int(rng(seed, name, key).integers(2**31))

    w = stats.within_class_auc(v, y, g, higher_is_more_consistent=higher, n_boot=n_boot, seed=sub("auc-within"))
    m = stats.marginal_auc(v, y, higher_is_more_consistent=higher, n_boot=n_boot, seed=sub("auc-marginal"))
    out: dict[str, Any] = {**w.to_dict(), **m.to_dict()}
    out["auc_within_class_separated"] = out.pop("separated")
    out.pop("n", None), out.pop("n_classes", None)
    out["n_classes_within"] = w.n_classes
    if logits is None or not v.size:
        out.update(odds_ratio_per_sd_given_confidence=None, odds_ratio_ci95_given_confidence=None,
                   p_lrt_given_confidence=None, given_confidence=None)
        return out
    c = stats.confidence_adjusted_test(v, y, g, logits[ok], higher_is_more_consistent=higher)
    cd = c.to_dict()
    out.update({k: cd[k] for k in ("odds_ratio_per_sd_given_confidence", "odds_ratio_ci95_given_confidence",
                                   "p_lrt_given_confidence")})
    # the SD the odds ratio is per (kind and value), the spline's df, n and dropped classes; words are present/'s
    out["given_confidence"] = {k: cd[k] for k in ("sd", "sd_kind", "spline_df", "n", "dropped_strata")}
    return out


def confidence_baseline(confidence: np.ndarray, correct: np.ndarray, groups: np.ndarray, *, n_boot: int,
                        seed: int) -> dict:
    """The softmax confidence's own within-class and marginal AUC for correctness: the baseline a map metric
    is read against (Hendrycks & Gimpel 2017)."""
    ok = np.isfinite(confidence)
    w = stats.within_class_auc(confidence[ok], correct[ok], groups[ok], n_boot=n_boot,
                               seed=int(rng(seed, "auc-within", "confidence").integers(2**31)))
    m = stats.marginal_auc(confidence[ok], correct[ok], n_boot=n_boot,
                           seed=int(rng(seed, "auc-marginal", "confidence").integers(2**31)))
    return {"auc_within_class": w.auc_within_class, "auc_within_class_ci95": list(w.auc_within_class_ci95),
            "auc_marginal": m.auc_marginal, "auc_marginal_ci95": list(m.auc_marginal_ci95), "n": int(ok.sum())}


def adjust_within_roles(tables: dict, correction: str) -> None:
    """``pooled.p_adjusted``: secondary, concentration and localisation metrics each adjusted across themselves.

    The primary metric's p is adjusted across the command's primary analyses
    (:func:`camstat.h1.verdicts.primary_verdicts`); until then it is its own.
    """
    for r in ROLES:
        names = [k for k, m in tables.items() if m["role"] == r]
        if not names:
            continue
        ps = {k: tables[k]["pooled"]["p_permutation"] for k in names}
        ps = {k: (np.nan if p is None else p) for k, p in ps.items()}
        adj = stats.secondary_adjusted(ps, correction) if r != "primary" else ps
        for k in names:
            a = adj[k]
            tables[k]["pooled"]["p_adjusted"] = None if a is None or not np.isfinite(a) else float(a)
            tables[k]["pooled"]["adjusted_over"] = names


def h1_tables(values: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray, confidence: np.ndarray,
              logits: np.ndarray | None, names: list[str], *, primary: str | None, correction: str,
              min_group: int, permutations: int, n_boot: int, seed: int, strata: np.ndarray) -> dict:
    """Per metric: :func:`camstat.stats.h1_analysis`'s tests (per group; pooled within ``strata``, the
    grouping's), the SPEC 4 pooled keys, family, role, finding."""
    res = stats.h1_analysis(values, correct, groups, confidence, class_names=names, strata=strata,
                            correction=correction, min_group=min_group, permutations=permutations, n_boot=n_boot,
                            seed=seed).to_dict()
    out = {}
    for key, table in res.items():
        higher = metrics_mod.orientation(key)
        pooled = {k: v for k, v in table["pooled"].items()
                  if k not in ("auc", "auc_ci95", "auc_within_class", "auc_within_class_ci95",
                               "odds_ratio_per_sd_given_confidence", "odds_ratio_ci95_given_confidence",
                               "p_lrt_given_confidence")}
        if higher is not None:
            pooled.update(new_pooled(np.asarray(values[key], dtype=float), correct, strata, logits, higher,
                                     n_boot=n_boot, seed=seed, key=key))
        out[key] = {
            "family": metrics_mod.family(key),
            "role": role(key, primary),
            "higher_is_more_consistent": higher,
            "per_class": table["per_class"],
            "skipped": table["skipped"],
            "pooled": pooled,
            "n_undefined": int(np.isnan(values[key]).sum()),
        }
    adjust_within_roles(out, correction)
    for key, m in out.items():
        m["finding"] = finding(m["pooled"], m["higher_is_more_consistent"])
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
            "family": metrics_mod.family(key),
            "higher_is_more_consistent": metrics_mod.orientation(key),
        }
    return out
