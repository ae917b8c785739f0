"""Mutation check: does each claim of camstat have a test that fails when the claim breaks?

Each mutation below is one targeted change to the package (a file, an exact snippet that must occur there
exactly once, its replacement) and the small test selection that must fail because of it. The tool copies
the repository to a temporary directory (one copy per job), applies one mutation at a time there, runs
``python -m pytest <selection> -x -q`` with ``PYTHONPATH`` set to the copy, and restores the file. The
working tree is never touched.

First every selection runs once unmutated (a test that fails already would "kill" anything; its mutations
are reported ``BASELINE FAILS``). Output: one line per mutation (``killed`` by which test -- a run past
the timeout counts as killed --, ``SURVIVED`` or ``NOT APPLIED`` when the snippet is not found, and seconds),
then ``K/N mutants killed``; the exit code is 0 only when every mutation is killed.

    python tools/mutants.py                 # all, one job
    python tools/mutants.py --jobs 2        # two copies run side by side
    python tools/mutants.py --only gradcam-weights-abs --only resume-ignores-done-flags
    python tools/mutants.py --list          # names, files and selections; checks every snippet applies

Not part of CI: it reruns parts of the suite once per mutation (minutes). Run it after changing a test or a
claim it guards (see the README, "Mutation check").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
# What a test run needs from the repository (of studies/, the one script a test imports: the H2 tables); the
# rest (study results, stores, virtual environments) is not copied.
COPIED = ("camstat", "tests", "pyproject.toml", "studies/h2_tables.py")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutation:
    """One single-point change and the tests that must catch it."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]


def m(name: str, path: str, original: str, replacement: str, *tests: str) -> Mutation:
    return Mutation(name, path, original, replacement, tests)


T = "tests/"

