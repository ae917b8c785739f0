"""Terminal views (rich) of the commands' results; every number formatted by :mod:`camstat.present.text`."""

from __future__ import annotations


from rich.table import Table
from rich.text import Text

from camstat.present.tables import Table as Cells
from camstat.present.text import (ci, class_mix, composition_text, fmt_p, num, orientation_text, random_text,
                                  random_warning, reference_kind, strata_note, stratum_word, verdict_headline,
                                  verdict_text)


def from_cells(t: Cells) -> Table:
    """A report table (already formatted cells) as a rich table: its caption the title, the same cells."""
    table = Table(title=t.caption)
    for col, align in zip(t.columns, t.align):
        table.add_column(col, justify="left" if align == "l" else "right")
    for row in t.rows:
        table.add_row(*row)
    return table


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right")
    return t


def render_consistency(d: dict) -> list:
    """Rich renderables for a :meth:`camstat.h1.ConsistencyResult.to_dict` result: tables, verdicts, controls."""
    items: list = [Text(f"{d['store']}: {d['method']} @ {d['layer']}, target {d['target']}, by {d['by']} "
                        f"(classes from {d['class_of']}); n = {d['n']}, accuracy {num(d['accuracy'], '.4f')}; "
                        f"reference: {reference_kind(d)}")]
    label = "cluster" if d["by"] == "cluster" else "class"
    for key, m in d["metrics"].items():
        items += _class_medians(d, key, m) if d["by"] == "class" else _h1_metric(d, key, m, label)
    if d.get("groups"):
        items.append(_groups(d, label))
    if d.get("clusters"):
        items.append(_clusters(d["clusters"]))
    u = d["undefined_reference"]
    if u["n"]:
        items.append(Text(f"{u['n']} image(s) without a reference ({u['per_group']}): NaN for reference-based metrics, "
                          "left out of the tests", style="yellow"))
    if d.get("dispersion"):
        items.append(_dispersion(d["dispersion"], stratum_word(d)))
    if strata_note(d):
        items.append(Text(strata_note(d), style="dim"))
    if d["by"] != "class":
        supported = (d.get("verdict") or {}).get("supported")
        items.append(Text(f"verdict: {verdict_headline(d)}", style="bold green" if supported else "bold yellow"))
    ctl = d["controls"]
    if ctl.get("null_pipeline"):
        items += _null_pipeline(ctl["null_pipeline"], stratum_word(d))
    if ctl.get("random_weights"):
        items += _random(ctl["random_weights"])
    if d.get("derived"):
        items.append(Text(f"saved: {d['store']}/{d['derived']}", style="dim"))
    return items


def _class_medians(d: dict, key: str, m: dict) -> list:
    t = _table(f"{key} ({orientation_text(key, m.get('higher_is_more_consistent'))}): medians per class",
               ("class", "n", "n correct", "n incorrect", "median", "median correct", "median incorrect",
                "undefined"), ("class",))
    for r in m["per_class"]:
        if r["n"]:
            t.add_row(r["class"], str(r["n"]), str(r["n_correct"]), str(r["n_incorrect"]), num(r["median"]),
                      num(r["median_correct"]), num(r["median_incorrect"]), str(r["n_undefined"]))
    p = m["pooled"]
    t.add_row("all", str(p["n"]), str(d["n_correct"]), str(d["n_incorrect"]), num(p["median"]),
              num(p["median_correct"]), num(p["median_incorrect"]), str(p["n_undefined"]), style="bold")
    return [t]


