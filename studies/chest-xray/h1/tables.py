"""Render studies/chest-xray/h1/README.md from the JSON results beside it; every number is read from them.

The JSON files are the ``--json`` outputs of ``camstat consistency`` and
``camstat detect-errors`` listed in ``studies/chest-xray/run.sh`` (section
"H1 and error detection"). The H1 verdict follows SPEC 4: the primary
metric ``dist`` supports H1 in an analysis when its pooled permutation p,
Holm-adjusted across the analyses of one grouping (here the two CAM
methods), is below alpha *and* its within-class (here: within-group) AUC
95 % CI lies above 0.5 in H1's direction.

Run from the repository root: ``python studies/chest-xray/h1/tables.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from statsmodels.stats.multitest import multipletests

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


def h1_auc(record: dict) -> tuple[float, list[float]]:
    """The within-group AUC in H1's orientation (> 0.5: correct images' maps more consistent).

    This JSON records P(metric of a correct image > metric of an incorrect one of the same group); for a
    metric where lower is more consistent, H1's orientation is one minus that (and the CI flips).
    """
    p = record["pooled"]
    auc, (lo, hi) = p["auc_within_class"], p["auc_within_class_ci95"]
    return (auc, [lo, hi]) if record["higher_is_more_consistent"] else (1 - auc, [1 - hi, 1 - lo])


def verdicts(results: list[dict]) -> list[dict]:
    """SPEC 4's rule for the primary metric over the analyses of one grouping (Holm across them)."""
    records = [r["metrics"][PRIMARY] for r in results]
    p_adj = multipletests([r["pooled"]["p_permutation"] for r in records], method="holm")[1]
    out = []
    for rec, p in zip(records, p_adj):
        auc, lohi = h1_auc(rec)
        out.append({"p_adjusted": float(p), "auc": auc, "ci": lohi,
                    "supported": bool(p < ALPHA and lohi[0] > 0.5)})
    return out


def tested(record: dict) -> str:
    """Each tested group's Cliff's delta [CI] and Holm-adjusted p; skipped groups with the reason."""
    rows = [f"{r['class']}: {r['cliffs_delta']:+.2f} {ci(r['ci95'], 2)} (p adj {pval(r['p_adjusted'])})"
            for r in record["per_class"]]
    return "; ".join(rows) or "none"


def setup() -> str:
    d, det = load("class-gradcam"), load("detect-gradcam")
    ref = det["reference"]
    rows = [[g["class"], str(g["n"]), str(g["n_correct"]), str(g["n_incorrect"])] for g in d["groups"]]
    return (f"Test split: n = {d['n']} images, accuracy {num(d['accuracy'])} ({d['n_correct']} correct, "
            f"{d['n_incorrect']} misclassified). Reference for detect-errors: the train split, n = {ref['n']}, "
            f"correct maps per class {ref['correct_per_class']}.\n\n"
            + table(["predicted class", "n", "correct", "misclassified"], rows))


def by_correct() -> str:
    results = [load(f"correct-{m}") for m in METHODS]
    rows = []
    for m, d in zip(METHODS, results):
        for name in H1_METRICS:
            rec = d["metrics"][name]
            p = rec["pooled"]
            auc, lohi = h1_auc(rec)
            rows.append([name, m, tested(rec), pval(p["p_permutation"]), f"{num(auc)} {ci(lohi)}",
                         f"{num(p['odds_ratio_per_sd_given_confidence'], 2)} "
                         f"{ci(p['odds_ratio_ci95_given_confidence'], 2)}", pval(p["p_lrt_given_confidence"])])
    header = ["metric", "method", "per class: δ [95% CI] (p adj)", "p perm", "within-class AUC [95% CI]",
              "OR/SD given confidence [95% CI]", "p LRT given confidence"]
    return table(header, rows) + "\n\n" + verdict_lines("by class (`--by correct`)", results)


def verdict_lines(grouping: str, results: list[dict]) -> str:
    lines = []
    for m, v in zip(METHODS, verdicts(results)):
        word = "**H1 supported**" if v["supported"] else "**H1 not supported**"
        lines.append(f"- {grouping}, {m}: {PRIMARY} p perm Holm-adjusted over the two methods "
                     f"{pval(v['p_adjusted'])}, within-group AUC {num(v['auc'])} {ci(v['ci'])}: {word}.")
    return "\n".join(lines)


def by_class() -> str:
    rows = []
    for m in METHODS:
        for g in load(f"class-{m}")["groups"]:
            c, i = g["correct"], g["incorrect"]
            rows.append([g["class"], m, f"{g['n_correct']} / {g['n_incorrect']}",
                         f"{num(c['mean_pairwise_ssim'])} / {num(i['mean_pairwise_ssim'])}",
                         f"{num(c['mean_dist_to_mean'], 4)} / {num(i['mean_dist_to_mean'], 4)}"])
    return table(["predicted class", "method", "n correct / incorrect", "mean pairwise SSIM (correct / incorrect)",
                  "mean dist to group mean (correct / incorrect)"], rows)


