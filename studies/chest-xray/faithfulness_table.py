"""The chest X-ray README's faithfulness section, rendered from compare-faithfulness.json (`camstat compare
runs/chest-h2` after step "faith" of run.sh). `python studies/chest-xray/faithfulness_table.py --write` replaces
the section between its markers in README.md; without --write it prints it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- faithfulness:begin -->", "<!-- faithfulness:end -->"


def _f(x: float | None, digits: int = 4, sign: bool = False) -> str:
    return "-" if x is None else f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def render(d: dict) -> str:
    comps = d["comparisons"]
    base_name = list(comps[0]["arms"])[1]
    base = comps[0]["arms"][base_name]["road_combined"]
    settings = comps[0]["faithfulness"]["settings"]
    lines = [BEGIN, "",
             f"ROAD combined score of each run's Grad-CAM maps (higher = more faithful; {settings['n']} test images "
             f"per run, percentiles {settings['percentiles'][0]}-{settings['percentiles'][-1]}, noise "
             f"{settings['road_noise']}), mean [t CI] over seeds; each arm minus {base_name}, paired by seed: "
             "difference [t CI] and exact sign-flip p; and each run's maps minus random maps (mean over seeds).", "",
             "| arm | seeds | ROAD combined [CI] | difference vs lambda 0 [CI] | sign-flip p | maps minus random |",
             "| --- | ---: | --- | --- | ---: | ---: |",
             f"| {base_name} | {base['n']} | {_f(base['mean'])} [{_f(base['ci95'][0])}, {_f(base['ci95'][1])}] | | | "
             f"{_f(comps[0]['arms'][base_name]['road_vs_random']['mean'])} |"]
    worse = []
    for c in comps:
        name = list(c["arms"])[0]
        arm, p = c["arms"][name]["road_combined"], c["paired"]["road_combined"]
        lines.append(f"| {name} | {arm['n']} | {_f(arm['mean'])} [{_f(arm['ci95'][0])}, {_f(arm['ci95'][1])}] | "
                     f"{_f(p['mean_diff'], sign=True)} [{_f(p['ci95'][0], sign=True)}, {_f(p['ci95'][1], sign=True)}]"
                     f" | {p['p_signflip']:.3f} | {_f(c['arms'][name]['road_vs_random']['mean'])} |")
        if p["p_signflip"] < 0.05:
            worse.append((name, p["mean_diff"]))
    verdict = ("By the study's rule (sign-flip p < 0.05) the CAM term changed faithfulness in: "
               + "; ".join(f"{n} ({'less' if v < 0 else 'more'} faithful, {_f(v, sign=True)})" for n, v in worse)
               + ". Every other arm's difference does not count.") if worse else \
        "By the study's rule (sign-flip p < 0.05) no arm's faithfulness differs from plain training."
    return "\n".join(lines + ["", verdict, "", END])


def main() -> None:
    text = render(json.loads((HERE / "compare-faithfulness.json").read_text()))
    if "--write" not in sys.argv:
        print(text)
        return
    readme = (HERE / "README.md").read_text()
    start, stop = readme.index(BEGIN), readme.index(END) + len(END)
    (HERE / "README.md").write_text(readme[:start] + text + readme[stop:])


if __name__ == "__main__":
    main()