def _h1_metric(d: dict, key: str, m: dict, label: str) -> list:
    t = _table(f"{key} ({orientation_text(key, m.get('higher_is_more_consistent'))}): correct vs incorrect per "
               f"{label}", (label, "n corr", "n inc", "median corr", "median inc", "delta [95% CI]", "p", "p_adj"),
               (label,))
    for r in m["per_class"]:
        t.add_row(r["class"], str(r["n_correct"]), str(r["n_incorrect"]), num(r["median_correct"]),
                  num(r["median_incorrect"]), f"{num(r['cliffs_delta'], '+.3f')} {ci(r['ci95'])}",
                  fmt_p(r["p_value"]), fmt_p(r["p_adjusted"]))
    if m["skipped"]:
        shown = "; ".join(f"{c} ({why})" for c, why in m["skipped"][:6])
        more = f"; ... {len(m['skipped']) - 6} more" if len(m["skipped"]) > 6 else ""
        t.caption = f"skipped: {shown}{more}"
    p = m["pooled"]
    items: list = [t, Text(
        f"  pooled (n = {p['n']}, {m['n_undefined']} undefined; {m['role']}): AUC within {stratum_word(d)} "
        f"{num(p.get('auc_within_class'), '.3f')} {ci(p.get('auc_within_class_ci95'))}, p_perm "
        f"{fmt_p(p['p_permutation'])}, p_adj {fmt_p(p.get('p_adjusted'))}, OR/SD|conf "
        f"{num(p.get('odds_ratio_per_sd_given_confidence'), '.3f')} {ci(p.get('odds_ratio_ci95_given_confidence'))}, "
        f"p_LRT|conf {fmt_p(p.get('p_lrt_given_confidence'))}, marginal AUC {num(p.get('auc_marginal'), '.3f')} "
        f"{ci(p.get('auc_marginal_ci95'))}")]
    items += [Text(f"  note: {note}", style="dim") for note in p.get("notes") or []]
    outcome = m["finding"]["outcome"]
    style = "green" if outcome == "better" else "red" if outcome == "worse" else "yellow"
    items.append(Text(f"  {key}: {verdict_text(key, m)}", style=style))
    return items


def _groups(d: dict, label: str) -> Table:
    t = _table(f"group-level consistency per {label} (seeded sample of at most {d['params']['pair_sample']} maps "
               "per group)", (label, "subset", "n", "sampled", "pairwise SSIM", "pairwise IoU", "CoM dispersion",
                              "dist to mean"), (label, "subset"))
    cols = ("mean_pairwise_ssim", "mean_pairwise_iou", "com_dispersion", "mean_dist_to_mean")
    for row in d["groups"]:
        for subset in ("all", "correct", "incorrect"):
            g = row.get(subset)
            if g is not None:
                t.add_row(row[label], subset, str(g["n"]), str(g.get("n_sampled", "-")),
                          *(num(g.get(c)) for c in cols))
    return t


def _dispersion(disp: dict, label: str) -> Table:
    t = _table(f"more consistent among themselves? dispersion about each group's own leave-one-out mean per {label} "
               "(log ratio > 0: incorrect maps more dispersed)",
               (label, "n corr", "n inc", "dispersion corr", "dispersion inc", "log ratio", "p"), (label,))
    for r in disp["per_class"]:
        t.add_row(r["class"], str(r["n_correct"]), str(r["n_incorrect"]), num(r["dispersion_correct"]),
                  num(r["dispersion_incorrect"]), num(r["statistic"], "+.3f"), fmt_p(r["p_value"]))
    pooled = disp["pooled"]
    t.add_row("pooled", "", "", "", "", num(pooled["statistic"], "+.3f"), fmt_p(pooled["p_permutation"]),
              style="bold")
    return t


def _null_pipeline(npl: dict, label: str) -> list:
    if "metrics" not in npl:
        return [Text("control: null pipeline not run (references from another store do not depend on the labels)",
                     style="dim")]
    t = _table(f"control: the whole pipeline under the null, {npl['repeats']} repeats (correctness shuffled within "
               f"{label}, references rebuilt; rejection rate must be near {npl['alpha']})",
               ("metric", "rejection rate [95% CI]", "delta quantiles", f"AUC within {label} quantiles"), ("metric",))
    for key, m in npl["metrics"].items():
        t.add_row(key, f"{num(m['rejection_rate'], '.3f')} {ci(m.get('rejection_rate_ci95'))}",
                  " / ".join(num(x, "+.3f") for x in m["delta_quantiles"] or []),
                  " / ".join(num(x, ".3f") for x in m["auc_within_class_quantiles"] or []))
    return [t]


def _clusters(c: dict) -> Table:
    t = _table(f"composition clusters: {composition_text(c)}", ("cluster", "n", "silhouette", "classes"),
               ("cluster", "classes"))
    for name, size, sil in zip(c["names"], c["sizes"], c["silhouette"]):
        t.add_row(name, str(size), num(sil, ".2f"), class_mix(c["class_counts"].get(name, {})))
    return t


