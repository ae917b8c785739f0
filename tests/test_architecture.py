"""The floors of the package: one home per concept, layer rules, the CLI's conventions, the results diff tool."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from camstat import metrics, references
from camstat.cli import main

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "camstat"
# Analysis floors that must not know how results are shown.
ANALYSIS = ["h1", "references.py", "metrics.py", "store.py", "extract.py"]
MINE = ["h1", "present", "references.py", "cli.py", "demo.py", "extract.py", "metrics.py"]
NUMERIC_KERNELS: set[str] = set()  # functions allowed over 80 lines (none in these modules)


def _files(names: list[str]) -> list[Path]:
    out: list[Path] = []
    for name in names:
        path = PKG / name
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_analysis_never_imports_the_presentation_layer():
    for path in _files(ANALYSIS):
        for module, names in _imports(path):
            assert not module.startswith("camstat.present"), (path, module)
            assert not (module == "camstat" and "present" in names), path


def test_only_cli_and_demo_import_present():
    allowed = {PKG / "cli.py", PKG / "demo.py"} | set((PKG / "present").rglob("*.py"))
    for path in PKG.rglob("*.py"):
        if path in allowed:
            continue
        for module, names in _imports(path):
            assert not module.startswith("camstat.present"), (path, module)


def test_no_private_name_crosses_a_module():
    for path in _files(MINE):
        for module, names in _imports(path):
            if module.startswith("camstat"):
                assert not [n for n in names if n.startswith("_") and not n.startswith("__")], (path, module)


def test_no_function_over_80_lines():
    for path in _files(MINE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in NUMERIC_KERNELS:
                assert node.end_lineno - node.lineno + 1 <= 80, (path, node.name)


def test_results_hold_no_sentences():
    """The H1 layer writes no verdict prose, notes or warnings into results (present.text does)."""
    for path in _files(["h1"]):
        source = path.read_text()
        for key in ('"text"', '"note"', '"warning"', '"reference_kind"'):
            assert key not in source, (path, key)


# --------------------------------------------------------------------------
# one home per concept
# --------------------------------------------------------------------------


def test_group_means_and_references_one_rule_for_empty_groups():
    rng = np.random.default_rng(0)
    maps = rng.random((20, 4, 5)).astype(np.float32)
    groups = np.repeat(np.arange(4), 5)
    include = rng.random(20) < 0.6
    include[groups == 3] = False  # a group without included maps
    blocks = [(slice(s, s + 7), maps[s:s + 7]) for s in range(0, 20, 7)]
    means, counts = references.group_means(iter(blocks), groups, include, 4)
    for g in range(3):
        sel = (groups == g) & include
        assert counts[g] == sel.sum()
        np.testing.assert_allclose(means[g], maps[sel].mean(axis=0), rtol=1e-6)
    assert counts[3] == 0 and np.isnan(means[3]).all()
    rep = references.representatives(iter(blocks), groups, include, means, counts)
    assert rep[3] == -1
    for g in range(3):
        sel = np.flatnonzero((groups == g) & include)
        d = ((maps[sel] - means[g]) ** 2).mean(axis=(1, 2))
        assert rep[g] == sel[np.argmin(d)]


def test_auc_orientation_lives_in_metrics():
    assert metrics.oriented_auc(0.3, [0.2, 0.4], False) == (pytest.approx(0.7), [pytest.approx(0.6),
                                                                               pytest.approx(0.8)])
    assert metrics.oriented_auc(0.3, [0.2, 0.4], True) == (0.3, [0.2, 0.4])
    assert metrics.oriented_auc(None, None, False) == (None, [None, None])
    assert metrics.oriented_auc(float("nan"), [0.1, None], False) == (None, [None, pytest.approx(0.9)])
    dist, ssim = metrics.PER_IMAGE["dist"], metrics.PER_IMAGE["ssim"]
    assert dist.oriented(0.25)[0] == pytest.approx(0.75) and ssim.oriented(0.25)[0] == 0.25
    assert {m.family for m in metrics.PER_IMAGE.values()} == {"consistency", "concentration", "localisation"}
    assert metrics.PER_IMAGE["entropy"].label == "more concentrated"
    assert metrics.orientation("dist") is False and metrics.orientation("nope") is None


# --------------------------------------------------------------------------
# the store's identity, summary, dataset; the CLI's conventions
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, one_thread) -> Path:
    from camstat.extract import extract

    path = tmp_path_factory.mktemp("arch") / "s.zarr"
    extract("camstat:smallcnn", "builtin:shapes?n=40", path, split="test", methods="gradcam", device="cpu", chunk=8)
    return path


def test_store_identity_summary_dataset_require(store):
    from camstat.errors import CamstatError
    from camstat.store import is_store, open_store

    s = open_store(store)
    assert is_store(store) and not is_store(store.parent)
    ident = s.identity()
    assert ident["path"] == str(store) and ident["n"] == s.n == 40 and ident["model"] == "camstat:smallcnn"
    summary = s.summary()
    assert summary["complete"] and summary["n"] == 40 and summary["methods"] == ["gradcam"]
    assert len(s.fingerprint()) == 64 and s.fingerprint() == open_store(store).fingerprint()
    assert np.array_equal(np.asarray(s.dataset().index), s.samples["index"])
    s.require("gradcam", None, "pred")
    with pytest.raises(CamstatError, match="no method 'gradcam\\+\\+'"):
        s.require("gradcam++", None, "pred")


def test_version_and_json_to_stdout(store, capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("camstat ")
    assert main(["info", str(store), "--json", "-"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["n"] == 40  # stdout is the JSON alone
    assert "camstat:smallcnn" in cap.err  # the human table went to stderr
    assert not Path("-").exists()


def test_info_pipes_into_json_tool(store):
    env_path = f"{ROOT}"
    cmd = (f"{sys.executable} -m camstat info {store} --json - | {sys.executable} -m json.tool")
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env={"PYTHONPATH": env_path,
                                                                                "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["store"] == str(store)


def test_help_lists_choices_and_flags_are_flags(capsys):
    assert main(["consistency", "--help"]) == 0
    text = capsys.readouterr().out
    for choices in ("<correct|class|cluster>", "<pred|label>", "<holm|fdr_bh|bonferroni>", "<permuted|none>"):
        assert choices in text
    assert main(["extract", "--help"]) == 0
    text = capsys.readouterr().out
    assert "<pred|true|both>" in text and "<skip|fail>" in text
    line = next(x for x in text.splitlines() if "--trust-checkpoint" in x)
    assert "<bool>" not in line and "<" not in line.split("--trust-checkpoint")[1][:6]
    assert main(["--help"]) == 0
    assert "--install-completion" in capsys.readouterr().out


# --------------------------------------------------------------------------
# tools/compare_results.py
# --------------------------------------------------------------------------


def _tool():
    spec = importlib.util.spec_from_file_location("compare_results", ROOT / "tools" / "compare_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_results_finds_every_changed_number_and_ignores_text():
    tool = _tool()
    a = {"x": 1.0, "m": {"p": [0.1, None, True], "text": "old words"}, "seconds": 3.0}
    same = {"x": 1.0, "m": {"p": [0.1, None, True], "text": "new words"}, "seconds": 9.0}
    assert tool.compare(a, same)["differences"] == []
    changed = {"x": 1.0, "m": {"p": [0.1000001, None, True]}, "seconds": 3.0}
    assert [d[0] for d in tool.compare(a, changed)["differences"]] == ["/m/p[0]"]
    assert tool.compare(a, changed, tol=1e-3)["differences"] == []
    missing = {"x": 1.0, "m": {"p": [0.1, None]}}
    assert [d[0] for d in tool.compare(a, missing)["differences"]] == ["/m/p[2]"]
    flipped = {"x": 1.0, "m": {"p": [0.1, 0.0, False]}}
    assert len(tool.compare(a, flipped)["differences"]) == 2  # null -> 0 and True -> False both count


def test_the_cli_loads_without_torch():
    """`camstat --help`, completion and the statistics commands start fast: importing the CLI loads no torch (it
    loads when a command runs a model or reads maps)."""
    import subprocess
    import sys

    code = "import sys, camstat.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
