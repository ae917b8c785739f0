"""Terminal views (rich) of the commands' results; every number formatted by :mod:`camstat.present.text`."""

from __future__ import annotations


from camstat.present.text import (ci, fmt_p, num, orientation_text, random_text, random_warning, reference_kind,
                                  verdict_text)


def render_consistency(d: dict) -> list:
    """Rich renderables for a :meth:`ConsistencyResult.to_dict` result: per-metric tables, verdicts, controls."""
    from rich.table import Table
    from rich.text import Text

    items: list = []
    head = (f"{d['store']}: {d['method']} @ {d['layer']}, target {d['target']}, by {d['by']} "
            f"(classes from {d['class_of']}); n = {d['n']}, accuracy {num(d['accuracy'], '.4f')}; reference: "
            f"{reference_kind(d)}")
    items.append(Text(head))
    label = "cluster" if d["by"] == "cluster" else "class"
    for key, m in d["metrics"].items():
        higher = m.get("higher_is_more_consistent")
        orient = orientation_text(key, higher)
        if d["by"] == "class":
            t = Table(title=f"{key} ({orient}): medians per class")
            for col in ("class", "n", "n correct", "n incorrect", "median", "median correct", "median incorrect",
                        "undefined"):
                t.add_column(col, justify="left" if col == "class" else "right")
            for r in m["per_class"]:
                if r["n"]:
                    t.add_row(r["class"], str(r["n"]), str(r["n_correct"]), str(r["n_incorrect"]), num(r["median"]),
                              num(r["median_correct"]), num(r["median_incorrect"]), str(r["n_undefined"]))
            p = m["pooled"]
            t.add_row("all", str(p["n"]), str(d["n_correct"]), str(d["n_incorrect"]), num(p["median"]),
                      num(p["median_correct"]), num(p["median_incorrect"]), str(p["n_undefined"]), style="bold")
            items.append(t)
            continue
        t = Table(title=f"{key} ({orient}): correct vs incorrect per {label}")
        for col in (label, "n corr", "n inc", "median corr", "median inc", "delta [95% CI]", "p", "p_adj"):
            t.add_column(col, justify="left" if col == label else "right")
        for r in m["per_class"]:
            t.add_row(r["class"], str(r["n_correct"]), str(r["n_incorrect"]), num(r["median_correct"]),
                      num(r["median_incorrect"]), f"{num(r['cliffs_delta'], '+.3f')} {ci(r['ci95'])}",
                      fmt_p(r["p_value"]), fmt_p(r["p_adjusted"]))
        if m["skipped"]:
            shown = "; ".join(f"{c} ({why})" for c, why in m["skipped"][:6])
            more = f"; ... {len(m['skipped']) - 6} more" if len(m["skipped"]) > 6 else ""
            t.caption = f"skipped: {shown}{more}"
        items.append(t)
        p = m["pooled"]
        items.append(Text(
            f"  pooled (n = {p['n']}, {m['n_undefined']} undefined): p_perm {fmt_p(p['p_permutation'])}, "
            f"OR/SD {num(p['odds_ratio_per_sd'], '.3f')} {ci(p.get('odds_ratio_ci95'))}, p_LRT {fmt_p(p['p_lrt'])}, "
            f"p_LRT|conf {fmt_p(p['p_lrt_given_confidence'])}, AUC {num(p['auc'], '.3f')} {ci(p['auc_ci95'])}"))
        for note in p.get("notes") or []:
            items.append(Text(f"  note: {note}", style="dim"))
        v = m["verdict"]
        style = "green" if v["direction"] == "supported" and v["significant"] else (
            "red" if v["direction"] == "opposite" and v["significant"] else "yellow")
        items.append(Text(f"  {key}: {verdict_text(key, m)}", style=style))
    if d.get("groups"):
        t = Table(title=f"group-level consistency per {label} (seeded sample of at most "
                        f"{d['params']['pair_sample']} maps per group)")
        cols = ("mean_pairwise_ssim", "mean_pairwise_iou", "com_dispersion", "mean_dist_to_mean")
        for col in (label, "subset", "n", "sampled", "pairwise SSIM", "pairwise IoU", "CoM dispersion",
                    "dist to mean"):
            t.add_column(col, justify="left" if col in (label, "subset") else "right")
        for row in d["groups"]:
            for subset in ("all", "correct", "incorrect"):
                g = row.get(subset)
                if g is None:
                    continue
                t.add_row(row[label], subset, str(g["n"]), str(g.get("n_sampled", "-")),
                          *(num(g.get(c)) for c in cols))
        items.append(t)
    if d.get("clusters"):
        c = d["clusters"]
        items.append(Text(f"clusters: k = {c['k']} on {c['features']}; sizes {c['sizes']}"))
    u = d["undefined_reference"]
    if u["n"]:
        items.append(Text(f"{u['n']} image(s) without a reference ({u['per_group']}): NaN for reference-based metrics, "
                          "left out of the tests", style="yellow"))
    ctl = d["controls"]
    if ctl.get("permuted"):
        pc = ctl["permuted"]
        t = Table(title=f"control: correctness permuted within {label} ({pc['n_changed']} labels changed; "
                        "the effect must vanish)")
        if d["by"] == "class":
            for col in ("metric", "median correct", "median incorrect"):
                t.add_column(col, justify="left" if col == "metric" else "right")
            for key, m in pc["metrics"].items():
                t.add_row(key, num(m["pooled"]["median_correct"]), num(m["pooled"]["median_incorrect"]))
        else:
            for col in ("metric", "delta", "delta / real", "p_perm", "AUC [95% CI]", "direction", "significant"):
                t.add_column(col, justify="left" if col == "metric" else "right")
            for key, m in pc["metrics"].items():
                p = m["pooled"]
                t.add_row(key, num(p.get("statistic"), "+.3f"), num(m.get("statistic_over_real"), "+.2f"),
                          fmt_p(p["p_permutation"]),
                          f"{num(p['auc'], '.3f')} {ci(p['auc_ci95'])}", m["verdict"]["direction"],
                          "yes" if m["verdict"]["significant"] else "no")
        items.append(t)
        rb = pc.get("rebuilt_references")
        if rb:
            parts = ", ".join(f"{k} {num(m['statistic'], '+.3f')} (p {fmt_p(m['p_permutation'])}, {m['direction']})"
                              for k, m in rb["metrics"].items())
            items.append(Text(f"  references rebuilt from the shuffled labels (whole pipeline under the null; "
                              f"leave-one-out artefact, if any, 'opposite'): {parts}", style="dim"))
        items.append(Text("  (under the null, p < 0.05 in 5 % of seeds; judge the control by delta / real)",
                          style="dim"))
    if ctl.get("random_weights"):
        rc = ctl["random_weights"]
        t = Table(title=f"control: randomised weights ({rc['store']['path']}; Adebayo et al. 2018)")
        for col in ("metric", "median trained", "median random", "random/trained", "AUC trained", "AUC random",
                    "mean diff [95% CI]", "p (Wilcoxon)"):
            t.add_column(col, justify="left" if col == "metric" else "right")
        for key, m in rc["metrics"].items():
            pt = m["paired_trained_minus_random"]
            t.add_row(key, num(m["median_trained"]), num(m["median_random"]), num(m["random_over_trained"], ".3f"),
                      f"{num(m['auc_trained'], '.3f')} {ci(m['auc_trained_ci95'])}",
                      f"{num(m['auc_random'], '.3f')} {ci(m['auc_random_ci95'])}",
                      f"{num(pt['mean_diff'], '+.4g')} {ci(pt['ci95'], '.4g')}", fmt_p(pt["p_wilcoxon"]))
        t.caption = "groups and correctness from the trained store; references leave-one-out within the random store"
        items.append(t)
        for key, m in rc["metrics"].items():
            if random_text(key, m):
                items.append(Text(f"  {key}: {random_text(key, m)}", style="dim"))
        if random_warning(rc):
            items.append(Text(f"  warning: {random_warning(rc)}", style="yellow"))
    if d.get("derived"):
        items.append(Text(f"saved: {d['store']}/{d['derived']}", style="dim"))
    return items
