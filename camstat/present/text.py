"""Every number-to-text conversion and every sentence of camstat's output: the one place.

Tables, report sentences, terminal views and figure annotations all format
through these functions, so a p-value reads the same everywhere (``< 0.0001``
below :data:`P_FLOOR`). Results (:mod:`camstat.h1`, :mod:`camstat.compare`)
hold numbers and flags; the words about them are written here.
"""

from __future__ import annotations

import math
from typing import Any

from camstat import metrics as metrics_mod

ALPHA = 0.05
P_FLOOR = 1e-4  # p-values below are shown as "< 0.0001"

def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_sig(x: Any, digits: int = 3) -> str:
    """``digits`` significant digits, without exponent for 1e-4 <= |x| < 1e6 (``-`` for missing)."""
    if not finite(x):
        return "-"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag < -4 or mag >= 6:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - mag)
    text = f"{x:.{decimals}f}"
    return "0" if float(text) == 0 else text


def fmt_fixed(x: Any, decimals: int = 2, sign: bool = False) -> str:
    """Fixed decimals (``+`` sign when asked); ``-`` for missing."""
    if not finite(x):
        return "-"
    text = f"{x:{'+' if sign else ''}.{decimals}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def fmt_p(p: Any) -> str:
    """A p-value: two significant digits, ``< 0.0001`` below that; ``-`` for missing."""
    if not finite(p):
        return "-"
    if p < P_FLOOR:
        return f"< {P_FLOOR:.4f}"
    if p >= 0.995:
        return "1.0"
    return fmt_sig(p, 2)


def num(x: Any, spec: str = ".4g") -> str:
    """A number in a terminal table with a format spec; ``.4g`` is :func:`fmt_sig` with 4 digits."""
    if spec == ".4g":
        return fmt_sig(x, 4)
    return format(x, spec) if finite(x) else "-"


def ci(interval: Any, spec: str = ".3f") -> str:
    """``[lo, hi]`` in a terminal table, each end by :func:`num` (``[-]`` for a missing interval)."""
    if not interval or len(interval) != 2 or not all(finite(v) for v in interval):
        return "[-]"
    return f"[{num(interval[0], spec)}, {num(interval[1], spec)}]"


def fmt_ci(ci: Any, decimals: int = 2) -> str:
    """``[lo, hi]`` with fixed decimals; empty for a missing interval."""
    if not ci or len(ci) != 2 or not all(finite(v) for v in ci):
        return ""
    return f"[{fmt_fixed(ci[0], decimals)}, {fmt_fixed(ci[1], decimals)}]"


def fmt_ci_sig(ci: Any, digits: int = 3) -> str:
    if not ci or len(ci) != 2 or not all(finite(v) for v in ci):
        return ""
    return f"[{fmt_sig(ci[0], digits)}, {fmt_sig(ci[1], digits)}]"


def with_ci(value: str, ci: str) -> str:
    return f"{value} {ci}" if ci and value != "-" else value


def fmt_lambda(x: Any) -> str:
    return f"{x:g}" if finite(x) else "0"


def fmt_int(x: Any) -> str:
    return "-" if x is None else str(int(x))


