"""The chest X-ray study's README is exactly what studies/chest-xray/h1/tables.py renders from the JSON beside it.

So every number in that README comes from a ``--json`` result; editing a number by hand, or rerunning a command
without regenerating the README, fails here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "chest-xray" / "h1"


def tables_module():
    spec = importlib.util.spec_from_file_location("chest_tables", STUDY / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_rendered_from_the_json():
    assert (STUDY / "README.md").read_text() == tables_module().readme()


def test_the_check_bites(tmp_path, monkeypatch):
    """A changed number in one JSON file changes the rendered README."""
    module = tables_module()
    for f in STUDY.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    monkeypatch.setattr(module, "HERE", tmp_path)
    assert module.readme() == (STUDY / "README.md").read_text()
    detect = tmp_path / "detect-gradcam.json"
    detect.write_text(detect.read_text().replace('"auroc": 0.', '"auroc": 0.1', 1))
    assert module.readme() != (STUDY / "README.md").read_text()