def clusterings() -> str:
    rows = []
    for f in FEATURES:
        for key, label in CLUSTERINGS.items():
            d = load(f"cluster-{f}-{key}-gradcam")
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
            results = [load(f"cluster-{f}-{key}-{m}") for m in METHODS]
            for m, d, v in zip(METHODS, results, verdicts(results)):
                p = d["metrics"][PRIMARY]["pooled"]
                rows.append([f, label, str(d["clusters"]["n_clusters"]), m, tested(d["metrics"][PRIMARY]),
                             pval(p["p_permutation"]), pval(v["p_adjusted"]), f"{num(v['auc'])} {ci(v['ci'])}",
                             pval(p["p_lrt_given_confidence"]), "supported" if v["supported"] else "not supported"])
    return table(["features", "clustering", "clusters", "method", "per cluster: δ [95% CI] (p adj)", "p perm",
                  "p Holm (2 methods)", "within-cluster AUC [95% CI]", "p LRT given confidence", "H1 (SPEC 4 rule)"],
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


def findings() -> str:
    correct = [load(f"correct-{m}") for m in METHODS]
    v_correct = verdicts(correct)
    conf_correct = [d["metrics"][PRIMARY]["pooled"]["p_lrt_given_confidence"] for d in correct]
    across = {(f, k): [load(f"cluster-{f}-{k}-{m}") for m in METHODS] for f in FEATURES for k in ("auto", "k4")}
    within = {f: [load(f"cluster-{f}-auto-within-{m}") for m in METHODS] for f in FEATURES}
    n_mixed = {fk: mixed_clusters(rs[0]) for fk, rs in across.items()}
    conf_across = [d["metrics"][PRIMARY]["pooled"]["p_lrt_given_confidence"] for rs in across.values() for d in rs]
    conf_within = [d["metrics"][PRIMARY]["pooled"]["p_lrt_given_confidence"] for rs in within.values() for d in rs]
    out = [f"- **By class.** {PRIMARY}: within-class AUC "
           + "; ".join(f"{m} {num(v['auc'])} {ci(v['ci'])} ({'supported' if v['supported'] else 'not supported'})"
                       for m, v in zip(METHODS, v_correct))
           + f". Only one class can be tested: predicted normal has "
           f"{correct[0]['metrics'][PRIMARY]['skipped'][0][1]}, so H1 here is H1 within predicted pneumonia. "
           f"Given confidence (spline of the log-odds plus the margin), {PRIMARY}'s likelihood-ratio p is "
           f"{span(conf_correct)}: the maps say nothing about correctness that the softmax does not."]
    mixed_txt = ", ".join(f"{f} {CLUSTERINGS[k]}: {n} of {rs[0]['clusters']['n_clusters']}"
                          for (f, k), rs in across.items() for n in [n_mixed[(f, k)]])
    sil = {f: max(max(load(f"cluster-{f}-{k}-gradcam")["clusters"]["silhouette"]) for k in CLUSTERINGS)
           for f in FEATURES}
    out.append("- **What composition clusters look like.** The best cluster silhouette per feature kind is "
               + ", ".join(f"{f} {num(s, 2)}" for f, s in sil.items())
               + ": X-ray layouts barely form clusters (near-constant composition, as the study assumes), while "
               "the model's own features do.")
    out.append("- **Composition clusters across classes.** Clusters that mix predicted classes (" + mixed_txt
               + ") compare each map with a mean over two classes' maps; Grad-CAM explains the predicted class, so "
               "the distance then also carries the predicted class, which alone predicts correctness here (see "
               "the first table), and the cluster, not the class, is the stratum. The within-cluster AUC stays "
               f"high, but {PRIMARY}'s p given confidence falls to {span(conf_across)} (against "
               f"{span(conf_correct)} by class). Read these as class confounding, not as evidence that the maps add "
               "to confidence; a model with both C(class) and C(cluster) would settle it, and the within-class "
               "clusterings below are the clean version of the question.")
    rows = []
    for f, rs in within.items():
        vs = verdicts(rs)
        rows.append(f"{f}: " + ", ".join(f"{m} {num(v['auc'])} {ci(v['ci'])} "
                                          f"({'supported' if v['supported'] else 'not supported'})"
                                          for m, v in zip(METHODS, vs)))
    emb = within["embedding"][0]
    top = max(emb["groups"], key=lambda g: g["n_incorrect"])
    out.append("- **Composition constant (clusters within each predicted class).** Within-cluster AUC of "
               f"{PRIMARY}: " + "; ".join(rows) + " (by class: "
               + ", ".join(f"{m} {num(v['auc'])}" for m, v in zip(METHODS, v_correct))
               + "). Layout clusters (thumbnail, HOG) leave H1 about as strong as by class. Clusters of the "
               f"model's own features do not: {top['cluster']} holds {top['n_incorrect']} "
               f"of the {emb['n_incorrect']} misclassified images ({top['n_correct']} correct), so the embedding "
               "clusters already separate the uncertain images, and within them the maps separate correct from "
               "incorrect much less. Given confidence, p is "
               f"{span(conf_within)} in every within-class clustering.")
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
             "## Group-level consistency by class (`--by class`)", by_class(),
             "## H1 within composition clusters (`--by cluster`), primary metric " + PRIMARY, by_cluster(),
             "## The clusters (identical for both methods)", clusterings(),
             "## Error detection (`camstat detect-errors`, train-split reference)", detection()]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    (HERE / "README.md").write_text(readme())