def p_phrase(p: Any) -> str:
    """``p = 0.012`` or ``p < 0.0001`` for sentences."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


CORRECTION_NAMES = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni"}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM",
                "layercam": "LayerCAM", "scorecam": "Score-CAM", "eigencam": "Eigen-CAM"}

# What "more consistent" means for each metric, in words: (more, less).
METRIC_PHRASES = {
    "dist": ("are closer to the {g} mean map", "are farther from the {g} mean map"),
    "ssim": ("are more similar (SSIM) to the {g} mean map", "are less similar (SSIM) to the {g} mean map"),
    "iou": ("overlap more with the {g} mean map's top region", "overlap less with the {g} mean map's top region"),
    "corr": ("correlate more with the {g} mean map", "correlate less with the {g} mean map"),
    "com": ("have their centre of mass nearer the {g} mean map's", "have their centre of mass farther from the "
            "{g} mean map's"),
    "entropy": ("are more concentrated (lower entropy)", "are more diffuse (higher entropy)"),
    "spread": ("are narrower (smaller spread)", "are wider (larger spread)"),
    "pointing": ("peak inside the object more often", "peak inside the object less often"),
    "energy": ("put more of their mass inside the object", "put less of their mass inside the object"),
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def metric_description(name: str) -> str:
    info = metrics_mod.PER_IMAGE.get(name)
    return info.description if info is not None else name



def plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


# --------------------------------------------------------------------------
# sentences about H1 results (the results carry numbers and flags only)
# --------------------------------------------------------------------------


def orientation_text(key: str, higher: bool | None) -> str:
    """``"lower = more consistent"``, ``"higher = better localised"``, ... for table titles."""
    if higher is None:
        return "no direction"
    return f"{'higher' if higher else 'lower'} = {metrics_mod.FAMILY_LABELS[metrics_mod.family(key)]}"


def no_direction_reason(higher: bool | None) -> str:
    return "no H1 direction: the metric has no better side" if higher is None else "no pooled test possible"


#: the question each role of a metric answers (concentration is never evidence for or against H1)
ROLE_QUESTIONS = {
    "primary": "H1 (primary metric)",
    "secondary": "H1 (secondary consistency metric)",
    "concentration": "are correct maps narrower? (concentration, not evidence for or against H1)",
    "localisation": "are correct maps better localised on the object?",
}


def better_word(key: str) -> str:
    """What a better value of the metric is: ``more consistent``, ``more concentrated``, ``better localised``."""
    return metrics_mod.FAMILY_LABELS[metrics_mod.family(key)]


def auc_w_text(pooled: dict) -> str:
    """``within-class AUC 0.61 [0.59, 0.63]``: the headline effect size."""
    auc, ci = pooled.get("auc_within_class"), pooled.get("auc_within_class_ci95")
    return f"within-class AUC {fmt_fixed(auc, 2)} {fmt_ci(ci)}".rstrip()


def outcome_text(key: str, m: dict) -> str:
    """The outcome of one metric by the verdict rule (adjusted p < alpha and within-class AUC CI off 0.5)."""
    f = m.get("finding") or {}
    word = better_word(key)
    worse = word.replace("more ", "less ").replace("better ", "worse ")
    return {"better": f"correct images' maps {word} (adjusted p < {ALPHA}, CI above 0.5)",
            "worse": f"correct images' maps {worse} (adjusted p < {ALPHA}, CI below 0.5)",
            "inconclusive": "inconclusive (" + ("adjusted p not below " + str(ALPHA) if not f.get("significant")
                                                 else "within-class AUC CI includes 0.5") + ")",
            }.get(f.get("outcome"), "no test possible")


def verdict_text(key: str, m: dict, alpha: float = ALPHA) -> str:
    """One line for a metric: its role's question, the headline AUC, the adjusted p and the outcome by the rule."""
    p = m["pooled"]
    if (m.get("finding") or {}).get("outcome", "undefined") == "undefined":
        return no_direction_reason(m.get("higher_is_more_consistent"))
    return (f"{ROLE_QUESTIONS.get(m.get('role'), 'H1')}: {auc_w_text(p)}, pooled delta "
            f"{fmt_fixed(p.get('statistic'), 3, sign=True)} "
            f"({orientation_text(key, m.get('higher_is_more_consistent'))}), "
            f"adjusted {p_phrase(p.get('p_adjusted'))}: {outcome_text(key, m)}")


def verdict_headline(d: dict) -> str:
    """The H1 verdict of one analysis, from the primary metric alone (SPEC 4's rule)."""
    v = d.get("verdict")
    if not v:
        return "no H1 verdict (no consistency metric tested)"
    fam = v.get("family_size", 1)
    over = f" over {fam} primary analyses" if fam > 1 else ""
    corr = CORRECTION_NAMES.get(v.get("correction"), v.get("correction"))
    head = (f"primary metric {v['primary']}: within-class AUC {fmt_fixed(v.get('auc_within_class'), 2)} "
            f"{fmt_ci(v.get('auc_within_class_ci95'))}, {corr}-adjusted permutation "
            f"{p_phrase(v.get('p_adjusted'))}{over}")
    if v.get("supported"):
        return f"H1 supported ({head})"
    lo_hi = v.get("auc_within_class_ci95") or [None, None]
    if v.get("significant") and finite(lo_hi[1]) and lo_hi[1] < 0.5:
        why = "correct images' maps are less consistent: against H1"
    elif not v.get("significant"):
        why = f"adjusted p not below {v.get('alpha', ALPHA)}"
    else:
        why = "the within-class AUC CI includes 0.5"
    return f"H1 not supported ({head}; {why})"


def summary_roles(d: dict) -> str:
    """The summary's tail: how many secondary metrics agree by the rule, and the concentration question apart."""
    parts = []
    for role, label in (("secondary", "secondary consistency metrics with correct maps more consistent"),
                        ("concentration", "concentration metrics with correct maps narrower")):
        ms = [m for m in d["metrics"].values() if m.get("role") == role]
        if ms:
            k = sum(1 for m in ms if (m.get("finding") or {}).get("outcome") == "better")
            parts.append(f"{label} (adjusted p < {ALPHA}, within-class AUC CI above 0.5): {k}/{len(ms)}")
    return "".join(f"; {p}" for p in parts)


