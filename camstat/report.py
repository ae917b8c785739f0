"""``camstat report``: a significance report from stores and training runs (SPEC 6).

``report([STORE | RUN, ...], out)`` writes into ``out``:

- ``results.json`` -- ``consistency``: for each analysed (store, method) the
  very dict ``camstat consistency --json`` gives (:func:`camstat.consistency.analyze`);
  ``runs``: each training run's options and per-epoch records (``metrics.jsonl``);
  ``compare``: the dict ``camstat compare --json`` gives
  (:func:`camstat.compare.compare_runs`); ``provenance``: stores (content
  hashes), checkpoints (SHA-256), versions and command lines.
- ``report.md`` -- verdicts, tables, figures and provenance, for reading.
- ``report.tex`` -- the same tables as booktabs ``table`` environments, to
  ``\\input`` into a thesis (needs ``\\usepackage{booktabs}``).
- ``fig-*.png`` -- class-mean maps over a representative image, galleries of
  the most and least consistent images, metric distributions correct vs
  incorrect per class, ROC curves; for runs learning curves and the arm
  comparison (:mod:`camstat.figures`).

No statistic is computed here: every number in a table, sentence or figure
annotation is read from ``results.json``'s records (or is a count over
them, e.g. "significant in 5/6 classes"). Each table is built once, as
rows of already formatted cells (:class:`Table`), by one function per
table; Markdown and LaTeX only lay the same cells out. Each table carries
the JSON path of the records it shows (an HTML comment in Markdown, a
``%`` comment in LaTeX), so a reader -- or a test -- can check any cell.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from camstat.errors import CamstatError
from camstat.records import jsonable

REPORT_SCHEMA = 1
ALPHA = 0.05
P_FLOOR = 1e-4  # p-values below are shown as "< 0.0001"

# --------------------------------------------------------------------------
# number formatting: the one place where numbers become text (tables,
# sentences and figure annotations all use these)
# --------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_sig(x: Any, digits: int = 3) -> str:
    """``digits`` significant digits, without exponent for 1e-4 <= |x| < 1e6 (``-`` for missing)."""
    if not _finite(x):
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
    if not _finite(x):
        return "-"
    text = f"{x:{'+' if sign else ''}.{decimals}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def fmt_p(p: Any) -> str:
    """A p-value: two significant digits, ``< 0.0001`` below that; ``-`` for missing."""
    if not _finite(p):
        return "-"
    if p < P_FLOOR:
        return f"< {P_FLOOR:.4f}"
    if p >= 0.995:
        return "1.0"
    return fmt_sig(p, 2)


def fmt_ci(ci: Any, decimals: int = 2) -> str:
    """``[lo, hi]`` with fixed decimals; empty for a missing interval."""
    if not ci or len(ci) != 2 or not all(_finite(v) for v in ci):
        return ""
    return f"[{fmt_fixed(ci[0], decimals)}, {fmt_fixed(ci[1], decimals)}]"


def fmt_ci_sig(ci: Any, digits: int = 3) -> str:
    if not ci or len(ci) != 2 or not all(_finite(v) for v in ci):
        return ""
    return f"[{fmt_sig(ci[0], digits)}, {fmt_sig(ci[1], digits)}]"


def with_ci(value: str, ci: str) -> str:
    return f"{value} {ci}" if ci and value != "-" else value


def fmt_lambda(x: Any) -> str:
    return f"{x:g}" if _finite(x) else "0"


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
    from camstat import metrics as metrics_mod

    info = metrics_mod.PER_IMAGE.get(name)
    return info.description if info is not None else name


def oriented_auc(auc: Any, ci: Any, higher: bool | None) -> tuple[Any, list]:
    """The AUC of *consistency* for correctness: the metric's AUC, or 1 - AUC where lower = more consistent."""
    ci = list(ci) if ci else [None, None]
    if higher is None or higher:
        return auc, ci
    flip = lambda v: 1.0 - v if _finite(v) else None
    return flip(auc), [flip(ci[1]), flip(ci[0])]


# --------------------------------------------------------------------------
# tables: rows of formatted cells, laid out as Markdown or LaTeX
# --------------------------------------------------------------------------


