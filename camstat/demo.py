"""``camstat demo``: the whole pipeline on built-in data, on the CPU, in a few minutes.

The data is ``builtin:shapes`` with a *decoy*: in 60 % of the training
images a small patch in the corner farthest from the object carries a colour
that encodes the class; in the test images the patch occurs just as often
but its colour is random. A model that learns the shortcut looks at the
corner instead of the object and errs -- a known, visible way of "attending
to the wrong place", which is what H1 is about. The steps, with fixed seeds:

1. train ``camstat:smallcnn`` with lambda 0 (the baseline);
2. extract Grad-CAM and Grad-CAM++ of the held-out (test) images, and of the
   same images through the same architecture with random weights (the
   Adebayo et al. 2018 control);
3. extract the baseline's Grad-CAMs of the training split: their
   per-class means of correctly classified images are the H2 targets;
4. train a regularised model (``L = L_cls + lambda * L_cam`` towards those
   means), same seed, same data order;
5. :func:`camstat.present.report.report`: the H1 analysis of the baseline's test
   store for both methods with the null-pipeline and random-weights
   controls, learning curves and the comparison regularised vs baseline.

Stores go to ``WORK/store/demo/`` and runs to ``WORK/runs/demo/`` (both
ignored by git), the report to ``out`` (``studies/demo`` by default).
Library functions are called directly, no subprocesses.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from camstat.present.text import fmt_ci, fmt_fixed, fmt_sig, method_name, p_phrase, summary_roles, verdict_headline


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run. ``n`` images per split; ``heldout`` of the test split are analysed."""

    n: int = 1200
    heldout: int = 600
    decoy: float = 0.6
    epochs: int = 6
    batch_size: int = 64
    lam: float = 2.0
    permutations: int = 10000
    n_boot: int = 2000
    seed: int = 0
    model: str = "camstat:smallcnn"

    @property
    def data(self) -> str:
        return f"builtin:shapes?n={self.n}&decoy={self.decoy:g}"


FULL = DemoConfig()
FAST = DemoConfig(n=240, heldout=120, epochs=2, batch_size=32, permutations=500, n_boot=200)


@dataclass
class DemoResult:
    out: str
    report: str
    summary: list[str]
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def demo(
    out: str | Path = "studies/demo",
    *,
    fast: bool = False,
    work: str | Path = ".",
    device: str = "cpu",
    config: DemoConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo; returns where the report is and a three-line summary."""
    from camstat.extract import extract
    from camstat.present.report import report
    from camstat.training.config import TrainConfig
    from camstat.training.train import train

    cfg = config or (FAST if fast else FULL)
    say = progress or (lambda msg: None)
    work = Path(work)
    stores, runs = work / "store" / "demo", work / "runs" / "demo"
    stores.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    start = time.perf_counter()

    def step(name: str, fn: Callable, *args, **kwargs):
        say(f"{name} ...")
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        steps[name] = round(time.perf_counter() - t, 1)
        return value

    common = dict(model=cfg.model, data=cfg.data, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  eval_limit=cfg.heldout, seed=cfg.seed, device=device, overwrite=True)
    base, reg = runs / "base", runs / "reg"
    step("train the baseline (lambda 0)", train, TrainConfig(out=str(base), lam=0.0, **common))
    extract_kw = dict(device=device, mode="overwrite", seed=cfg.seed)
    step("extract Grad-CAM and Grad-CAM++ of the held-out images", extract, cfg.model, cfg.data, stores / "test.zarr",
         split="test", checkpoint=str(base / "model.pt"), methods="gradcam,gradcam++", limit=cfg.heldout,
         **extract_kw)
    # the randomised-weights control: same architecture and images, seeded random init, same normalisation
    step("extract the random-weights control", extract, cfg.model, cfg.data, stores / "random.zarr", split="test",
         methods="gradcam,gradcam++", limit=cfg.heldout, normalize="imagenet", **extract_kw)
    step("extract the baseline's training-split maps (H2 class means)", extract, cfg.model, cfg.data,
         stores / "train.zarr", split="train", checkpoint=str(base / "model.pt"), methods="gradcam", **extract_kw)
    step(f"train the regularised model (lambda {cfg.lam:g})", train,
         TrainConfig(out=str(reg), lam=cfg.lam, loss="mean", cam="gradcam", means=str(stores / "train.zarr"),
                     **common))
    result = step("report", report, [stores / "test.zarr", reg], out, vs=[base], random_store=stores / "random.zarr",
                  permutations=cfg.permutations, n_boot=cfg.n_boot, seed=cfg.seed,
                  title="camstat demo: shapes with a decoy cue",
                  command=f"camstat demo --out {out}" + (" --fast" if fast else ""))
    return DemoResult(out=str(out), report=result.report_md, summary=summarize(result.results, cfg),
                      seconds=round(time.perf_counter() - start, 1), steps=steps, config=asdict(cfg))


def summarize(results: dict, cfg: DemoConfig) -> list[str]:
    """Three lines: H1 on the baseline, the controls, H2 -- every number from the report's results."""
    d = results["consistency"][0]
    lines = [f"H1 (baseline, {method_name(d['method'])}, n = {d['n']}, accuracy {fmt_fixed(d['accuracy'], 3)}): "
             f"{verdict_headline(d)}{summary_roles(d)}"]
    ctl = d["controls"]
    parts = []
    npl = ctl.get("null_pipeline")
    if npl and "metrics" in npl and d.get("primary") in npl["metrics"]:
        m = npl["metrics"][d["primary"]]
        parts.append(f"the whole pipeline under the null rejects in {fmt_fixed(m['rejection_rate'], 3)} "
                     f"{fmt_ci(m.get('rejection_rate_ci95'), 3)} of {npl['repeats']} repeats at {npl['alpha']} "
                     f"({d['primary']})")
    rnd = (ctl.get("random_weights") or {}).get("metrics", {}).get(d.get("primary"))
    if rnd:
        parts.append(f"random-weight maps: within-class AUC {fmt_fixed(rnd['auc_within_class_random'], 2)} "
                     f"{fmt_ci(rnd['auc_within_class_random_ci95'])} ({d['primary']})")
    lines.append("controls: " + "; ".join(parts) if parts else "controls: none run")
    c = results.get("compare")
    if c:
        a, b = list(c["arms"])
        mc = c["mcnemar"]["per_pair"][0] if c["mcnemar"]["per_pair"] else None
        lines.append(f"H2 ({a} vs {b}): held-out accuracy {fmt_fixed(c['arms'][a]['accuracy']['mean'], 3)} vs "
                     f"{fmt_fixed(c['arms'][b]['accuracy']['mean'], 3)}, dist {fmt_sig(c['arms'][a]['dist']['mean'])} "
                     f"vs {fmt_sig(c['arms'][b]['dist']['mean'])}"
                     + (f"; McNemar {mc['b']} vs {mc['c']} images, {p_phrase(mc['p_value'])}" if mc else ""))
    return lines