def _random(rc: dict) -> list:
    t = _table(f"control: randomised weights ({rc['store']['path']}; Adebayo et al. 2018)",
               ("metric", "median trained", "median random", "random/trained", "AUC within trained",
                "AUC within random", "marginal AUC random", "mean diff [95% CI]", "p (Wilcoxon)"), ("metric",))
    for key, m in rc["metrics"].items():
        pt = m["paired_trained_minus_random"]
        t.add_row(key, num(m["median_trained"]), num(m["median_random"]), num(m["random_over_trained"], ".3f"),
                  f"{num(m['auc_within_class_trained'], '.3f')} {ci(m['auc_within_class_trained_ci95'])}",
                  f"{num(m['auc_within_class_random'], '.3f')} {ci(m['auc_within_class_random_ci95'])}",
                  f"{num(m['auc_marginal_random'], '.3f')} {ci(m['auc_marginal_random_ci95'])}",
                  f"{num(pt['mean_diff'], '+.4g')} {ci(pt['ci95'], '.4g')}", fmt_p(pt["p_wilcoxon"]))
    t.caption = "groups and correctness from the trained store; references leave-one-out within the random store"
    items: list = [t]
    items += [Text(f"  {key}: {random_text(key, m)}", style="dim") for key, m in rc["metrics"].items()
              if random_text(key, m)]
    if random_warning(rc):
        items.append(Text(f"  warning: {random_warning(rc)}", style="yellow"))
    return items


# --------------------------------------------------------------------------
# the other commands' views
# --------------------------------------------------------------------------


def render_extract(r: dict, shard: str | None = None) -> list:
    return [f"{r['store']}: {r['n']} images, accuracy {num(r['accuracy'], '.4f')}, {', '.join(r['methods'])} at "
            f"{', '.join(r['layers'])}; {r['processed']} processed at {num(r['images_per_second'], '.1f')} img/s"
            + ("" if r["complete"] else " (store not complete yet: other shards pending)")
            + ("" if r.get("owned_chunks", 1) else f" (shard {shard} owns no chunk: nothing to do)")]


def render_verify(v: dict) -> list:
    """``camstat verify``: what was checked, and the arrays that carry no checksum (damaged chunks: see the CLI)."""
    items: list = [f"{v['store']}: {v['chunks']} chunks in {v['arrays']} arrays checked"]
    if v["unchecksummed"]:
        items.append(f"{len(v['unchecksummed'])} of {v['arrays']} arrays carry no checksum (written before camstat"
                     " checksummed chunks): a flipped bit inside them goes unnoticed; re-extract to add checksums")
    return items


INFO_KEYS = ("model", "checkpoint", "checkpoint_sha256", "data", "split", "n", "done", "complete", "accuracy",
             "methods", "layers", "layer_shapes", "targets", "input_size", "has_masks", "bad_images", "derived",
             "created", "command")


def render_info(summary: dict) -> list:
    """``camstat info``: one row per field of :meth:`camstat.store.Store.summary`."""
    table = Table(title=summary["store"], show_header=False)
    for key in INFO_KEYS:
        value = summary[key]
        if key == "accuracy" and value is not None:
            value = num(value, ".4f")
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    classes = summary["classes"]
    table.add_row("classes", f"{len(classes)}: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}")
    return [table]


def render_layers(model: str, size: tuple[int, int], candidates: list, auto: list[str]) -> list:
    table = _table(f"{model}: candidate target layers at {size[0]}x{size[1]}", ("layer", "type", "output shape", ""),
                   ("layer", "type", "output shape", ""))
    for c in candidates:
        table.add_row(c.name, c.type, "x".join(map(str, c.out_shape)), "auto" if c.name in auto else "")
    return [table]


def epoch_line(r: dict) -> str:
    """One line per training epoch (``train-reg``)."""
    return (f"epoch {r['epoch']}: lambda {num(r['lambda'], 'g')}  loss {num(r['loss'], '.4f')} (cls "
            f"{num(r['loss_cls'], '.4f')}, cam {num(r['loss_cam'], '.4f')})  accuracy {num(r['accuracy'], '.4f')}  "
            f"dist {num(r['dist'], '.4f')}  ssim {num(r['ssim'], '.4f')}  {num(r['seconds'], '.1f')}s")


def render_train(out: str, epochs: int, world_size: int, final: dict, notes: list[str], already: bool) -> list:
    items: list = []
    if already:
        items.append(f"{out} is already complete ({epochs} epochs); pass --overwrite to train it again")
    items += [f"note: {note}" for note in notes]
    keys = ("lambda", "accuracy", "dist", "ssim", "loss_cls", "loss_cam")
    table = _table(f"{out}: {epochs} epochs, world size {world_size}", keys, ())
    table.add_row(*(num(final.get(k), "g" if k == "lambda" else ".4f") for k in keys))
    return items + [table]
