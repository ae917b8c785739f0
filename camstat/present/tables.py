"""The tables of a report, one function per table: rows of already formatted cells (:class:`Table`).

Markdown and LaTeX (:mod:`camstat.present.document`) only lay the same
cells out; every cell is formatted by :mod:`camstat.present.text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from camstat.present.text import (ALPHA, CORRECTION_NAMES, METRIC_PHRASES, auc_w_text, class_mix, composition_text,
                                  finite, fmt_ci, fmt_ci_sig, fmt_fixed, fmt_int, fmt_lambda, fmt_p, fmt_sig,
                                  group_word, method_name, metric_description, no_direction_reason, outcome_text,
                                  p_phrase, plural, strata_note, stratum_word, with_ci)

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


# --------------------------------------------------------------------------
# the tables of an H1 analysis (one function per table)
# --------------------------------------------------------------------------


def analysis_label(d: dict) -> str:
    return f"{method_name(d['method'])} at layer {d['layer']} (target {d['target']})"


def correction_name(d: dict) -> str:
    return CORRECTION_NAMES.get(d.get("params", {}).get("correction", "holm"), d["params"].get("correction"))


def _h1_direction_ok(row: dict, higher: bool | None) -> bool:
    delta = row.get("cliffs_delta")
    if higher is None or not finite(delta) or delta == 0:
        return False
    return (delta > 0) == bool(higher)


def significant_classes(m: dict, alpha: float = ALPHA) -> tuple[int, int]:
    """(classes whose adjusted p < alpha with the delta in H1's direction, classes tested)."""
    higher = m.get("higher_is_more_consistent")
    rows = m.get("per_class", [])
    k = sum(1 for r in rows if finite(r.get("p_adjusted")) and r["p_adjusted"] < alpha and _h1_direction_ok(r, higher))
    return k, len(rows)


def table_h1_pooled(d: dict, src: str, key: str) -> Table:
    g, st = group_word(d), stratum_word(d)
    rows = []
    for name, m in d["metrics"].items():
        p = m["pooled"]
        k, n = significant_classes(m)
        rows.append([
            name,
            m.get("role", "-"),
            "-" if m.get("higher_is_more_consistent") is None else ("higher" if m["higher_is_more_consistent"]
                                                                    else "lower"),
            fmt_int(p.get("n")),
            with_ci(fmt_fixed(p.get("auc_within_class"), 3), fmt_ci(p.get("auc_within_class_ci95"), 3)),
            fmt_fixed(p.get("statistic"), 2, sign=True),
            fmt_p(p.get("p_permutation")),
            fmt_p(p.get("p_adjusted")),
            with_ci(fmt_fixed(p.get("odds_ratio_per_sd_given_confidence"), 2),
                    fmt_ci(p.get("odds_ratio_ci95_given_confidence"))),
            fmt_p(p.get("p_lrt_given_confidence")),
            with_ci(fmt_fixed(p.get("auc_marginal"), 3), fmt_ci(p.get("auc_marginal_ci95"), 3)),
            f"{k}/{n}",
        ])
    corr = correction_name(d)
    v = d.get("verdict") or {}
    fam = v.get("family_size", 1)
    return Table(
        key=key, source=src,
        caption=(f"H1, pooled over {plural(g)}: are correctly classified images' {analysis_label(d)} maps closer to "
                 f"the correct maps' mean than misclassified ones'? n = {d['n']} images ({d['n_correct']} correct). "
                 f"Role: the primary metric decides the verdict; secondary consistency metrics are adjusted across "
                 f"themselves; concentration (are correct maps narrower?) and localisation are questions of their own, "
                 f"each adjusted across itself. AUC within {st}: probability that a correct image's map is better "
                 f"(in the metric's sense) than a misclassified one's of the same {st}, van Elteren-weighted, BCa "
                 f"bootstrap 95% CI (the headline effect size). δ: pooled within-{st} Cliff's delta of the metric as "
                 f"given (positive = higher for correct). p perm: stratified permutation test "
                 f"({d['params']['permutations']} permutations, correctness shuffled within {st}); p adj: {corr}-"
                 f"adjusted within the metric's role (primary: over {fam} primary analys{'is' if fam == 1 else 'es'}). "
                 f"OR/SD | conf: odds ratio of being correct per within-{st} SD of the metric (oriented: > 1 = better "
                 f"maps more often correct) given {st} and a natural cubic spline of the softmax log-odds plus the "
                 f"top-1 minus top-2 logit margin, Wald 95% CI, and its likelihood-ratio p. Marginal AUC: over all "
                 f"images, {plural(g)} ignored (mixes in differences between {plural(g)}). sig. {plural(g)}: "
                 f"{corr}-adjusted per-{g} p < {ALPHA} with δ in H1's direction." + (" " + strata_note(d)).rstrip()),
        columns=["metric", "role", "better", "n", f"AUC within {st} [95% CI]", "δ", "p perm", "p adj",
                 "OR/SD | conf [95% CI]", "p LRT | conf", "marginal AUC [95% CI]", f"sig. {plural(g)}"],
        rows=rows, align="lllrrrrrrrrr",
    )


def table_h1_per_class(d: dict, name: str, src: str, key: str) -> Table:
    m = d["metrics"][name]
    g = group_word(d)
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
        caption=(f"H1 per {g}, {name} ({metric_description(name)}; {direction}), {analysis_label(d)}: "
                 f"medians of correct and misclassified images, Cliff's delta with bootstrap 95% CI, two-sided "
                 f"Mann-Whitney U p and {correction_name(d)}-adjusted p (family: all {plural(g)} x metrics)."),
        columns=[g, "n corr", "n inc", "median corr", "median inc", "δ [95% CI]", "p", "p adj"],
        rows=rows, notes=notes,
    )


