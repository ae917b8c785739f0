"""``camstat report``: a significance report from stores and training runs (SPEC 6).

``report([STORE | RUN, ...], out)`` writes into ``out``:

- ``results.json`` -- ``consistency``: for each analysed (store, method) the
  very dict ``camstat consistency --json`` gives (:func:`camstat.h1.analyze`);
  ``runs``: each training run's options and per-epoch records (``metrics.jsonl``);
  ``compare``: the dict ``camstat compare --json`` gives
  (:func:`camstat.compare.compare_runs`) of two arms; ``sweep``: the dict
  ``camstat compare runs/NAME --json`` gives, every arm against the lambda-0
  arm, for runs of more than two configurations (a ``camstat sweep``
  folder); ``detection``: with ``reference``,
  for each (store, method) the dict ``camstat detect-errors --json`` gives
  (:func:`camstat.detection.detect_errors`, the reference as class means);
  ``faithfulness``: for each store scored by ``camstat faithfulness``, its
  saved result (:func:`camstat.faithfulness.saved_result`); ``provenance``:
  stores (content hashes), checkpoints (SHA-256), versions and command lines.
- ``report.md`` -- verdicts, tables, figures and provenance, for reading.
- ``report.tex`` -- the same tables as booktabs ``table`` environments, to
  ``\\input`` into a thesis (needs ``\\usepackage{booktabs}``).
- ``fig-*.png`` -- class-mean maps over a representative image, galleries of
  the most and least consistent images, metric distributions correct vs
  incorrect per class, ROC curves; for runs learning curves and the arm
  comparison (:mod:`camstat.present.figures`); error-detection ROC and
  risk-coverage curves with the softmax baselines drawn
  (:mod:`camstat.present.detection`); ROAD MoRF/LeRF curves with the random
  and class-mean baselines drawn (:mod:`camstat.present.faithfulness`).

No statistic is computed here: every number in a table, sentence or figure
annotation is read from ``results.json``'s records (or is a count over
them, e.g. "significant in 5/6 classes"). Each table is built once, as
rows of already formatted cells (:class:`Table`), by one function per
table; Markdown and LaTeX only lay the same cells out. Each table carries
the JSON path of the records it shows (an HTML comment in Markdown, a
``%`` comment in LaTeX), so a reader -- or a test -- can check any cell.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from camstat.errors import CamstatError
from camstat.h1.controls import random_mismatch
from camstat.present.document import compose
from camstat.records import jsonable

REPORT_SCHEMA = 1

# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


def _is_run(path: Path) -> bool:
    return (path / "run.json").is_file()


def classify_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(stores, runs) among the inputs (a ``camstat sweep`` folder gives its runs); anything else is an error."""
    from camstat.runs import find_runs
    from camstat.store import is_store

    stores, runs = [], []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise CamstatError(f"{path} does not exist; give camstat stores (STORE.zarr) or train-reg run directories")
        if is_store(path):
            stores.append(path)
        elif _is_run(path):
            runs.append(path)
        elif find_runs(path):
            runs += find_runs(path)
        else:
            raise CamstatError(f"{path} is neither a camstat store nor a train-reg run directory (no run.json)")
    return stores, runs


def _read_run(path: Path) -> dict:
    from camstat.runs import read_records

    try:
        info = json.loads((path / "run.json").read_text())
    except ValueError:
        raise CamstatError(f"{path}/run.json is not valid JSON") from None
    records = read_records(path)
    resolved = info.get("resolved", {})
    return {
        "name": path.name,
        "path": str(path),
        "status": info.get("status"),
        "model": resolved.get("model"),
        "data": resolved.get("data"),
        "lambda": info.get("lambda"),
        "loss": info.get("loss"),
        "cam": info.get("cam"),
        "schedule": info.get("schedule"),
        "seed": info.get("seed"),
        "reference": resolved.get("reference"),
        "means": resolved.get("means") or info.get("options", {}).get("means"),
        "records": records,
        "final": records[-1] if records else None,
    }


def _read_runs(paths: list[Path]) -> list[dict]:
    """Every run's record; runs of a sweep (``OUT/<arm>/s<seed>``, names alike) are named ``arm/seed``."""
    infos = [_read_run(p) for p in paths]
    if len({r["name"] for r in infos}) < len(infos):
        for r, p in zip(infos, paths):
            r["name"] = f"{p.parent.name}/{p.name}"
    return infos