def random_text(key: str, m: dict) -> str:
    """Trained vs randomised-weights maps of one metric, in words."""
    higher, diff = m.get("higher_is_more_consistent"), m["paired_trained_minus_random"].get("mean_diff")
    if higher is None or diff is None:
        return ""
    gain = diff if higher else -diff
    word = metrics_mod.FAMILY_LABELS[metrics_mod.family(key)].split()[-1]
    return (f"trained maps are {'more' if gain > 0 else 'less'} {word} than random-weight maps (median "
            f"{fmt_sig(m['median_trained'])} vs {fmt_sig(m['median_random'])}); within-class AUC trained "
            f"{fmt_fixed(m.get('auc_within_class_trained'), 3)} vs random "
            f"{fmt_fixed(m.get('auc_within_class_random'), 3)}")


def group_word(d: dict) -> str:
    """What a group of an H1 result is: ``cluster`` or ``class``."""
    return "cluster" if d.get("by") == "cluster" else "class"


def stratum_word(d: dict) -> str:
    """What a stratum of the pooled tests is: the group, or a ``cell`` (:func:`strata_note`)."""
    return "cell" if d.get("params", {}).get("strata") == "cluster x class" else group_word(d)


def strata_note(d: dict) -> str:
    """Why the pooled tests of clusters across classes are stratified by cluster x class cells ('' otherwise)."""
    if stratum_word(d) != "cell":
        return ""
    of = "predicted class" if d["params"].get("class_of") == "pred" else "label"
    return (f"A cell is one cluster's images of one {of}: these clusters mix classes, whose accuracy and maps "
            f"differ, so the pooled tests compare correct and misclassified images of the same cluster *and* class "
            f"(each map still against its cluster's mean).")


FEATURE_TEXT = {
    "thumbnail": "8x8 grayscale thumbnails",
    "hog": "HOG of the 32x32 grayscale image (9 orientations, 8x8-pixel cells, 2x2-cell blocks)",
    "embedding": "the model's classifier-head input (stored at extraction)",
    "mask": "the object's centroid x, y, sqrt(area) and log box aspect (ground-truth masks)",
}


def composition_text(c: dict) -> str:
    """How the composition clusters were made (``d["clusters"]`` of a ``--by cluster`` result)."""
    if c["k_selection"] == "auto":
        lo, hi = c["k_range"]
        how = f"K chosen by the best mean silhouette over K = {lo}..{hi}"
    else:
        how = "K given"
    k = c["k"] if not c["within_class"] else ", ".join(f"{name} {k}" for name, k in c["k"].items())
    where = " within each class" if c["within_class"] else ""
    return (f"k-means{where} on {FEATURE_TEXT[c['features']]} (features '{c['features']}', centred and scaled as a "
            f"whole; seed {c['seed']}, {c['n_init']} starts): K = {k} ({how}), {c['n_clusters']} clusters")


def class_mix(counts: dict, limit: int = 3) -> str:
    """A cluster's classes, largest first: ``circle 12, ring 3, +2 more``."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(f"{name} {n}" for name, n in items[:limit]) + more


def reference_kind(d: dict) -> str:
    g = group_word(d)
    if d["params"].get("reference") is not None:
        return f"{g} means of another store's correct maps"
    return f"leave-one-out mean of the correct maps of the same {g}"


MAPS_TEXT = "min-max analysis maps (pytorch-grad-cam scaling) at the analysis size"
UNDEFINED_NOTE = ("images without a reference (leave-one-out: the only correct image of their group; --reference: "
                  "no correct image of their group in the reference store) get NaN for the reference-based "
                  "metrics and are left out of the tests, with counts")


def null_pipeline_note(d: dict) -> str:
    np_ = d["controls"]["null_pipeline"]
    return (f"the whole pipeline under the null, {np_['repeats']} times (seed {d['params']['seed']}): correctness "
            f"shuffled within each {stratum_word(d)}, leave-one-out references rebuilt, every metric recomputed and the "
            f"pooled test (van Elteren's stratified Wilcoxon test) rerun; the rejection rate at {np_['alpha']} must be "
            f"near {np_['alpha']}")


DISPERSION_NOTE = ("the symmetric question, apart from the reference tests: each group's mean distance to its own "
                   "leave-one-out group mean (correct maps to the mean of the other correct maps, incorrect maps to "
                   "the mean of the other incorrect maps); statistic log(dispersion incorrect / dispersion correct), "
                   "> 0: incorrect maps less consistent among themselves; permutation p with correctness shuffled "
                   "within class and group means recomputed")


def random_note(d: dict) -> str:
    return ("Adebayo et al. (2018) sanity check: the same metrics on the randomised-weights model's maps of the "
            f"same images, grouped by the trained store's {group_word(d)}s and using its correctness (a random "
            "model's predictions are meaningless); references are leave-one-out within the random store. "
            "Consistency the random maps share is architecture and centre bias, not learning.")


def random_warning(rc: dict) -> str | None:
    ckpt = rc["store"].get("checkpoint")
    if not ckpt:
        return None
    return (f"the random store was extracted with checkpoint {ckpt}; the sanity check expects randomised weights "
            "(camstat extract without --checkpoint)")