def table_null_pipeline(d: dict, src: str, key: str) -> Table:
    np_ = d["controls"]["null_pipeline"]
    g = stratum_word(d)
    rows = []
    for name, m in np_["metrics"].items():
        rows.append([name, fmt_int(m.get("n_tests")),
                     with_ci(fmt_fixed(m.get("rejection_rate"), 3), fmt_ci(m.get("rejection_rate_ci95"), 3)),
                     " / ".join(fmt_fixed(x, 3, sign=True) for x in m.get("delta_quantiles") or []),
                     " / ".join(fmt_fixed(x, 3) for x in m.get("auc_within_class_quantiles") or [])])
    levels = " / ".join(f"{q:g}" for q in np_.get("quantile_levels") or [])
    left = np_.get("metrics_left_out") or []
    return Table(
        key=key, source=src,
        caption=(f"Control: the whole pipeline under the null ({analysis_label(d)}), {np_['repeats']} repeats: "
                 f"correctness shuffled within each {g}, leave-one-out references rebuilt, metrics recomputed, "
                 f"pooled test rerun (van Elteren's stratified Wilcoxon test, normal approximation). Rejection rate "
                 f"at alpha = {np_['alpha']} with its exact 95% CI over the repeats (must be near {np_['alpha']}); "
                 f"quantiles ({levels}) of the pooled δ and of the within-{g} AUC under the null."),
        columns=["metric", "repeats", f"rejection rate at {np_['alpha']} [95% CI]", "δ quantiles",
                 f"AUC within {g} quantiles"],
        rows=rows, notes=[f"Not rerun (they need no reference): {', '.join(left)}."] if left else [],
    )


def table_dispersion(d: dict, src: str, key: str) -> Table:
    disp = d["dispersion"]
    g = stratum_word(d)
    rows = [[r["class"], fmt_int(r["n_correct"]), fmt_int(r["n_incorrect"]), fmt_sig(r["dispersion_correct"]),
             fmt_sig(r["dispersion_incorrect"]), fmt_fixed(r["statistic"], 2, sign=True), fmt_sig(r["ssim_correct"]),
             fmt_sig(r["ssim_incorrect"]), fmt_p(r["p_value"])] for r in disp["per_class"]]
    notes = []
    if disp.get("skipped"):
        notes.append("Not tested: " + "; ".join(f"{c} ({why})" for c, why in disp["skipped"]) + ".")
    pooled = disp["pooled"]
    notes.append(f"Pooled over {plural(g)}: weighted log ratio {fmt_fixed(pooled.get('statistic'), 2, sign=True)}, "
                 f"permutation {p_phrase(pooled.get('p_permutation'))} ({pooled.get('n_permutations')} permutations).")
    return Table(
        key=key, source=src,
        caption=(f"Are misclassified images' maps less consistent among themselves? ({analysis_label(d)}; the "
                 f"symmetric question, not the reference tests above.) Per {g}: each group's dispersion, the mean "
                 f"squared distance of its maps to the leave-one-out mean of the rest of the same group; log ratio "
                 f"log(dispersion incorrect / dispersion correct), > 0: misclassified maps less consistent among "
                 f"themselves; mean pairwise SSIM within each group (described, not tested); two-sided permutation "
                 f"p (correctness shuffled within {g}, group means recomputed)."),
        columns=[g, "n corr", "n inc", "dispersion corr", "dispersion inc", "log ratio", "SSIM corr", "SSIM inc",
                 "p"],
        rows=rows, notes=notes,
    )


