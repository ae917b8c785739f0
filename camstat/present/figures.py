"""Report figures (PNG, matplotlib with the headless Agg backend).

Called by :func:`camstat.present.report.report`; each function returns
``(section, file name, caption)`` triples. Annotations (test results, AUCs)
are formatted from the result records with :mod:`camstat.present.text`
formatters, so a figure never shows a number the tables don't.

- class-mean maps: per class, the mean map of its correctly classified
  images over a representative image (the correct image whose map is
  closest to that mean), with a colour bar;
- galleries: the most and the least consistent images by the primary
  metric, each shown plain and with its map overlaid (alpha 0.45), titled
  with true label, prediction and the metric's value;
- distributions: per metric, correct vs misclassified per class (box plots;
  bars of proportions for 0/1 metrics), the test result on each panel;
- ROC: consistency predicting correctness *within class* (the weighted
  average of the per-class curves, whose area is the within-class AUC), one
  curve per metric and one for the softmax confidence, the AUCs and their
  bootstrap CIs (from the results) in the legend;
- composition clusters (``--by cluster``): per cluster, its correct images'
  mean map and a seeded sample of its images;
- runs: learning curves (accuracy, CAM loss, dist per epoch, arms coloured)
  and the arm comparison (per-run values, mean and 95 % CI per arm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from camstat import metrics as metrics_mod  # noqa: E402
from camstat import references  # noqa: E402
from camstat.errors import CamstatError  # noqa: E402
from camstat.present.tables import primary_metric  # noqa: E402
from camstat.present.text import fmt_ci, fmt_fixed, fmt_p, fmt_sig, method_name, plural, stratum_word  # noqa: E402

DPI = 110
CMAP = "jet"
ALPHA = 0.45
MAX_CLASSES = 10  # class panels per figure (the first ones; the caption says so)
CORRECT_COLOUR = "#1f77b4"
INCORRECT_COLOUR = "#d62728"
ARM_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": DPI})


def _colourbar(fig, label: str, rect: tuple[float, float, float, float]) -> None:
    """An opaque colour bar for the map values 0..1 in its own axes (never over a panel)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = fig.add_axes(rect)
    cbar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=CMAP), cax=cax)
    cbar.set_label(label, fontsize=7)
    cbar.ax.tick_params(labelsize=6)


def _save(fig, path: Path) -> None:
    """PNG at DPI on white, stored as optimised RGB (no alpha channel: ~10 % smaller committed reports)."""
    from PIL import Image

    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.05, facecolor="white")
    plt.close(fig)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    rgb.save(path, optimize=True)


# --------------------------------------------------------------------------
# data behind the pictures
# --------------------------------------------------------------------------


def load_images(store) -> tuple[Any, str | None]:
    """The store's dataset (:meth:`camstat.store.Store.dataset`); None and the reason when it is not available."""
    try:
        return store.dataset(), None
    except (CamstatError, OSError) as exc:
        return None, f"images not available ({exc}); maps shown alone"