def split_arms(runs: list[Path]) -> tuple[list[Path], list[Path]] | None:
    """Two arms from runs of exactly two configurations: (regularised / larger lambda, the other)."""
    from camstat.runs import arm_key, read_info

    run_keys = [arm_key(read_info(p)) for p in runs]
    keys = sorted(set(run_keys), key=lambda k: (-k[0], k[1:]))
    if len(keys) != 2:
        return None
    a = [p for p, k in zip(runs, run_keys) if k == keys[0]]
    b = [p for p, k in zip(runs, run_keys) if k == keys[1]]
    return a, b


# --------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------


def _store_provenance(store) -> dict:
    a = store.attrs
    return {**store.identity(), "content_sha256": store.fingerprint(), "methods": a.get("methods"),
            "layers": a.get("layers"), "command": a.get("command"), "versions": a.get("versions")}


def _run_provenance(path: Path) -> dict:
    info = json.loads((path / "run.json").read_text())
    return {"path": str(path), "checkpoint_sha256": info.get("checkpoint_sha256"), "status": info.get("status"),
            "created": info.get("created"), "finished": info.get("finished"), "command": info.get("command"),
            "device": info.get("device"), "world_size": info.get("world_size"), "versions": info.get("versions")}


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------


@dataclass
class ReportResult:
    """What :func:`report` wrote; ``to_dict()`` is ``camstat report --json``."""

    out: str
    files: list[str]
    figures: list[str]
    results: dict = field(repr=False)
    summary: list[str]
    seconds: float

    @property
    def report_md(self) -> str:
        return str(Path(self.out) / "report.md")

    def to_dict(self) -> dict:
        return {"out": self.out, "report": self.report_md, "files": self.files, "figures": self.figures,
                "summary": self.summary, "seconds": self.seconds}


@dataclass
class _Analysis:
    """One analysed (store, method): the result dict plus what the figures need."""

    index: int
    store: Any
    result: Any  # ConsistencyResult
    d: dict

    @property
    def slug(self) -> str:
        return f"h1-{self.index}-{re.sub(r'[^A-Za-z0-9]+', '', self.d['method'].replace('+', 'p'))}"


def _parse_methods(method: str | Sequence[str] | None, store) -> list[str]:
    if method is None:
        return store.methods
    names = [m.strip() for m in (method.split(",") if isinstance(method, str) else method) if m.strip()]
    missing = [m for m in names if m not in store.methods]
    if missing:
        raise CamstatError(f"store {store.path} has no method {missing[0]!r}; it holds {', '.join(store.methods)}")
    return names


def _control_name(control: bool | str | None) -> str | None:
    if control in (None, False, "none", ""):
        return None
    if control in (True, "permuted"):
        return "permuted"
    raise CamstatError(f"invalid --control {control!r}; choose permuted or none")


