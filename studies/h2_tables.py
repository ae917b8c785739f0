"""The H2 tables of a study README, generated from the study's ``results.json`` (``camstat report``).

Usage (from the repository root)::

    python studies/h2_tables.py studies/chest-xray            # print the tables
    python studies/h2_tables.py studies/chest-xray --write     # replace them in README.md

``--write`` replaces the text between ``<!-- h2-tables -->`` and ``<!-- /h2-tables -->`` in the study's
README.md, so every number there is one of results.json. The tables: per arm mean [t 95% CI] over seeds;
each arm minus the lambda-0 arm paired by seed (mean difference [t CI], exact sign-flip p: the H2 test); the
rule's verdict per metric; when the runs' test stores were scored by ``camstat faithfulness``, each arm's ROAD
faithfulness with the same paired test and the rule's verdict; the exact McNemar p of the seed pairs (descriptive only, beside the same statistic
between seeds of one arm); and the wall time per run (sum of its epochs' ``seconds``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ALPHA = 0.05
METRICS = (("accuracy", "accuracy", ".3f"), ("dist", "dist ↓", ".4f"), ("ssim", "ssim ↑", ".3f"),
           ("entropy", "entropy", ".3f"), ("spread", "spread", ".4f"))
BEGIN, END = "<!-- h2-tables -->", "<!-- /h2-tables -->"


def comparisons(results: dict) -> list[dict]:
    """Each arm against the baseline: the sweep's comparisons, or the report's single comparison."""
    if results.get("sweep"):
        return results["sweep"]["comparisons"]
    if results.get("compare"):
        return [results["compare"]]
    raise SystemExit("results.json holds no arm comparison; report a sweep folder or two arms")


def _num(v, spec: str, sign: bool = False) -> str:
    if v is None:
        return "-"
    return format(v, ("+" if sign else "") + spec)


def _ci(ci, spec: str, sign: bool = False) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{_num(ci[0], spec, sign)}, {_num(ci[1], spec, sign)}]"


def _p(p) -> str:
    return "-" if p is None else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def arms_table(comps: list[dict]) -> list[str]:
    base = list(comps[0]["arms"])[1]
    arms = {base: comps[0]["arms"][base], **{list(c["arms"])[0]: c["arms"][list(c["arms"])[0]] for c in comps}}
    lines = ["| arm | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "| --- | ---: |" + " --- |" * len(METRICS)]
    for name, arm in arms.items():
        cells = [f"{_num(arm[m]['mean'], spec)}{_ci(arm[m]['ci95'], spec)}" for m, _, spec in METRICS]
        lines.append(f"| {name} | {len(arm['runs'])} | " + " | ".join(cells) + " |")
    return lines


def paired_table(comps: list[dict]) -> list[str]:
    base = list(comps[0]["arms"])[1]
    lines = [f"| arm − {base} | pairs | " + " | ".join(f"Δ {label} [t CI], sign-flip p" for _, label, _ in METRICS)
             + " |", "| --- | ---: |" + " --- |" * len(METRICS)]
    for c in comps:
        cells = []
        for m, _, spec in METRICS:
            p = c["paired"][m]
            cells.append(f"{_num(p['mean_diff'], spec, True)}{_ci(p['ci95'], spec, True)}, p = {_p(p['p_signflip'])}")
        lines.append(f"| {list(c['arms'])[0]} | {c['paired']['accuracy']['n']} | " + " | ".join(cells) + " |")
    return lines


def verdicts(comps: list[dict]) -> list[str]:
    """The pre-set rule, mechanically: a difference counts when its exact sign-flip p < ALPHA."""
    n = comps[0]["paired"]["accuracy"]["n"]
    floor = 2 / 2 ** n
    lines = [f"Rule: a difference counts when its exact two-sided sign-flip p < {ALPHA} over the {n} seed pairs "
             f"(the smallest p {n} pairs allow is 2/2^{n} = {floor:.3g}"
             + ("; so no difference can count at this number of seeds" if floor >= ALPHA else "") + ")."]
    for c in comps:
        parts = []
        for m, label, _ in METRICS[:3]:
            p = c["paired"][m]
            parts.append(f"{label}: {'counts' if p['p_signflip'] is not None and p['p_signflip'] < ALPHA else 'no'}"
                         f" (p = {_p(p['p_signflip'])}; t CI {'excludes' if _excludes_zero(p['ci95']) else 'spans'} 0)")
        lines.append(f"- {list(c['arms'])[0]}: " + "; ".join(parts))
    return lines


def _excludes_zero(ci) -> bool:
    return bool(ci and ci[0] is not None and (ci[0] > 0 or ci[1] < 0))


def faithfulness_lines(comps: list[dict]) -> list[str]:
    """ROAD combined per arm, each arm minus the baseline paired by seed, maps minus random, and the rule."""
    base = list(comps[0]["arms"])[1]
    settings = comps[0]["faithfulness"]["settings"]
    lines = [f"ROAD combined score of each run's maps (higher = more faithful; {settings['n']} test images per run, "
             f"percentiles {settings['percentiles'][0]}-{settings['percentiles'][-1]}, noise {settings['road_noise']})"
             f", mean [t CI] over seeds; each arm minus {base}, paired by seed: difference [t CI] and exact sign-flip "
             "p; and each run's maps minus random maps (mean over seeds).", "",
             f"| arm | seeds | ROAD combined [CI] | difference vs {base} [CI] | sign-flip p | maps minus random |",
             "| --- | ---: | --- | --- | ---: | ---: |"]
    arm = comps[0]["arms"][base]
    lines.append(f"| {base} | {arm['road_combined']['n']} | {_num(arm['road_combined']['mean'], '.4f')}"
                 f"{_ci(arm['road_combined']['ci95'], '.4f')} | | | {_num(arm['road_vs_random']['mean'], '.4f')} |")
    changed = []
    for c in comps:
        name = list(c["arms"])[0]
        arm, p = c["arms"][name], c["paired"]["road_combined"]
        lines.append(f"| {name} | {arm['road_combined']['n']} | {_num(arm['road_combined']['mean'], '.4f')}"
                     f"{_ci(arm['road_combined']['ci95'], '.4f')} | {_num(p['mean_diff'], '.4f', True)}"
                     f"{_ci(p['ci95'], '.4f', True)} | {_p(p['p_signflip'])} | {_num(arm['road_vs_random']['mean'], '.4f')} |")
        if p["p_signflip"] is not None and p["p_signflip"] < ALPHA:
            changed.append(f"{name} ({'less' if p['mean_diff'] < 0 else 'more'} faithful, {p['mean_diff']:+.4f})")
    lines += ["", f"By the rule (sign-flip p < {ALPHA}) the CAM term changed faithfulness in: " + "; ".join(changed)
              + ". No other arm's difference counts." if changed else
              f"By the rule (sign-flip p < {ALPHA}) no arm's faithfulness differs from {base}."]
    return lines


def mcnemar_lines(comps: list[dict]) -> list[str]:
    base = list(comps[0]["arms"])[1]
    lines = ["| pairs of runs | n | McNemar p, median [min, max] |", "| --- | ---: | --- |"]

    def row(label, rows):
        ps = [r["p_value"] for r in rows]
        if ps:
            lines.append(f"| {label} | {len(ps)} | {_p(statistics.median(ps))} [{_p(min(ps))}, {_p(max(ps))}] |")

    row(f"two seeds of {base} (run-to-run scale)", comps[0]["mcnemar"]["within_arm"].get(base, []))
    for c in comps:
        row(f"{list(c['arms'])[0]} vs {base}, same seed", c["mcnemar"]["per_pair"])
    return lines


def wall_table(results: dict, comps: list[dict]) -> list[str]:
    arm_of = {str(p): name for c in comps for name, a in c["arms"].items() for p in a["runs"]}
    per_arm: dict[str, list[tuple[float, int]]] = {}
    for r in results["runs"]:
        secs = [x["seconds"] for x in r["records"] if x.get("seconds") is not None]
        per_arm.setdefault(arm_of.get(r["path"], r["name"]), []).append((sum(secs), len(secs)))
    lines = ["| arm | runs | epochs | wall time per run, mean [min, max] | per epoch, mean |",
             "| --- | ---: | ---: | --- | ---: |"]
    for name, rows in per_arm.items():
        t = [s for s, _ in rows]
        ep = sorted({e for _, e in rows})
        lines.append(f"| {name} | {len(rows)} | {'/'.join(map(str, ep))} | {statistics.mean(t) / 60:.1f} min "
                     f"[{min(t) / 60:.1f}, {max(t) / 60:.1f}] | {sum(t) / sum(e for _, e in rows):.0f} s |")
    return lines


def render(results: dict) -> str:
    comps = comparisons(results)
    blocks = [
        ("Per arm (test split; consistency and concentration on the images each run gets right; mean [t 95% CI] "
         "over seeds)", arms_table(comps)),
        ("Each arm minus the baseline, paired by seed (the H2 test)", paired_table(comps)),
        ("Verdict per arm (accuracy, dist, ssim)", verdicts(comps)),
        *([("Faithfulness per arm (ROAD on each run's scored test store RUN/test.zarr)", faithfulness_lines(comps))]
          if comps[0].get("faithfulness") else []),
        ("Exact McNemar on per-image correctness: descriptive only, never the verdict", mcnemar_lines(comps)),
        ("Wall time per run (sum of the epochs' `seconds`: training and the per-epoch evaluation)",
         wall_table(results, comps)),
    ]
    return "\n\n".join(f"**{title}.**\n\n" + "\n".join(lines) for title, lines in blocks) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the study folder (holding results.json and README.md)")
    ap.add_argument("--write", action="store_true", help="replace the tables in the study's README.md")
    args = ap.parse_args()
    text = render(json.loads((args.study / "results.json").read_text()))
    if not args.write:
        print(text, end="")
        return
    readme = args.study / "README.md"
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    head, rest = old.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
