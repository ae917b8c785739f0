"""Markdown and LaTeX from the same :class:`~camstat.present.tables.Table` cells (booktabs for LaTeX)."""

from __future__ import annotations

import re
from pathlib import Path

from camstat.present import detection, faithfulness
from camstat.present.tables import (Table, analysis_label, compare_sentence, primary_metric, table_arms,
                                    table_class_medians, table_clusters, table_groups, table_h1_per_class, table_h1_pooled,
                                    table_mcnemar, table_paired, table_permuted, table_random, table_runs,
                                    verdict_sentence)
from camstat.present.text import (ALPHA, MAPS_TEXT, fmt_ci, fmt_fixed, group_word, method_name, p_phrase,
                                  reference_kind)
from camstat.metrics import oriented_auc

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
            name = primary_metric(d, None)
            m = d["metrics"][name]
            v = m.get("verdict", {})
            auc, ci = oriented_auc(m["pooled"].get("auc"), m["pooled"].get("auc_ci95"),
                                   m.get("higher_is_more_consistent"))
            line += (f"; H1 on {name}: {v.get('direction')}, pooled δ "
                     f"{fmt_fixed(m['pooled'].get('statistic'), 2, sign=True)}, "
                     f"permutation {p_phrase(m['pooled'].get('p_permutation'))}, AUC {fmt_fixed(auc, 2)} {fmt_ci(ci)}")
            supported = [k for k, mm in d["metrics"].items()
                         if mm.get("verdict", {}).get("direction") == "supported" and mm["verdict"].get("significant")]
            line += f"; significant in H1's direction: {len(supported)}/{len(d['metrics'])} metrics"
        summary.append(line)
    summary += [f"{Path(d['params']['store']).name}, {method_name(d['params']['method'])}: error detection: "
                f"{detection.verdict(d)}" for d in results.get("detection", [])]
    summary += [f"{Path(d['store']).name}: faithfulness: {faithfulness.summary(d)}"
                for d in results.get("faithfulness", [])]
    if results.get("compare"):
        summary.append("H2: " + compare_sentence(results["compare"]))
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
        doc.heading(3, "Verdicts")
        for name in d["metrics"]:
            doc.para(f"- {verdict_sentence(d, name)}")
        doc.table(table_h1_pooled(d, f"{src}.metrics", f"{an.slug}-pooled"))
        ctl = d.get("controls", {})
        if ctl.get("permuted") or ctl.get("random_weights"):
            doc.heading(3, "Controls")
        if ctl.get("permuted"):
            pc = ctl["permuted"]
            sig = [k for k, m in pc["metrics"].items() if m.get("verdict", {}).get("significant")]
            doc.para(f"Correctness permuted within {g}: {len(sig)}/{len(pc['metrics'])} metrics remain significant "
                     f"at {ALPHA} ({', '.join(sig) if sig else 'none'}; about {ALPHA:.0%} expected by chance).")
            doc.table(table_permuted(d, f"{src}.controls.permuted.metrics", f"{an.slug}-permuted"))
            rb = pc.get("rebuilt_references")
            if rb:
                parts = ", ".join(f"{k} δ {fmt_fixed(m.get('statistic'), 2, sign=True)} "
                                  f"({p_phrase(m.get('p_permutation'))})" for k, m in rb["metrics"].items())
                doc.para(f"*Whole pipeline under the null* (leave-one-out references rebuilt from the shuffled "
                         f"labels): {parts}. A small effect against H1 is the expected leave-one-out artefact.")
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
