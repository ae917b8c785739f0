"""Markdown and LaTeX from the same :class:`~camstat.present.tables.Table` cells (booktabs for LaTeX)."""

from __future__ import annotations

import re
from pathlib import Path

from camstat.present import detection, faithfulness
from camstat.present.tables import (Table, analysis_label, compare_sentence, table_arms, table_class_medians,
                                    table_clusters, table_dispersion, table_groups, table_h1_per_class,
                                    table_h1_pooled, table_mcnemar, table_null_pipeline, table_paired, table_random,
                                    table_runs, table_sweep_arms, table_sweep_paired, sweep_baseline, sweep_sentence,
                                    verdict_sentence)
from camstat.present.text import (ALPHA, DISPERSION_NOTE, MAPS_TEXT, fmt_ci, fmt_fixed, group_word, method_name,
                                  null_pipeline_note, p_phrase, reference_kind, stratum_word, summary_roles,
                                  verdict_headline)

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_md(t: Table, number: int) -> str:
    lines = [f"<!-- table {t.key}: {t.source} -->", f"**Table {number}.** {t.caption}", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    lines.append("|" + "|".join(":--" if a == "l" else "--:" for a in t.align) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    for note in t.notes:
        lines.append("")
        lines.append(f"*{note}*")
    return "\n".join(lines) + "\n"


_TEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$", "±": r"$\pm$",
    "δ": r"$\delta$", "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$", "−": r"$-$", "×": r"$\times$",
    "→": r"$\rightarrow$", "…": r"\ldots{}", "–": "--", "—": "---", "·": r"$\cdot$", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "|": r"$|$",
}


def tex_escape(text: str) -> str:
    """Plain text (with a few Unicode symbols) -> LaTeX; markdown emphasis stars dropped."""
    text = str(text).replace("**", "").replace("`", "")
    return "".join(_TEX_CHARS.get(ch, ch) for ch in text)


def table_tex(t: Table) -> str:
    wide = len(t.columns) > 7
    lines = [f"% table {t.key}; numbers from results.json: {t.source}", r"\begin{table}[htbp]", r"\centering"]
    lines += [r"\footnotesize", r"\setlength{\tabcolsep}{3.5pt}"] if wide else [r"\small"]
    lines += [r"\caption{" + tex_escape(t.caption) + "}",
              r"\label{tab:" + re.sub(r"[^A-Za-z0-9:-]", "-", t.key) + "}",
              r"\begin{tabular}{" + t.align + "}", r"\toprule",
              " & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for row in t.rows:
        lines.append(" & ".join(tex_escape(c) for c in row) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    if t.notes:
        lines.append(r"\par\smallskip\begin{minipage}{0.95\linewidth}\footnotesize "
                     + " ".join(tex_escape(n) for n in t.notes) + r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# composing report.md and report.tex
# --------------------------------------------------------------------------


class Document:
    """Markdown and LaTeX built side by side from the same tables; tables and figures numbered."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.tex: list[str] = []
        self.tables = 0
        self.figures = 0

    def heading(self, level: int, text: str) -> None:
        self.md.append("#" * level + " " + text + "\n")
        cmd = {2: "section", 3: "subsection", 4: "subsubsection"}.get(level, "paragraph")
        self.tex.append(f"\\{cmd}*{{{tex_escape(text)}}}\n")

    def para(self, text: str, tex: bool = True) -> None:
        self.md.append(text + "\n")
        if tex:
            self.tex.append(md_to_tex(text) + "\n")

    def table(self, t: Table) -> None:
        self.tables += 1
        self.md.append(table_md(t, self.tables))
        self.tex.append(table_tex(t))

    def figure(self, file: str, caption: str) -> None:
        self.figures += 1
        self.md.append(f"![{caption}]({file})\n\n*Figure {self.figures}.* {caption}\n")
        self.tex.append(f"% Figure {self.figures}: {file} -- {tex_escape(caption)}\n")


def md_to_tex(text: str) -> str:
    """Sentences with **bold** / *italic* markup -> LaTeX."""
    parts = re.split(r"(\*\*[^*]+\*\*|\*[^*]+\*)", text)
    out = []
    for part in parts:
        if part.startswith("**") and part.endswith("**"):
            out.append(r"\textbf{" + tex_escape(part[2:-2]) + "}")
        elif part.startswith("*") and part.endswith("*") and len(part) > 1:
            out.append(r"\emph{" + tex_escape(part[1:-1]) + "}")
        else:
            out.append(tex_escape(part.lstrip("- ") if part.startswith("- ") else part))
    return "".join(out)


def compose(results: dict, analyses: list, figs: list[tuple[str, str, str]],
             title: str | None) -> tuple[str, str, list[str]]:
    doc = Document()
    prov = results["provenance"]
    title = title or "camstat report"
    doc.md.append(f"# {title}\n")
    doc.tex.append(f"% camstat report: {tex_escape(title)}\n% Tables use booktabs: \\usepackage{{booktabs}}; "
                   f"\\input{{report.tex}} inside a document.\n% Every number comes from results.json "
                   f"(each table names its records).\n")
    doc.para(f"Made by camstat {prov['versions'].get('camstat')} on {prov['created']}. Every number below is read "
             f"from `results.json` (the records `camstat consistency --json` and `camstat compare --json` give); each "
             f"table names its records in a comment. Provenance is at the end.", tex=False)

    figs_by: dict[str, list[tuple[str, str]]] = {}
    for key, f, cap in figs:
        figs_by.setdefault(key, []).append((f, cap))

    # summary
    summary: list[str] = []
    for an in analyses:
        d = an.d
        line = (f"{Path(d['store']).name}, {method_name(d['method'])}: accuracy {fmt_fixed(d['accuracy'], 3)} "
                f"(n = {d['n']})")
        if d["by"] != "class" and d["metrics"]:
            line += "; " + verdict_headline(d)
            line += summary_roles(d)
        summary.append(line)
    summary += [f"{Path(d['params']['store']).name}, {method_name(d['params']['method'])}: error detection: "
                f"{detection.verdict(d)}" for d in results.get("detection", [])]
    summary += [f"{Path(d['store']).name}: faithfulness: {faithfulness.summary(d)}"
                for d in results.get("faithfulness", [])]
    if results.get("compare"):
        summary.append("H2: " + compare_sentence(results["compare"]))
    if results.get("sweep"):
        summary.append("H2: " + sweep_sentence(results["sweep"]))
    doc.heading(2, "Summary")
    for line in summary:
        doc.para(f"- {line}")

    for an in analyses:
        _compose_analysis(doc, an, figs_by.get(an.slug, []))
    for i, d in enumerate(results.get("detection", [])):
        _compose_detection(doc, d, i, figs_by.get(detection.slug(i, d), []))
    for i, d in enumerate(results.get("faithfulness", [])):
        _compose_faithfulness(doc, d, i, figs_by.get(f"faithfulness-{i}", []))

    if results["runs"]:
        _compose_runs(doc, results, figs_by.get("runs", []))

    _compose_provenance(doc, results)
    return "\n".join(doc.md), "\n".join(doc.tex), summary


def _compose_analysis(doc: Document, an, figs: list[tuple[str, str]]) -> None:
    d = an.d
    i = an.index
    src = f"consistency[{i}]"
    g = group_word(d)
    doc.heading(2, f"H1: {d['store']} — {method_name(d['method'])}, by {d['by']}")
    prov = d.get("provenance", {})
    doc.para(f"Model `{prov.get('model')}` (checkpoint `{prov.get('checkpoint')}`), data `{prov.get('data')}` "
             f"({prov.get('split')} split): n = {d['n']} images, accuracy {fmt_fixed(d['accuracy'], 3)} "
             f"({d['n_correct']} correct, {d['n_incorrect']} misclassified). Maps: {analysis_label(d)}, "
             f"{MAPS_TEXT}; {g} = {'the prediction' if d['class_of'] == 'pred' else 'the true label'}"
             f"{'' if d['by'] != 'cluster' else ' (composition clusters, table below)'}; reference "
             f"of each image: {reference_kind(d)}.")
    u = d.get("undefined_reference", {})
    if u.get("n"):
        doc.para(f"{u['n']} image(s) have no reference map (the only correct image of their {g}) and are left out "
                 f"of the reference-based tests: {u.get('per_group')}.")
    if d.get("clusters"):
        doc.table(table_clusters(d, f"{src}.clusters", f"{an.slug}-clusters"))
    if d["by"] == "class":
        for name in d["metrics"]:
            doc.table(table_class_medians(d, name, f"{src}.metrics.{name}.per_class", f"{an.slug}-{name}"))
        if d.get("groups"):
            doc.table(table_groups(d, f"{src}.groups", f"{an.slug}-groups"))
    else:
        doc.heading(3, "Verdict")
        doc.para(f"**{verdict_headline(d)[:1].upper() + verdict_headline(d)[1:]}.** The verdict rests on the primary "
                 f"metric alone: its pooled permutation p, adjusted across the command's primary analyses, below "
                 f"{ALPHA} *and* its within-{stratum_word(d)} AUC CI above 0.5.")
        cb = d.get("confidence_baseline")
        if cb:
            doc.para(f"Baseline: softmax confidence alone has within-{stratum_word(d)} AUC "
                     f"{fmt_fixed(cb.get('auc_within_class'), 3)} "
                     f"{fmt_ci(cb.get('auc_within_class_ci95'), 3)} (marginal {fmt_fixed(cb.get('auc_marginal'), 3)}).")
        for role_name, title in (("primary", None), ("secondary", "Secondary consistency metrics"),
                                 ("concentration", "Are correct maps narrower? (concentration; never counted for or "
                                                   "against H1)"),
                                 ("localisation", "Localisation on the object")):
            names = [k for k, m in d["metrics"].items() if m.get("role") == role_name]
            if not names:
                continue
            if title:
                doc.para(f"*{title}:*")
            for name in names:
                doc.para(f"- {verdict_sentence(d, name)}")
        doc.table(table_h1_pooled(d, f"{src}.metrics", f"{an.slug}-pooled"))
        if d.get("dispersion"):
            doc.heading(3, "More consistent among themselves? (dispersion)")
            pooled = d["dispersion"]["pooled"]
            doc.para(f"Closer to the correct maps' mean (the tests above) is not the same as more consistent among "
                     f"themselves: {DISPERSION_NOTE}. Pooled log ratio "
                     f"{fmt_fixed(pooled.get('statistic'), 2, sign=True)}, permutation "
                     f"{p_phrase(pooled.get('p_permutation'))}.")
            doc.table(table_dispersion(d, f"{src}.dispersion.per_class", f"{an.slug}-dispersion"))
        ctl = d.get("controls", {})
        npl = ctl.get("null_pipeline")
        if (npl and "metrics" in npl) or ctl.get("random_weights"):
            doc.heading(3, "Controls")
        if npl and "metrics" in npl:
            far = [k for k, m in npl["metrics"].items() if not m.get("rejection_near_alpha")]
            doc.para(f"*Whole pipeline under the null*: {null_pipeline_note(d)}. The rejection rate's 95% CI includes "
                     f"{npl['alpha']} for {len(npl['metrics']) - len(far)}/{len(npl['metrics'])} metrics"
                     + (f" (not for {', '.join(far)})." if far else "."))
            doc.table(table_null_pipeline(d, f"{src}.controls.null_pipeline.metrics", f"{an.slug}-null"))
        elif npl:
            doc.para("*Whole pipeline under the null*: not run, the references come from another store and do not "
                     "depend on this store's labels.")
        if ctl.get("random_weights"):
            doc.table(table_random(d, f"{src}.controls.random_weights.metrics", f"{an.slug}-random"))
        doc.heading(3, f"Per-{g} tests")
        for name in d["metrics"]:
            doc.table(table_h1_per_class(d, name, f"{src}.metrics.{name}.per_class", f"{an.slug}-{name}"))
    if figs:
        doc.heading(3, "Figures")
        for f, cap in figs:
            doc.figure(f, cap)


def _compose_figures(doc: Document, figs: list[tuple[str, str]]) -> None:
    if figs:
        doc.heading(3, "Figures")
        for f, cap in figs:
            doc.figure(f, cap)


def _compose_detection(doc: Document, d: dict, i: int, figs: list[tuple[str, str]]) -> None:
    """Section 4.1: can the maps tell when the model is wrong, better than or beyond its confidence?"""
    key, ref = detection.slug(i, d), d["reference"]
    doc.heading(2, f"Can CAMs tell when the model is wrong? {d['params']['store']} — "
                   f"{method_name(d['params']['method'])}")
    doc.para(f"**Verdict.** {detection.verdict(d)}")
    doc.para(f"Class means: the correct maps of `{ref['path']}` ({ref['split']} split, n = {ref['n']}), so the "
             "detector never uses the analysed images' correctness; each map is compared with its predicted class's "
             f"mean. Combined model fitted out-of-fold ({d['folds']} stratified folds, seed {d['params']['seed']}).")
    doc.table(detection.table_scores(d, f"detection[{i}].scores", f"{key}-scores"))
    doc.table(detection.table_versus(d, f"detection[{i}].versus_baseline", f"{key}-versus"))
    _compose_figures(doc, figs)


def _compose_faithfulness(doc: Document, d: dict, i: int, figs: list[tuple[str, str]]) -> None:
    """Section 4.2: do the maps show what the model uses (ROAD against random and class-mean maps)?"""
    doc.heading(2, f"Are the maps faithful? {d['store']}")
    doc.para(f"**ROAD.** {faithfulness.summary(d)}")
    doc.table(faithfulness.table_faithfulness(d, f"faithfulness[{i}].methods", f"faithfulness-{i}"))
    _compose_figures(doc, figs)


def _compose_runs(doc: Document, results: dict, figs: list[tuple[str, str]]) -> None:
    runs = results["runs"]
    c = results.get("compare")
    doc.heading(2, "H2: training with a CAM-consistency term")
    doc.table(table_runs(runs, "runs[*].final", "runs"))
    if c:
        a, b = list(c["arms"])
        sentence = compare_sentence(c)
        doc.para(f"Arms: **{a}** ({', '.join(c['arms'][a]['runs'])}) vs **{b}** ({', '.join(c['arms'][b]['runs'])}). "
                 + sentence[:1].upper() + sentence[1:])
        doc.table(table_arms(c, "compare.arms", "h2-arms"))
        if any((c["paired"].get(m) or {}).get("n", 0) >= 2 for m in ("accuracy", "dist", "ssim")):
            doc.table(table_paired(c, "compare.paired", "h2-paired"))
        else:
            doc.para(f"No paired test over seeds: {len(c['paired']['pairs'])} seed pair(s); train more seeds per arm "
                     f"(`--seed`) for one. The McNemar test below compares the paired runs image by image.")
        if c["mcnemar"]["per_pair"]:
            doc.table(table_mcnemar(c, "compare.mcnemar.per_pair", "h2-mcnemar"))
        for note in c.get("notes", []):
            doc.para(f"*Note: {note}.*")
    sweep = results.get("sweep")
    if sweep:
        doc.para(f"{len(sweep['comparisons'])} arms, each compared with **{sweep_baseline(sweep)}**, paired by seed "
                 "(the seed is the unit of replication).")
        doc.table(table_sweep_arms(sweep, "sweep.comparisons[*].arms", "h2-sweep-arms"))
        doc.table(table_sweep_paired(sweep, "sweep.comparisons[*].paired", "h2-sweep-paired"))
    if figs:
        doc.heading(3, "Figures")
        for f, cap in figs:
            doc.figure(f, cap)


def _compose_provenance(doc: Document, results: dict) -> None:
    prov = results["provenance"]
    doc.md.append("## Provenance\n")
    lines = [f"- report: `{prov['command']}` ({prov['created']})",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items())]
    for s in prov["stores"]:
        lines.append(f"- store `{s['path']}`: content SHA-256 `{s['content_sha256']}`; model `{s['model']}`, "
                     f"checkpoint `{s['checkpoint']}` (SHA-256 `{s['checkpoint_sha256']}`); data `{s['data']}` "
                     f"({s['split']}, n = {s['n']}); made {s['created']} by `{s['command']}`")
    if prov.get("random_store"):
        s = prov["random_store"]
        lines.append(f"- random-weights store `{s['path']}`: content SHA-256 `{s['content_sha256']}`; made "
                     f"{s['created']} by `{s['command']}`")
    for r in prov["runs"]:
        lines.append(f"- run `{r['path']}` ({r['status']}): model.pt SHA-256 `{r['checkpoint_sha256']}`; "
                     f"{r['created']} - {r['finished']} on {r['device']}; `{r['command']}`")
    doc.md.append("\n".join(lines) + "\n")
    doc.tex.append("% Provenance\n" + "\n".join("% " + line[2:].replace("`", "") for line in lines) + "\n")
