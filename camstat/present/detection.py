"""Words and pictures for ``detect-errors``: the table, the verdict sentence, ROC and risk-coverage figures.

Everything here reads a :class:`camstat.detection.DetectionResult` (or its
``to_dict()``) and computes no statistic of its own beyond the curves drawn.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

from camstat.detection_stats import risk_coverage  # noqa: E402
from camstat.present.text import fmt_ci, fmt_fixed, fmt_p, p_phrase  # noqa: E402

__all__ = ["markdown_section", "risk_coverage_figure", "roc_figure", "tables", "verdict"]

NAMES = {"msp": "max softmax probability", "logit_margin": "logit margin", "predictive_entropy": "predictive entropy",
         "combined": "baseline + CAM (out-of-fold)", "com": "com distance"}
DPI = 110


def _name(key: str) -> str:
    return NAMES.get(key, key)


def tables(d: dict) -> list[Table]:
    """Two tables: each score's detection metrics, and each CAM score and the combined model vs the best baseline."""
    base = _name(d["best_baseline"])
    per = Table(title=f"Detecting errors: {d['n_errors']} errors of {d['n']} predictions")
    for col in ("score", "AUROC", "95% CI", "AUPR err", "FPR@95TPR", "AURC", "E-AURC"):
        per.add_column(col, justify="left" if col == "score" else "right", no_wrap=True)
    for key, row in d["scores"].items():
        per.add_row(_name(key), fmt_fixed(row["auroc"], 3), fmt_ci(row["auroc_ci95"], 3),
                    fmt_fixed(row["aupr_error"], 3), fmt_fixed(row["fpr_at_95tpr"], 3), fmt_fixed(row["aurc"], 4),
                    fmt_fixed(row["eaurc"], 4))
    vs = Table(title=f"Against the best baseline, {base} (highest AUROC on these data)")
    for col in ("score", "dAUROC", "95% CI (paired bootstrap)", "p DeLong", "p Holm", "better"):
        vs.add_column(col, justify="left" if col == "score" else "right", no_wrap=True)
    for key, row in d["versus_baseline"].items():
        vs.add_row(_name(key), fmt_fixed(row["delta_auroc"], 3, sign=True), fmt_ci(row["delta_auroc_ci95"], 3),
                   fmt_p(row["p_delong"]), fmt_p(row["p_delong_holm"]), "yes" if row["better"] else "no")
    return [per, vs]


def _p_pair(vs: dict) -> str:
    return f"{fmt_p(vs['p_delong'])} ({fmt_p(vs['p_delong_holm'])})"


def _delta(vs: dict) -> str:
    return f"{fmt_fixed(vs['delta_auroc'], 3, sign=True)} {fmt_ci(vs['delta_auroc_ci95'], 3)}"


def verdict(d: dict) -> str:
    """One sentence: does any CAM score beat, or add to, the model's own confidence?"""
    base = _name(d["best_baseline"])
    comb = d["versus_baseline"]["combined"]
    beats = [k for k, v in d["versus_baseline"].items() if k != "combined" and v["better"]]
    if d["cam_adds_to_baseline"]:
        first = (f"CAM consistency adds to the model's confidence: baseline + CAM scores detect errors better than "
                 f"{base} alone (AUROC {_delta(comb)}, Holm-adjusted DeLong {p_phrase(comb['p_delong_holm'])})")
    else:
        first = (f"CAM consistency does not add detectably to the model's confidence: baseline + CAM scores vs "
                 f"{base} alone, AUROC {_delta(comb)}, Holm-adjusted DeLong {p_phrase(comb['p_delong_holm'])}")
    second = (f"; {', '.join(_name(k) for k in beats)} alone beat{'s' if len(beats) == 1 else ''} {base}" if beats
              else f"; no CAM score alone beats {base}")
    return first + second + "."


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def _styles(result) -> list[tuple[str, dict]]:
    """(score, line style): baselines dashed grey-ish, the combined model black, CAM scores in colour."""
    cams = [k for k, row in result.scores.items() if row["family"] == "cam"]
    colours = plt.get_cmap("tab10").colors
    out = [(k, {"color": colours[i % 10], "lw": 1.2}) for i, k in enumerate(cams)]
    out += [(b, {"color": c, "lw": 1.4, "ls": "--"})
            for b, c in zip([k for k, row in result.scores.items() if row["family"] == "baseline"],
                            ("#444444", "#888888", "#bbbbbb"))]
    return out + [("combined", {"color": "black", "lw": 1.8})]


