"""Presentation of ``camstat faithfulness`` results: the CLI tables and the MoRF/LeRF curve figure.

Every number shown comes from :meth:`camstat.faithfulness.FaithfulnessResult.to_dict` (the
``--json`` dict), formatted by :mod:`camstat.present.text`.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from camstat.present.text import fmt_ci_sig, fmt_p, fmt_sig, method_name

KIND_STYLE = {"maps": ("-", "the method's maps"), "random": ("--", "random maps"),
              "class_mean": (":", "class-mean map")}
MORF_COLOUR, LERF_COLOUR = "#d62728", "#1f77b4"


def render(d: dict) -> list:
    """Rich tables: per method the ROAD scores, then each baseline comparison overall and by correctness."""
    scores = Table(title=f"ROAD faithfulness ({d['n']} images, percentiles {d['percentiles']}, "
                         f"noise {d['road_noise']:g}; combined = (LeRF - MoRF) / 2, higher = more faithful)")
    for col in ("method", "combined", "95% CI", "MoRF", "LeRF", "correct", "incorrect"):
        scores.add_column(col)
    versus = Table(title="the method's maps vs baselines: delta = mean paired difference of combined, Wilcoxon p")
    for col in ("method", "baseline", "images", "n", "baseline combined", "delta", "95% CI", "p"):
        versus.add_column(col)
    for m, r in d["methods"].items():
        by = r["by_correct"]
        scores.add_row(method_name(m), fmt_sig(r["road_combined_mean"]), fmt_ci_sig(r["road_combined_ci95"]),
                       fmt_sig(r["road_morf_mean"]), fmt_sig(r["road_lerf_mean"]),
                       fmt_sig(by["correct"]["road_combined_mean"]), fmt_sig(by["incorrect"]["road_combined_mean"]))
        for base, v in r["versus"].items():
            for group, g in (("all", v), ("correct", v["correct"]), ("incorrect", v["incorrect"])):
                versus.add_row(method_name(m), base.replace("_", " "), group, str(g["n"]),
                               fmt_sig(v["baseline_combined_mean"]) if group == "all" else "",
                               fmt_sig(g["delta"]), fmt_ci_sig(g["delta_ci95"]), fmt_p(g["p_value"]))
    return [scores, versus]


def curves_figure(d: dict, out: Path, name: str = "fig-faithfulness.png") -> tuple[str, str, str]:
    """MoRF and LeRF curves (mean change of the explained class's probability against the share of
    pixels removed), one panel per method, the baselines drawn dashed (random) and dotted (class mean).

    pytorch-grad-cam's percentile p removes ``100 - p`` % of the pixels in both orders. Returns
    ``(section, file name, caption)`` like :mod:`camstat.present.figures`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(d["methods"])
    removed = [100 - p for p in d["percentiles"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 2.8), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        for kind, (style, label) in KIND_STYLE.items():
            curve = d["methods"][m]["curves"][kind]
            ax.plot(removed, curve["morf"], style, color=MORF_COLOUR, label=f"MoRF, {label}")
            ax.plot(removed, curve["lerf"], style, color=LERF_COLOUR, label=f"LeRF, {label}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{method_name(m)}: combined {fmt_sig(d['methods'][m]['road_combined_mean'])}")
        ax.set_xlabel("pixels removed (%)")
    axes[0][0].set_ylabel("change of class probability")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=110, facecolor="white")
    plt.close(fig)
    caption = (f"ROAD curves on {d['n']} images: mean change of the predicted class's softmax probability when the "
               "most (MoRF, red) or least (LeRF, blue) relevant pixels are imputed; solid: the method's maps, "
               "dashed: random maps, dotted: the class-mean map. Faithful maps fall fast under MoRF and stay "
               "flat under LeRF.")
    return "faithfulness", name, caption