def table_random(d: dict, src: str, key: str) -> Table:
    rc = d["controls"]["random_weights"]
    g, st = group_word(d), stratum_word(d)
    rows = []
    for name, m in rc["metrics"].items():
        pt = m.get("paired_trained_minus_random") or {}
        rows.append([name, fmt_sig(m.get("median_trained")), fmt_sig(m.get("median_random")),
                     with_ci(fmt_fixed(m.get("auc_within_class_trained"), 3),
                             fmt_ci(m.get("auc_within_class_trained_ci95"), 3)),
                     with_ci(fmt_fixed(m.get("auc_within_class_random"), 3),
                             fmt_ci(m.get("auc_within_class_random_ci95"), 3)),
                     with_ci(fmt_fixed(m.get("auc_marginal_random"), 3), fmt_ci(m.get("auc_marginal_random_ci95"), 3)),
                     with_ci(fmt_sig(pt.get("mean_diff")), fmt_ci_sig(pt.get("ci95"))), fmt_p(pt.get("p_wilcoxon"))])
    return Table(
        key=key, source=src,
        caption=(f"Control: randomised weights (Adebayo et al. 2018). The same metrics on the maps of the same "
                 f"architecture with random weights ({rc['store']['path']}), same images, grouped by the trained "
                 f"model's predictions and using its correctness. AUC within {st}: as in the pooled table (in H1's "
                 f"orientation, BCa 95% CI); a random model's maps carry no information about the trained model's "
                 f"errors within a {st}, so their within-{st} AUC should include 0.5; their marginal AUC can still "
                 f"differ from 0.5 through differences between {plural(g)}. Mean diff: trained - random per image, "
                 f"95% CI, Wilcoxon signed-rank p."),
        columns=["metric", "median trained", "median random", f"AUC within {st} trained", f"AUC within {st} random",
                 "marginal AUC random", "mean diff [95% CI]", "p"],
        rows=rows,
    )


def table_class_medians(d: dict, name: str, src: str, key: str) -> Table:
    m = d["metrics"][name]
    g = group_word(d)
    rows = [[r["class"], fmt_int(r["n"]), fmt_int(r["n_correct"]), fmt_int(r["n_incorrect"]), fmt_sig(r["median"]),
             fmt_sig(r["median_correct"]), fmt_sig(r["median_incorrect"])] for r in m["per_class"] if r["n"]]
    return Table(
        key=key, source=src,
        caption=f"{name} ({metric_description(name)}) per {g}, {analysis_label(d)}: medians of all, correct and "
                f"misclassified images.",
        columns=[g, "n", "n corr", "n inc", "median", "median corr", "median inc"], rows=rows,
    )


def table_groups(d: dict, src: str, key: str) -> Table:
    g = group_word(d)
    cols = ("mean_pairwise_ssim", "mean_pairwise_iou", "com_dispersion", "mean_dist_to_mean")
    rows = []
    for row in d["groups"]:
        for subset in ("all", "correct", "incorrect"):
            s = row.get(subset)
            if s is None or "mean_pairwise_ssim" not in s:  # fewer than 2 maps: no pairs
                continue
            rows.append([row[g], subset, fmt_int(s.get("n")), fmt_int(s.get("n_sampled")),
                         *(fmt_sig(s.get(c)) for c in cols)])
    return Table(
        key=key, source=src,
        caption=(f"Group-level consistency per {g}, {analysis_label(d)}: mean pairwise SSIM and IoU (over a seeded "
                 f"sample of at most {d['params']['pair_sample']} maps), dispersion of the centres of mass and mean "
                 f"distance to the group's mean map (over all maps)."),
        columns=[g, "subset", "n", "sampled", "pairwise SSIM", "pairwise IoU", "CoM dispersion", "dist to mean"],
        rows=rows, align="llrrrrrr",
    )


def table_clusters(d: dict, src: str, key: str) -> Table:
    """Each composition cluster's size, mean silhouette and class mix."""
    c = d["clusters"]
    rows = [[name, fmt_int(size), fmt_fixed(sil, 2), class_mix(c["class_counts"].get(name, {}))]
            for name, size, sil in zip(c["names"], c["sizes"], c["silhouette"])]
    return Table(key=key, source=src,
                 caption=(f"Composition clusters: {composition_text(c)}. Silhouette: the mean over the cluster's "
                          "images of (b - a) / max(a, b), a the mean distance to its own cluster, b to the nearest "
                          "other."),
                 columns=["cluster", "n", "silhouette", "classes"], rows=rows, align="lrrl")