def roc_figure(result, path: Path) -> Path:
    """ROC of every score for catching errors, the softmax baselines drawn dashed."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for key, style in _styles(result):
        fpr, tpr, _ = roc_curve(result.error, result.per_image[key])
        row = result.scores[key]
        ax.plot(fpr, tpr, label=f"{_name(key)}: {fmt_fixed(row['auroc'])} {fmt_ci(row['auroc_ci95'])}", **style)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="false-positive rate (correct predictions flagged)", ylabel="true-positive rate (errors caught)",
           xlim=(0, 1), ylim=(0, 1.01), title="Detecting misclassifications")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7, title="score: AUROC [95% CI]",
              title_fontsize=7)
    return _save(fig, path)


def risk_coverage_figure(result, path: Path) -> Path:
    """Risk (error rate among accepted images) against coverage, most confident accepted first."""
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for key, style in _styles(result):
        coverage, risk = risk_coverage(result.per_image[key], result.error)
        row = result.scores[key]
        ax.step(np.r_[0.0, coverage], np.r_[risk[0], risk], where="post",
                label=f"{_name(key)}: AURC {fmt_fixed(row['aurc'], 4)}", **style)
    # the oracle accepts every correct image first; errors get distinct scores so its curve rises smoothly
    oracle = np.where(result.error, 1.0 + np.arange(result.error.size), 0.0)
    oracle_cov, oracle_risk = risk_coverage(oracle, result.error)
    ax.step(np.r_[0.0, oracle_cov], np.r_[oracle_risk[0], oracle_risk], where="post", color="grey", lw=0.8, ls=":",
            label="oracle")
    ax.set(xlabel="coverage (fraction of images accepted)", ylabel="risk (error rate among accepted)", xlim=(0, 1),
           title="Risk-coverage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7)
    return _save(fig, path)


def markdown_section(result, out: Path, slug: str = "detect") -> list[str]:
    """The report's section: verdict, one Markdown table, and both figures written to ``out``."""
    d = result.to_dict()
    roc = roc_figure(result, Path(out) / f"fig-{slug}-roc.png")
    rc = risk_coverage_figure(result, Path(out) / f"fig-{slug}-risk-coverage.png")
    lines = ["## Can CAMs tell when the model is wrong?", "", verdict(d), "",
             f"{d['n_errors']} errors of {d['n']} predictions; class means from {d['reference']['path']} "
             f"({d['reference']['split']} split); best baseline {_name(d['best_baseline'])}, chosen by AUROC on "
             "these data (optimistic for the baseline); combined model out-of-fold "
             f"({d['folds']} stratified folds).", "",
             "| score | AUROC [95% CI] | AUPR err | FPR@95TPR | AURC | E-AURC | dAUROC vs baseline [95% CI] | p DeLong "
             "(Holm) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, row in d["scores"].items():
        vs = d["versus_baseline"].get(key)
        lines.append(f"| {_name(key)} | {fmt_fixed(row['auroc'], 3)} {fmt_ci(row['auroc_ci95'], 3)} | "
                     f"{fmt_fixed(row['aupr_error'], 3)} | {fmt_fixed(row['fpr_at_95tpr'], 3)} | "
                     f"{fmt_fixed(row['aurc'], 4)} | {fmt_fixed(row['eaurc'], 4)} | "
                     f"{_delta(vs) if vs else ''} | "
                     f"{_p_pair(vs) if vs else ''} |")
    return lines + ["", f"![ROC]({roc.name})", "", f"![risk-coverage]({rc.name})", ""]