def class_means(store, method: str, layer: str, target: str, classes: np.ndarray, correct: np.ndarray,
                n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means (C, H, W) of the correct min-max maps at the input size, counts, representative image per class).

    Two streamed passes (:mod:`camstat.references`); the representative is the
    correct image whose map is closest to its class mean, -1 if none.
    """
    means, counts = references.group_means(store.iter_maps(method, layer, target), classes, correct, n_classes)
    rep = references.representatives(store.iter_maps(method, layer, target), classes, correct, means, counts)
    return means, counts, rep


# --------------------------------------------------------------------------
# H1 figures
# --------------------------------------------------------------------------


def _overlay(ax, image: np.ndarray | None, cam: np.ndarray | None):
    """Image with the map on top (alpha 0.45); the map alone when there is no image."""
    handle = None
    if image is not None:
        ax.imshow(image, interpolation="nearest")
    if cam is not None:
        extent = None if image is None else (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
        handle = ax.imshow(cam, cmap=CMAP, vmin=0, vmax=1, alpha=ALPHA if image is not None else 1.0,
                           interpolation="bilinear", extent=extent)
    ax.set_xticks([])
    ax.set_yticks([])
    return handle


def class_mean_figure(an, out: Path, images, note: str | None) -> tuple[str, str, str] | None:
    s, d = an.store, an.d
    samples = s.samples
    classes = samples[d["class_of"]].astype(np.int64)
    correct = samples["correct"].astype(bool)
    names = s.classes
    means, counts, rep = class_means(s, d["method"], d["layer"], d["target"], classes, correct, len(names))
    shown = list(range(min(len(names), MAX_CLASSES)))
    n = len(shown)
    rows = 2 if images is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(1.25 * n + 0.8, 1.45 * rows + 0.3), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.9, wspace=0.08, hspace=0.3 if rows > 1 else 0.2)
    handle = None
    for col, j in enumerate(shown):
        image = images.raw_image(int(rep[j])) if images is not None and rep[j] >= 0 else None
        top = axes[0, col]
        if images is not None:
            _overlay(top, image, None)
            top.set_title(f"{names[j]}\n(n correct = {int(counts[j])})")
        bottom = axes[-1, col]
        if counts[j] == 0:
            bottom.axis("off")
            bottom.text(0.5, 0.5, "no correct\nimages", ha="center", va="center", transform=bottom.transAxes)
            if images is not None:
                top.axis("off")
            continue
        h = _overlay(bottom, image, means[j])
        handle = handle or h
        if images is None:
            bottom.set_title(f"{names[j]}\n(n correct = {int(counts[j])})")
    if images is not None:
        axes[0, 0].set_ylabel("example", fontsize=7)
        axes[1, 0].set_ylabel("class mean\nover example", fontsize=7)
    if handle is not None:
        box = axes[-1, -1].get_position()
        _colourbar(fig, "mean min-max CAM", (0.915, box.y0, 0.012, box.height))
    fname = f"fig-{an.slug}-class-means.png"
    _save(fig, out / fname)
    more = f" (first {n} of {len(names)} classes)" if n < len(names) else ""
    cap = (f"{method_name(d['method'])} class-mean maps{more}: the mean min-max map of each class's correctly "
           f"classified images (class = {'prediction' if d['class_of'] == 'pred' else 'true label'}), "
           + ("over the class's representative image (the correct image whose map is closest to the mean; top row "
              "plain, bottom row with the mean overlaid at alpha 0.45)." if images is not None else
              f"shown alone ({note}).") + " Colour bar: map value, 0 to 1.")
    return an.slug, fname, cap


def gallery_figure(an, out: Path, images, primary: str, k: int) -> tuple[str, str, str] | None:
    s, d, res = an.store, an.d, an.result
    v = np.asarray(res.values[primary], dtype=np.float64)
    higher = d["metrics"][primary].get("higher_is_more_consistent")
    ok = np.flatnonzero(np.isfinite(v))
    if ok.size == 0:
        return None
    score = v[ok] if higher in (None, True) else -v[ok]
    order = ok[np.argsort(-score, kind="stable")]
    k = min(k, max(1, order.size // 2))
    sets = [("most consistent", order[:k]), ("least consistent", order[::-1][:k])]
    samples = s.samples
    names = s.classes
    rows_per = 2 if images is not None else 1
    heights = ([1, 1, 0.28, 1, 1] if rows_per == 2 else [1, 0.28, 1])
    side = 0.9 if max(s.input_size) <= 64 else 1.25  # inches per panel: small images need no more
    fig = plt.figure(figsize=(side * k + 1.0, (side + 0.35) * 2 * rows_per + 0.6))
    grid = fig.add_gridspec(len(heights), k, height_ratios=heights, left=0.06, right=0.91, top=0.9, bottom=0.02,
                            wspace=0.08, hspace=0.45)
    panel_rows = [r for r, h in enumerate(heights) if h == 1]
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(k)] for r in panel_rows])
    handle = None
    for block, (label, idx) in enumerate(sets):
        chosen = np.asarray(idx, dtype=np.int64)
        sort = np.argsort(chosen)
        maps = np.empty((len(chosen), *s.input_size), np.float32)
        maps[sort] = s.maps(d["method"], d["layer"], d["target"], indices=chosen[sort])
        for col, i in enumerate(chosen):
            ok_i = bool(samples["correct"][i])
            title = (f"true {names[samples['label'][i]]}\npred {names[samples['pred'][i]]}\n"
                     f"{primary} {fmt_sig(float(v[i]))}")
            colour = CORRECT_COLOUR if ok_i else INCORRECT_COLOUR
            r0 = block * rows_per
            image = images.raw_image(int(i)) if images is not None else None
            if images is not None:
                _overlay(axes[r0, col], image, None)
                axes[r0, col].set_title(title, color=colour, fontsize=7)
                h = _overlay(axes[r0 + 1, col], image, maps[col])
            else:
                h = _overlay(axes[r0, col], None, maps[col])
                axes[r0, col].set_title(title, color=colour, fontsize=7)
            handle = handle or h
            for r in range(rows_per):
                for spine in axes[r0 + r, col].spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(1.5)
        axes[block * rows_per, 0].set_ylabel(label, fontsize=8, fontweight="bold")
        if images is not None:
            axes[block * rows_per + 1, 0].set_ylabel("with map", fontsize=7)
    if handle is not None:
        top, bottom = axes[0, -1].get_position(), axes[-1, -1].get_position()
        _colourbar(fig, "min-max CAM", (0.925, bottom.y0, 0.012, top.y1 - bottom.y0))
    fname = f"fig-{an.slug}-gallery-{primary}.png"
    _save(fig, out / fname)
    better = "lowest" if higher is False else "highest"
    cap = (f"Most and least consistent images by {primary} ({better} = most consistent), "
           f"{method_name(d['method'])} maps of the {'predicted' if d['target'] == 'pred' else d['target']} class. "
           f"Titles: true label, prediction, {primary}; blue = correct, red = misclassified. "
           + ("Each image is shown plain and with its map overlaid (alpha 0.45, colour bar: map value)."
              if images is not None else "Maps shown alone (images not available)."))
    return an.slug, fname, cap


def cluster_figure(an, out: Path, images, seed: int, members: int = 6) -> tuple[str, str, str] | None:
    """A montage per composition cluster: its mean map, then a seeded sample of member images (maps without images)."""
    s, d, res = an.store, an.d, an.result
    c = d.get("clusters")
    if not c:
        return None
    groups = np.asarray(res.groups)
    shown = list(range(min(len(c["names"]), MAX_CLASSES)))
    correct = s.samples["correct"].astype(bool)
    means, counts = references.group_means(s.iter_maps(d["method"], d["layer"], d["target"]), groups, correct,
                                           len(c["names"]))
    rng = np.random.default_rng(seed)
    side = 0.9 if max(s.input_size) <= 64 else 1.25
    fig, axes = plt.subplots(len(shown), members + 1, figsize=(side * (members + 1) + 1.2, (side + 0.3) * len(shown)),
                             squeeze=False)
    fig.subplots_adjust(left=0.14, right=0.9, wspace=0.06, hspace=0.3)
    handle = None
    for row, j in enumerate(shown):
        member = np.flatnonzero(groups == j)
        pick = np.sort(rng.choice(member, size=min(members, member.size), replace=False))
        handle = (_overlay(axes[row, 0], None, means[j]) if counts[j] else None) or handle
        if not counts[j]:
            axes[row, 0].axis("off")
            axes[row, 0].text(0.5, 0.5, "no correct\nimages", ha="center", va="center",
                              transform=axes[row, 0].transAxes)
        axes[row, 0].set_ylabel(f"{c['names'][j]}\nn = {c['sizes'][j]}", fontsize=7)
        maps = None if images is not None or not pick.size else s.maps(d["method"], d["layer"], d["target"],
                                                                        indices=pick)
        for col in range(members):
            ax = axes[row, col + 1]
            if col >= pick.size:
                ax.axis("off")
                continue
            _overlay(ax, images.raw_image(int(pick[col])) if images is not None else None,
                     None if images is not None else maps[col])
    axes[0, 0].set_title("mean map\n(correct images)", fontsize=7)
    if handle is not None:
        _colourbar(fig, "mean min-max CAM", (0.915, 0.3, 0.012, 0.4))
    fname = f"fig-{an.slug}-clusters.png"
    _save(fig, out / fname)
    more = f" (first {len(shown)} of {len(c['names'])})" if len(shown) < len(c["names"]) else ""
    cap = (f"Composition clusters{more} ({c['features']} features, {c['n_clusters']} clusters): per cluster, the mean min-max "
           f"{method_name(d['method'])} map of its correctly classified images, then up to {members} of its images "
           f"(a seeded sample, seed {seed}){'' if images is not None else ', their maps shown (images not available)'}.")
    return an.slug, fname, cap


def _is_binary(x: np.ndarray) -> bool:
    return x.size > 0 and bool(np.all((x == 0) | (x == 1)))


def distribution_figure(an, out: Path, name: str) -> tuple[str, str, str] | None:
    d, res = an.d, an.result
    m = d["metrics"][name]
    v = np.asarray(res.values[name], dtype=np.float64)
    correct = an.store.samples["correct"].astype(bool)
    groups = np.asarray(res.groups)
    g = "cluster" if d["by"] == "cluster" else "class"
    names = d["clusters"]["names"] if d["by"] == "cluster" else an.store.classes
    rows = {r["class"]: r for r in m.get("per_class", [])}
    skipped = {c: why for c, why in m.get("skipped", [])}
    shown = list(range(min(len(names), MAX_CLASSES)))
    tested = d["by"] != "class"
    labels = [names[j] for j in shown] + ["all"]
    binary = _is_binary(v[np.isfinite(v)])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.85 * len(labels) + 1.2), 3.0))
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for pos, j in enumerate([*shown, None]):
        member = np.ones_like(correct) if j is None else groups == j
        fin = np.isfinite(v)
        parts = [v[member & correct & fin], v[member & ~correct & fin]]
        for side, (vals, colour) in enumerate(zip(parts, (CORRECT_COLOUR, INCORRECT_COLOUR))):
            x = pos + (-0.2 if side == 0 else 0.2)
            if vals.size == 0:
                continue
            if binary:
                ax.bar(x, vals.mean(), width=0.36, color=colour, alpha=0.75)
            else:
                bp = ax.boxplot(vals, positions=[x], widths=0.34, patch_artist=True, showfliers=True,
                                flierprops={"markersize": 2, "markeredgecolor": colour, "alpha": 0.5},
                                medianprops={"color": "black"})
                for patch in bp["boxes"]:
                    patch.set_facecolor(colour)
                    patch.set_alpha(0.55)
        if not tested:
            continue
        if j is None:
            p = m["pooled"]
            text = f"δ {fmt_fixed(p.get('statistic'), 2, sign=True)}\np perm {fmt_p(p.get('p_permutation'))}"
        elif names[j] in rows:
            r = rows[names[j]]
            text = f"δ {fmt_fixed(r['cliffs_delta'], 2, sign=True)}\np adj {fmt_p(r['p_adjusted'])}"
        else:
            text = "not tested" + ("\n(" + skipped[names[j]].split(";")[0][:18] + ")" if names[j] in skipped else "")
        ax.text(pos, 1.02, text, transform=trans, ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 7 else 0, ha="right" if len(labels) > 7 else "center")
    ax.axvline(len(shown) - 0.5, color="grey", lw=0.6, ls=":")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(f"{name}" + (" (proportion)" if binary else ""))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=CORRECT_COLOUR, alpha=0.6, label="correct"),
                       Patch(color=INCORRECT_COLOUR, alpha=0.6, label="misclassified")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    higher = m.get("higher_is_more_consistent")
    ax.set_title(f"{name} ({'higher' if higher else 'lower'} = more consistent), {method_name(d['method'])}"
                 if higher is not None else name, pad=24 if tested else 6)
    ax.grid(axis="y", lw=0.3, alpha=0.5)
    fname = f"fig-{an.slug}-dist-{name}.png"
    _save(fig, out / fname)
    more = f" (first {len(shown)} of {len(names)} {plural(g)})" if len(shown) < len(names) else ""
    cap = (f"{name} ({metrics_mod.PER_IMAGE[name].description if name in metrics_mod.PER_IMAGE else name}) of "
           f"correct and misclassified images per {g}{more} and pooled ('all'); "
           + ("bars: proportion. " if binary else "boxes: quartiles, whiskers 1.5 IQR. ")
           + (f"Above each {g}: Cliff's delta and {d['params']['correction']}-adjusted Mann-Whitney p; above 'all': "
              f"pooled within-{g} delta and stratified permutation p." if tested else ""))
    return an.slug, fname, cap


ROC_GRID = np.linspace(0.0, 1.0, 1001)


def within_class_roc(score: np.ndarray, correct: np.ndarray, groups: np.ndarray) -> np.ndarray | None:
    """The van Elteren-weighted vertical average of the per-class ROC curves, on :data:`ROC_GRID`.

    Area is linear in the curve, so the area under this average is the
    weighted mean of the per-class AUCs, sum_s w_s AUC_s / sum_s w_s with
    w_s = n_cs n_is / (n_s + 1): the within-class AUC of the results (up to
    the grid's resolution). Classes with one outcome carry no curve.
    """
    from sklearn.metrics import roc_curve

    total, weight = np.zeros_like(ROC_GRID), 0.0
    for k in np.unique(groups):
        m = groups == k
        nc, ni = int(correct[m].sum()), int((~correct[m]).sum())
        if nc == 0 or ni == 0:
            continue
        fpr, tpr, _ = roc_curve(correct[m], score[m])
        w = nc * ni / (nc + ni + 1)
        total += w * np.interp(ROC_GRID, fpr, tpr)
        weight += w
    return total / weight if weight else None


def roc_figure(an, out: Path) -> tuple[str, str, str] | None:
    d, res = an.d, an.result
    correct = an.store.samples["correct"].astype(bool)
    if correct.all() or not correct.any():
        return None
    groups = np.asarray(res.strata)
    g = stratum_word(d)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    tab = plt.get_cmap("tab10").colors
    palette = [c for i, c in enumerate(tab) if i != 7] + list(plt.get_cmap("Dark2").colors)  # no grey: chance is grey
    for c, (name, m) in enumerate(d["metrics"].items()):
        higher = m.get("higher_is_more_consistent")
        v = np.asarray(res.values[name], dtype=np.float64)
        ok = np.isfinite(v)
        curve = within_class_roc(v[ok] if higher else -v[ok], correct[ok], groups[ok]) if higher is not None else None
        if curve is None:
            continue
        p = m["pooled"]
        ax.plot(ROC_GRID, curve, lw=1.2, color=palette[c % len(palette)],
                label=f"{name}: {fmt_fixed(p.get('auc_within_class'), 2)} {fmt_ci(p.get('auc_within_class_ci95'))}")
    cb = d.get("confidence_baseline")
    conf = an.store.samples["confidence"].astype(np.float64)
    ok = np.isfinite(conf)
    curve = within_class_roc(conf[ok], correct[ok], groups[ok])
    if cb and curve is not None:
        ax.plot(ROC_GRID, curve, lw=1.6, color="black",
                label=f"softmax confidence: {fmt_fixed(cb.get('auc_within_class'), 2)} "
                      f"{fmt_ci(cb.get('auc_within_class_ci95'))}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel(f"false positive rate within {g} (misclassified scored as correct)")
    ax.set_ylabel(f"true positive rate within {g} (correct)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              title=f"AUC within {g} [95% CI]", title_fontsize=7)
    ax.set_title(f"Consistency predicting correctness within {g}, {method_name(d['method'])}")
    fname = f"fig-{an.slug}-roc.png"
    _save(fig, out / fname)
    cap = (f"ROC within {g}: for each metric (oriented so that better maps score higher) the van Elteren-weighted "
           f"average of the per-{g} ROC curves of correct vs misclassified images, whose area is the within-{g} AUC "
           f"of the pooled table (legend: that AUC with its BCa 95% CI); in black the same curve for the softmax "
           f"confidence, the baseline. {method_name(d['method'])}, n = {d['n']}.")
    return an.slug, fname, cap


def analysis_figures(an, out: Path, *, primary: str | None = None, gallery: int = 8,
                     seed: int = 0) -> list[tuple[str, str, str]]:
    """Every figure of one H1 analysis."""
    d = an.d
    images, note = load_images(an.store)
    figs = [class_mean_figure(an, out, images, note)]
    if d["by"] == "cluster":
        figs.append(cluster_figure(an, out, images, seed))
    if d["metrics"]:
        figs.append(gallery_figure(an, out, images, primary_metric(d, primary), gallery))
        for name in d["metrics"]:
            figs.append(distribution_figure(an, out, name))
        if d["by"] != "class":
            figs.append(roc_figure(an, out))
    return [f for f in figs if f is not None]


# --------------------------------------------------------------------------
# H2 figures
# --------------------------------------------------------------------------


def comparisons_of(compare: dict | None, sweep: dict | None) -> list[dict]:
    """The arm comparisons of a report, each an arm against the same baseline (its second arm)."""
    if sweep:
        return list(sweep["comparisons"])
    return [compare] if compare else []


def _arm_of(runs: list[dict], comparisons: list[dict]) -> tuple[list[str], list[str]]:
    """Arm name per run, and the arm names in order (the baseline, lambda 0, first)."""
    if comparisons:
        arms = list(dict.fromkeys([list(comparisons[0]["arms"])[1]] + [list(c["arms"])[0] for c in comparisons]))
        lookup = {str(Path(p)): a for c in comparisons for a in c["arms"] for p in c["arms"][a]["runs"]}
        return [lookup.get(str(Path(r["path"])), "other") for r in runs], arms
    labels = [f"λ={r.get('lambda') or 0:g}" + (f" {r.get('loss')}" if r.get("lambda") else "") for r in runs]
    return labels, list(dict.fromkeys(labels))


def arm_mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Per epoch, the mean of ``key`` over the runs that recorded it (the bold arm line)."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for x in r["records"]:
            if x.get(key) is not None:
                by_epoch.setdefault(int(x["epoch"]), []).append(float(x[key]))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def learning_curves(runs: list[dict], comparisons: list[dict], out: Path) -> tuple[str, str, str] | None:
    if not any(r["records"] for r in runs):
        return None
    arm_of, arms = _arm_of(runs, comparisons)
    colour = {a: ARM_COLOURS[i % len(ARM_COLOURS)] for i, a in enumerate(arms)}
    own = all(r.get("reference") in (None, "self") for r in runs)
    dist_key = "dist" if own else "dist_self"
    panels = [("accuracy", "held-out accuracy"), ("loss_cam", "L_cam (training)"),
              (dist_key, "held-out dist to own class means" if dist_key == "dist_self" else "held-out dist")]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.8))
    for ax, (key, _) in zip(axes, panels):
        for arm in arms:
            members = [r for r, a in zip(runs, arm_of) if a == arm]
            for r in members:  # one thin line per seed
                ep = [x["epoch"] for x in r["records"] if x.get(key) is not None]
                ys = [x[key] for x in r["records"] if x.get(key) is not None]
                ax.plot(ep, ys, lw=0.7, alpha=0.45, color=colour[arm])
            ep, mean = arm_mean_curve(members, key)
            if ep:
                ax.plot(ep, mean, lw=2.4, color=colour[arm], label=f"{arm} (mean of {len(members)})")
    for ax, (key, label) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(lw=0.3, alpha=0.5)
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded\n(λ = 0 runs have no CAM loss)" if key == "loss_cam" else "not recorded",
                    ha="center", va="center", transform=ax.transAxes, fontsize=7)
        elif key == "loss_cam":  # terms of different losses differ by orders of magnitude
            ax.set_yscale("log")
            if any(not r.get("lambda") for r in runs):
                ax.set_title(f"{label} (none at λ = 0)")
    handles, labels = axes[0].get_legend_handles_labels()
    rows = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * rows, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fname = "fig-h2-learning-curves.png"
    _save(fig, out / fname)
    cap = ("Learning curves (colour = arm): a thin line per run (seed), the arm's mean over its seeds in bold; "
           "held-out accuracy, the CAM loss term (absent at λ = 0) and the held-out maps' mean distance to "
           + ("the run's own class means (leave-one-out), the yardstick compare uses." if dist_key == "dist_self"
              else "the run's class means."))
    return "runs", fname, cap


ARM_PANELS = (("accuracy", "held-out accuracy"), ("dist", "dist (lower = more consistent)"),
              ("ssim", "ssim (higher = more consistent)"), ("entropy", "entropy (lower = more concentrated)"),
              ("spread", "spread (lower = more concentrated)"),
              ("road_combined", "ROAD combined (higher = more faithful)"))  # when the runs' test stores were scored


def _arm_test_note(c: dict, m: str) -> str:
    """What the panel says under a compared arm: the sign-flip p over seeds (McNemar for a lone seed pair)."""
    p = c["paired"].get(m) or {}
    if p.get("p_signflip") is not None and np.isfinite(p["p_signflip"]):
        return f"p±={fmt_p(p['p_signflip'])}"
    pairs = c["mcnemar"]["per_pair"]
    if m == "accuracy" and len(pairs) == 1:
        return f"McNemar {fmt_p(pairs[0]['p_value'])}"
    return "no test"


def arm_figure(comparisons: list[dict], out: Path) -> tuple[str, str, str] | None:
    base = list(comparisons[0]["arms"])[1]
    arms = [(base, comparisons[0]["arms"][base], None)]
    arms += [(list(c["arms"])[0], c["arms"][list(c["arms"])[0]], c) for c in comparisons]
    panels = [(m, label) for m, label in ARM_PANELS if m in arms[0][1]]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    width = max(2.6, 0.62 * len(arms) + 0.6)  # room for each arm's p above it
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, 3.3 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (m, label) in zip(axes.flat, panels):
        for x, (name, arm, c) in enumerate(arms):
            s = arm[m]
            vals = [v for v in s.get("values", []) if v is not None]
            colour = ARM_COLOURS[x % len(ARM_COLOURS)]
            jitter = np.linspace(-0.1, 0.1, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
            ax.scatter(x + jitter, vals, s=14, color=colour, alpha=0.75, zorder=3)
            mean, ci = s.get("mean"), s.get("ci95")
            if mean is not None and len(vals) > 1 and ci and ci[0] is not None:
                ax.errorbar(x + 0.25, mean, yerr=[[mean - ci[0]], [ci[1] - mean]], fmt="D", ms=4, color="black",
                            capsize=3, lw=1)
            elif mean is not None:
                ax.plot(x + 0.25, mean, "D", ms=4, color="black")
            if c is not None:
                ax.text(x, 1.0, _arm_test_note(c, m), transform=blended_transform_factory(ax.transData, ax.transAxes),
                        ha="center", va="bottom", fontsize=6.5)
        ax.set_title(label, pad=12)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a[0] for a in arms], rotation=30 if len(arms) > 2 else 0, ha="right" if len(arms) > 2
                           else "center")
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.grid(axis="y", lw=0.3, alpha=0.5)
        ax.margins(y=0.2)
    fig.tight_layout()
    fname = "fig-h2-arms.png"
    _save(fig, out / fname)
    cap = (f"Arm comparison: dots are runs (seeds); black diamonds the arm mean with its t-based 95% CI over seeds. "
           f"Above each arm: the exact sign-flip p over seeds of its paired difference from {base} (the H2 test; "
           "with a single seed pair, the exact McNemar test on per-image correctness instead). Consistency (dist, "
           "ssim) and concentration (entropy, spread) on the images each run gets right"
           + ("; ROAD faithfulness of each run's maps on its scored test store." if any(m == "road_combined"
                                                                                      for m, _ in panels) else "."))
    return "runs", fname, cap


def run_figures(runs: list[dict], compare: dict | None, out: Path, sweep: dict | None = None
                ) -> list[tuple[str, str, str]]:
    comparisons = comparisons_of(compare, sweep)
    figs = [learning_curves(runs, comparisons, out)]
    if comparisons:
        figs.append(arm_figure(comparisons, out))
    return [f for f in figs if f is not None]