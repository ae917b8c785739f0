"""Words and pictures for ``detect-errors``: its tables, the verdict sentence, ROC and risk-coverage figures.

Everything here reads a :class:`camstat.detection.DetectionResult` ``to_dict()`` (the figures
also its per-image scores) and computes no statistic of its own beyond the curves drawn. Each
table is built once as formatted cells (:class:`camstat.present.tables.Table`); the report lays
them out as Markdown and LaTeX, the terminal as rich tables. Numbers become text only through
:mod:`camstat.present.text`.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from camstat.detection_stats import risk_coverage  # noqa: E402
from camstat.present.tables import Table  # noqa: E402
from camstat.present.text import fmt_ci, fmt_fixed, fmt_p, method_name, p_phrase, with_ci  # noqa: E402

__all__ = ["figures", "render", "risk_coverage_figure", "roc_figure", "score_name", "slug", "table_scores",
           "table_versus", "verdict"]

NAMES = {"msp": "max softmax probability", "logit_margin": "logit margin", "predictive_entropy": "predictive entropy",
         "combined": "baseline + CAM (out-of-fold)", "com": "com distance"}
DPI = 110


def score_name(key: str) -> str:
    return NAMES.get(key, key)


def _label(d: dict) -> str:
    return f"{method_name(d['params']['method'])} at {d['params']['layer']}"


def table_scores(d: dict, src: str, key: str) -> Table:
    """Each score's detection metrics (rows: CAM scores, baselines, the combined model)."""
    rows = [[score_name(k), with_ci(fmt_fixed(r["auroc"], 3), fmt_ci(r["auroc_ci95"], 3)),
             fmt_fixed(r["aupr_error"], 3), fmt_fixed(r["fpr_at_95tpr"], 3), fmt_fixed(r["aurc"], 4),
             fmt_fixed(r["eaurc"], 4)] for k, r in d["scores"].items()]
    return Table(
        key=key, source=src,
        caption=(f"Detecting errors with {_label(d)}: {d['n_errors']} errors of {d['n']} predictions. Scores: "
                 f"consistency of each map with its predicted class's mean map of the reference store's correct "
                 f"maps ({d['reference']['split']} split), the softmax baselines, and a logistic model of the best "
                 f"baseline plus the CAM scores fitted out-of-fold ({d['folds']} stratified folds). AUROC of errors "
                 f"vs correct predictions with bootstrap 95% CI, AUPR of errors, FPR at 95% TPR, AURC and excess "
                 f"AURC (lower is better)."),
        columns=["score", "AUROC [95% CI]", "AUPR err", "FPR@95TPR", "AURC", "E-AURC"], rows=rows,
    )


def table_versus(d: dict, src: str, key: str) -> Table:
    """Each CAM score and the combined model against the best baseline."""
    rows = [[score_name(k), with_ci(fmt_fixed(r["delta_auroc"], 3, sign=True), fmt_ci(r["delta_auroc_ci95"], 3)),
             fmt_p(r["p_delong"]), fmt_p(r["p_delong_holm"]), "yes" if r["better"] else "no"]
            for k, r in d["versus_baseline"].items()]
    return Table(
        key=key, source=src,
        caption=(f"{_label(d)} against the best baseline, {score_name(d['best_baseline'])} (highest AUROC on these "
                 "data: optimistic for the baseline): AUROC difference with paired bootstrap 95% CI, DeLong p and "
                 "Holm-adjusted p over the comparisons; better = adjusted p < 0.05 with the CI above 0."),
        columns=["score", "dAUROC [95% CI]", "p DeLong", "p Holm", "better"], rows=rows,
    )


def render(d: dict) -> list:
    """The terminal view of ``camstat detect-errors``: the report's two tables, then the verdict."""
    from camstat.present.terminal import from_cells

    return [from_cells(table_scores(d, "", "scores")), from_cells(table_versus(d, "", "versus")), verdict(d)]


def slug(index: int, d: dict) -> str:
    """The report's key of the ``index``-th detection result: its figures' file names and section."""
    return f"detect-{index}-{re.sub(r'[^A-Za-z0-9]+', '', d['params']['method'].replace('+', 'p'))}"


def _delta(vs: dict) -> str:
    return with_ci(fmt_fixed(vs["delta_auroc"], 3, sign=True), fmt_ci(vs["delta_auroc_ci95"], 3))


