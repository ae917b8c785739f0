"""Render studies/chest-xray/h1/README.md from the JSON results beside it; every number is read from them.

The JSON files are the ``--json`` outputs of ``camstat consistency`` (both
CAM methods in one command: ``{"analyses": [...]}``) and ``camstat
detect-errors`` listed in ``studies/chest-xray/run.sh`` (section "H1 and
error detection"). The H1 verdicts are camstat's own (each analysis's
``verdict``, SPEC 4): the primary metric ``dist`` supports H1 when its
pooled permutation p, Holm-adjusted across the command's analyses (the two
methods), is below alpha *and* its within-group AUC 95 % CI lies above 0.5.

Run from the repository root: ``python studies/chest-xray/h1/tables.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("gradcam", "gradcam++")
FEATURES = ("thumbnail", "hog", "embedding")
CLUSTERINGS = {"auto": "K auto", "k4": "K = 4", "auto-within": "K auto, within class"}
PRIMARY = "dist"
ALPHA = 0.05
H1_METRICS = ("dist", "ssim", "iou", "corr", "com")
SCORE_NAMES = {"msp": "max softmax probability", "logit_margin": "logit margin",
               "predictive_entropy": "predictive entropy", "combined": "MSP + CAM metrics (out-of-fold logistic)",
               "com": "com distance"}


def load(name: str) -> dict:
    return json.loads((HERE / f"{name}.json").read_text())


def analyses(name: str) -> list[dict]:
    """The per-method analyses of one ``camstat consistency --method gradcam,gradcam++`` command, in METHODS order."""
    found = {a["method"]: a for a in load(name)["analyses"]}
    return [found[m] for m in METHODS]


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def ci(pair, digits: int = 3) -> str:
    return f"[{num(pair[0], digits)}, {num(pair[1], digits)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def auc_within(pooled: dict) -> str:
    return f"{num(pooled['auc_within_class'])} {ci(pooled['auc_within_class_ci95'])}"


def supported(a: dict) -> str:
    return "supported" if a["verdict"]["supported"] else "not supported"


def tested(record: dict) -> str:
    """Each tested group's Cliff's delta [CI] and Holm-adjusted p; skipped groups with the reason."""
    rows = [f"{r['class']}: {r['cliffs_delta']:+.2f} {ci(r['ci95'], 2)} (p adj {pval(r['p_adjusted'])})"
            for r in record["per_class"]]
    return "; ".join(rows) or "none"


def setup() -> str:
    d, det = analyses("class")[0], load("detect-gradcam")
    ref = det["reference"]
    rows = [[g["class"], str(g["n"]), str(g["n_correct"]), str(g["n_incorrect"])] for g in d["groups"]]
    return (f"Test split: n = {d['n']} images, accuracy {num(d['accuracy'])} ({d['n_correct']} correct, "
            f"{d['n_incorrect']} misclassified). Reference for detect-errors: the train split, n = {ref['n']}, "
            f"correct maps per class {ref['correct_per_class']}.\n\n"
            + table(["predicted class", "n", "correct", "misclassified"], rows))


def by_correct() -> str:
    rows = []
    for a in analyses("correct"):
        for name in H1_METRICS:
            rec = a["metrics"][name]
            p = rec["pooled"]
            rows.append([name, a["method"], tested(rec), pval(p["p_permutation"]), pval(p["p_adjusted"]),
                         auc_within(p), f"{num(p['auc_marginal'])} {ci(p['auc_marginal_ci95'])}",
                         f"{num(p['odds_ratio_per_sd_given_confidence'], 2)} "
                         f"{ci(p['odds_ratio_ci95_given_confidence'], 2)}", pval(p["p_lrt_given_confidence"])])
        c = a["confidence_baseline"]
        rows.append(["softmax confidence (baseline)", a["method"], "", "", "", auc_within(c),
                     f"{num(c['auc_marginal'])} {ci(c['auc_marginal_ci95'])}", "", ""])
    header = ["metric", "method", "per class: δ [95% CI] (p adj)", "p perm", "p adj", "within-class AUC [95% CI]",
              "marginal AUC [95% CI]", "OR/SD given confidence [95% CI]", "p LRT given confidence"]
    return table(header, rows) + "\n\n" + verdict_lines("by class (`--by correct`)", analyses("correct"))


def verdict_lines(grouping: str, results: list[dict]) -> str:
    lines = []
    for a in results:
        v = a["verdict"]
        lines.append(f"- {grouping}, {a['method']}: {PRIMARY} p perm Holm-adjusted over the "
                     f"{v['family_size']} methods {pval(v['p_adjusted'])}, within-group AUC "
                     f"{num(v['auc_within_class'])} {ci(v['auc_within_class_ci95'])}: **H1 {supported(a)}**.")
    return "\n".join(lines)


def dispersion(names: list[tuple[str, str]]) -> str:
    """Are misclassified maps less consistent among themselves (per group: mean distance to the group's own
    leave-one-out mean and mean pairwise SSIM), with the within-group permutation test."""
    rows = []
    for name, label in names:
        for a in analyses(name):
            d = a["dispersion"]
            for r in d["per_class"]:
                rows.append([label, a["method"], r["class"], f"{r['n_correct']} / {r['n_incorrect']}",
                             f"{num(r['dispersion_correct'], 4)} / {num(r['dispersion_incorrect'], 4)}",
                             f"{num(r['ssim_correct'])} / {num(r['ssim_incorrect'])}", pval(r["p_value"])])
            rows.append([label, a["method"], "pooled", "", "", "", pval(d["pooled"]["p_permutation"])])
    return table(["grouping", "method", "group", "n correct / incorrect", "dispersion (correct / incorrect)",
                  "pairwise SSIM (correct / incorrect)", "p"], rows)


def null_pipeline(names: list[tuple[str, str]]) -> str:
    rows = []
    for name, label in names:
        for a in analyses(name):
            n = a["controls"]["null_pipeline"]
            for metric in H1_METRICS:
                m = n["metrics"][metric]
                q = m["auc_within_class_quantiles"]
                rows.append([label, a["method"], metric, str(n["repeats"]),
                             f"{num(m['rejection_rate'])} {ci(m['rejection_rate_ci95'])}",
                             f"{num(q[0])} / {num(q[1])} / {num(q[2])}"])
    return table(["grouping", "method", "metric", "repeats", "rejection rate at 0.05 [95% CI]",
                  "null within-group AUC 2.5 / 50 / 97.5 %"], rows)


def by_class() -> str:
    rows = []
    for a in analyses("class"):
        for g in a["groups"]:
            c, i = g["correct"], g["incorrect"]
            rows.append([g["class"], a["method"], f"{g['n_correct']} / {g['n_incorrect']}",
                         f"{num(c['mean_pairwise_ssim'])} / {num(i['mean_pairwise_ssim'])}",
                         f"{num(c['mean_dist_to_mean'], 4)} / {num(i['mean_dist_to_mean'], 4)}"])
    return table(["predicted class", "method", "n correct / incorrect", "mean pairwise SSIM (correct / incorrect)",
                  "mean dist to group mean (correct / incorrect)"], rows)


def clusterings() -> str:
    rows = []
    for f in FEATURES:
        for key, label in CLUSTERINGS.items():
            d = analyses(f"cluster-{f}-{key}")[0]
            cl = d["clusters"]
            for g, sil in zip(d["groups"], cl["silhouette"]):
                mix = ", ".join(f"{c} {n}" for c, n in cl["class_counts"][g["cluster"]].items())
                rows.append([f, label, g["cluster"], str(g["n"]), mix, f"{g['n_correct']} / {g['n_incorrect']}",
                             num(sil, 2)])
    return table(["features", "clustering", "cluster", "n", "predicted classes", "correct / misclassified",
                  "silhouette"], rows)


def by_cluster() -> str:
    rows = []
    for f in FEATURES:
        for key, label in CLUSTERINGS.items():
            for a in analyses(f"cluster-{f}-{key}"):
                p, v = a["metrics"][PRIMARY]["pooled"], a["verdict"]
                rows.append([f, label, str(a["clusters"]["n_clusters"]), a["method"], tested(a["metrics"][PRIMARY]),
                             pval(p["p_permutation"]), pval(v["p_adjusted"]), auc_within(p),
                             pval(p["p_lrt_given_confidence"]), supported(a)])
    return table(["features", "clustering", "clusters", "method", "per cluster: δ [95% CI] (p adj)", "p perm",
                  "p Holm (2 methods)", "AUC within cell (cluster x class) [95% CI]", "p LRT given confidence",
                  "H1 (SPEC 4 rule)"],
                 rows)
def detection() -> str:
    rows, vs_rows = [], []
    for m in METHODS:
        d = load(f"detect-{m}")
        for name, s in d["scores"].items():
            rows.append([SCORE_NAMES.get(name, name), m, f"{num(s['auroc'])} {ci(s['auroc_ci95'])}",
                         num(s["aupr_error"]), num(s["fpr_at_95tpr"]), num(s["aurc"], 4), num(s["eaurc"], 4)])
        for name, v in d["versus_baseline"].items():
            vs_rows.append([SCORE_NAMES.get(name, name), m, SCORE_NAMES[v["baseline"]],
                            f"{v['delta_auroc']:+.3f} {ci(v['delta_auroc_ci95'])}", pval(v["p_delong"]),
                            pval(v["p_delong_holm"]), "yes" if v["better"] else "no"])
    return (table(["score", "method", "AUROC [95% CI]", "AUPR (errors)", "FPR at 95% TPR", "AURC", "E-AURC"], rows)
            + "\n\n" + table(["score", "method", "vs", "ΔAUROC [95% CI]", "p DeLong", "p Holm", "better"], vs_rows))


def mixed_clusters(d: dict) -> int:
    """Clusters holding images of both predicted classes."""
    return sum(len(mix) > 1 for mix in d["clusters"]["class_counts"].values())


def span(values: list[float]) -> str:
    return f"{pval(min(values))} to {pval(max(values))}"


def verdict_text(a: dict) -> str:
    v = a["verdict"]
    return f"{a['method']} {num(v['auc_within_class'])} {ci(v['auc_within_class_ci95'])} ({supported(a)})"


def findings() -> str:
    correct = analyses("correct")
    conf_correct = [a["metrics"][PRIMARY]["pooled"]["p_lrt_given_confidence"] for a in correct]
    across = {(f, k): analyses(f"cluster-{f}-{k}") for f in FEATURES for k in ("auto", "k4")}
    within = {f: analyses(f"cluster-{f}-auto-within") for f in FEATURES}
    conf_across = [a["metrics"][PRIMARY]["pooled"]["p_lrt_given_confidence"] for rs in across.values() for a in rs]
    conf_within = [a["metrics"][PRIMARY]["pooled"]["p_lrt_given_confidence"] for rs in within.values() for a in rs]
    rates = [a["controls"]["null_pipeline"]["metrics"][PRIMARY]["rejection_rate"] for a in correct]
    conf = correct[0]["confidence_baseline"]
    out = [f"- **By class.** {PRIMARY}: within-class AUC " + "; ".join(verdict_text(a) for a in correct)
           + f". Softmax confidence's own within-class AUC is {auc_within(conf)}, "
           + ("above" if all(a["metrics"][k]["pooled"]["auc_within_class"] < conf["auc_within_class"]
                             for a in correct for k in H1_METRICS) else "not above")
           + " every map metric's. Only one class can be tested: predicted normal has "
           f"{correct[0]['metrics'][PRIMARY]['skipped'][0][1]}, so the per-class tests are those of predicted "
           f"pneumonia. Given confidence (spline of the log-odds plus the margin), {PRIMARY}'s likelihood-ratio p "
           f"is {span(conf_correct)}: the maps add nothing detectable to the softmax about correctness. Under the "
           f"null pipeline (correctness shuffled within class) {PRIMARY} rejects at rate {span(rates)}."]
    mixed_txt = ", ".join(f"{f} {CLUSTERINGS[k]}: {mixed_clusters(rs[0])} of {rs[0]['clusters']['n_clusters']}"
                          for (f, k), rs in across.items())
    sil = {f: max(max(analyses(f"cluster-{f}-{k}")[0]["clusters"]["silhouette"]) for k in CLUSTERINGS)
           for f in FEATURES}
    out.append("- **What composition clusters look like.** The best cluster silhouette per feature kind is "
               + ", ".join(f"{f} {num(s, 2)}" for f, s in sil.items())
               + ": X-ray layouts barely form clusters (near-constant composition, as the study assumes), while "
               "the model's own features do.")
    out.append("- **Composition clusters across classes.** Clusters that mix predicted classes (" + mixed_txt
               + ") compare each map with a mean over two classes' maps, and the predicted class alone predicts "
               "correctness here (see the first table). So the pooled tests are stratified by cell, one cluster's "
               "images of one predicted class (`params.strata` " + ", ".join(sorted({f"`{a['params']['strata']}`"
                                                                                    for rs in across.values()
                                                                                    for a in rs}))
               + "), and the class cannot pass for an effect. Within-cell AUC of " + f"{PRIMARY}: "
               + "; ".join(f"{f} {CLUSTERINGS[k]}: " + ", ".join(verdict_text(a) for a in rs)
                           for (f, k), rs in across.items())
               + f". Given confidence, {PRIMARY}'s p is {span(conf_across)} (by class: {span(conf_correct)}): "
               "within composition clusters too, the maps add nothing detectable to the softmax. (Stratified by "
               "cluster alone, as camstat did before, these p-values were small: that was class confounding.)")
    emb = within["embedding"][0]
    top = max(emb["groups"], key=lambda g: g["n_incorrect"])
    out.append("- **Composition constant (clusters within each predicted class).** Within-cluster AUC of "
               f"{PRIMARY}: " + "; ".join(f"{f}: " + ", ".join(verdict_text(a) for a in rs)
                                          for f, rs in within.items())
               + " (by class: " + ", ".join(verdict_text(a) for a in correct) + "). Clusters of the model's own "
               f"features matter most: {top['cluster']} holds {top['n_incorrect']} of the {emb['n_incorrect']} "
               f"misclassified images ({top['n_correct']} correct), so the embedding clusters already separate the "
               "uncertain images, and within them the maps separate correct from incorrect less. Given confidence, "
               f"p is {span(conf_within)} in every within-class clustering. Dispersion (are misclassified maps "
               "less consistent among themselves?) follows the same pattern, pooled permutation p: "
               + "; ".join(f"{f} " + ", ".join(f"{a['method']} {pval(a['dispersion']['pooled']['p_permutation'])}"
                                               for a in rs) for f, rs in within.items()) + ".")
    dets = [load(f"detect-{m}") for m in METHODS]
    base = dets[0]["best_baseline"]
    b = dets[0]["scores"][base]
    best_cam = [max(H1_METRICS, key=lambda k: d["scores"][k]["auroc"]) for d in dets]
    comb = [d["versus_baseline"]["combined"] for d in dets]
    out.append(f"- **Error detection (train-split class means).** The best baseline is {SCORE_NAMES[base]}, "
               f"AUROC {num(b['auroc'])} {ci(b['auroc_ci95'])} (with two classes MSP, margin and entropy are "
               "monotone in one another and tie). Best CAM score: "
               + "; ".join(f"{m} {k} {num(d['scores'][k]['auroc'])} (Δ {d['versus_baseline'][k]['delta_auroc']:+.3f}"
                           f" {ci(d['versus_baseline'][k]['delta_auroc_ci95'])})"
                           for m, d, k in zip(METHODS, dets, best_cam))
               + ". MSP + CAM metrics: " + "; ".join(f"{m} Δ {c['delta_auroc']:+.3f} {ci(c['delta_auroc_ci95'])}, "
                                                     f"Holm p {pval(c['p_delong_holm'])}"
                                                     for m, c in zip(METHODS, comb))
               + ". " + ("Some CAM score beats confidence." if any(d["cam_beats_baseline"] for d in dets)
                         else "No CAM score beats confidence")
               + (", and adding them to confidence helps detectably." if any(d["cam_adds_to_baseline"] for d in dets)
                  else ", and adding them to confidence does not help detectably."))
    return "\n".join(out)


INTRO = """# Chest X-ray study: H1 and error detection (issues 11, 12)

