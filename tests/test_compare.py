"""H2 comparison of train-reg runs (seed-level summaries and paired tests, descriptive McNemar), the digits pipeline."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from camstat import stats
from camstat.cli import main
from camstat.compare import compare_runs
from camstat.errors import CamstatError
from camstat.runs import read_records
from camstat.training.config import TrainConfig
from camstat.training.train import train

TINY = dict(model="camstat:smallcnn", data="builtin:digits", limit=256, eval_limit=60, batch_size=16, epochs=3,
            lr=0.1, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    """Two seeds of a baseline arm and of a regularised arm."""
    root = tmp_path_factory.mktemp("arms")
    base = [train(TrainConfig(out=str(root / f"base{s}"), seed=s, **TINY)).out for s in (0, 1)]
    reg = [train(TrainConfig(out=str(root / f"reg{s}"), seed=s, lam=0.3, loss="variance", **TINY)).out
           for s in (0, 1)]
    return root, base, reg


def heldout(run):
    with np.load(Path(run) / "heldout.npz") as h:
        return {k: h[k] for k in h.files}


def test_compare_runs_numbers(arms):
    from camstat import metrics

    root, base, reg = arms
    result = compare_runs(reg, base)
    d = result.to_dict()
    a, b = result.names
    assert (a, b) == ("lambda=0.3 variance", "lambda=0")
    assert set(d) >= {"arms", "paired", "mcnemar", "runs", "reference"}
    acc = {name: [float(heldout(r)["correct"].mean()) for r in runs] for name, runs in ((a, reg), (b, base))}
    for name in (a, b):
        arm = d["arms"][name]
        assert arm["seeds"] == [0, 1]
        assert set(arm) >= {"runs", "accuracy", "dist", "ssim", "entropy", "spread"}
        expected = stats.summarize(acc[name]).to_dict()
        assert arm["accuracy"]["mean"] == pytest.approx(expected["mean"])
        assert arm["accuracy"]["ci95"] == pytest.approx(expected["ci95"], nan_ok=True)
        # consistency and concentration on the images the run gets right, to its own leave-one-out class means
        runs = reg if name == a else base
        ok = [heldout(r)["correct"] for r in runs]
        assert arm["dist"]["values"] == pytest.approx([np.nanmean(heldout(r)["dist_self"][c]) for r, c in zip(runs, ok)])
        assert arm["ssim"]["values"] == pytest.approx([np.nanmean(heldout(r)["ssim_self"][c]) for r, c in zip(runs, ok)])
        assert arm["entropy"]["values"] == pytest.approx(
            [metrics.entropy(heldout(r)["maps"][c]).mean() for r, c in zip(runs, ok)])
        assert arm["spread"]["values"] == pytest.approx(
            [metrics.spread(heldout(r)["maps"][c]).mean() for r, c in zip(runs, ok)])
    paired = stats.paired_test(acc[a], acc[b]).to_dict()
    assert d["paired"]["accuracy"]["mean_diff"] == pytest.approx(paired["mean_diff"])
    assert d["paired"]["accuracy"]["ci95"] == pytest.approx(paired["ci95"])
    # two seeds: 4 sign patterns, |d1 + d2| is reached by 2 of them unless a difference is 0
    assert d["paired"]["accuracy"]["p_signflip"] in (0.5, 1.0)
    assert d["paired"]["accuracy"]["p_wilcoxon"] is None  # fewer than 6 pairs
    assert d["paired"]["difference"] == f"{a} - {b}"
    assert [p["seed"] for p in d["paired"]["pairs"]] == [0, 1]
    for row, r, s in zip(d["mcnemar"]["per_pair"], reg, base):
        expected = stats.mcnemar_exact(heldout(r)["correct"], heldout(s)["correct"]).to_dict()
        assert {k: row[k] for k in ("b", "c", "p_value")} == pytest.approx(expected)
    assert d["mcnemar"]["descriptive"] is True and d["mcnemar"]["pooled"] is None
    for name, runs in ((a, reg), (b, base)):  # the run-to-run scale: the same statistic within an arm
        (row,) = d["mcnemar"]["within_arm"][name]
        expected = stats.mcnemar_exact(heldout(runs[0])["correct"], heldout(runs[1])["correct"]).to_dict()
        assert (row["seed_a"], row["seed_b"]) == (0, 1)
        assert {k: row[k] for k in ("b", "c", "p_value")} == pytest.approx(expected)


def test_pairs_by_seed_not_by_position(arms):
    root, base, reg = arms
    one = compare_runs(reg, base).to_dict()
    two = compare_runs(reg[::-1], base).to_dict()
    assert [p["seed"] for p in two["paired"]["pairs"]] == [1, 0]
    assert two["paired"]["accuracy"]["mean_diff"] == pytest.approx(one["paired"]["accuracy"]["mean_diff"])
    lone = compare_runs(reg[:1], base).to_dict()
    assert [p["seed"] for p in lone["paired"]["pairs"]] == [0] and lone["mcnemar"]["pooled"] is None
    assert lone["unpaired_seeds"] == [1]


def test_compare_cli_json_and_table(arms, tmp_path, capsys):
    root, base, reg = arms
    path = tmp_path / "cmp.json"
    assert main(["compare", *reg, "--vs", *base, "--names", "reg,base", "--json", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "McNemar" in shown and "descriptive" in shown and "accuracy" in shown
    d = json.loads(path.read_text())
    assert list(d["arms"]) == ["reg", "base"]
    assert d["runs"] == [*reg, *base]
    # repeated --vs works as well
    assert main(["compare", reg[0], "--vs", base[0], "--vs", base[1], "--json", str(path)]) == 0
    assert json.loads(path.read_text())["arms"]["lambda=0"]["runs"] == base


def test_compare_with_a_means_store(arms):
    from camstat.extract import extract

    root, base, reg = arms
    store = root / "base0_train.zarr"
    if not store.exists():
        extract("camstat:smallcnn", "builtin:digits", store, split="train", checkpoint=str(Path(base[0]) / "model.pt"),
                methods="gradcam", limit=TINY["limit"], device="cpu")
    d = compare_runs(reg, base, means=store).to_dict()
    assert d["reference"] == str(store)
    # the baseline recorded its dist against its own means; against the store's they differ
    own = compare_runs(reg, base).to_dict()
    assert d["arms"]["lambda=0"]["dist"]["values"] != own["arms"]["lambda=0"]["dist"]["values"]
    assert all(0 <= v <= 1 for v in d["arms"]["lambda=0"]["ssim"]["values"])


def test_compare_refusals(arms, tmp_path, capsys):
    root, base, reg = arms
    unfinished = tmp_path / "unfinished"
    shutil.copytree(reg[0], unfinished)
    info = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**info, "status": "running"}))
    cases = [
        ([str(unfinished), "--vs", base[0]], "not complete"),
        ([reg[0], reg[0], "--vs", base[0]], "seed"),
        ([reg[0], "--vs", str(tmp_path / "nothing")], "no run.json"),
        ([*reg, base[0]], "--vs"),
        ([*reg, "--vs", *base, "--names", "x"], "names"),
    ]
    for args, match in cases:
        assert main(["compare", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and match in err, err
    other = train(TrainConfig(out=str(tmp_path / "other"), seed=0, **{**TINY, "eval_limit": 50, "epochs": 1})).out
    with pytest.raises(CamstatError, match="held-out images"):
        compare_runs([other], base[:1])


@pytest.mark.slow
def test_digits_end_to_end(tmp_path, capsys):
    """Baseline (lambda 0) -> extract --split train -> train-reg --lambda 0.2 --means -> compare, on CPU."""
    start = time.perf_counter()
    common = ["--model", "camstat:smallcnn", "--data", "builtin:digits", "--epochs", "6", "--batch-size", "32",
              "--lr", "0.1", "--device", "cpu"]
    for seed in (0, 1):
        assert main(["train-reg", *common, "--lambda", "0", "--seed", str(seed),
                     "--out", str(tmp_path / f"base{seed}")]) == 0
    store = tmp_path / "base0_train.zarr"
    assert main(["extract", "--model", "camstat:smallcnn", "--checkpoint", str(tmp_path / "base0" / "model.pt"), "--data", "builtin:digits",
                 "--split", "train", "--methods", "gradcam", "--store", str(store), "--device", "cpu"]) == 0
    for seed in (0, 1):
        assert main(["train-reg", *common, "--lambda", "0.2", "--means", str(store), "--seed", str(seed),
                     "--out", str(tmp_path / f"reg{seed}")]) == 0
    path = tmp_path / "compare.json"
    assert main(["compare", str(tmp_path / "reg0"), str(tmp_path / "reg1"), "--vs", str(tmp_path / "base0"),
                 str(tmp_path / "base1"), "--json", str(path)]) == 0
    seconds = time.perf_counter() - start
    d = json.loads(path.read_text())
    base_acc = d["arms"]["lambda=0"]["accuracy"]["mean"]
    reg_acc = d["arms"]["lambda=0.2 mean"]["accuracy"]["mean"]
    trajectories = [[r["loss_cam"] for r in read_records(tmp_path / f"reg{s}")] for s in (0, 1)]
    capsys.readouterr()
    with capsys.disabled():
        print(f"\ndigits end to end in {seconds:.1f}s: accuracy lambda=0 {base_acc:.3f}, lambda=0.2 {reg_acc:.3f};"
              f" loss_cam per epoch {[[round(v, 4) for v in t] for t in trajectories]}")
    assert base_acc > 0.8 and reg_acc > 0.8
    for t in trajectories:
        assert t[-1] < t[0]
    assert len(d["mcnemar"]["per_pair"]) == 2
    assert seconds < 120


# -- the seed-level statistics -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(arms, tmp_path_factory):
    """Copies of the four runs, each with its test split extracted to RUN/test.zarr and scored by faithfulness."""
    from camstat.extract import extract
    from camstat.faithfulness import faithfulness

    _, base, reg = arms
    root = tmp_path_factory.mktemp("scored")
    copies = {}
    for run in [*reg, *base]:
        copy = root / Path(run).name
        shutil.copytree(run, copy)
        extract("camstat:smallcnn", "builtin:digits", copy / "test.zarr", split="test",
                checkpoint=str(copy / "model.pt"), methods="gradcam", limit=24, device="cpu")
        faithfulness(copy / "test.zarr", limit=10, percentiles="30,70", n_boot=200, device="cpu")
        copies[run] = str(copy)
    return [copies[r] for r in reg], [copies[r] for r in base]


def test_compare_shows_faithfulness_of_scored_test_stores(scored, tmp_path, capsys):
    from camstat.faithfulness import saved_result
    from camstat.seedtests import compare_seeds

    reg, base = scored
    d = compare_runs(reg, base, names=["reg", "base"]).to_dict()
    assert d["families"]["faithfulness"] == ["road_combined", "road_vs_random", "road_vs_class_mean"]
    assert d["faithfulness"]["unscored"] == [] and d["faithfulness"]["settings"]["n"] == 10
    values = {}
    for name, runs in (("reg", reg), ("base", base)):
        saved = [saved_result(Path(r) / "test.zarr")["methods"]["gradcam"] for r in runs]
        values[name] = {"road_combined": [s["road_combined_mean"] for s in saved],
                        "road_vs_random": [s["versus"]["random"]["delta"] for s in saved],
                        "road_vs_class_mean": [s["versus"]["class_mean"]["delta"] for s in saved]}
        for m, v in values[name].items():
            assert d["arms"][name][m]["values"] == pytest.approx(v)
            assert d["arms"][name][m]["mean"] == pytest.approx(np.mean(v))
    for m in values["reg"]:  # paired by seed, the seed as the unit (both arms hold seeds 0 and 1 in order)
        expected = compare_seeds(values["reg"][m], values["base"][m]).to_dict()
        assert d["paired"][m]["mean_diff"] == pytest.approx(expected["mean_diff"])
        assert d["paired"][m]["p_signflip"] == pytest.approx(expected["p_signflip"])
    path = tmp_path / "cmp.json"
    assert main(["compare", *reg, "--vs", *base, "--json", str(path)]) == 0
    assert "faithfulness of each run's --cam maps" in capsys.readouterr().out
    assert json.loads(path.read_text())["faithfulness"]["values"][reg[0]]["road_combined"] == pytest.approx(
        values["reg"]["road_combined"][0])


def test_report_shows_faithfulness_per_arm_and_paired(scored, tmp_path):
    from camstat.present.report import report
    from camstat.present.text import fmt_sig

    reg, base = scored
    out = tmp_path / "r"
    report(reg, out, vs=base, names=["reg", "base"])
    c = json.loads((out / "results.json").read_text())["compare"]
    lines = (out / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| arm |"))
    assert header.endswith("| ROAD combined | ROAD vs random | ROAD vs class mean |")
    columns = [x.strip() for x in header.strip("|").split("|")]
    assert columns[:7] == ["arm", "runs", "accuracy", "dist", "ssim", "entropy", "spread"]
    for name in ("reg", "base"):
        cells = [x.strip() for x in next(line for line in lines if line.startswith(f"| {name} |")).strip("|").split("|")]
        for cell, m in zip(cells[7:], ("road_combined", "road_vs_random", "road_vs_class_mean")):
            assert cell.startswith(f"{fmt_sig(c['arms'][name][m]['mean'])} ± "), (cell, m)
    row = next(line for line in lines if line.startswith("| road_vs_random |"))
    assert fmt_sig(c["paired"]["road_vs_random"]["mean_diff"]) in row


def test_compare_faithfulness_unscored_stale_and_mixed_stores(scored, arms, tmp_path, capsys):
    from camstat.faithfulness import faithfulness

    reg, base = scored
    # without scored stores: no faithfulness at all
    assert compare_runs(arms[2], arms[1]).to_dict()["faithfulness"] is None
    # one run without its store: left out (NaN), and named
    bare = tmp_path / "bare"
    shutil.copytree(base[1], bare, ignore=shutil.ignore_patterns("test.zarr"))
    d = compare_runs(reg, [base[0], str(bare)]).to_dict()
    assert d["faithfulness"]["unscored"] == [str(bare)]
    assert d["arms"]["lambda=0"]["road_combined"]["n"] == 1 and d["paired"]["road_combined"]["n"] == 1
    assert main(["compare", *reg, "--vs", base[0], str(bare)]) == 0
    assert f"left out of the faithfulness numbers: {bare}" in capsys.readouterr().out.replace("\n", "")
    # a store of another checkpoint (copied from another run) is refused
    stale = tmp_path / "stale"
    shutil.copytree(base[1], stale, ignore=shutil.ignore_patterns("test.zarr"))
    shutil.copytree(Path(base[0]) / "test.zarr", stale / "test.zarr")
    assert main(["compare", *reg, "--vs", base[0], str(stale)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "another checkpoint" in err and len(err.strip().splitlines()) == 1
    # stores scored with other options are not comparable
    other = tmp_path / "other"
    shutil.copytree(base[1], other)
    faithfulness(other / "test.zarr", limit=10, percentiles="50", n_boot=200, device="cpu")
    with pytest.raises(CamstatError, match="different options"):
        compare_runs(reg, [base[0], str(other)])


def enumerate_sign_flips(d: np.ndarray) -> float:
    """Two-sided p by listing every sign pattern: #{s : |sum s_i d_i| >= |sum d_i|} / 2^n."""
    import itertools

    observed = abs(d.sum())
    sums = [abs(np.dot(s, d)) for s in itertools.product((-1.0, 1.0), repeat=len(d))]
    return float(np.mean(np.asarray(sums) >= observed - 1e-12 * max(1.0, np.abs(d).sum())))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 9, 12])
