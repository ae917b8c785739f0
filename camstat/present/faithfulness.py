"""Presentation of ``camstat faithfulness`` results: the table (report and terminal) and the MoRF/LeRF figure.

Every number shown comes from :meth:`camstat.faithfulness.FaithfulnessResult.to_dict` (the
``--json`` dict, also what :func:`camstat.faithfulness.saved_result` reads back), formatted by
:mod:`camstat.present.text`.
"""

from __future__ import annotations

from pathlib import Path

from camstat.present.tables import Table
from camstat.present.text import ALPHA, finite, fmt_ci_sig, fmt_int, fmt_p, fmt_sig, method_name, p_phrase, with_ci

KIND_STYLE = {"maps": ("-", "the method's maps"), "random": ("--", "random maps"),
              "class_mean": (":", "class-mean map")}
MORF_COLOUR, LERF_COLOUR = "#d62728", "#1f77b4"
GROUPS = ("all", "correct", "incorrect")


def _versus_cells(v: dict) -> list[str]:
    return [with_ci(fmt_sig(v["delta"]), fmt_ci_sig(v["delta_ci95"])), fmt_p(v["p_value"])]


def table_faithfulness(d: dict, src: str, key: str) -> Table:
    """Per method, over all scored images and within correct and incorrect predictions: ROAD combined [CI], MoRF,
    LeRF, and the paired difference of combined against random and class-mean maps [CI] with the Wilcoxon p."""
    rows = []
    for m, r in d["methods"].items():
        for group in GROUPS:
            g = r if group == "all" else r["by_correct"][group]
            vs = {b: r["versus"][b] if group == "all" else r["versus"][b][group] for b in ("random", "class_mean")}
            rows.append([method_name(m), group, fmt_int(g.get("n", d["n"])),
                         with_ci(fmt_sig(g["road_combined_mean"]), fmt_ci_sig(g["road_combined_ci95"])),
                         fmt_sig(r["road_morf_mean"]) if group == "all" else "",
                         fmt_sig(r["road_lerf_mean"]) if group == "all" else "",
                         *_versus_cells(vs["random"]), *_versus_cells(vs["class_mean"])])
    return Table(
        key=key, source=src,
        caption=(f"ROAD faithfulness (Rong et al. 2022) on {d['n']} images ({d['n_correct']} correct), percentiles "
                 f"{', '.join(str(p) for p in d['percentiles'])}, imputation noise {d['road_noise']:g}: mean MoRF and "
                 "LeRF change of the predicted class's probability, combined = (LeRF - MoRF) / 2 (higher = more "
                 "faithful) with bootstrap 95% CI; the maps against random maps and the predicted class's mean map: "
                 "mean paired difference of combined (positive = the maps are more faithful) [95% CI], Wilcoxon "
                 "signed-rank p."),
        columns=["method", "images", "n", "combined [95% CI]", "MoRF", "LeRF", "vs random [95% CI]", "p (random)",
                 "vs class mean [95% CI]", "p (class mean)"],
        rows=rows, align="llrrrrrrrr",
    )


def _against(v: dict, baseline: str) -> str:
    """``beat random maps (+0.031 [0.02, 0.04], Wilcoxon p < 0.0001)``: the word from the CI and p at ALPHA."""
    lo, hi = v["delta_ci95"] if v["delta_ci95"] else (None, None)
    significant = finite(v["p_value"]) and v["p_value"] < ALPHA
    word = ("beat" if significant and finite(lo) and lo > 0 else "lose to" if significant and finite(hi) and hi < 0
            else "are not distinguishable from")
    return (f"{word} {baseline} ({with_ci(fmt_sig(v['delta']), fmt_ci_sig(v['delta_ci95']))}, Wilcoxon "
            f"{p_phrase(v['p_value'])})")


def summary(d: dict) -> str:
    """One sentence per method: its ROAD combined score and whether its maps beat each baseline."""
    parts = [f"{method_name(m)} combined "
             f"{with_ci(fmt_sig(r['road_combined_mean']), fmt_ci_sig(r['road_combined_ci95']))}; its maps {_against(r['versus']['random'], 'random maps')} and "
             f"{_against(r['versus']['class_mean'], 'the class-mean map')}" for m, r in d["methods"].items()]
    return f"On {d['n']} images: " + "; ".join(parts) + "."


def render(d: dict) -> list:
    """The terminal view of ``camstat faithfulness``: the same table as the report."""
    from camstat.present.terminal import from_cells

    return [from_cells(table_faithfulness(d, "", "faithfulness")), summary(d)]


def curves_figure(d: dict, out: Path, name: str = "fig-faithfulness.png",
                  section: str = "faithfulness") -> tuple[str, str, str]:
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
    return section, name, caption
