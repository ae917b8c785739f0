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

__all__ = ["risk_coverage_figure", "roc_figure", "table", "verdict"]

NAMES = {"msp": "max softmax prob.", "logit_margin": "logit margin", "predictive_entropy": "predictive entropy",
         "combined": "baseline + CAM (out-of-fold)", "com": "com distance"}
DPI = 110


def _name(key: str) -> str:
    return NAMES.get(key, key)


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci: list | None, digits: int = 3) -> str:
    if not ci or ci[0] is None:
        return ""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 1e-4" if p < 1e-4 else f"{p:.4f}")


def table(d: dict) -> Table:
    """Per score: AUROC [CI], AUPR, FPR@95%TPR, AURC, E-AURC, and the difference to the best baseline."""
    t = Table(title=f"Error detection ({d['n_errors']} errors of {d['n']}; best baseline: {_name(d['best_baseline'])})")
    for col in ("score", "AUROC [95% CI]", "AUPR err", "FPR@95TPR", "AURC", "E-AURC", "dAUROC vs baseline [CI]",
                "p DeLong (Holm)"):
        t.add_column(col, justify="left" if col == "score" else "right")
    for key, row in d["scores"].items():
        vs = d["versus_baseline"].get(key)
        t.add_row(_name(key), f"{_num(row['auroc'])} {_ci(row['auroc_ci95'])}", _num(row["aupr_error"]),
                  _num(row["fpr_at_95tpr"]), _num(row["aurc"], 4), _num(row["eaurc"], 4),
                  f"{_delta(vs)}" if vs else "", f"{_p(vs['p_delong'])} ({_p(vs['p_delong_holm'])})" if vs else "")
    return t


def _delta(vs: dict) -> str:
    return f"{vs['delta_auroc']:+.3f} {_ci(vs['delta_auroc_ci95'])}"


def verdict(d: dict) -> str:
    """One sentence: does any CAM score beat, or add to, the model's own confidence?"""
    base = _name(d["best_baseline"])
    comb = d["versus_baseline"]["combined"]
    beats = [k for k, v in d["versus_baseline"].items() if k != "combined" and v["better"]]
    if d["cam_adds_to_baseline"]:
        first = (f"CAM consistency adds to the model's confidence: baseline + CAM scores detect errors better than "
                 f"{base} alone (AUROC {_delta(comb)}, Holm-adjusted DeLong p {_p(comb['p_delong_holm'])})")
    else:
        first = (f"CAM consistency does not add detectably to the model's confidence: baseline + CAM scores vs "
                 f"{base} alone, AUROC {_delta(comb)}, Holm-adjusted DeLong p {_p(comb['p_delong_holm'])}")
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
        ax.plot(fpr, tpr, label=f"{_name(key)}: {_num(row['auroc'], 2)} {_ci(row['auroc_ci95'], 2)}", **style)
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
                label=f"{_name(key)}: AURC {_num(row['aurc'], 4)}", **style)
    # the oracle accepts every correct image first; errors get distinct scores so its curve rises smoothly
    oracle = np.where(result.error, 1.0 + np.arange(result.error.size), 0.0)
    oracle_cov, oracle_risk = risk_coverage(oracle, result.error)
    ax.step(np.r_[0.0, oracle_cov], np.r_[oracle_risk[0], oracle_risk], where="post", color="grey", lw=0.8, ls=":",
            label="oracle")
    ax.set(xlabel="coverage (fraction of images accepted)", ylabel="risk (error rate among accepted)", xlim=(0, 1),
           title="Risk-coverage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7)
    return _save(fig, path)