Generated by `tables.py` from the JSON files in this folder (`--json` outputs of the commands in
`../run.sh`, section "H1 and error detection"); do not edit by hand. Model: `camstat:resnet20` trained on
PneumoniaMNIST (class-balanced, 28 x 28, lambda 0, seed 0; `runs/chest-base/model.pt`); maps: Grad-CAM and
Grad-CAM++ at `layer3`, explaining the predicted class. H1 analyses use leave-one-out means of the correct maps of
the same group (class or cluster); detect-errors uses the train split's correct maps as class means. The verdict
follows SPEC 4: `dist`'s pooled permutation p, Holm-adjusted over the two methods of a grouping, below 0.05 *and*
its within-group AUC 95 % CI above 0.5. `--features mask` does not apply: these X-rays have no object masks or
boxes. Reports: `report/` (by correct), `report-errors/` (H1 against the train-split means, and the
detect-errors section with ROC and risk-coverage figures) and `report-cluster-embedding/` (embedding clusters within
class)."""


def readme() -> str:
    parts = [INTRO, "## Data", setup(), "## Findings", findings(),
             "## H1 by correctness (`--by correct`), all consistency metrics", by_correct(),
             "## Are misclassified maps less consistent among themselves? (dispersion)",
             dispersion([("correct", "by class")] + [(f"cluster-{f}-auto-within", f"{f} within class")
                                                     for f in FEATURES]),
             "## Control: the whole pipeline under the null",
             null_pipeline([("correct", "by class")] + [(f"cluster-{f}-auto-within", f"{f} within class")
                                                        for f in FEATURES]),
             "## Group-level consistency by class (`--by class`)", by_class(),
             "## H1 within composition clusters (`--by cluster`), primary metric " + PRIMARY, by_cluster(),
             "## The clusters (identical for both methods)", clusterings(),
             "## Error detection (`camstat detect-errors`, train-split reference)", detection()]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    (HERE / "README.md").write_text(readme())