def verdict(d: dict) -> str:
    """One sentence: does any CAM score beat, or add to, the model's own confidence?"""
    base = score_name(d["best_baseline"])
    comb = d["versus_baseline"]["combined"]
    beats = [k for k, v in d["versus_baseline"].items() if k != "combined" and v["better"]]
    if d["cam_adds_to_baseline"]:
        first = (f"CAM consistency adds to the model's confidence: baseline + CAM scores detect errors better than "
                 f"{base} alone (AUROC {_delta(comb)}, Holm-adjusted DeLong {p_phrase(comb['p_delong_holm'])})")
    else:
        first = (f"CAM consistency does not add detectably to the model's confidence: baseline + CAM scores vs "
                 f"{base} alone, AUROC {_delta(comb)}, Holm-adjusted DeLong {p_phrase(comb['p_delong_holm'])}")
    second = (f"; {', '.join(score_name(k) for k in beats)} alone beat{'s' if len(beats) == 1 else ''} {base}"
              if beats else f"; no CAM score alone beats {base}")
    return first + second + "."


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def _styles(scores: dict) -> list[tuple[str, dict]]:
    """(score, line style): baselines dashed in greys, the combined model black, CAM scores in colour."""
    cams = [k for k, row in scores.items() if row["family"] == "cam"]
    colours = plt.get_cmap("tab10").colors
    out = [(k, {"color": colours[i % 10], "lw": 1.2}) for i, k in enumerate(cams)]
    out += [(b, {"color": c, "lw": 1.4, "ls": "--"})
            for b, c in zip([k for k, row in scores.items() if row["family"] == "baseline"],
                            ("#444444", "#888888", "#bbbbbb"))]
    return out + [("combined", {"color": "black", "lw": 1.8})]


def roc_figure(result, path: Path) -> Path:
    """ROC of every score for catching errors, the softmax baselines drawn dashed."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for key, style in _styles(result.scores):
        fpr, tpr, _ = roc_curve(result.error, result.per_image[key])
        row = result.scores[key]
        ax.plot(fpr, tpr, label=f"{score_name(key)}: {with_ci(fmt_fixed(row['auroc']), fmt_ci(row['auroc_ci95']))}",
                **style)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="false-positive rate (correct predictions flagged)", ylabel="true-positive rate (errors caught)",
           xlim=(0, 1), ylim=(0, 1.01), title=f"Detecting misclassifications ({method_name(result.params['method'])})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7, title="score: AUROC [95% CI]",
              title_fontsize=7)
    return _save(fig, path)


def risk_coverage_figure(result, path: Path) -> Path:
    """Risk (error rate among accepted images) against coverage, most confident accepted first."""
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for key, style in _styles(result.scores):
        coverage, risk = risk_coverage(result.per_image[key], result.error)
        ax.step(np.r_[0.0, coverage], np.r_[risk[0], risk], where="post",
                label=f"{score_name(key)}: AURC {fmt_fixed(result.scores[key]['aurc'], 4)}", **style)
    # the oracle accepts every correct image first; errors get distinct scores so its curve rises smoothly
    oracle = np.where(result.error, 1.0 + np.arange(result.error.size), 0.0)
    oracle_cov, oracle_risk = risk_coverage(oracle, result.error)
    ax.step(np.r_[0.0, oracle_cov], np.r_[oracle_risk[0], oracle_risk], where="post", color="grey", lw=0.8, ls=":",
            label="oracle")
    ax.set(xlabel="coverage (fraction of images accepted)", ylabel="risk (error rate among accepted)", xlim=(0, 1),
           title=f"Risk-coverage ({method_name(result.params['method'])})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7)
    return _save(fig, path)


def figures(result, out: Path, key: str) -> list[tuple[str, str, str]]:
    """Both figures of one result as (section key, file name, caption), as :mod:`camstat.present.figures` gives."""
    roc = roc_figure(result, Path(out) / f"fig-{key}-roc.png")
    rc = risk_coverage_figure(result, Path(out) / f"fig-{key}-risk-coverage.png")
    what = f"{method_name(result.params['method'])}, {result.n_errors} errors of {result.n}"
    return [(key, roc.name, f"ROC of each score for catching errors ({what}); softmax baselines dashed, the "
                             "out-of-fold combined model black."),
            (key, rc.name, f"Risk-coverage curves ({what}): images accepted from the most confident on; lower is "
                            "better, the dotted oracle accepts every correct image first.")]
