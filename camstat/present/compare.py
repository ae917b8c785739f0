"""Terminal view of ``camstat compare`` (numbers to text happen here, through :mod:`camstat.present.text`)."""

from __future__ import annotations

from rich.table import Table

from camstat.present.text import ci, fmt_p, num

METRIC_LABELS = {"accuracy": "accuracy", "dist": "dist (correct)", "ssim": "ssim (correct)",
                 "entropy": "entropy (correct)", "spread": "spread (correct)"}


def _num(v) -> str:
    return num(v, ".4f")


def _ci(s: dict | None) -> str:
    """The t CI of a summary or paired record, 4 decimals."""
    return ci((s or {}).get("ci95"), ".4f")


def arms_table(d: dict) -> Table:
    ref = "own class means, leave-one-out" if d["reference"] == "self" else f"class means of {d['reference']}"
    table = Table(title=f"per arm: mean ± sd [95% t CI] over seeds; consistency and concentration on the images "
                        f"each run gets right; dist and ssim to {ref}")
    metrics = list(METRIC_LABELS)
    for col in ("arm", "seeds", *(METRIC_LABELS[m] for m in metrics)):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for name, arm in d["arms"].items():
        table.add_row(name, str(len(arm["runs"])),
                      *(f"{_num(arm[m]['mean'])} ± {_num(arm[m]['sd'])}\n{_ci(arm[m])}" for m in metrics))
    return table


def paired_table(d: dict) -> Table:
    p = d["paired"]
    table = Table(title=f"paired by seed ({len(p['pairs'])} pairs): {p['difference']} (the H2 test)")
    for col in ("metric", "mean diff", "95% t CI", "p sign-flip", "p t-test", "p Wilcoxon"):
        table.add_column(col, justify="right")
    for m, label in METRIC_LABELS.items():
        r = p.get(m) or {}
        table.add_row(label, _num(r.get("mean_diff")), _ci(r), fmt_p(r.get("p_signflip")),
                      fmt_p(r.get("p_ttest")), fmt_p(r.get("p_wilcoxon")))
    return table


FAITHFULNESS_LABELS = {"road_combined": "ROAD combined", "road_vs_random": "vs random maps",
                       "road_vs_class_mean": "vs class-mean map"}


def faithfulness_table(d: dict) -> Table:
    """Each arm's ROAD faithfulness over seeds and the seed-paired difference (only when runs were scored)."""
    f = d["faithfulness"]
    a, b = list(d["arms"])
    s = f["settings"]
    table = Table(title=f"faithfulness of each run's --cam maps (ROAD on {s['n']} test images of RUN/{f['store']}; "
                        "higher = more faithful; vs: mean paired difference of combined): mean ± sd [95% t CI] "
                        f"over seeds; paired by seed: {d['paired']['difference']}")
    for col in ("metric", a, b, "mean diff", "95% t CI", "p sign-flip", "p Wilcoxon"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=col == "metric")
    for m, label in FAITHFULNESS_LABELS.items():
        r = d["paired"].get(m) or {}
        cells = [f"{_num(d['arms'][n][m]['mean'])} ± {_num(d['arms'][n][m]['sd'])} ({d['arms'][n][m]['n']} runs)\n"
                 f"{_ci(d['arms'][n][m])}" for n in (a, b)]
        table.add_row(label, *cells, _num(r.get("mean_diff")), _ci(r), fmt_p(r.get("p_signflip")),
                      fmt_p(r.get("p_wilcoxon")))
    return table


def mcnemar_table(d: dict) -> Table:
    a, b = list(d["arms"])
    table = Table(title="exact McNemar on per-image correctness: descriptive only (run-to-run scale below), "
                        "never the H2 verdict")
    for col in ("between", "seeds", "only first right", "only second right", "p"):
        table.add_column(col, justify="right")
    for row in d["mcnemar"]["per_pair"]:
        table.add_row(f"{a} vs {b}", f"{row['seed_a']} / {row['seed_b']}", str(row["b"]), str(row["c"]),
                      fmt_p(row["p_value"]))
    for name, rows in d["mcnemar"]["within_arm"].items():
        for row in rows:
            table.add_row(f"within {name}", f"{row['seed_a']} / {row['seed_b']}", str(row["b"]), str(row["c"]),
                          fmt_p(row["p_value"]))
    return table


def notes(d: dict) -> list[str]:
    out = []
    if d.get("unpaired_seeds"):
        out.append("seeds without a partner, left out of the paired tests: "
                   + ", ".join(map(str, d["unpaired_seeds"])))
    if not d["paired"]["pairs"]:
        out.append("no seed occurs in both arms: no paired tests")
    if len(d.get("models", [])) > 1:
        out.append(f"the runs use different models: {', '.join(d['models'])}")
    if d.get("faithfulness") and d["faithfulness"]["unscored"]:
        out.append(f"runs without a scored RUN/{d['faithfulness']['store']}, left out of the faithfulness numbers: "
                   + ", ".join(d["faithfulness"]["unscored"]))
    return out


def render(d: dict) -> list:
    """Renderables (tables, then note lines) of one comparison's ``to_dict()``."""
    faith = [faithfulness_table(d)] if d.get("faithfulness") else []
    return [arms_table(d), paired_table(d), *faith, mcnemar_table(d), *(f"note: {n}" for n in notes(d))]


def render_sweep(d: dict) -> list:
    """Every comparison of ``camstat compare runs/NAME``, each arm against the lambda-0 arm."""
    items: list = [f"{d['sweep']}: {len(d['comparisons'])} arm(s), each against the lambda-0 arm"]
    for c in d["comparisons"]:
        items += render(c)
    return items