def report(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    vs: Sequence[str | Path] | None = None,
    method: str | Sequence[str] | None = None,
    layer: str | None = None,
    target: str = "pred",
    by: str = "correct",
    metrics: str | Sequence[str] | None = None,
    class_of: str = "pred",
    reference: str | Path | None = None,
    correction: str = "holm",
    permutations: int = 10000,
    n_boot: int = 2000,
    min_group: int = 5,
    seed: int = 0,
    control: bool | str | None = True, null_repeats: int = 200,  # the null pipeline's repeats
    random_store: str | Path | None = None,
    clusters: int | str = 8, features: str = "thumbnail", within_class: bool = False,  # --by cluster
    pair_sample: int = 500,
    size: int | None = None,
    q: float = 0.2,
    names: Sequence[str] | None = None,
    means: str | Path | None = None,
    primary: str | None = None,
    gallery: int = 8,
    title: str | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Analyse stores (H1) and runs (H2) and write the report into ``out``.

    ``inputs``: stores (each analysed with :func:`camstat.h1.analyze`
    for every method in ``method``, default all the store's methods, at
    ``layer``, default its first) and train-reg run directories or a ``camstat sweep`` folder (its
    runs) (learning curves; with ``vs`` -- arm B's runs -- or runs of exactly two
    configurations, :func:`camstat.compare.compare_runs` of the two arms,
    arm A minus arm B; runs of more than two configurations with a lambda-0 arm:
    :func:`camstat.compare.compare_with_baseline`, every arm minus lambda 0). ``reference``: the class means of the H1 analyses
    and, as for ``detect-errors`` (the same model's train-split store), of
    the error-detection section. A store scored by ``camstat faithfulness``
    gets a faithfulness section. ``random_store`` is the randomised-weights control,
    used for every store it matches (same model, data, split and images).
    ``primary``: the metric deciding the H1 verdict (default ``dist``; Holm across the report's analyses) and
    sorting the galleries. ``command``: the command line recorded (default: this process's).
    ``progress(message)`` is called at each step. Old ``fig-*.png`` in ``out`` are replaced.
    """
    start, say = time.perf_counter(), progress or (lambda msg: None)
    if gallery < 1:
        raise CamstatError(f"--gallery must be at least 1, got {gallery}")
    stores, runs, vs_runs = _inputs(inputs, vs)
    control_name = _control_name(control)
    h1_options = dict(layer=layer, target=target, by=by, metrics=metrics, class_of=class_of, reference=reference,
                      correction=correction, permutations=permutations, n_boot=n_boot, min_group=min_group, seed=seed,
                      control=control_name if by != "class" else None, null_repeats=null_repeats, clusters=clusters,
                      features=features, within_class=within_class, pair_sample=pair_sample, size=size, q=q,
                      primary=primary)
    analyses, opened, rnd = _analyses(stores, method, random_store, h1_options, say)
    detections = _detections(opened, method, layer, reference, seed, n_boot, say) if reference is not None else []
    results: dict[str, Any] = {"camstat_report": REPORT_SCHEMA, "consistency": [an.d for an in analyses],
                               "detection": [r.to_dict() for r in detections], "faithfulness": _scored(opened, layer),
                               "runs": _read_runs([*runs, *vs_runs]), "compare": None, "sweep": None}
    results.update(_compare(runs, vs_runs, names, means, say))
    options = _options(method, h1_options, random_store, vs_runs, means)
    results["provenance"] = _provenance(options, command, opened, rnd, [*runs, *vs_runs])
    results = _jsonable(results)
    out = Path(out)
    figs = _figures(out, analyses, detections, results, primary=primary, gallery=gallery, seed=seed, say=say)
    say("writing report.md, report.tex, results.json")
    md, tex, summary = compose(results, analyses, figs, title=title)
    for name, text in (("results.json", json.dumps(results, indent=1) + "\n"), ("report.md", md), ("report.tex", tex)):
        (out / name).write_text(text)
    fig_files = [str(out / f) for _, f, _ in figs]
    return ReportResult(out=str(out), files=[str(out / n) for n in ("report.md", "report.tex", "results.json")]
                        + fig_files, figures=fig_files, results=results, summary=summary,
                        seconds=time.perf_counter() - start)


def _inputs(inputs: Sequence[str | Path], vs: Sequence[str | Path] | None) -> tuple[list, list, list]:
    """(stores, runs, arm B's runs) of the command line, checked."""
    if not inputs:
        raise CamstatError("report needs at least one store or run directory")
    stores, runs = classify_inputs(inputs)
    vs_runs: list[Path] = []
    if vs:
        extra_stores, vs_runs = classify_inputs(vs)
        if extra_stores:
            raise CamstatError(f"--vs takes run directories, not stores ({extra_stores[0]})")
        if not runs:
            raise CamstatError("--vs needs runs before it: camstat report RUN... --vs RUN...")
    return stores, runs, vs_runs


def _analyses(stores: list[Path], method, random_store, h1_options: dict,
              say: Callable[[str], None]) -> tuple[list[_Analysis], list, Any]:
    """The H1 analysis of every (store, method), with one verdict family over all of them (the primary
    metric's p Holm-adjusted across the report's analyses); everything is checked before the long work."""
    from camstat.h1 import analyze
    from camstat.h1.verdicts import primary_verdicts
    from camstat.store import open_store

    opened = [open_store(p) for p in stores]
    plan = [(s, _parse_methods(method, s)) for s in opened]
    rnd = open_store(random_store) if random_store is not None else None
    matches = [rnd is not None and not random_mismatch(rnd, s) for s in opened]
    if rnd is not None and not any(matches):
        raise CamstatError(f"--random-store {random_store} matches none of the stores (same --model, --data, --split "
                           "and images, no checkpoint); extract it like the analysed store, without --checkpoint")
    analyses: list[_Analysis] = []
    for (s, methods), match in zip(plan, matches):
        for m in methods:
            say(f"H1 analysis of {s.path} ({m})")
            res = analyze(s, method=m, random_store=rnd if match else None, **h1_options)
            analyses.append(_Analysis(len(analyses), s, res, res.to_dict()))
    primary_verdicts([an.d for an in analyses], correction=h1_options["correction"])
    return analyses, opened, rnd


def _compare(runs: list[Path], vs_runs: list[Path], names, means, say: Callable[[str], None]) -> dict:
    """``compare``: the runs' two arms (``--vs``, or runs of exactly two configurations) compared; or ``sweep``:
    runs of more than two configurations, one of them lambda 0, every other arm compared with it."""
    from camstat.compare import compare_runs, compare_with_baseline

    arms = (runs, vs_runs) if vs_runs else split_arms(runs) if len(runs) >= 2 else None
    if arms is not None:
        say("comparing arms")
        return {"compare": compare_runs(arms[0], arms[1], names=names, means=means).to_dict()}
    if _several_arms_and_a_baseline(runs):
        say("comparing every arm with the lambda-0 arm")
        return {"sweep": compare_with_baseline(runs, means=means).to_dict()}
    return {}


def _several_arms_and_a_baseline(runs: list[Path]) -> bool:
    """More than two configurations, one of them lambda 0."""
    from camstat.runs import arm_key, read_info

    keys = {arm_key(read_info(p)) for p in runs}
    return len(keys) > 2 and any(k[0] == 0 for k in keys)


def _options(method, h1_options: dict, random_store, vs_runs: list[Path], means) -> dict:
    """The report's options as recorded in its provenance."""
    reference = h1_options["reference"]
    return {"method": method if method is None or isinstance(method, str) else list(method),
            **{k: v for k, v in h1_options.items() if k != "reference"},
            "reference": str(reference) if reference else None,
            "random_store": str(random_store) if random_store else None,
            "vs": [str(p) for p in vs_runs], "means": str(means) if means else None}


def _detections(stores: list, method, layer: str | None, reference: str | Path, seed: int, n_boot: int,
                say: Callable[[str], None]) -> list:
    """``detect-errors`` of every (store, method) against ``reference`` (the report's ``--reference``)."""
    from camstat.detection import detect_errors

    found = []
    for s in stores:
        for m in _parse_methods(method, s):
            say(f"detecting errors in {s.path} ({m})")
            found.append(detect_errors(s, reference, method=m, layer=layer, seed=seed, n_boot=n_boot))
    return found


def _scored(stores: list, layer: str | None) -> list[dict]:
    """The saved ``camstat faithfulness`` result of every store that has been scored."""
    from camstat.faithfulness import saved_result

    return [d for d in (saved_result(s, layer) for s in stores) if d is not None]


def _section_figures(out: Path, detections: list, scored: list[dict]) -> list[tuple[str, str, str]]:
    """ROC and risk-coverage figures of each detection result, MoRF/LeRF curves of each scored store."""
    from camstat.present import detection, faithfulness

    figs = []
    for i, r in enumerate(detections):
        figs += detection.figures(r, out, detection.slug(i, r.to_dict()))
    for i, d in enumerate(scored):
        figs.append(faithfulness.curves_figure(d, out, name=f"fig-faithfulness-{i}.png", section=f"faithfulness-{i}"))
    return figs


def _provenance(options: dict, command: str | None, stores: list, rnd, runs: list[Path]) -> dict:
    from camstat.provenance import command_line, now, versions

    return {"created": now(), "command": command or command_line(), "versions": versions(), "options": options,
            "stores": [_store_provenance(s) for s in stores],
            "random_store": _store_provenance(rnd) if rnd is not None else None,
            "runs": [_run_provenance(p) for p in runs]}


def _figures(out: Path, analyses: list[_Analysis], detections: list, results: dict, *, primary: str | None,
             gallery: int, seed: int, say: Callable[[str], None]) -> list[tuple[str, str, str]]:
    """Every figure, as (section key, file, caption); those of an earlier report in ``out`` go first."""
    from camstat.present import figures

    say("figures")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("fig-*.png"):
        stale.unlink()
    figs: list[tuple[str, str, str]] = []
    for an in analyses:
        figs += figures.analysis_figures(an, out, primary=primary, gallery=gallery, seed=seed)
    if results["runs"]:
        figs += figures.run_figures(results["runs"], results["compare"], out, sweep=results["sweep"])
    return figs + _section_figures(out, detections, results["faithfulness"])


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON (NaN -> None) so results.json and the in-memory dict are one and the same."""
    return json.loads(json.dumps(jsonable(obj)))