@dataclass
class Table:
    """A table of already formatted cells; ``source`` is the JSON path (in results.json) of its records."""

    key: str
    source: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    align: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.align:
            self.align = "l" + "r" * (len(self.columns) - 1)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_md(t: Table, number: int) -> str:
    lines = [f"<!-- table {t.key}: {t.source} -->", f"**Table {number}.** {t.caption}", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    lines.append("|" + "|".join(":--" if a == "l" else "--:" for a in t.align) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    for note in t.notes:
        lines.append("")
        lines.append(f"*{note}*")
    return "\n".join(lines) + "\n"


_TEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$", "±": r"$\pm$",
    "δ": r"$\delta$", "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$", "−": r"$-$", "×": r"$\times$",
    "→": r"$\rightarrow$", "…": r"\ldots{}", "–": "--", "—": "---", "·": r"$\cdot$", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "|": r"$|$",
}


def tex_escape(text: str) -> str:
    """Plain text (with a few Unicode symbols) -> LaTeX; markdown emphasis stars dropped."""
    text = str(text).replace("**", "").replace("`", "")
    return "".join(_TEX_CHARS.get(ch, ch) for ch in text)


def table_tex(t: Table) -> str:
    wide = len(t.columns) > 7
    lines = [f"% table {t.key}; numbers from results.json: {t.source}", r"\begin{table}[htbp]", r"\centering"]
    lines += [r"\footnotesize", r"\setlength{\tabcolsep}{3.5pt}"] if wide else [r"\small"]
    lines += [r"\caption{" + tex_escape(t.caption) + "}",
              r"\label{tab:" + re.sub(r"[^A-Za-z0-9:-]", "-", t.key) + "}",
              r"\begin{tabular}{" + t.align + "}", r"\toprule",
              " & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for row in t.rows:
        lines.append(" & ".join(tex_escape(c) for c in row) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    if t.notes:
        lines.append(r"\par\smallskip\begin{minipage}{0.95\linewidth}\footnotesize "
                     + " ".join(tex_escape(n) for n in t.notes) + r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# the tables of an H1 analysis (one function per table)
# --------------------------------------------------------------------------


def _analysis_label(d: dict) -> str:
    return f"{method_name(d['method'])} at layer {d['layer']} (target {d['target']})"


def _group_word(d: dict) -> str:
    return "cluster" if d.get("by") == "cluster" else "class"


def plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def _correction(d: dict) -> str:
    return CORRECTION_NAMES.get(d.get("params", {}).get("correction", "holm"), d["params"].get("correction"))


def _h1_direction_ok(row: dict, higher: bool | None) -> bool:
    delta = row.get("cliffs_delta")
    if higher is None or not _finite(delta) or delta == 0:
        return False
    return (delta > 0) == bool(higher)


def significant_classes(m: dict, alpha: float = ALPHA) -> tuple[int, int]:
    """(classes whose adjusted p < alpha with the delta in H1's direction, classes tested)."""
    higher = m.get("higher_is_more_consistent")
    rows = m.get("per_class", [])
    k = sum(1 for r in rows if _finite(r.get("p_adjusted")) and r["p_adjusted"] < alpha and _h1_direction_ok(r, higher))
    return k, len(rows)


def table_h1_pooled(d: dict, src: str, key: str) -> Table:
    g = _group_word(d)
    rows = []
    for name, m in d["metrics"].items():
        p = m["pooled"]
        higher = m.get("higher_is_more_consistent")
        auc, ci = oriented_auc(p.get("auc"), p.get("auc_ci95"), higher)
        k, n = significant_classes(m)
        rows.append([
            name,
            "-" if higher is None else ("higher" if higher else "lower"),
            fmt_int(p.get("n")),
            fmt_fixed(p.get("statistic"), 2, sign=True),
            fmt_p(p.get("p_permutation")),
            with_ci(fmt_fixed(p.get("odds_ratio_per_sd"), 2), fmt_ci(p.get("odds_ratio_ci95"))),
            fmt_p(p.get("p_lrt")),
            fmt_p(p.get("p_lrt_given_confidence")),
            with_ci(fmt_fixed(auc, 2), fmt_ci(ci)),
            f"{k}/{n}",
        ])
    corr = _correction(d)
    return Table(
        key=key, source=src,
        caption=(f"H1, pooled over {plural(g)}: are correctly classified images' {_analysis_label(d)} maps more "
                 f"consistent than misclassified ones'? n = {d['n']} images ({d['n_correct']} correct). "
                 f"δ: pooled within-{g} Cliff's delta (correct vs incorrect; positive = higher for correct); "
                 f"p perm: stratified permutation test ({d['params']['permutations']} permutations, correctness "
                 f"shuffled within {g}); OR/SD: odds ratio of being correct per SD of the metric in "
                 f"correct ~ metric + C({g}), with its likelihood-ratio p, and p LRT | conf with softmax confidence "
                 f"as a covariate; AUC: consistency (oriented so that more consistent scores higher) predicting "
                 f"correctness, bootstrap 95% CI; sig. {plural(g)}: {corr}-adjusted p < {ALPHA} with δ in H1's "
                 f"direction."),
        columns=["metric", "more consistent", "n", "δ", "p perm", "OR/SD [95% CI]", "p LRT", "p LRT | conf",
                 "AUC [95% CI]", f"sig. {plural(g)}"],
        rows=rows, align="llrrrrrrrr",
    )


def table_h1_per_class(d: dict, name: str, src: str, key: str) -> Table:
    m = d["metrics"][name]
    g = _group_word(d)
    higher = m.get("higher_is_more_consistent")
    rows = [[r["class"], fmt_int(r["n_correct"]), fmt_int(r["n_incorrect"]), fmt_sig(r["median_correct"]),
             fmt_sig(r["median_incorrect"]), with_ci(fmt_fixed(r["cliffs_delta"], 2, sign=True), fmt_ci(r["ci95"])),
             fmt_p(r["p_value"]), fmt_p(r["p_adjusted"])] for r in m["per_class"]]
    notes = []
    if m.get("skipped"):
        notes.append("Not tested: " + "; ".join(f"{c} ({why})" for c, why in m["skipped"]) + ".")
    if m.get("n_undefined"):
        notes.append(f"{m['n_undefined']} image(s) without a reference map left out.")
    direction = ("no direction" if higher is None else
                 f"{'higher' if higher else 'lower'} = more consistent, so H1 predicts δ {'> 0' if higher else '< 0'}")
    return Table(
        key=key, source=src,
        caption=(f"H1 per {g}, {name} ({metric_description(name)}; {direction}), {_analysis_label(d)}: "
                 f"medians of correct and misclassified images, Cliff's delta with bootstrap 95% CI, two-sided "
                 f"Mann-Whitney U p and {_correction(d)}-adjusted p (family: all {plural(g)} x metrics)."),
        columns=[g, "n corr", "n inc", "median corr", "median inc", "δ [95% CI]", "p", "p adj"],
        rows=rows, notes=notes,
    )


def table_permuted(d: dict, src: str, key: str) -> Table:
    pc = d["controls"]["permuted"]
    g = _group_word(d)
    rows = []
    for name, m in pc["metrics"].items():
        p = m["pooled"]
        v = m.get("verdict", {})
        auc, ci = oriented_auc(p.get("auc"), p.get("auc_ci95"), m.get("higher_is_more_consistent"))
        k, n = significant_classes(m)
        rows.append([name, fmt_fixed(p.get("statistic"), 2, sign=True), fmt_p(p.get("p_permutation")),
                     with_ci(fmt_fixed(auc, 2), fmt_ci(ci)), f"{k}/{n}",
                     "yes" if v.get("significant") else "no"])
    return Table(
        key=key, source=src,
        caption=(f"Control: correctness labels permuted within each {g} ({pc['n_changed']} of {d['n']} labels "
                 f"changed), the same tests on the same per-image values ({_analysis_label(d)}). H1's effect must "
                 f"vanish: δ near 0, AUC near 0.5, no significant {g}."),
        columns=["metric", "δ", "p perm", "AUC [95% CI]", f"sig. {plural(g)}", "p perm < 0.05"],
        rows=rows,
    )


def table_random(d: dict, src: str, key: str) -> Table:
    rc = d["controls"]["random_weights"]
    rows = []
    for name, m in rc["metrics"].items():
        higher = m.get("higher_is_more_consistent")
        auc_t, ci_t = oriented_auc(m.get("auc_trained"), m.get("auc_trained_ci95"), higher)
        auc_r, ci_r = oriented_auc(m.get("auc_random"), m.get("auc_random_ci95"), higher)
        pt = m.get("paired_trained_minus_random") or {}
        rows.append([name, fmt_sig(m.get("median_trained")), fmt_sig(m.get("median_random")),
                     with_ci(fmt_fixed(auc_t, 2), fmt_ci(ci_t)), with_ci(fmt_fixed(auc_r, 2), fmt_ci(ci_r)),
                     with_ci(fmt_sig(pt.get("mean_diff")), fmt_ci_sig(pt.get("ci95"))), fmt_p(pt.get("p_wilcoxon"))])
    return Table(
        key=key, source=src,
        caption=(f"Control: randomised weights (Adebayo et al. 2018). The same metrics on the maps of the same "
                 f"architecture with random weights ({rc['store']['path']}), same images, grouped by the trained "
                 f"model's predictions. Consistency the random maps share comes from architecture and centre bias, "
                 f"not learning; their AUC should be near 0.5. Mean diff: trained - random per image, 95% CI, "
                 f"Wilcoxon signed-rank p. AUCs oriented as in the pooled table."),
        columns=["metric", "median trained", "median random", "AUC trained", "AUC random", "mean diff [95% CI]",
                 "p"],
        rows=rows,
    )


def table_class_medians(d: dict, name: str, src: str, key: str) -> Table:
    m = d["metrics"][name]
    g = _group_word(d)
    rows = [[r["class"], fmt_int(r["n"]), fmt_int(r["n_correct"]), fmt_int(r["n_incorrect"]), fmt_sig(r["median"]),
             fmt_sig(r["median_correct"]), fmt_sig(r["median_incorrect"])] for r in m["per_class"] if r["n"]]
    return Table(
        key=key, source=src,
        caption=f"{name} ({metric_description(name)}) per {g}, {_analysis_label(d)}: medians of all, correct and "
                f"misclassified images.",
        columns=[g, "n", "n corr", "n inc", "median", "median corr", "median inc"], rows=rows,
    )


def table_groups(d: dict, src: str, key: str) -> Table:
    g = _group_word(d)
    cols = ("mean_pairwise_ssim", "mean_pairwise_iou", "com_dispersion", "mean_dist_to_mean")
    rows = []
    for row in d["groups"]:
        for subset in ("all", "correct", "incorrect"):
            s = row.get(subset)
            if s is None or "note" in s:
                continue
            rows.append([row[g], subset, fmt_int(s.get("n")), fmt_int(s.get("n_sampled")),
                         *(fmt_sig(s.get(c)) for c in cols)])
    return Table(
        key=key, source=src,
        caption=(f"Group-level consistency per {g}, {_analysis_label(d)}: mean pairwise SSIM and IoU (over a seeded "
                 f"sample of at most {d['params']['pair_sample']} maps), dispersion of the centres of mass and mean "
                 f"distance to the group's mean map (over all maps)."),
        columns=[g, "subset", "n", "sampled", "pairwise SSIM", "pairwise IoU", "CoM dispersion", "dist to mean"],
        rows=rows, align="llrrrrrr",
    )


def verdict_sentence(d: dict, name: str) -> str:
    """One sentence per metric, every number read from the result dict ``d``."""
    m = d["metrics"][name]
    p = m["pooled"]
    higher = m.get("higher_is_more_consistent")
    g = _group_word(d)
    v = m.get("verdict", {})
    if higher is None or v.get("direction") in (None, "undefined"):
        return f"**{name}**: no pooled test possible ({v.get('text', 'no direction')})."
    rows = m.get("per_class", [])
    deltas = [r["cliffs_delta"] for r in rows if _finite(r.get("cliffs_delta"))]
    stat = p.get("statistic")
    supported = v.get("direction") == "supported"
    more, less = METRIC_PHRASES.get(name, ("are more consistent", "are less consistent"))
    phrase = (more if supported else less).format(g=g)
    auc, ci = oriented_auc(p.get("auc"), p.get("auc_ci95"), higher)
    k, n = significant_classes(m)
    span = (f" (per {g} from {fmt_fixed(min(deltas), 2, sign=True)} to {fmt_fixed(max(deltas), 2, sign=True)})"
            if len(deltas) > 1 else "")
    outcome = ("H1 supported" if supported and v.get("significant") else
               "against H1" if v.get("direction") == "opposite" and v.get("significant") else "not significant")
    return (f"**{name}** — correct images' maps {phrase}: pooled Cliff's delta "
            f"{fmt_fixed(stat, 2, sign=True)}{span}; "
            f"{_correction(d)}-adjusted p < {ALPHA} in the H1 direction in {k}/{n} {plural(g)}; pooled permutation "
            f"{p_phrase(p.get('p_permutation'))}; AUC {fmt_fixed(auc, 2)} {fmt_ci(ci)}; adds to softmax "
            f"confidence: LRT {p_phrase(p.get('p_lrt_given_confidence'))}. *{outcome}.*")


# --------------------------------------------------------------------------
# the tables of training runs and of the arm comparison
# --------------------------------------------------------------------------


def table_runs(runs: list[dict], src: str, key: str) -> Table:
    rows = []
    for r in runs:
        f = r.get("final") or {}
        rows.append([r["name"], fmt_lambda(r.get("lambda")), str(r.get("loss") if r.get("lambda") else "-"),
                     fmt_int(r.get("seed")), fmt_int(f.get("epoch")), fmt_fixed(f.get("accuracy"), 3),
                     fmt_sig(f.get("dist_self")), fmt_sig(f.get("ssim_self")), fmt_sig(f.get("loss_cam"))])
    return Table(
        key=key, source=src,
        caption=("Training runs (train-reg), last epoch: held-out accuracy, mean distance (dist) and SSIM of the "
                 "held-out maps to the run's own class means (correct held-out maps, leave-one-out: the same "
                 "yardstick for every run), and the CAM loss term in training (none at λ = 0)."),
        columns=["run", "λ", "loss", "seed", "epochs", "accuracy", "dist", "ssim", "L_cam"], rows=rows,
        align="lrlrrrrrr",
    )


H2_METRICS = (("accuracy", 3), ("dist", None), ("ssim", None), ("entropy", None), ("spread", None))


def _arm_cells(arm: dict) -> list[str]:
    """Per metric of an arm: ``mean ± sd [95% CI]`` over its runs (seeds)."""
    cells = []
    for m, dec in H2_METRICS:
        s = arm[m]
        mean = fmt_fixed(s.get("mean"), dec) if dec else fmt_sig(s.get("mean"))
        sd = (fmt_fixed(s.get("sd"), dec) if dec else fmt_sig(s.get("sd"), 2)) if _finite(s.get("sd")) else ""
        ci = (fmt_ci(s.get("ci95"), dec) if dec else fmt_ci_sig(s.get("ci95")))
        cells.append(with_ci(f"{mean} ± {sd}" if sd else mean, ci))
    return cells


def _reference_phrase(c: dict) -> str:
    return ("each run's own class means (leave-one-out)" if c["reference"] == "self"
            else f"class means of {c['reference']}")


ARMS_CAPTION = ("mean ± SD over runs (seeds) with t-based 95% CI where there are 2 or more runs; accuracy on the "
                "held-out images, consistency (dist: mean squared distance, ssim: SSIM of each map to {ref}) and "
                "concentration (entropy, spread of the map) on the images each run gets right.")


def table_arms(c: dict, src: str, key: str) -> Table:
    rows = [[name, fmt_int(len(arm["runs"])), *_arm_cells(arm)] for name, arm in c["arms"].items()]
    return Table(
        key=key, source=src, caption="H2, per arm: " + ARMS_CAPTION.format(ref=_reference_phrase(c)),
        columns=["arm", "runs", *(m for m, _ in H2_METRICS)], rows=rows,
    )


def _paired_cells(p: dict, dec: int | None) -> list[str]:
    """A paired difference over seeds: pairs, mean diff [95% t CI], sign-flip p, t-test p, Wilcoxon p."""
    diff = fmt_fixed(p.get("mean_diff"), dec, sign=True) if dec else fmt_sig(p.get("mean_diff"))
    ci = fmt_ci(p.get("ci95"), dec) if dec else fmt_ci_sig(p.get("ci95"))
    return [fmt_int(p.get("n")), with_ci(diff, ci), fmt_p(p.get("p_signflip")), fmt_p(p.get("p_ttest")),
            fmt_p(p.get("p_wilcoxon"))]


PAIRED_COLUMNS = ["pairs", "mean diff [95% CI]", "p (sign-flip)", "p (t)", "p (Wilcoxon)"]
PAIRED_CAPTION = ("t-based 95% CI; p: the exact sign-flip permutation test over seeds (the H2 test; with n pairs "
                  "it cannot go below 2/2^n), the paired t-test and, from 6 pairs, the Wilcoxon signed-rank test.")


def table_paired(c: dict, src: str, key: str) -> Table:
    rows = [[m, *_paired_cells(c["paired"].get(m) or {}, dec)] for m, dec in H2_METRICS]
    notes = list(dict.fromkeys(f"{c['paired'][m]['note']}." for m, _ in H2_METRICS
                               if (c["paired"].get(m) or {}).get("note")))
    return Table(
        key=key, source=src,
        caption=(f"H2, paired by seed: difference {c['paired']['difference']} over {len(c['paired']['pairs'])} "
                 f"seed pair(s); " + PAIRED_CAPTION),
        columns=["metric", *PAIRED_COLUMNS], rows=rows, notes=notes,
    )


def sweep_arms(sweep: dict) -> dict[str, dict]:
    """Every arm of a sweep comparison by name, the baseline (the comparisons' common second arm) first."""
    first = sweep["comparisons"][0]
    base = list(first["arms"])[1]
    arms = {base: first["arms"][base]}
    for c in sweep["comparisons"]:
        name = list(c["arms"])[0]
        arms[name] = c["arms"][name]
    return arms


def table_sweep_arms(sweep: dict, src: str, key: str) -> Table:
    rows = [[name, fmt_int(len(arm["runs"])), *_arm_cells(arm)] for name, arm in sweep_arms(sweep).items()]
    return Table(
        key=key, source=src,
        caption="H2, every arm of the sweep: " + ARMS_CAPTION.format(ref=_reference_phrase(sweep["comparisons"][0])),
        columns=["arm", "runs", *(m for m, _ in H2_METRICS)], rows=rows,
    )


def table_sweep_paired(sweep: dict, src: str, key: str) -> Table:
    rows, notes = [], []
    for c in sweep["comparisons"]:
        arm = list(c["arms"])[0]
        for m, dec in H2_METRICS:
            p = c["paired"].get(m) or {}
            rows.append([arm, m, *_paired_cells(p, dec)])
            if p.get("note"):
                notes.append(f"{arm}: {p['note']}.")
    base = list(sweep["comparisons"][0]["arms"])[1]
    return Table(
        key=key, source=src,
        caption=f"H2, each arm minus {base}, paired by seed; " + PAIRED_CAPTION,
        columns=["arm", "metric", *PAIRED_COLUMNS], rows=rows, notes=list(dict.fromkeys(notes)),
    )


def table_mcnemar(c: dict, src: str, key: str) -> Table:
    mc = c["mcnemar"]
    rows = [[fmt_int(r["seed"]), fmt_int(r["b"]), fmt_int(r["c"]), fmt_p(r["p_value"])] for r in mc["per_pair"]]
    if mc.get("pooled"):
        p = mc["pooled"]
        rows.append([f"pooled ({p['pairs']} pairs)", fmt_int(p["b"]), fmt_int(p["c"]), fmt_p(p["p_value"])])
    a, b = list(c["arms"])
    return Table(
        key=key, source=src,
        caption=(f"H2, exact McNemar test on per-image correctness of each seed pair: b = images only {a} "
                 f"classifies correctly, c = images only {b} does; two-sided exact binomial p."),
        columns=["seed", f"b ({a} only)", f"c ({b} only)", "p"], rows=rows,
        notes=[mc["pooled"]["note"]] if mc.get("pooled") else [],
    )


def compare_sentence(c: dict) -> str:
    a, b = list(c["arms"])
    acc = {n: c["arms"][n]["accuracy"].get("mean") for n in (a, b)}
    dist = {n: c["arms"][n]["dist"].get("mean") for n in (a, b)}
    parts = [f"held-out accuracy {a} {fmt_fixed(acc[a], 3)} vs {b} {fmt_fixed(acc[b], 3)}",
             f"dist {fmt_sig(dist[a])} vs {fmt_sig(dist[b])} (lower = more consistent)"]
    pa = c["paired"].get("accuracy") or {}
    if _finite(pa.get("p_signflip")):
        parts.append(f"paired by seed, accuracy differs by {fmt_fixed(pa['mean_diff'], 3, sign=True)} "
                     f"(sign-flip {p_phrase(pa['p_signflip'])} over {pa['n']} seeds)")
    else:
        parts.append(f"no paired test over seeds ({pa.get('note') or 'fewer than 2 seed pairs'})")
    for r in c["mcnemar"]["per_pair"]:
        parts.append(f"McNemar (seed {r['seed']}, descriptive): {r['b']} images only {a} gets right, {r['c']} only "
                     f"{b}, {p_phrase(r['p_value'])}")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


def _is_run(path: Path) -> bool:
    return (path / "run.json").is_file()


def classify_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(stores, runs) among the inputs (a ``camstat sweep`` folder gives its runs); anything else is an error."""
    from camstat.runs import find_runs
    from camstat.store import _is_store

    stores, runs = [], []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise CamstatError(f"{path} does not exist; give camstat stores (STORE.zarr) or train-reg run directories")
        if _is_store(path):
            stores.append(path)
        elif _is_run(path):
            runs.append(path)
        elif find_runs(path):  # a sweep folder: its runs
            runs += find_runs(path)
        else:
            raise CamstatError(f"{path} is neither a camstat store nor a train-reg run directory (no run.json)")
    return stores, runs


def _read_run(path: Path) -> dict:
    from camstat.runs import read_records

    try:
        info = json.loads((path / "run.json").read_text())
    except ValueError:
        raise CamstatError(f"{path}/run.json is not valid JSON") from None
    records = read_records(path)
    resolved = info.get("resolved", {})
    return {
        "name": path.name,
        "path": str(path),
        "status": info.get("status"),
        "model": resolved.get("model"),
        "data": resolved.get("data"),
        "lambda": info.get("lambda"),
        "loss": info.get("loss"),
        "cam": info.get("cam"),
        "schedule": info.get("schedule"),
        "seed": info.get("seed"),
        "reference": resolved.get("reference"),
        "means": resolved.get("means") or info.get("options", {}).get("means"),
        "records": records,
        "final": records[-1] if records else None,
    }


def split_arms(runs: list[Path]) -> tuple[list[Path], list[Path]] | None:
    """Two arms from runs of exactly two configurations: (regularised / larger lambda, the other)."""
    from camstat.runs import arm_key, read_info

    run_keys = [arm_key(read_info(p)) for p in runs]
    keys = sorted(set(run_keys), key=lambda k: (-k[0], k[1:]))
    if len(keys) != 2:
        return None
    a = [p for p, k in zip(runs, run_keys) if k == keys[0]]
    b = [p for p, k in zip(runs, run_keys) if k == keys[1]]
    return a, b


def _several_arms_and_a_baseline(runs: list[Path]) -> bool:
    """More than two configurations, one of them lambda 0: every other arm is compared with it."""
    from camstat.runs import arm_key, read_info

    keys = {arm_key(read_info(p)) for p in runs}
    return len(keys) > 2 and any(k[0] == 0 for k in keys)


# --------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------


def store_fingerprint(store) -> str:
    """SHA-256 over a store's sample arrays and raw maps (what every analysis is derived from)."""
    h = hashlib.sha256()
    group = store.root["samples"]
    for name in ("index", "label", "pred", "confidence", "correct", "logits"):
        a = np.ascontiguousarray(group[name][:])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    for method in store.methods:
        for layer in store.layers:
            for target in store.targets:
                arr = store.root[f"maps/{method}/{layer}/{target}"]
                h.update(f"maps/{method}/{layer}/{target}:{arr.dtype}:{arr.shape}".encode())
                step = max(1, store.chunk)
                for start in range(0, arr.shape[0], step):
                    h.update(np.ascontiguousarray(arr[start:start + step]).tobytes())
    return h.hexdigest()


def _store_provenance(store) -> dict:
    a = store.attrs
    return {"path": str(store.path), "content_sha256": store_fingerprint(store), "model": a.get("model"),
            "checkpoint": a.get("checkpoint"), "checkpoint_sha256": a.get("checkpoint_sha256"), "data": a.get("data"),
            "split": a.get("split"), "n": store.n, "methods": a.get("methods"), "layers": a.get("layers"),
            "created": a.get("created"), "command": a.get("command"), "versions": a.get("versions")}


def _run_provenance(path: Path) -> dict:
    info = json.loads((path / "run.json").read_text())
    return {"path": str(path), "checkpoint_sha256": info.get("checkpoint_sha256"), "status": info.get("status"),
            "created": info.get("created"), "finished": info.get("finished"), "command": info.get("command"),
            "device": info.get("device"), "world_size": info.get("world_size"), "versions": info.get("versions")}


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------


@dataclass
class ReportResult:
    """What :func:`report` wrote; ``to_dict()`` is ``camstat report --json``."""

    out: str
    files: list[str]
    figures: list[str]
    results: dict = field(repr=False)
    summary: list[str]
    seconds: float

    @property
    def report_md(self) -> str:
        return str(Path(self.out) / "report.md")

    def to_dict(self) -> dict:
        return {"out": self.out, "report": self.report_md, "files": self.files, "figures": self.figures,
                "summary": self.summary, "seconds": self.seconds}


@dataclass
class _Analysis:
    """One analysed (store, method): the result dict plus what the figures need."""

    index: int
    store: Any
    result: Any  # ConsistencyResult
    d: dict

    @property
    def slug(self) -> str:
        return f"h1-{self.index}-{re.sub(r'[^A-Za-z0-9]+', '', self.d['method'].replace('+', 'p'))}"


def _parse_methods(method: str | Sequence[str] | None, store) -> list[str]:
    if method is None:
        return store.methods
    names = [m.strip() for m in (method.split(",") if isinstance(method, str) else method) if m.strip()]
    missing = [m for m in names if m not in store.methods]
    if missing:
        raise CamstatError(f"store {store.path} has no method {missing[0]!r}; it holds {', '.join(store.methods)}")
    return names


def _random_matches(rnd, store) -> bool:
    """Is ``rnd`` a randomised-weights store of the same architecture and images as ``store``?"""
    a, b = rnd.attrs, store.attrs
    if rnd.path.resolve() == store.path.resolve() or rnd.n != store.n or rnd.classes != store.classes:
        return False
    if (a.get("model"), a.get("data"), a.get("split")) != (b.get("model"), b.get("data"), b.get("split")):
        return False
    if b.get("checkpoint_sha256") and a.get("checkpoint_sha256") == b.get("checkpoint_sha256"):
        return False
    return bool(np.array_equal(rnd.samples["index"], store.samples["index"]))


def _control_name(control: bool | str | None) -> str | None:
    if control in (None, False, "none", ""):
        return None
    if control in (True, "permuted"):
        return "permuted"
    raise CamstatError(f"invalid --control {control!r}; choose permuted or none")


def report(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    vs: Sequence[str | Path] | None = None,
    method: str | Sequence[str] | None = None,
    layer: str | None = None,
    target: str = "pred",
    by: str = "correct",
    metrics: str | Sequence[str] | None = None,
    class_of: str = "pred",
    reference: str | Path | None = None,
    correction: str = "holm",
    permutations: int = 10000,
    n_boot: int = 2000,
    min_group: int = 5,
    seed: int = 0,
    control: bool | str | None = True,
    random_store: str | Path | None = None,
    clusters: int = 8,
    pair_sample: int = 500,
    size: int | None = None,
    q: float = 0.2,
    names: Sequence[str] | None = None,
    means: str | Path | None = None,
    primary: str | None = None,
    gallery: int = 8,
    title: str | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Analyse stores (H1) and runs (H2) and write the report into ``out``.

    ``inputs``: stores (each analysed with :func:`camstat.consistency.analyze`
    for every method in ``method``, default all the store's methods, at
    ``layer``, default its first) and train-reg run directories (learning
    curves; with ``vs`` -- arm B's runs -- or runs of exactly two
    configurations, :func:`camstat.compare.compare_runs` of the two arms,
    arm A minus arm B). ``random_store`` is the randomised-weights control,
    used for every store it matches (same model, data, split and images).
    ``primary`` picks the metric the galleries sort by (default ``dist``).
    ``command`` is the command line recorded in the provenance (default:
    this process's). ``progress(message)`` is called at each step. The
    ``fig-*.png`` files of an earlier report in ``out`` are replaced.
    """
    from camstat import figures
    from camstat.consistency import analyze
    from camstat.provenance import command_line, now, versions
    from camstat.store import open_store

    start = time.perf_counter()
    say = progress or (lambda msg: None)
    if not inputs:
        raise CamstatError("report needs at least one store or run directory")
    stores, runs = classify_inputs(inputs)
    vs_runs: list[Path] = []
    if vs:
        extra_stores, vs_runs = classify_inputs(vs)
        if extra_stores:
            raise CamstatError(f"--vs takes run directories, not stores ({extra_stores[0]})")
        if not runs:
            raise CamstatError("--vs needs runs before it: camstat report RUN... --vs RUN...")
    control_name = _control_name(control)
    if gallery < 1:
        raise CamstatError(f"--gallery must be at least 1, got {gallery}")
    out = Path(out)

    # check everything before the long work
    opened = [open_store(p) for p in stores]
    plan = [(s, _parse_methods(method, s)) for s in opened]
    rnd = open_store(random_store) if random_store is not None else None
    matches = [rnd is not None and _random_matches(rnd, s) for s in opened]
    if rnd is not None and not any(matches):
        raise CamstatError(f"--random-store {random_store} matches none of the stores (same --model, --data, --split "
                           "and images, no checkpoint); extract it like the analysed store, without --checkpoint")

    results: dict[str, Any] = {"camstat_report": REPORT_SCHEMA, "consistency": [], "runs": [], "compare": None,
                               "sweep": None}
    analyses: list[_Analysis] = []
    for (s, methods), match in zip(plan, matches):
        for m in methods:
            say(f"H1 analysis of {s.path} ({m})")
            res = analyze(s, method=m, layer=layer, target=target, by=by, metrics=metrics, class_of=class_of,
                          reference=reference, correction=correction, permutations=permutations, n_boot=n_boot,
                          min_group=min_group, seed=seed, control=control_name, random_store=rnd if match else None,
                          clusters=clusters, pair_sample=pair_sample, size=size, q=q)
            d = res.to_dict()
            if primary and d["metrics"] and primary not in d["metrics"]:
                raise CamstatError(f"--primary {primary!r} is not among the analysed metrics "
                                   f"({', '.join(d['metrics'])})")
            results["consistency"].append(d)
            analyses.append(_Analysis(len(analyses), s, res, d))

    run_infos = [_read_run(p) for p in [*runs, *vs_runs]]
    if len({r["name"] for r in run_infos}) < len(run_infos):  # a sweep's OUT/<arm>/s<seed>: name them arm/seed
        for r, p in zip(run_infos, [*runs, *vs_runs]):
            r["name"] = f"{p.parent.name}/{p.name}"
    results["runs"] = run_infos
    arms = None
    if vs_runs:
        arms = (runs, vs_runs)
    elif len(runs) >= 2:
        arms = split_arms(runs)
    if arms is not None:
        from camstat.compare import compare_runs

        say("comparing arms")
        results["compare"] = compare_runs(arms[0], arms[1], names=names, means=means).to_dict()
    elif _several_arms_and_a_baseline(runs):
        from camstat.compare import compare_with_baseline

        say("comparing every arm with the lambda-0 arm")
        results["sweep"] = compare_with_baseline(runs, means=means).to_dict()

    results["provenance"] = {
        "created": now(),
        "command": command or command_line(),
        "versions": versions(),
        "options": {"method": method if method is None or isinstance(method, str) else list(method),
                    "layer": layer, "target": target, "by": by, "metrics": metrics, "class_of": class_of,
                    "reference": str(reference) if reference else None, "correction": correction,
                    "permutations": permutations, "n_boot": n_boot, "min_group": min_group, "seed": seed,
                    "control": control_name, "random_store": str(random_store) if random_store else None,
                    "clusters": clusters, "pair_sample": pair_sample, "size": size, "q": q,
                    "vs": [str(p) for p in vs_runs], "means": str(means) if means else None},
        "stores": [_store_provenance(s) for s in opened],
        "random_store": _store_provenance(rnd) if rnd is not None else None,
        "runs": [_run_provenance(p) for p in [*runs, *vs_runs]],
    }
    results = _jsonable(results)

    # figures (those of an earlier report in the same folder go first)
    say("figures")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("fig-*.png"):
        stale.unlink()
    figs: list[tuple[str, str, str]] = []  # (section key, file, caption)
    for an in analyses:
        figs += figures.analysis_figures(an, out, primary=primary, gallery=gallery, seed=seed)
    if run_infos:
        figs += figures.run_figures(run_infos, results["compare"], out, sweep=results["sweep"])

    # text
    say("writing report.md, report.tex, results.json")
    md, tex, summary = _compose(results, analyses, figs, title=title)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(md)
    (out / "report.tex").write_text(tex)
    files = [str(out / n) for n in ("report.md", "report.tex", "results.json")]
    fig_files = [str(out / f) for _, f, _ in figs]
    return ReportResult(out=str(out), files=files + fig_files, figures=fig_files, results=results, summary=summary,
                        seconds=time.perf_counter() - start)


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON (NaN -> None) so results.json and the in-memory dict are one and the same."""
    return json.loads(json.dumps(jsonable(obj)))


# --------------------------------------------------------------------------
# composing report.md and report.tex
# --------------------------------------------------------------------------


class _Doc:
    """Markdown and LaTeX built side by side from the same tables; tables and figures numbered."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.tex: list[str] = []
        self.tables = 0
        self.figures = 0

    def heading(self, level: int, text: str) -> None:
        self.md.append("#" * level + " " + text + "\n")
        cmd = {2: "section", 3: "subsection", 4: "subsubsection"}.get(level, "paragraph")
        self.tex.append(f"\\{cmd}*{{{tex_escape(text)}}}\n")

    def para(self, text: str, tex: bool = True) -> None:
        self.md.append(text + "\n")
        if tex:
            self.tex.append(_md_to_tex(text) + "\n")

    def table(self, t: Table) -> None:
        self.tables += 1
        self.md.append(table_md(t, self.tables))
        self.tex.append(table_tex(t))

    def figure(self, file: str, caption: str) -> None:
        self.figures += 1
        self.md.append(f"![{caption}]({file})\n\n*Figure {self.figures}.* {caption}\n")
        self.tex.append(f"% Figure {self.figures}: {file} -- {tex_escape(caption)}\n")


def _md_to_tex(text: str) -> str:
    """Sentences with **bold** / *italic* markup -> LaTeX."""
    parts = re.split(r"(\*\*[^*]+\*\*|\*[^*]+\*)", text)
    out = []
    for part in parts:
        if part.startswith("**") and part.endswith("**"):
            out.append(r"\textbf{" + tex_escape(part[2:-2]) + "}")
        elif part.startswith("*") and part.endswith("*") and len(part) > 1:
            out.append(r"\emph{" + tex_escape(part[1:-1]) + "}")
        else:
            out.append(tex_escape(part.lstrip("- ") if part.startswith("- ") else part))
    return "".join(out)


def _compose(results: dict, analyses: list[_Analysis], figs: list[tuple[str, str, str]],
             title: str | None) -> tuple[str, str, list[str]]:
    doc = _Doc()
    prov = results["provenance"]
    title = title or "camstat report"
    doc.md.append(f"# {title}\n")
    doc.tex.append(f"% camstat report: {tex_escape(title)}\n% Tables use booktabs: \\usepackage{{booktabs}}; "
                   f"\\input{{report.tex}} inside a document.\n% Every number comes from results.json "
                   f"(each table names its records).\n")
    doc.para(f"Made by camstat {prov['versions'].get('camstat')} on {prov['created']}. Every number below is read "
             f"from `results.json` (the records `camstat consistency --json` and `camstat compare --json` give); each "
             f"table names its records in a comment. Provenance is at the end.", tex=False)

    figs_by: dict[str, list[tuple[str, str]]] = {}
    for key, f, cap in figs:
        figs_by.setdefault(key, []).append((f, cap))

    # summary
    summary: list[str] = []
    for an in analyses:
        d = an.d
        line = (f"{Path(d['store']).name}, {method_name(d['method'])}: accuracy {fmt_fixed(d['accuracy'], 3)} "
                f"(n = {d['n']})")
        if d["by"] != "class" and d["metrics"]:
            name = _primary(d, None)
            m = d["metrics"][name]
            v = m.get("verdict", {})
            auc, ci = oriented_auc(m["pooled"].get("auc"), m["pooled"].get("auc_ci95"),
                                   m.get("higher_is_more_consistent"))
            line += (f"; H1 on {name}: {v.get('direction')}, pooled δ "
                     f"{fmt_fixed(m['pooled'].get('statistic'), 2, sign=True)}, "
                     f"permutation {p_phrase(m['pooled'].get('p_permutation'))}, AUC {fmt_fixed(auc, 2)} {fmt_ci(ci)}")
            supported = [k for k, mm in d["metrics"].items()
                         if mm.get("verdict", {}).get("direction") == "supported" and mm["verdict"].get("significant")]
            line += f"; significant in H1's direction: {len(supported)}/{len(d['metrics'])} metrics"
        summary.append(line)
    if results.get("compare"):
        summary.append("H2: " + compare_sentence(results["compare"]))
    doc.heading(2, "Summary")
    for line in summary:
        doc.para(f"- {line}")

    for an in analyses:
        _compose_analysis(doc, an, figs_by.get(an.slug, []))

    if results["runs"]:
        _compose_runs(doc, results, figs_by.get("runs", []))

    _compose_provenance(doc, results)
    return "\n".join(doc.md), "\n".join(doc.tex), summary


def _primary(d: dict, primary: str | None) -> str:
    if primary and primary in d["metrics"]:
        return primary
    return "dist" if "dist" in d["metrics"] else next(iter(d["metrics"]))


def _compose_analysis(doc: _Doc, an: _Analysis, figs: list[tuple[str, str]]) -> None:
    d = an.d
    i = an.index
    src = f"consistency[{i}]"
    g = _group_word(d)
    doc.heading(2, f"H1: {d['store']} — {method_name(d['method'])}, by {d['by']}")
    prov = d.get("provenance", {})
    doc.para(f"Model `{prov.get('model')}` (checkpoint `{prov.get('checkpoint')}`), data `{prov.get('data')}` "
             f"({prov.get('split')} split): n = {d['n']} images, accuracy {fmt_fixed(d['accuracy'], 3)} "
             f"({d['n_correct']} correct, {d['n_incorrect']} misclassified). Maps: {_analysis_label(d)}, "
             f"{d['params']['maps']}; {g} = {'the prediction' if d['class_of'] == 'pred' else 'the true label'}"
             f"{'' if d['by'] != 'cluster' else ' (composition clusters: k-means on image thumbnails)'}; reference "
             f"of each image: {d['params']['reference_kind']}.")
    u = d.get("undefined_reference", {})
    if u.get("n"):
        doc.para(f"{u['n']} image(s) have no reference map (the only correct image of their {g}) and are left out "
                 f"of the reference-based tests: {u.get('per_group')}.")
    if d["by"] == "class":
        for name in d["metrics"]:
            doc.table(table_class_medians(d, name, f"{src}.metrics.{name}.per_class", f"{an.slug}-{name}"))
        if d.get("groups"):
            doc.table(table_groups(d, f"{src}.groups", f"{an.slug}-groups"))
    else:
        doc.heading(3, "Verdicts")
        for name in d["metrics"]:
            doc.para(f"- {verdict_sentence(d, name)}")
        doc.table(table_h1_pooled(d, f"{src}.metrics", f"{an.slug}-pooled"))
        ctl = d.get("controls", {})
        if ctl.get("permuted") or ctl.get("random_weights"):
            doc.heading(3, "Controls")
        if ctl.get("permuted"):
            pc = ctl["permuted"]
            sig = [k for k, m in pc["metrics"].items() if m.get("verdict", {}).get("significant")]
            doc.para(f"Correctness permuted within {g}: {len(sig)}/{len(pc['metrics'])} metrics remain significant "
                     f"at {ALPHA} ({', '.join(sig) if sig else 'none'}; about {ALPHA:.0%} expected by chance).")
            doc.table(table_permuted(d, f"{src}.controls.permuted.metrics", f"{an.slug}-permuted"))
            rb = pc.get("rebuilt_references")
            if rb:
                parts = ", ".join(f"{k} δ {fmt_fixed(m.get('statistic'), 2, sign=True)} "
                                  f"({p_phrase(m.get('p_permutation'))})" for k, m in rb["metrics"].items())
                doc.para(f"*Whole pipeline under the null* (leave-one-out references rebuilt from the shuffled "
                         f"labels): {parts}. A small effect against H1 is the expected leave-one-out artefact.")
        if ctl.get("random_weights"):
            doc.table(table_random(d, f"{src}.controls.random_weights.metrics", f"{an.slug}-random"))
        doc.heading(3, f"Per-{g} tests")
        for name in d["metrics"]:
            doc.table(table_h1_per_class(d, name, f"{src}.metrics.{name}.per_class", f"{an.slug}-{name}"))
    if figs:
        doc.heading(3, "Figures")
        for f, cap in figs:
            doc.figure(f, cap)


def _compose_runs(doc: _Doc, results: dict, figs: list[tuple[str, str]]) -> None:
    runs = results["runs"]
    c = results.get("compare")
    doc.heading(2, "H2: training with a CAM-consistency term")
    doc.table(table_runs(runs, "runs[*].final", "runs"))
    if c:
        a, b = list(c["arms"])
        sentence = compare_sentence(c)
        doc.para(f"Arms: **{a}** ({', '.join(c['arms'][a]['runs'])}) vs **{b}** ({', '.join(c['arms'][b]['runs'])}). "
                 + sentence[:1].upper() + sentence[1:])
        doc.table(table_arms(c, "compare.arms", "h2-arms"))
        if any((c["paired"].get(m) or {}).get("n", 0) >= 2 for m in ("accuracy", "dist", "ssim")):
            doc.table(table_paired(c, "compare.paired", "h2-paired"))
        else:
            doc.para(f"No paired test over seeds: {len(c['paired']['pairs'])} seed pair(s); train more seeds per arm "
                     f"(`--seed`) for one. The McNemar test below compares the paired runs image by image.")
        if c["mcnemar"]["per_pair"]:
            doc.table(table_mcnemar(c, "compare.mcnemar.per_pair", "h2-mcnemar"))
        for note in c.get("notes", []):
            doc.para(f"*Note: {note}.*")
    sweep = results.get("sweep")
    if sweep:
        doc.para(f"{len(sweep['comparisons'])} arms, each compared with **{list(sweep_arms(sweep))[0]}**, paired by "
                 "seed (the seed is the unit of replication).")
        doc.table(table_sweep_arms(sweep, "sweep.comparisons[*].arms", "h2-sweep-arms"))
        doc.table(table_sweep_paired(sweep, "sweep.comparisons[*].paired", "h2-sweep-paired"))
    if figs:
        doc.heading(3, "Figures")
        for f, cap in figs:
            doc.figure(f, cap)


def _compose_provenance(doc: _Doc, results: dict) -> None:
    prov = results["provenance"]
    doc.md.append("## Provenance\n")
    lines = [f"- report: `{prov['command']}` ({prov['created']})",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items())]
    for s in prov["stores"]:
        lines.append(f"- store `{s['path']}`: content SHA-256 `{s['content_sha256']}`; model `{s['model']}`, "
                     f"checkpoint `{s['checkpoint']}` (SHA-256 `{s['checkpoint_sha256']}`); data `{s['data']}` "
                     f"({s['split']}, n = {s['n']}); made {s['created']} by `{s['command']}`")
    if prov.get("random_store"):
        s = prov["random_store"]
        lines.append(f"- random-weights store `{s['path']}`: content SHA-256 `{s['content_sha256']}`; made "
                     f"{s['created']} by `{s['command']}`")
    for r in prov["runs"]:
        lines.append(f"- run `{r['path']}` ({r['status']}): model.pt SHA-256 `{r['checkpoint_sha256']}`; "
                     f"{r['created']} - {r['finished']} on {r['device']}; `{r['command']}`")
    doc.md.append("\n".join(lines) + "\n")
    doc.tex.append("% Provenance\n" + "\n".join("% " + line[2:].replace("`", "") for line in lines) + "\n")
