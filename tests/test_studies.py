"""The study READMEs say what their results.json says: every number in their prose is a link to its JSON path.

A README number is written ``[0.612](results.json "consistency[0].metrics.dist.pooled.auc_within_class")``:
it renders as a link to the results with the path as its title. This test reads each such number back from
``results.json`` (equal as printed, to half the last digit; ``< 0.0001`` means the value is below it) and
fails on any decimal number in the prose that is not such a link (code blocks and inline code aside:
commands, not results; and the verdict rule's two constants, alpha 0.05 and the chance AUC 0.5).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["studies/cifar10-resnet20-h1", "studies/demo"]
LINK = re.compile(r"\[(<\s*)?([+-]?\d+(?:\.\d+)?)\]\(results\.json \"([^\"]+)\"\)")
DECIMAL = re.compile(r"(?<![\w.])[+-]?\d+\.\d+")
RULE_CONSTANTS = {"0.05", "0.5"}  # SPEC 4's alpha and the AUC of chance, not results


def resolve(results: dict, path: str):
    node = results
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def linked_numbers(text: str) -> list[tuple[bool, str, str]]:
    return [(bool(m.group(1)), m.group(2), m.group(3)) for m in LINK.finditer(text)]


def prose(text: str) -> str:
    """The README without code blocks, inline code and linked numbers."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return LINK.sub("", text)


def check(readme: Path) -> int:
    results = json.loads((readme.parent / "results.json").read_text())
    text = readme.read_text()
    links = linked_numbers(text)
    for below, shown, path in links:
        value = resolve(results, path)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (path, value)
        if below:
            assert value < float(shown), (path, value, shown)
            continue
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        assert abs(value - float(shown)) <= 0.5 * 10.0 ** -decimals * (1 + 1e-9), (path, value, shown)
    bare = [x for x in DECIMAL.findall(prose(text)) if x not in RULE_CONSTANTS]
    assert not bare, f"{readme}: numbers not read from results.json: {bare}"
    return len(links)


@pytest.mark.parametrize("study", STUDIES)
def test_readme_numbers_are_results_json(study):
    readme = ROOT / study / "README.md"
    assert check(readme) >= 10


def test_the_check_bites(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"a": [{"b": 0.6123}], "p": 3e-5}))
    good = tmp_path / "README.md"
    good.write_text('AUC [0.61](results.json "a[0].b"), p [< 0.0001](results.json "p"); `--q 0.2` is a command.\n')
    assert check(good) == 2
    good.write_text('AUC [0.61](results.json "a[0].b") above 0.5 and p below 0.05.\n')
    assert check(good) == 1
    for bad in ('AUC [0.62](results.json "a[0].b")', 'AUC 0.61 unlinked', 'p [< 0.00001](results.json "p")'):
        good.write_text(bad + "\n")
        with pytest.raises(AssertionError):
            check(good)


H2_STUDIES = ["studies/chest-xray", "studies/cifar10-resnet20-h2"]


def h2_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("h2_tables", ROOT / "studies" / "h2_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("study", H2_STUDIES)
def test_h2_tables_are_rendered_from_results_json(study):
    """The README's block of H2 tables is exactly what studies/h2_tables.py renders from the results.json beside
    it; a changed number in results.json changes the block."""
    module = h2_tables()
    readme = (ROOT / study / "README.md").read_text()
    block = readme.split(module.BEGIN + "\n", 1)[1].split(module.END, 1)[0]
    results = json.loads((ROOT / study / "results.json").read_text())
    assert block == module.render(results)
    module.comparisons(results)[-1]["paired"]["accuracy"]["mean_diff"] += 0.5
    assert module.render(results) != block
