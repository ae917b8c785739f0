"""camstat report: every table number equals its results.json record, results.json equals --json, figures are PNGs."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from camstat.cli import main
from camstat.h1 import analyze
from camstat.h1.verdicts import primary_verdicts
from camstat.compare import compare_runs
from camstat.errors import CamstatError
from camstat.extract import extract
from camstat.present.detection import score_name
from camstat.present.report import report
from camstat.present.text import method_name
from camstat.training.config import TrainConfig
from camstat.training.train import train

N = 240
K = 6
FAST = dict(permutations=499, n_boot=200)
TINY = dict(model="camstat:smallcnn", data="builtin:digits", limit=192, eval_limit=60, batch_size=32, device="cpu",
            epochs=2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _prototype(c: int, h: int = 8, w: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cy, cx = 1.5 + (c % 3) * 2.5, 2.0 + (c // 3) * 4.0
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0).astype(np.float32)


def _plant(path: Path, seed: int) -> None:
    """Predictions and maps with an H1 effect: correct maps are their class prototype, incorrect ones mostly noise.

    Class 4 is always right (skipped: no incorrect images), so the skip note is exercised too.
    """
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="r+")
    n = root["samples/index"].shape[0]
    pred = np.arange(n) % K
    correct = rng.random(n) < 0.65
    correct[pred == 4] = True
    label = np.where(correct, pred, (pred + 1 + rng.integers(0, K - 1, n)) % K)
    samples = root["samples"]
    samples["pred"][:] = pred
    samples["label"][:] = label
    samples["correct"][:] = correct
    samples["confidence"][:] = rng.uniform(0.3, 1.0, n).astype(np.float32)
    for method in ("gradcam", "gradcam++"):
        maps = np.empty((n, 8, 8), np.float32)
        for i in range(n):
            proto = _prototype(int(pred[i]))
            noise = rng.random((8, 8)).astype(np.float32)
            maps[i] = proto + 0.15 * noise if correct[i] else 0.35 * proto + 0.9 * noise
        root[f"maps/{method}/features/pred"][:] = maps


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("report")
    kw = dict(methods="gradcam,gradcam++", device="cpu", chunk=64, batch_size=64)
    extract("camstat:smallcnn", f"builtin:shapes?n={N}", tmp / "main.zarr", split="test", **kw)
    shutil.copytree(tmp / "main.zarr", tmp / "random.zarr")  # the same untrained model's maps: the random control
    _plant(tmp / "main.zarr", seed=1)
    runs = {}
    for seed in (0, 1):
        runs[f"base-s{seed}"] = tmp / f"base-s{seed}"
        train(TrainConfig(out=str(runs[f"base-s{seed}"]), lam=0.0, seed=seed, **TINY))
        runs[f"reg-s{seed}"] = tmp / f"reg-s{seed}"
        train(TrainConfig(out=str(runs[f"reg-s{seed}"]), lam=0.5, loss="variance", seed=seed, **TINY))
    out = tmp / "out"
    result = report([tmp / "main.zarr", runs["reg-s0"], runs["reg-s1"]], out, vs=[runs["base-s0"], runs["base-s1"]],
                    random_store=tmp / "random.zarr", seed=0, **FAST)
    return {"tmp": tmp, "runs": runs, "out": out, "result": result,
            "results": json.loads((out / "results.json").read_text())}


# --------------------------------------------------------------------------
# parsing the rendered tables back


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def md_tables(text: str) -> list[dict]:
    """Tables of report.md: source path (from the comment), header and rows of cell strings."""
    tables = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"<!-- table (\S+): (\S+) -->", line)
        if not m:
            continue
        j = i + 1
        while not lines[j].startswith("|"):
            j += 1
        header = _cells(lines[j])
        rows = []
        j += 2
        while j < len(lines) and lines[j].startswith("|"):
            rows.append(_cells(lines[j]))
            j += 1
        tables.append({"key": m.group(1), "source": m.group(2), "header": header, "rows": rows})
    return tables


_UNTEX = [(r"$<$", "<"), (r"$|$", "|"), (r"$>$", ">"), (r"$\pm$", "±"), (r"$\delta$", "δ"), (r"$\lambda$", "λ"),
          (r"\_", "_"),
          (r"\%", "%"), (r"\&", "&"), (r"\#", "#"), (r"\{", "{"), (r"\}", "}")]


def _untex(cell: str) -> str:
    for a, b in _UNTEX:
        cell = cell.replace(a, b)
    return cell.strip()


def tex_tables(text: str) -> list[dict]:
    tables = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"% table (\S+); numbers from results.json: (\S+)", line)
        if not m:
            continue
        j = lines.index(r"\toprule", i)
        header = [_untex(c) for c in lines[j + 1].removesuffix(r" \\").split(" & ")]
        assert lines[j + 2] == r"\midrule"
        rows = []
        j += 3
        while lines[j] != r"\bottomrule":
            assert lines[j].endswith(r" \\"), lines[j]
            rows.append([_untex(c) for c in lines[j].removesuffix(r" \\").split(" & ")])
            j += 1
        tables.append({"key": m.group(1), "source": m.group(2), "header": header, "rows": rows})
    return tables


_NUMBER = re.compile(r"(<\s*)?([+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?)")


def numbers(cell: str) -> list[tuple[str, float, float]]:
    """Each number of a cell as (kind, value, half the last printed digit): kind 'lt' for '< x'."""
    out = []
    for m in _NUMBER.finditer(cell):
        text = m.group(2)
        mant, _, exp = text.partition("e")
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        half = 0.5 * 10.0 ** (-decimals + (int(exp) if exp else 0))
        out.append(("lt" if m.group(1) else "num", float(text), half))
    return out


def agrees(cell: str, values: list) -> None:
    """The cell shows exactly ``values`` (in order), each rounded as printed; '-' (or nothing) for None."""
    shown = [v for v in values if v is not None]
    found = numbers(cell)
    if not shown:
        assert cell in ("-", ""), (cell, values)
        return
    assert len(found) == len(shown), (cell, values)
    for (kind, x, half), v in zip(found, shown):
        if kind == "lt":
            assert v < x, (cell, v)
        else:
            assert abs(x - v) <= half * (1 + 1e-9) + 1e-12, (cell, values)


def resolve(results: dict, source: str):
    node = results
    for part in re.findall(r"[^.\[\]]+|\[\d+\]|\[\*\]", source):
        if part == "[*]":
            return node
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def sig_classes(m: dict) -> str:
    higher = m["higher_is_more_consistent"]
    k = sum(1 for r in m["per_class"] if r["p_adjusted"] is not None and r["p_adjusted"] < 0.05
            and r["cliffs_delta"] is not None and r["cliffs_delta"] != 0 and (r["cliffs_delta"] > 0) == higher)
    return f"{k}/{len(m['per_class'])}"


def check_table(t: dict, results: dict) -> int:
    """Check every cell of a table against its records; returns the number of cells checked."""
    src, head = t["source"], t["header"]
    records = resolve(results, src)
    checked = 0

    def by_col(row):
        return dict(zip(head, row))

    for row in t["rows"]:
        c = by_col(row)
        first = row[0]
        if src.endswith(".dispersion.per_class"):
            r = next(r for r in records if r["class"] == first)
            expect = {"n corr": [r["n_correct"]], "n inc": [r["n_incorrect"]],
                      "dispersion corr": [r["dispersion_correct"]], "dispersion inc": [r["dispersion_incorrect"]],
                      "log ratio": [r["statistic"]], "SSIM corr": [r["ssim_correct"]],
                      "SSIM inc": [r["ssim_incorrect"]], "p": [r["p_value"]]}
        elif src.endswith(".per_class") and src.startswith("consistency") and "median" in records[0]:  # --by class
            r = next(r for r in records if r["class"] == first)
            expect = {"n": [r["n"]], "n corr": [r["n_correct"]], "n inc": [r["n_incorrect"]], "median": [r["median"]],
                      "median corr": [r["median_correct"]], "median inc": [r["median_incorrect"]]}
        elif src.endswith(".groups"):
            g = next(g for g in records if g[head[0]] == first)[row[1]]
            expect = {"n": [g["n"]], "sampled": [g["n_sampled"]], "pairwise SSIM": [g["mean_pairwise_ssim"]],
                      "pairwise IoU": [g["mean_pairwise_iou"]], "CoM dispersion": [g["com_dispersion"]],
                      "dist to mean": [g["mean_dist_to_mean"]]}
            checked += 1
        elif src.endswith(".per_class") and src.startswith("consistency"):
            r = next(r for r in records if r["class"] == first)
            expect = {"n corr": [r["n_correct"]], "n inc": [r["n_incorrect"]], "median corr": [r["median_correct"]],
                      "median inc": [r["median_incorrect"]], "δ [95% CI]": [r["cliffs_delta"], *r["ci95"]],
                      "p": [r["p_value"]], "p adj": [r["p_adjusted"]]}
        elif src.endswith("controls.null_pipeline.metrics"):
            m = records[first]
            g = head[-1].split()[2]
            expect = {"repeats": [m["n_tests"]],
                      "rejection rate at 0.05 [95% CI]": [m["rejection_rate"], *m["rejection_rate_ci95"]],
                      "δ quantiles": m["delta_quantiles"],
                      f"AUC within {g} quantiles": m["auc_within_class_quantiles"]}
        elif src.endswith("controls.random_weights.metrics"):
            m = records[first]
            pt = m["paired_trained_minus_random"]
            expect = {"median trained": [m["median_trained"]], "median random": [m["median_random"]],
                      "AUC within class trained": [m["auc_within_class_trained"], *m["auc_within_class_trained_ci95"]],
                      "AUC within class random": [m["auc_within_class_random"], *m["auc_within_class_random_ci95"]],
                      "marginal AUC random": [m["auc_marginal_random"], *m["auc_marginal_random_ci95"]],
                      "mean diff [95% CI]": [pt["mean_diff"], *pt["ci95"]], "p": [pt["p_wilcoxon"]]}
        elif src.startswith("consistency") and src.endswith(".metrics"):
            m = records[first]
            p = m["pooled"]
            g = head[4].split()[2]
            expect = {"n": [p["n"]], f"AUC within {g} [95% CI]": [p["auc_within_class"], *p["auc_within_class_ci95"]],
                      "δ": [p["statistic"]], "p perm": [p["p_permutation"]], "p adj": [p["p_adjusted"]],
                      "OR/SD | conf [95% CI]": [p["odds_ratio_per_sd_given_confidence"],
                                                *(p["odds_ratio_ci95_given_confidence"] or [])],
                      "p LRT | conf": [p["p_lrt_given_confidence"]],
                      "marginal AUC [95% CI]": [p["auc_marginal"], *p["auc_marginal_ci95"]]}
            assert c["better"] == ("higher" if m["higher_is_more_consistent"] else "lower")
            assert c["role"] == m["role"]
            assert c[next(h for h in head if h.startswith("sig. "))] == sig_classes(m)
            checked += 3
        elif src.endswith(".clusters"):
            j = records["names"].index(first)
            expect = {"n": [records["sizes"][j]], "silhouette": [records["silhouette"][j]]}
            mix = records["class_counts"][first]
            assert c["classes"].split(", ")[0] == "{} {}".format(*max(mix.items(), key=lambda kv: kv[1]))
            checked += 1
        elif src == "runs[*].final":
            r = next(r for r in records if r["name"] == first)
            f = r["final"]
            expect = {"λ": [r["lambda"]], "seed": [r["seed"]], "epochs": [f["epoch"]], "accuracy": [f["accuracy"]],
                      "dist": [f["dist_self"]], "ssim": [f["ssim_self"]], "L_cam": [f["loss_cam"]]}
            assert c["loss"] == (r["loss"] if r["lambda"] else "-")
            checked += 1
        elif src in ("compare.arms", "sweep.comparisons[*].arms"):
            if src == "compare.arms":
                a = records[first]
            else:  # an arm's own comparison (for the baseline, every comparison) holds it
                a = next(x["arms"][first] for x in records if first in x["arms"])
            expect = {"runs": [len(a["runs"])]}
            for m in ("accuracy", "dist", "ssim", "entropy", "spread"):
                expect[m] = [a[m]["mean"], a[m]["sd"], *a[m]["ci95"]]
        elif src in ("compare.paired", "sweep.comparisons[*].paired"):
            if src == "compare.paired":
                p = records[first]
            else:
                assert c["metric"] in ("accuracy", "dist", "ssim", "entropy", "spread")
                p = next(x for x in records if list(x["arms"])[0] == first)["paired"][c["metric"]]
                checked += 1
            expect = {"pairs": [p["n"]], "mean diff [95% CI]": [p["mean_diff"], *p["ci95"]],
                      "p (sign-flip)": [p["p_signflip"]], "p (t)": [p["p_ttest"]], "p (Wilcoxon)": [p["p_wilcoxon"]]}
        elif src == "compare.mcnemar.per_pair":
            if first.startswith("pooled"):
                r = results["compare"]["mcnemar"]["pooled"]
                agrees(first, [r["pairs"]])
            else:
                r = next(r for r in records if str(r["seed"]) == first)
            b_col, c_col = head[1], head[2]
            expect = {b_col: [r["b"]], c_col: [r["c"]], "p": [r["p_value"]]}
        elif re.fullmatch(r"detection\[\d+\]\.scores", src):
            r = next(v for k, v in records.items() if score_name(k) == first)
            expect = {"AUROC [95% CI]": [r["auroc"], *r["auroc_ci95"]], "AUPR err": [r["aupr_error"]],
                      "FPR@95TPR": [r["fpr_at_95tpr"]], "AURC": [r["aurc"]], "E-AURC": [r["eaurc"]]}
        elif re.fullmatch(r"detection\[\d+\]\.versus_baseline", src):
            r = next(v for k, v in records.items() if score_name(k) == first)
            expect = {"dAUROC [95% CI]": [r["delta_auroc"], *r["delta_auroc_ci95"]], "p DeLong": [r["p_delong"]],
                      "p Holm": [r["p_delong_holm"]]}
            assert c["better"] == ("yes" if r["better"] else "no")
            checked += 1
        elif re.fullmatch(r"faithfulness\[\d+\]\.methods", src):
            r = next(v for k, v in records.items() if method_name(k) == first)
            group = c["images"]
            g = r if group == "all" else r["by_correct"][group]
            vs = {b: r["versus"][b] if group == "all" else r["versus"][b][group] for b in ("random", "class_mean")}
            every = group == "all"
            expect = {"n": [g["n"] if not every else resolve(results, src.rsplit(".", 1)[0])["n"]],
                      "combined [95% CI]": [g["road_combined_mean"], *g["road_combined_ci95"]],
                      "MoRF": [r["road_morf_mean"] if every else None], "LeRF": [r["road_lerf_mean"] if every else None],
                      **{f"vs {b.replace('_', ' ')} [95% CI]": [v["delta"], *v["delta_ci95"]] for b, v in vs.items()},
                      **{f"p ({b.replace('_', ' ')})": [v["p_value"]] for b, v in vs.items()}}
        else:
            raise AssertionError(f"no check for table source {src}")
        unchecked = {h for h in head[1:] if not h.startswith("sig. ")} - set(expect) - {
            "role", "better", "loss", "subset", "classes", "images", "metric"}
        assert not unchecked, (src, unchecked)
        for col, values in expect.items():
            agrees(c[col], values)
            checked += 1
    return checked


# --------------------------------------------------------------------------
# tests


def test_results_json_is_what_json_gives(made):
    results = made["results"]
    assert [d["method"] for d in results["consistency"]] == ["gradcam", "gradcam++"]
    # the same call consistency --json makes: identical records (provenance and save location aside)
    direct = analyze(made["tmp"] / "main.zarr", method="gradcam", control="permuted",
                     random_store=made["tmp"] / "random.zarr", seed=0, save=False, **FAST)
    drop = lambda d: {k: v for k, v in d.items() if k not in ("provenance", "derived")}
    # the report adjusts the primary metric's p across its two analyses (one verdict family per command);
    # the same adjustment over the direct record gives the very same record
    d_direct = direct.to_dict()
    assert d_direct["verdict"]["family_size"] == 1 and results["consistency"][0]["verdict"]["family_size"] == 2
    primary_verdicts([d_direct, copy.deepcopy(results["consistency"][1])])
    assert drop(d_direct) == drop(results["consistency"][0])
    runs = made["runs"]
    cmp = compare_runs([runs["reg-s0"], runs["reg-s1"]], [runs["base-s0"], runs["base-s1"]]).to_dict()
    assert json.loads(json.dumps(cmp)) == results["compare"]
    # the within-class ROC curves drawn and the within-class AUCs in their legends (the records) agree:
    # the area under the weighted average of the per-class curves is the van Elteren-weighted AUC
    from camstat.present.figures import ROC_GRID, within_class_roc

    root = zarr.open_group(str(made["tmp"] / "main.zarr"))
    y = np.asarray(root["samples/correct"][:], bool)
    assert y.sum() == d_direct["n_correct"]
    for name, v in direct.values.items():
        ok = np.isfinite(v)
        higher = d_direct["metrics"][name]["higher_is_more_consistent"]
        curve = within_class_roc(v[ok] if higher else -v[ok], y[ok], direct.groups[ok])
        assert np.trapezoid(curve, ROC_GRID) == pytest.approx(
            results["consistency"][0]["metrics"][name]["pooled"]["auc_within_class"], abs=2e-3)
    conf = np.asarray(root["samples/confidence"][:], np.float64)
    assert np.trapezoid(within_class_roc(conf, y, direct.groups), ROC_GRID) == pytest.approx(
        results["consistency"][0]["confidence_baseline"]["auc_within_class"], abs=2e-3)
    prov = results["provenance"]
    assert len(prov["stores"][0]["content_sha256"]) == 64
    assert prov["random_store"]["path"].endswith("random.zarr")
    assert all(len(r["checkpoint_sha256"]) == 64 for r in prov["runs"])
    assert prov["versions"]["camstat"]


def test_every_table_number_equals_its_record(made):
    results = made["results"]
    out = made["out"]
    md = md_tables((out / "report.md").read_text())
    tex = tex_tables((out / "report.tex").read_text())
    assert len(md) == len(tex) > 0
    kinds = {t["source"].split("consistency[0]")[-1] for t in md}
    assert {".metrics", ".metrics.dist.per_class", ".dispersion.per_class", ".controls.null_pipeline.metrics",
            ".controls.random_weights.metrics", "runs[*].final", "compare.arms", "compare.paired",
            "compare.mcnemar.per_pair"} <= kinds
    total = 0
    for t_md, t_tex in zip(md, tex):
        assert t_md["key"] == t_tex["key"] and t_md["source"] == t_tex["source"]
        assert t_md["header"] == t_tex["header"] and t_md["rows"] == t_tex["rows"], t_md["key"]
        total += check_table(t_md, results)
    assert total > 300
    # one per-class table per metric and method; the always-right class is named as skipped
    per_class = [t for t in md if t["source"].endswith(".per_class") and ".metrics." in t["source"]]
    assert len(per_class) == sum(len(d["metrics"]) for d in results["consistency"])
    text = (out / "report.md").read_text()
    assert "Not tested: " + results["consistency"][0]["metrics"]["dist"]["skipped"][0][0] in text


def test_verdicts_and_summary_come_from_the_records(made):
    results = made["results"]
    text = (made["out"] / "report.md").read_text()
    d = results["consistency"][0]
    p = d["metrics"]["dist"]["pooled"]
    w, (lo, hi) = p["auc_within_class"], p["auc_within_class_ci95"]
    line = next(ln for ln in text.splitlines() if ln.startswith("- **dist** (primary) — "))
    assert "correct images' maps are closer to the class mean map" in line
    assert f"within-class AUC {w:.2f} [{lo:.2f}, {hi:.2f}]" in line  # the headline, labelled
    assert f"marginal AUC {p['auc_marginal']:.2f}" in line  # the marginal one only labelled as such
    assert f"pooled Cliff's delta {p['statistic']:+.2f}" in line
    assert line.endswith("*Correct images' maps more consistent (adjusted p < 0.05, CI above 0.5).*")
    v = d["verdict"]
    assert v["supported"] and f"**H1 supported (primary metric dist: within-class AUC {w:.2f} [{lo:.2f}, {hi:.2f}]" \
        in text and "over 2 primary analyses" in text
    # concentration is its own question, never counted for or against H1
    assert "Are correct maps narrower? (concentration; never counted for or against H1)" in text
    assert "- **entropy** (concentration) — " in text
    # no bare "AUC" outside the within-class / marginal labels in the pooled table's header
    pooled = next(t for t in md_tables(text) if t["source"] == "consistency[0].metrics")
    assert [h for h in pooled["header"] if "AUC" in h] == ["AUC within class [95% CI]", "marginal AUC [95% CI]"]
    assert made["result"].summary[0] in text
    # provenance is the last section
    assert text.rstrip().split("\n## ")[-1].startswith("Provenance")
    assert results["provenance"]["stores"][0]["content_sha256"] in text


@pytest.fixture(scope="module")
def sections(made) -> dict:
    """A report of one store given a train-split reference (detection section) and scored by faithfulness."""
    from camstat.faithfulness import faithfulness

    tmp = made["tmp"]
    store, ref = tmp / "scored.zarr", tmp / "train.zarr"
    shutil.copytree(tmp / "main.zarr", store)
    extract("camstat:smallcnn", f"builtin:shapes?n={N}", ref, split="train", methods="gradcam,gradcam++", device="cpu",
            chunk=64, batch_size=64)
    _plant(ref, seed=2)
    faithfulness(store, limit=12, percentiles="30,70", n_boot=200, device="cpu")
    out = tmp / "sections"
    report([store], out, reference=ref, method="gradcam", control="none", seed=0, **FAST)
    return {"store": store, "ref": ref, "out": out, "results": json.loads((out / "results.json").read_text())}


def test_detection_and_faithfulness_sections(sections):
    from camstat.detection import detect_errors
    from camstat.faithfulness import saved_result
    from camstat.present.detection import verdict
    from camstat.records import jsonable

    results, out = sections["results"], sections["out"]
    direct = detect_errors(sections["store"], sections["ref"], method="gradcam", seed=0, n_boot=FAST["n_boot"])
    assert results["detection"] == [json.loads(json.dumps(jsonable(direct.to_dict())))]
    assert results["faithfulness"] == [json.loads(json.dumps(saved_result(sections["store"])))]
    md, tex = (out / "report.md").read_text(), (out / "report.tex").read_text()
    tables = md_tables(md)
    sources = {t["source"] for t in tables}
    assert {"detection[0].scores", "detection[0].versus_baseline", "faithfulness[0].methods"} <= sources
    assert sum(check_table(t, results) for t in tables if t["source"] in sources) > 0
    for t_md, t_tex in zip(tables, tex_tables(tex)):
        assert t_md["header"] == t_tex["header"] and t_md["rows"] == t_tex["rows"], t_md["key"]
    assert verdict(results["detection"][0]) in md
    for name in ("fig-detect-0-gradcam-roc.png", "fig-detect-0-gradcam-risk-coverage.png", "fig-faithfulness-0.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE and f"]({name})" in md


def test_no_sections_without_reference_or_scores(made):
    assert made["results"]["detection"] == [] and made["results"]["faithfulness"] == []


def test_figures_are_valid_pngs(made):
    import matplotlib.image as mpimg
    from PIL import Image

    out = made["out"]
    figs = sorted(out.glob("fig-*.png"))
    assert sorted(Path(f) for f in made["result"].figures) == figs
    names = {f.name for f in figs}
    for method in ("gradcam", "gradcampp"):
        for kind in ("class-means", "gallery-dist", "dist-dist", "dist-ssim", "roc"):
            assert any(n.endswith(f"{method}-{kind}.png") for n in names), (method, kind)
    assert {"fig-h2-learning-curves.png", "fig-h2-arms.png"} <= names
    text = (out / "report.md").read_text()
    for f in figs:
        assert f.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(f) as im:
            im.verify()
        img = mpimg.imread(f)
        assert img.ndim == 3 and min(img.shape[:2]) > 100
        assert f"]({f.name})" in text
        assert f.stat().st_size < 400_000


def test_cli_report_of_runs_only_and_errors(made, tmp_path, capsys):
    runs = made["runs"]
    # two configurations without --vs: arms split by lambda, regularised first
    code = main(["report", str(runs["reg-s0"]), str(runs["base-s0"]), "--out", str(tmp_path / "r"),
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert list(res["compare"]["arms"]) == ["lambda=0.5 variance", "lambda=0"]
    assert res["consistency"] == []
    info = json.loads((tmp_path / "r.json").read_text())
    assert info["report"].endswith("report.md") and len(info["figures"]) == 2
    assert "report:" in capsys.readouterr().out
    # bad input: one error line, exit code 2
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert main(["report", str(runs["reg-s0"]), "--vs", "--out", str(tmp_path / "x")]) == 2
    assert main(["report", str(runs["reg-s0"]), "--bogus", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err
    with pytest.raises(CamstatError, match="matches none"):
        report([made["tmp"] / "main.zarr"], tmp_path / "y", random_store=made["tmp"] / "main.zarr", method="gradcam",
               **FAST)


def test_by_class_and_cluster_reports(made, tmp_path):
    for by in ("class", "cluster"):
        out = tmp_path / by
        res = report([made["tmp"] / "main.zarr"], out, method="gradcam", by=by, metrics="dist,ssim", clusters=3,
                     control=False, **FAST)
        results = json.loads((out / "results.json").read_text())
        assert results["consistency"][0]["by"] == by
        md = md_tables((out / "report.md").read_text())
        assert md and [t["rows"] for t in md] == [t["rows"] for t in tex_tables((out / "report.tex").read_text())]
        assert sum(check_table(t, results) for t in md) > 20
        if by == "class":
            assert any(t["source"].endswith(".groups") for t in md)
        else:  # the clusters' table and montage
            assert any(t["source"].endswith(".clusters") for t in md)
            assert any(f.endswith("-clusters.png") for f in res.figures)
        for f in res.figures:
            assert Path(f).read_bytes()[:8] == PNG_SIGNATURE


def test_formatting():
    from camstat.present.text import fmt_ci, fmt_fixed, fmt_p, fmt_sig

    assert fmt_p(9.999e-5) == "< 0.0001" and fmt_p(0.00012) == "0.00012" and fmt_p(0.0496) == "0.050"
    assert fmt_p(None) == "-" and fmt_p(float("nan")) == "-" and fmt_p(1.0) == "1.0"
    assert fmt_sig(0.050698) == "0.0507" and fmt_sig(0.435) == "0.435" and fmt_sig(12.34) == "12.3"
    assert fmt_sig(0) == "0" and fmt_sig(3.2e-7) == "3.20e-07"
    assert fmt_fixed(-0.004, 2, sign=True) == "0.00" and fmt_fixed(-0.004, 3) == "-0.004"
    assert fmt_fixed(0.5, 2, sign=True) == "+0.50"
    assert fmt_ci([0.1234, 0.5]) == "[0.12, 0.50]" and fmt_ci([None, 1]) == ""
    for x in (0.0123456, 0.987654, 1234.5, 3.2e-7):
        assert abs(numbers(fmt_sig(x))[0][1] - x) <= numbers(fmt_sig(x))[0][2]


@pytest.mark.slow
def test_demo_runs_in_minutes(tmp_path, capsys):
    import time

    start = time.perf_counter()
    code = main(["demo", "--out", str(tmp_path / "demo"), "--work", str(tmp_path),
                 "--json", str(tmp_path / "demo.json")])
    seconds = time.perf_counter() - start
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'demo' / 'report.md'}" in printed
    assert printed.count("\n- ") == 3
    out = tmp_path / "demo"
    for name in ("report.md", "report.tex", "results.json", "fig-h2-learning-curves.png", "fig-h2-arms.png",
                 "fig-h1-0-gradcam-class-means.png", "fig-h1-1-gradcampp-gallery-dist.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert [d["method"] for d in res["consistency"]] == ["gradcam", "gradcam++"]
    assert res["consistency"][0]["controls"]["random_weights"] is not None
    assert res["compare"] is not None
    # the decoy makes errors whose maps look elsewhere: H1 holds on dist
    assert res["consistency"][0]["metrics"]["dist"]["finding"]["direction"] == "supported"
    assert not (tmp_path / "demo" / "store").exists() and (tmp_path / "store" / "demo" / "test.zarr").is_dir()
    assert seconds < 300, f"camstat demo took {seconds:.0f} s (must stay under 5 minutes)"


def test_consistency_of_several_methods_is_one_verdict_family(made, tmp_path, capsys):
    out = tmp_path / "h1.json"
    assert main(["consistency", str(made["tmp"] / "main.zarr"), "--method", "gradcam,gradcam++", "--metrics",
                 "dist,ssim", "--permutations", "99", "--bootstrap", "50", "--no-save", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [a["method"] for a in d["analyses"]] == ["gradcam", "gradcam++"]
    from statsmodels.stats.multitest import multipletests

    p = [a["metrics"]["dist"]["pooled"]["p_permutation"] for a in d["analyses"]]
    assert [a["verdict"]["p_adjusted"] for a in d["analyses"]] == pytest.approx(multipletests(p, method="holm")[1])
    assert all(a["verdict"]["family_size"] == 2 for a in d["analyses"])
    assert capsys.readouterr().out.count("verdict: H1 supported") == 2


def test_report_of_a_sweep_folder(made, tmp_path):
    """A sweep folder of three arms: every arm against lambda 0, tables equal to the records, seed lines and means."""
    from camstat.compare import compare_sweep
    from camstat.present.figures import arm_mean_curve

    runs, sweep = made["runs"], tmp_path / "sweep"
    for seed in (0, 1):
        shutil.copytree(runs[f"base-s{seed}"], sweep / "lambda0" / f"s{seed}")
        shutil.copytree(runs[f"reg-s{seed}"], sweep / "lambda0.5-variance" / f"s{seed}")
        train(TrainConfig(out=str(sweep / "lambda0.5-spread" / f"s{seed}"), lam=0.5, loss="spread", seed=seed,
                          **TINY))
    out = tmp_path / "out"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["compare"] is None and len(results["runs"]) == 6
    assert sorted(r["name"] for r in results["runs"])[:2] == ["lambda0.5-spread/s0", "lambda0.5-spread/s1"]
    direct = json.loads(json.dumps(compare_sweep(sweep).to_dict()))
    assert results["sweep"]["comparisons"] == direct["comparisons"]
    assert [list(c["arms"]) for c in direct["comparisons"]] == [["lambda=0.5 spread", "lambda=0"],
                                                                ["lambda=0.5 variance", "lambda=0"]]
    md = md_tables((out / "report.md").read_text())
    tex = tex_tables((out / "report.tex").read_text())
    sweep_tables = [t for t in md if t["source"].startswith("sweep.")]
    assert [t["source"] for t in sweep_tables] == ["sweep.comparisons[*].arms", "sweep.comparisons[*].paired"]
    assert [r[0] for r in sweep_tables[0]["rows"]] == ["lambda=0", "lambda=0.5 spread", "lambda=0.5 variance"]
    assert len(sweep_tables[1]["rows"]) == 2 * 5
    assert sum(check_table(t, results) for t in sweep_tables) == 3 * 6 + 10 * 6  # every cell
    for t_md, t_tex in zip(md, tex):
        assert t_md["rows"] == t_tex["rows"]
        check_table(t_md, results)
    summary = (out / "report.md").read_text().split("## Summary")[1].split("\n## ")[0]
    spread = direct["comparisons"][0]["paired"]["accuracy"]
    assert f"lambda=0.5 spread: accuracy {spread['mean_diff']:+.3f}" in summary
    assert {"fig-h2-learning-curves.png", "fig-h2-arms.png"} <= {f.name for f in out.glob("fig-*.png")}
    # the study READMEs' tables (studies/h2_tables.py) show the same numbers
    import importlib.util

    spec = importlib.util.spec_from_file_location("h2_tables", Path(__file__).parents[1] / "studies" / "h2_tables.py")
    h2_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h2_tables)
    text = h2_tables.render(results)
    c = results["sweep"]["comparisons"][0]
    acc = c["arms"]["lambda=0"]["accuracy"]
    assert f"| lambda=0 | 2 | {acc['mean']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] |" in text
    d = c["paired"]["accuracy"]
    assert (f"| lambda=0.5 spread | 2 | {d['mean_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], "
            f"p = {d['p_signflip']:.2g} |") in text
    assert "2/2^2 = 0.5; so no difference can count" in text
    # the bold line of an arm is its per-epoch mean over seeds
    base = [r for r in results["runs"] if not r["lambda"]]
    epochs, mean = arm_mean_curve(base, "accuracy")
    assert epochs == [1, 2]
    assert mean == pytest.approx([np.mean([r["records"][e - 1]["accuracy"] for r in base]) for e in epochs])