MUTATIONS: tuple[Mutation, ...] = (
    # ---- the eight of issue 18 --------------------------------------------------------------------------
    m("h1-given-conf-drops-conf", "camstat/stats.py",
      "lc = logistic_test(v[ok], c[ok], strata[ok], conf[ok])",
      "lc = logistic_test(v[ok], c[ok], strata[ok])",
      T + "test_stats_confidence.py::test_h1_metric_given_confidence_uses_confidence"),
    m("analyze-passes-no-confidence", "camstat/h1/analyze.py",
      "tables.h1_tables(main_run.values, correct, g.groups, confidence, logits, g.names,",
      "tables.h1_tables(main_run.values, correct, g.groups, confidence, None, g.names,",
      T + "test_consistency.py::test_pooled_fit_given_confidence_uses_the_stored_logits"),
    m("resume-ignores-done-flags", "camstat/store.py",
      "return [k for k in self.chunks if not done[self.chunk_slice(k)].all()]",
      "return list(self.chunks)",
      T + "test_extract.py::test_a_resumed_run_processes_exactly_the_pending_chunks"),
    m("null-control-unshuffled", "camstat/nullsim.py",
      "labels = shuffle_within_class(c, cells, int(repeats), rng)",
      "labels = np.broadcast_to(c, (int(repeats), c.size))",
      T + "test_consistency.py::test_null_pipeline_rejects_near_alpha_on_null_data"),
    m("by-cluster-features-noise", "camstat/h1/groups.py",
      "found = composition.cluster(composition.store_features(store, opts.features), opts.clusters,",
      "found = composition.cluster(np.random.default_rng(0).normal(size=composition.store_features(store,"
      " opts.features).shape), opts.clusters,",
      T + "test_composition.py::test_cli_clusters_recover_the_planted_positions"),
    m("kmeans-on-noise", "camstat/composition.py",
      "    x = scaler.transform(feats)\n",
      "    x = np.random.default_rng(seed).standard_normal(feats.shape)\n",
      T + "test_composition.py::test_mask_clusters_recover_the_planted_positions"),
    m("auc-ci-upper-shifted", "camstat/stats.py",
      "ci = ((1 + dci[0]) / 2, (1 + dci[1]) / 2)",
      "ci = ((1 + dci[0]) / 2, (1 + dci[1]) / 2 + 0.05)",
      T + "test_stats_auc.py::test_auc_test_ci_equals_scipy_bootstrap_bca"),
    m("bca-bias-ignores-ties", "camstat/stats.py",
      "z0 = ndtri((np.count_nonzero(boot < theta) + np.count_nonzero(boot <= theta)) / (2 * B))",
      "z0 = ndtri(np.count_nonzero(boot < theta) / B)",
      T + "test_stats_auc.py::test_class_test_bca_with_heavy_ties_matches_scipy"),
    m("library-cam-acts-grads-swapped", "camstat/cams.py",
      "cam = obj.get_cam_image(images, module, targets, acts.cpu().numpy(), grads.cpu().numpy(), False)",
      "cam = obj.get_cam_image(images, module, targets, grads.cpu().numpy(), acts.cpu().numpy(), False)",
      T + "test_cams.py::test_library_methods_equal_pytorch_grad_cam_on_a_spatial_layer"),
    # ---- statistics and metrics -------------------------------------------------------------------------
    m("mann-whitney-orientation", "camstat/stats.py",
      'mw = scipy.stats.mannwhitneyu(x, y, alternative="two-sided")',
      'mw = scipy.stats.mannwhitneyu(y, x, alternative="two-sided")',
      T + "test_stats.py::test_class_test_matches_mannwhitneyu"),
    m("cliffs-delta-ordinal-ranks", "camstat/stats.py",
      "ranks = scipy.stats.rankdata(np.concatenate([x, y]))",
      'ranks = scipy.stats.rankdata(np.concatenate([x, y]), method="ordinal")',
      T + "test_stats.py::test_cliffs_delta_matches_pair_loop"),
    m("holm-is-bonferroni", "camstat/stats.py",
      "out[ok] = multipletests(p[ok], method=method)[1]",
      'out[ok] = multipletests(p[ok], method="bonferroni" if method == "holm" else method)[1]',
      T + "test_stats.py::test_adjust_matches_multipletests"),
    m("permutation-pooled-ranks", "camstat/stats.py",
      "r = scipy.stats.rankdata(v[idx])\n",
      "r = scipy.stats.rankdata(v)[idx]\n",
      T + "test_stats.py::test_permutation_statistic_is_pooled_within_class_delta"),
    m("within-class-auc-weights", "camstat/stats.py",
      "inv = 1.0 / (sizes.sum(axis=1) + 1)",
      "inv = np.ones(len(sizes))",
      T + "test_stats_auc.py::test_within_class_auc_is_the_pooled_delta_on_the_auc_scale"),
    m("lrt-given-conf-without-conf", "camstat/stats.py",
      "X0 = np.column_stack([np.ones(n), dummies, _confidence_design(z_logits[keep], spline_df)])",
      "X0 = np.column_stack([np.ones(n), dummies])",
      T + "test_stats_confidence.py::test_confidence_adjusted_equals_statsmodels_with_the_same_design"),
    m("dispersion-not-leave-one-out", "camstat/dispersion.py",
      "dc = (mc * qc - sc2) / ((mc - 1) ** 2 * n_pix)",
      "dc = (mc * qc - sc2) / (mc ** 2 * n_pix)",
      T + "test_stats_dispersion.py::test_dispersions_equal_a_naive_leave_one_out_loop_and_pairwise_ssim"),
    m("null-pipeline-real-labels", "camstat/nullsim.py",
      "reference_metrics(x, cls, labels[r], by_ref, q, groups)",
      "reference_metrics(x, cls, c, by_ref, q, groups)",
      T + "test_stats_nullsim.py::test_null_pipeline_reveals_the_leave_one_out_asymmetry_of_small_classes"),
    m("verdict-point-not-ci", "camstat/stats.py",
      "sig, above = bool(pa < alpha), bool(lo > 0.5)",
      "sig, above = bool(pa < alpha), bool(a > 0.5)",
      T + "test_stats_verdict.py::test_verdict_needs_adjusted_p_and_auc_ci_above_half"),
    m("loo-keeps-own-map", "camstat/metrics.py",
      "ref = s[c] - own[:, None, None] * x",
      "ref = s[c].copy()",
      T + "test_metrics.py::test_class_sums_accumulate_over_chunks_and_loo_matches_naive_loop"),
    m("ssim-k2", "camstat/metrics.py",
      "K2 = 0.03",
      "K2 = 0.01",
      T + "test_metrics.py::test_ssim_matches_skimage"),
    # ---- store ------------------------------------------------------------------------------------------
    m("done-flags-never-written", "camstat/store.py",
      'group["done"][sl] = np.ones(sl.stop - sl.start, dtype=bool)',
      'group["done"][sl] = np.zeros(sl.stop - sl.start, dtype=bool)',
      T + "test_extract.py::test_store_contents_and_api"),
    m("chunk-lock-not-taken", "camstat/store.py",
      "if self.chunks and not self._locks.lock(self.chunks.start, len(self.chunks)):",
      "if False:",
      T + "test_extract.py::test_a_second_writer_of_the_same_chunks_is_refused"),
    m("empty-shard-locks-everything", "camstat/store.py",
      "if self.chunks and not self._locks.lock(self.chunks.start, len(self.chunks)):",
      "if not self._locks.lock(self.chunks.start, len(self.chunks)):",
      T + "test_store_concurrency.py::test_an_empty_shard_says_so_and_locks_nothing"),
    m("overwrite-ignores-readers", "camstat/store.py",
      "if not self._locks.lock(0, 0):",
      "if False:",
      T + "test_store.py::test_overwrite_is_refused_while_a_derived_result_is_read"),
    m("no-checksum-codec", "camstat/integrity.py",
      "return (ZstdCodec(level=0, checksum=False), Crc32cCodec())",
      "return (ZstdCodec(level=0, checksum=False),)",
      T + "test_store.py::test_a_flipped_byte_is_named_by_verify_reads_and_consistency"),
    m("empty-chunks-skipped", "camstat/integrity.py",
      'return {"array.write_empty_chunks": True}',
      'return {"array.write_empty_chunks": False}',
      T + "test_store.py::test_chunks_of_fill_values_are_written_so_that_a_missing_one_is_damage"),
    m("derived-old-result-dropped", "camstat/derived.py",
      "            old.rename(dst)\n",
      "            shutil.rmtree(old)\n",
      T + "test_store.py::test_a_result_a_kill_left_between_the_two_renames_is_restored_by_the_next_writer"),
    m("derived-params-unchecked", "camstat/derived.py",
      "if params is not None and canonical(stored) != canonical(params):",
      "if False:",
      T + "test_store.py::test_derived_results_round_trip_and_match_parameters"),
    # ---- CAM formulas -----------------------------------------------------------------------------------
    m("gradcam-weights-abs", "camstat/cams.py",
      "return grads.mean(dim=(2, 3))",
      "return grads.abs().mean(dim=(2, 3))",
      T + "test_cams.py::test_native_equals_pytorch_grad_cam"),
    m("gradcampp-alpha-g2", "camstat/cams.py",
      "alpha = g2 / (2 * g2 + sum_acts * g3 + 1e-6)",
      "alpha = g2 / (2 * g2 + sum_acts * g2 + 1e-6)",
      T + "test_cams.py::test_native_equals_pytorch_grad_cam"),
    m("cam-without-relu", "camstat/cams.py",
      "w = self.weights(acts, grads)\n        return torch.relu((w[:, :, None, None] * acts).sum(dim=1))",
      "w = self.weights(acts, grads)\n        return (w[:, :, None, None] * acts).sum(dim=1)",
      T + "test_cams.py::test_native_equals_pytorch_grad_cam"),
    m("minmax-without-min", "camstat/cams.py",
      "m = maps - flat.min(dim=1).values[:, None, None]",
      "m = maps",
      T + "test_cams.py::test_scale_maps_modes"),
    m("shapleycam-hvp-sign", "camstat/cams.py",
      "w = (grads - 0.5 * hvp).mean(dim=(2, 3))",
      "w = (grads + 0.5 * hvp).mean(dim=(2, 3))",
      T + "test_cams.py::test_shapleycam_equals_pytorch_grad_cam_and_is_second_order"),
    m("vit-drops-last-tokens", "camstat/grids.py",
      "grid = output[:, layout.prefix :].reshape(",
      "grid = output[:, : output.shape[1] - layout.prefix].reshape(",
      T + "test_cams.py::test_tiny_vit_maps_equal_pytorch_grad_cam"),
    # ---- detection --------------------------------------------------------------------------------------
    m("detect-cam-orientation", "camstat/detection.py",
      "sign = {name: -1.0 if metrics_mod.PER_IMAGE[name].higher_is_more_consistent else 1.0",
      "sign = {name: 1.0 if metrics_mod.PER_IMAGE[name].higher_is_more_consistent else -1.0",
      T + "test_detection.py::test_planted_cam_signal_beats_and_adds_to_confidence"),
    m("aurc-tie-term-sign", "camstat/detection_stats.py",
      "group = err + (before_err - r * before_n) * (h_after - h)",
      "group = err + (before_err + r * before_n) * (h_after - h)",
      T + "test_detection.py::test_aurc_from_its_definition"),
    m("delong-ignores-covariance", "camstat/detection_stats.py",
      "var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])",
      "var = float(cov[0, 0] + cov[1, 1])",
      T + "test_detection.py::test_delong_equals_structural_components"),
    m("combined-model-in-sample", "camstat/detection.py",
      'return cross_val_predict(model, x, y, cv=split, method="predict_proba")[:, 1]',
      "return model.fit(x, y).predict_proba(x)[:, 1]",
      T + "test_detection.py::test_out_of_fold_catches_an_image_identity_leak"),
    # ---- faithfulness -----------------------------------------------------------------------------------
    m("road-morf-lerf-swapped", "camstat/road.py",
      "return diff[:, :, 0], diff[:, :, 1]",
      "return diff[:, :, 1], diff[:, :, 0]",
      T + "test_faithfulness.py::test_store_scores_equal_pytorch_grad_cam"),
    m("imputation-sign", "camstat/road.py",
      "b[eq[known]] -= weight * flat[:, nb[known]].T",
      "b[eq[known]] += weight * flat[:, nb[known]].T",
      T + "test_faithfulness.py::test_imputation_equals_pytorch_grad_cam_including_borders_and_ties"),
    # ---- training ---------------------------------------------------------------------------------------
    m("lambda-zero-runs-cam-term", "camstat/training/train.py",
      "use_cam = lam > 0  #",
      "use_cam = lam >= 0  #",
      T + "test_train.py::test_lambda_zero_is_plain_training_bit_for_bit"),
    m("sign-flip-one-sided", "camstat/seedtests.py",
      'alternative="two-sided", random_state=seed',
      'alternative="greater", random_state=seed',
      T + "test_compare.py::test_sign_flip_p_equals_exhaustive_enumeration"),
    # ---- data -------------------------------------------------------------------------------------------
    m("16bit-off-by-one", "camstat/decoding.py",
      "top = 2**depth - 1",
      "top = 2**depth",
      T + "test_decoding.py::test_16bit_png_is_scaled_by_its_full_range"),
    m("exif-orientation-ignored", "camstat/decoding.py",
      "image = ImageOps.exif_transpose(opened)",
      "image = opened",
      T + "test_decoding.py::test_exif_orientation_is_applied"),
    # ---- this session: clusters across classes, the sweep report ----------------------------------------
    m("cluster-strata-cluster-only", "camstat/h1/groups.py",
      "cells, strata = np.unique(found.labels * k + classes, return_inverse=True)",
      "cells, strata = np.unique(found.labels * k, return_inverse=True)",
      T + "test_consistency.py::test_by_cluster"),
    m("pooled-permutation-ignores-strata", "camstat/stats.py",
      "            strata=strata,\n            min_group=min_group,",
      "            strata=None,\n            min_group=min_group,",
      T + "test_consistency.py::test_by_cluster"),
    m("null-pipeline-tests-within-groups", "camstat/nullsim.py",
      "res = van_elteren_test(values[m.name], labels, cells)",
      "res = van_elteren_test(values[m.name], labels, cls)",
      T + "test_stats_nullsim.py::test_strata_finer_than_the_groups_are_those_of_the_shuffle_and_the_test"),
    m("sweep-folder-not-compared", "camstat/present/report.py",
      "    if _several_arms_and_a_baseline(runs):",
      "    if False:",
      T + "test_report.py::test_report_of_a_sweep_folder"),
    m("sweep-table-t-for-sign-flip", "camstat/present/tables.py",
      'with_ci(diff, ci), fmt_p(p.get("p_signflip")),',
      'with_ci(diff, ci), fmt_p(p.get("p_ttest")),',
      T + "test_report.py::test_report_of_a_sweep_folder"),
)


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "killed", "SURVIVED", "NOT APPLIED", "BASELINE FAILS"
    detail: str
    seconds: float