def test_sign_flip_p_equals_exhaustive_enumeration(n):
    from camstat.seedtests import sign_flip_test

    rng = np.random.default_rng(n)
    cases = [rng.normal(0.3, 1.0, n), rng.normal(0, 1, n), np.round(rng.normal(0, 1, n), 1),  # ties in |d|
             np.r_[np.zeros(n - 1), 0.5] if n > 1 else np.array([0.5])]
    for d in cases:
        res = sign_flip_test(d)
        assert res.exact and res.n == n
        assert res.p_value == pytest.approx(enumerate_sign_flips(d), abs=1e-12), d
    assert sign_flip_test(np.full(6, 0.01)).p_value == pytest.approx(2 / 2**6)  # the smallest p with 6 seeds


def test_sign_flip_false_positive_rate_under_the_null():
    """10 seed pairs, differences symmetric about 0 but heavy-tailed and of unequal spread per seed.

    600 replicates (seeded): the SD of the FPR estimate is ~0.009 at 0.05 and ~0.012 at 0.10, so an FPR of 0.10
    would fall outside [0.03, 0.07] with probability > 0.99.
    """
    from camstat.seedtests import sign_flip_test

    rng = np.random.default_rng(2026)
    scales = np.linspace(0.5, 2.0, 10)
    d = rng.standard_t(3, size=(600, 10)) * scales
    fpr = np.mean([sign_flip_test(row).p_value <= 0.05 for row in d])
    assert 0.03 <= fpr <= 0.07, fpr
    # and it has power: a shift of about one average SD is found most of the time
    power = np.mean([sign_flip_test(row + 2.0).p_value <= 0.05 for row in d[:150]])
    assert power > 0.5, power


def test_t_intervals_equal_scipy():
    import scipy.stats

    from camstat.seedtests import compare_seeds

    rng = np.random.default_rng(7)
    a, b = rng.normal(0.8, 0.02, 7), rng.normal(0.79, 0.02, 7)
    s = stats.summarize(a)
    lo, hi = scipy.stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=scipy.stats.sem(a))
    assert s.ci95 == pytest.approx((lo, hi), rel=1e-12)
    c = compare_seeds(a, b)
    ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    assert c.ci95 == pytest.approx((ci.low, ci.high), rel=1e-12)
    d = a - b
    assert c.ci95 == pytest.approx(scipy.stats.t.interval(0.95, 6, loc=d.mean(), scale=scipy.stats.sem(d)), rel=1e-12)
    assert c.p_wilcoxon == pytest.approx(scipy.stats.wilcoxon(a, b).pvalue)  # 7 pairs: Wilcoxon is given
    assert c.p_signflip == pytest.approx(enumerate_sign_flips(d))
    assert compare_seeds(a[:5], b[:5]).p_wilcoxon is None  # under 6 pairs it cannot reach 0.05