def verdict_sentence(d: dict, name: str) -> str:
    """One sentence per metric by the verdict rule, every number read from the result dict ``d``."""
    m = d["metrics"][name]
    p = m["pooled"]
    higher = m.get("higher_is_more_consistent")
    g = group_word(d)
    f = m.get("finding") or {}
    if higher is None or f.get("outcome", "undefined") == "undefined":
        return f"**{name}**: no pooled test possible ({no_direction_reason(higher)})."
    more, less = METRIC_PHRASES.get(name, ("are more consistent", "are less consistent"))
    phrase = {"better": f"correct images' maps {more.format(g=g)}", "worse": f"correct images' maps {less.format(g=g)}",
              "inconclusive": "no difference shown"}[f["outcome"]]
    k, n = significant_classes(m)
    fam = "the primary analyses" if m.get("role") == "primary" else f"the {m.get('role')} metrics"
    odds = with_ci(fmt_fixed(p.get("odds_ratio_per_sd_given_confidence"), 2),
                   fmt_ci(p.get("odds_ratio_ci95_given_confidence")))
    outcome = outcome_text(name, m)
    way = "in H1's direction" if m.get("role") in ("primary", "secondary") else "with correct maps better"
    return (f"**{name}** ({m.get('role')}) — {phrase}: {auc_w_text(p)}; pooled Cliff's delta "
            f"{fmt_fixed(p.get('statistic'), 2, sign=True)}; permutation {p_phrase(p.get('p_permutation'))}, "
            f"{correction_name(d)}-adjusted over {fam} {p_phrase(p.get('p_adjusted'))}; per {g}: adjusted p < {ALPHA} "
            f"{way} in {k}/{n} {plural(g)}; odds ratio per SD given confidence {odds} "
            f"(LRT {p_phrase(p.get('p_lrt_given_confidence'))}); marginal AUC {fmt_fixed(p.get('auc_marginal'), 2)}. "
            f"*{outcome[:1].upper() + outcome[1:]}.*")


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


# ROAD faithfulness of the runs' scored test stores (camstat.compare), when there is any
FAITHFULNESS_COLUMNS = {"road_combined": "ROAD combined", "road_vs_random": "ROAD vs random",
                        "road_vs_class_mean": "ROAD vs class mean"}


# (metric, decimals or None for significant digits) of the H2 tables: accuracy, consistency, concentration
H2_METRICS = (("accuracy", 3), ("dist", None), ("ssim", None), ("entropy", None), ("spread", None))


def _h2_metrics(c: dict) -> list[tuple[str, int | None]]:
    """The H2 tables' metrics of a comparison: faithfulness too when its runs were scored."""
    return list(H2_METRICS) + [(m, None) for m in c.get("families", {}).get("faithfulness", [])]


def _arm_cells(arm: dict, metrics: list[tuple[str, int | None]]) -> list[str]:
    """Per metric of an arm: ``mean ± sd [95% CI]`` over its runs (seeds)."""
    cells = []
    for m, dec in metrics:
        s = arm[m]
        mean = fmt_fixed(s.get("mean"), dec) if dec else fmt_sig(s.get("mean"))
        sd = (fmt_fixed(s.get("sd"), dec) if dec else fmt_sig(s.get("sd"), 2)) if finite(s.get("sd")) else ""
        ci = (fmt_ci(s.get("ci95"), dec) if dec else fmt_ci_sig(s.get("ci95")))
        cells.append(with_ci(f"{mean} ± {sd}" if sd else mean, ci))
    return cells


def _arms_caption(c: dict, metrics: list[tuple[str, int | None]]) -> str:
    ref = ("each run's own class means (leave-one-out)" if c["reference"] == "self"
           else f"class means of {c['reference']}")
    faith = any(m in FAITHFULNESS_COLUMNS for m, _ in metrics)
    return (f"mean ± SD over runs (seeds) with t-based 95% CI where there are 2 or more runs; accuracy on the "
            f"held-out images, consistency (dist: mean squared distance, ssim: SSIM of each map to {ref}) and "
            f"concentration (entropy, spread of the map) on the images each run gets right."
            + (" ROAD faithfulness of each run's maps on its scored test store RUN/test.zarr: combined score "
               "(higher = more faithful) and its mean paired difference against random and class-mean maps; "
               "runs without a scored store are left out." if faith else ""))


def _arm_columns(metrics: list[tuple[str, int | None]]) -> list[str]:
    return ["arm", "runs", *(FAITHFULNESS_COLUMNS.get(m, m) for m, _ in metrics)]