def applied(text: str, mutation: Mutation) -> str:
    """The file's text with the mutation applied; ValueError unless the snippet occurs exactly once."""
    count = text.count(mutation.original)
    if count != 1:
        raise ValueError(f"snippet found {count} times in {mutation.path}")
    return text.replace(mutation.original, mutation.replacement)


def copy_tree(root: Path, dest: Path) -> None:
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def first_failure(output: str) -> str:
    """The node id pytest names first in its short summary, else the last line of its output."""
    found = _FAILED.search(output)
    if found:
        return found.group(1)
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_tests(copy: Path, tests: tuple[str, ...], stop_at_first: bool = True,
              timeout: float = TIMEOUT_S) -> tuple[int | None, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", *tests, *(["-x"] if stop_at_first else []), "-q",
               "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s"
    return done.returncode, done.stdout + done.stderr


def judge(mutation: Mutation, copy: Path) -> Outcome:
    """Apply one mutation to the copy, run its tests, restore the file."""
    start = time.perf_counter()
    target = copy / mutation.path
    try:
        original = target.read_text()
        target.write_text(applied(original, mutation))
    except (OSError, ValueError) as err:
        return Outcome(mutation.name, "NOT APPLIED", str(err), 0.0)
    try:
        code, output = run_tests(copy, mutation.tests)
    finally:
        target.write_text(original)
    seconds = time.perf_counter() - start
    if code is None:
        return Outcome(mutation.name, "killed", output, seconds)
    if code == 1:
        return Outcome(mutation.name, "killed", f"by {first_failure(output)}", seconds)
    if code == 0:
        return Outcome(mutation.name, "SURVIVED", f"{mutation.tests} passed", seconds)
    # Exit codes 2-5: the selection did not run (collection error, bad node id); a mutation that breaks
    # imports is caught, a selection that names no test is a mistake in this file.
    return Outcome(mutation.name, "killed" if code == 2 else "SURVIVED", f"pytest exit {code}: "
                   f"{first_failure(output)}", seconds)


def check_snippets(root: Path, mutations: tuple[Mutation, ...]) -> list[str]:
    problems = []
    for mutation in mutations:
        try:
            applied((root / mutation.path).read_text(), mutation)
        except (OSError, ValueError) as err:
            problems.append(f"{mutation.name}: {err}")
    return problems


class Copies:
    """``jobs`` copies of the repository in a temporary folder, each lent to one task at a time."""

    def __init__(self, root: Path, tmp: str, jobs: int):
        self.free = []
        for job in range(jobs):
            copy = Path(tmp) / f"copy{job}"
            copy.mkdir()
            copy_tree(root, copy)
            self.free.append(copy)
        self.jobs = jobs
        self.any_copy = self.free[0]  # for looking up which test files exist
        self.lock = threading.Lock()

    def map(self, task: Callable[[Any, Path], Any], items: list) -> list:
        """``task(item, copy)`` for every item, ``jobs`` at a time, results in order."""

        def one(item):
            with self.lock:
                copy = self.free.pop()
            try:
                return task(item, copy)
            finally:
                with self.lock:
                    self.free.append(copy)

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return list(pool.map(one, items))


def report(outcome: Outcome) -> Outcome:
    print(f"{outcome.name:<32} {outcome.status:<11} {outcome.seconds:6.1f} s  {outcome.detail}", flush=True)
    return outcome


def covers(selection: str, node: str) -> bool:
    """Whether the pytest selection (a file or a test id) includes the test ``node``."""
    return node == selection or node.startswith((selection + "::", selection + "["))


def failing_baselines(copies: Copies, mutations: tuple[Mutation, ...]) -> dict[tuple[str, ...], str]:
    """The selections that fail without any mutation (their kills would mean nothing), with the failure.

    Every test of every selection runs once, unmutated, in ``jobs`` pytest processes (split by test file,
    so module fixtures are built once).
    """
    tests = sorted({test for mutation in mutations for test in mutation.tests})
    missing = {test for test in tests if not (copies.any_copy / test.split("::")[0]).is_file()}
    tests = [test for test in tests if test not in missing]
    files = sorted({test.split("::")[0] for test in tests})
    parts = [[t for t in tests if files.index(t.split("::")[0]) % copies.jobs == j] for j in range(copies.jobs)]

    def baseline(part: list[str], copy: Path) -> tuple[list[str], str]:
        if not part:
            return [], ""
        code, output = run_tests(copy, tuple(part), stop_at_first=False, timeout=3 * TIMEOUT_S)
        failed = _FAILED.findall(output)
        if code != 0 and not failed:  # collection or usage error: every selection of this part is void
            return list(part), first_failure(output)
        return failed, ""

    failed: list[str] = []
    broken = {mutation.tests: "no such test file" for mutation in mutations if set(mutation.tests) & missing}
    for nodes, whole in copies.map(baseline, parts):
        failed += nodes
        if whole:
            broken.update({mutation.tests: whole for mutation in mutations if set(mutation.tests) <= set(nodes)})
    for mutation in mutations:
        # a failing test of the selection, or a file that failed to import (ERROR tests/test_x.py)
        hit = [node for node in failed for test in mutation.tests if covers(test, node) or covers(node, test)]
        if hit and mutation.tests not in broken:
            broken[mutation.tests] = f"fails unmutated: {hit[0]}"
    return broken


def run_all(root: Path, mutations: tuple[Mutation, ...], jobs: int, baseline: bool) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="camstat-mutants-") as tmp:
        copies = Copies(root, tmp, jobs)
        start = time.perf_counter()
        broken = failing_baselines(copies, mutations) if baseline else {}
        for tests, failure in broken.items():
            print(f"baseline fails: {' '.join(tests)}: {failure}", flush=True)
        if baseline:
            print(f"baseline: every selection run unmutated ({time.perf_counter() - start:.0f} s)", flush=True)

        def one(mutation: Mutation, copy: Path) -> Outcome:
            if mutation.tests in broken:
                return report(Outcome(mutation.name, "BASELINE FAILS", broken[mutation.tests], 0.0))
            return report(judge(mutation, copy))

        return copies.map(one, list(mutations))


def selected(names: list[str] | None) -> tuple[Mutation, ...]:
    if not names:
        return MUTATIONS
    known = {mutation.name: mutation for mutation in MUTATIONS}
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"error: unknown mutation(s) {', '.join(unknown)}; --list shows the names")
    return tuple(known[name] for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and check their snippets")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run side by side (one copy each)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running each selection unmutated first (a failing one makes its kills void)")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository to copy (default: this one)")
    args = parser.parse_args(argv)
    mutations = selected(args.only)
    if args.list:
        problems = check_snippets(args.root, mutations)
        for mutation in mutations:
            print(f"{mutation.name:<32} {mutation.path:<34} {' '.join(mutation.tests)}")
        print("\n".join(problems) or f"all {len(mutations)} snippets apply")
        return 1 if problems else 0
    outcomes = run_all(args.root, mutations, max(1, args.jobs), not args.no_baseline)
    killed = sum(outcome.status == "killed" for outcome in outcomes)
    print(f"{killed}/{len(outcomes)} mutants killed")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