def table_arms(c: dict, src: str, key: str) -> Table:
    metrics = _h2_metrics(c)
    rows = [[name, fmt_int(len(arm["runs"])), *_arm_cells(arm, metrics)] for name, arm in c["arms"].items()]
    return Table(key=key, source=src, caption="H2, per arm: " + _arms_caption(c, metrics),
                 columns=_arm_columns(metrics), rows=rows)


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
    metrics = _h2_metrics(c)
    rows = [[m, *_paired_cells(c["paired"].get(m) or {}, dec)] for m, dec in metrics]
    notes = list(dict.fromkeys(f"{c['paired'][m]['note']}." for m, _ in metrics
                               if (c["paired"].get(m) or {}).get("note")))
    return Table(
        key=key, source=src,
        caption=(f"H2, paired by seed: difference {c['paired']['difference']} over {len(c['paired']['pairs'])} "
                 f"seed pair(s); " + PAIRED_CAPTION),
        columns=["metric", *PAIRED_COLUMNS], rows=rows, notes=notes,
    )


def sweep_baseline(sweep: dict) -> str:
    """The arm every comparison of a sweep is made against (each comparison's second arm)."""
    return list(sweep["comparisons"][0]["arms"])[1]


def sweep_arms(sweep: dict) -> dict[str, dict]:
    """Every arm of a sweep comparison by name, the baseline first."""
    base = sweep_baseline(sweep)
    arms = {base: sweep["comparisons"][0]["arms"][base]}
    for c in sweep["comparisons"]:
        name = list(c["arms"])[0]
        arms[name] = c["arms"][name]
    return arms


def table_sweep_arms(sweep: dict, src: str, key: str) -> Table:
    first = sweep["comparisons"][0]
    metrics = _h2_metrics(first)
    rows = [[name, fmt_int(len(arm["runs"])), *_arm_cells(arm, metrics)] for name, arm in sweep_arms(sweep).items()]
    return Table(key=key, source=src, caption="H2, every arm of the sweep: " + _arms_caption(first, metrics),
                 columns=_arm_columns(metrics), rows=rows)


def table_sweep_paired(sweep: dict, src: str, key: str) -> Table:
    rows, notes = [], []
    for c in sweep["comparisons"]:
        arm = list(c["arms"])[0]
        for m, dec in _h2_metrics(c):
            p = c["paired"].get(m) or {}
            rows.append([arm, m, *_paired_cells(p, dec)])
            if p.get("note"):
                notes.append(f"{arm}: {p['note']}.")
    return Table(
        key=key, source=src,
        caption=f"H2, each arm minus {sweep_baseline(sweep)}, paired by seed; " + PAIRED_CAPTION,
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
    if finite(pa.get("p_signflip")):
        parts.append(f"paired by seed, accuracy differs by {fmt_fixed(pa['mean_diff'], 3, sign=True)} "
                     f"(sign-flip {p_phrase(pa['p_signflip'])} over {pa['n']} seeds)")
    else:
        parts.append(f"no paired test over seeds ({pa.get('note') or 'fewer than 2 seed pairs'})")
    for r in c["mcnemar"]["per_pair"]:
        parts.append(f"McNemar (seed {r['seed']}, descriptive): {r['b']} images only {a} gets right, {r['c']} only "
                     f"{b}, {p_phrase(r['p_value'])}")
    return "; ".join(parts) + "."


def sweep_sentence(sweep: dict) -> str:
    """Each arm's seed-paired differences from the baseline in accuracy and dist, with their sign-flip p."""
    parts = []
    for c in sweep["comparisons"]:
        pa, pd = c["paired"].get("accuracy") or {}, c["paired"].get("dist") or {}
        parts.append(f"{list(c['arms'])[0]}: accuracy {fmt_fixed(pa.get('mean_diff'), 3, sign=True)} "
                     f"(sign-flip {p_phrase(pa.get('p_signflip'))}), dist {fmt_sig(pd.get('mean_diff'))} "
                     f"(sign-flip {p_phrase(pd.get('p_signflip'))})")
    return (f"each arm minus {sweep_baseline(sweep)}, paired by seed (lower dist = more consistent): "
            + "; ".join(parts) + ".")


def primary_metric(d: dict, primary: str | None) -> str:
    """The metric a report leads with: ``primary`` when analysed, else ``dist``, else the first."""
    if primary and primary in d["metrics"]:
        return primary
    if d.get("primary") in d["metrics"]:
        return d["primary"]
    return "dist" if "dist" in d["metrics"] else next(iter(d["metrics"]))
