"""``camstat sweep``: train a grid of arms x seeds for H2 (SPEC 5).

The grid is lambda x loss x cam (lambda 0 is one arm per cam: its loss does
not matter, its maps do) x seeds; run ``(arm, seed)`` goes to
``OUT/<arm>/s<seed>/`` (:func:`camstat.runs.arm_dirname`). Complete runs are
skipped, interrupted ones resume (``train-reg``'s own resume). Locally the
runs go in this process (``jobs=1``) or in ``jobs`` ``camstat train-reg``
processes; ``emit="slurm"`` writes a Slurm array script with one task per run
and ``emit="torchrun"`` a script of ``torchrun`` commands, for a cluster,
instead of training. ``camstat compare OUT`` then compares every arm with
the lambda-0 arm (:func:`camstat.compare.compare_sweep`).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from camstat.errors import CamstatError
from camstat.runs import arm_dirname, arm_key, is_complete
from camstat.training.config import DEFAULT_HYBRID, TrainConfig

EMITS = ("slurm", "torchrun")


@dataclass
class SweepRun:
    """One (arm, seed) of the grid."""

    arm: str
    seed: int
    config: TrainConfig

    @property
    def path(self) -> Path:
        return Path(self.config.out)

    def command(self, prefix: str = "camstat") -> str:
        """The shell command that trains this run (``prefix``: how camstat is called)."""
        return f"{prefix} train-reg " + " ".join(shlex.quote(a) for a in self.config.to_args())


@dataclass
class SweepResult:
    """What a sweep did: per run its status (``complete`` before, ``trained``, ``failed``), or the script."""

    out: str
    runs: list[dict]
    script: str | None = None
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out": self.out, "runs": self.runs, "script": self.script, "seconds": self.seconds,
                "counts": self.counts}


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ranges and lists mix (``"0-2,9"``)."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
    except ValueError:
        raise CamstatError(f"bad --seeds {text!r}; write e.g. 0-4 or 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CamstatError(f"--seeds {text!r} must name distinct seeds >= 0, e.g. 0-4")
    return seeds


def parse_list(text: str, option: str, cast=str) -> list:
    """A comma list of an option's values (``"0,0.1,0.2"``), each cast and distinct."""
    try:
        values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CamstatError(f"bad {option} {text!r}; write a comma list, e.g. 0,0.1,0.2") from None
    if not values or len(set(values)) != len(values):
        raise CamstatError(f"{option} {text!r} must list distinct values")
    return values


def grid(base: TrainConfig, *, lambdas: Sequence[float], losses: Sequence[str], cams: Sequence[str],
         seeds: Sequence[int], out: str | Path) -> list[SweepRun]:
    """Every (arm, seed) run of the sweep, each a validated configuration under ``out/<arm>/s<seed>``."""
    arms: dict[tuple, TrainConfig] = {}
    for lam in lambdas:
        for cam in cams:
            for loss in (losses if lam > 0 else ["mean"]):
                cfg = replace(base, lam=float(lam), loss=loss, cam=cam,
                              hybrid=base.hybrid if loss == "hybrid" else DEFAULT_HYBRID)
                cfg.validate()
                info = {"lambda": cfg.lam, "loss": cfg.loss, "schedule": cfg.schedule, "cam": cfg.cam,
                        "resolved": {"hybrid": cfg.weights if cfg.loss == "hybrid" else None}}
                arms.setdefault(arm_key(info), cfg)
    runs = []
    for key, cfg in arms.items():
        name = arm_dirname(key)
        runs += [SweepRun(name, s, replace(cfg, seed=s, out=str(Path(out) / name / f"s{s}"))) for s in seeds]
    return runs


def emit_script(runs: list[SweepRun], out: Path, kind: str) -> Path:
    """Write the cluster script: a Slurm array (one task per run) or sequential torchrun commands."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "slurm":
        (out / "logs").mkdir(exist_ok=True)  # Slurm opens --output before the script runs
        path = out / "sweep.slurm"
        cases = "\n".join(f"  {i}) {r.command()} ;;" for i, r in enumerate(runs))
        text = (f"#!/bin/bash\n#SBATCH --job-name=camstat-sweep\n#SBATCH --array=0-{len(runs) - 1}\n"
                f"#SBATCH --output={shlex.quote(str(out))}/logs/%A_%a.log\n"
                "# One array task per run; a requeued or repeated task resumes its run, a complete one is skipped.\n"
                "set -euo pipefail\n"
                f"case \"$SLURM_ARRAY_TASK_ID\" in\n{cases}\n"
                "  *) echo \"no run for task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n")
    elif kind == "torchrun":
        path = out / "sweep-torchrun.sh"
        lines = "\n".join(r.command('torchrun --standalone --nproc-per-node "${NPROC:-1}" -m camstat') for r in runs)
        text = ("#!/bin/bash\n# Every run with torchrun (NPROC processes each, default 1), one after another;"
                " rerunning resumes.\n" f"set -euo pipefail\n{lines}\n")
    else:
        raise ValueError(f"unknown script kind {kind!r}")
    path.write_text(text)
    path.chmod(0o755)
    return path


def _train_here(run: SweepRun) -> dict:
    from camstat.training.train import train

    try:
        train(run.config)
    except CamstatError as exc:
        return {"status": "failed", "error": str(exc)}
    return {"status": "trained"}


def _train_process(run: SweepRun, logs: Path) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{run.arm}-s{run.seed}.log"
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "camstat", "train-reg", *run.config.to_args()],
                              stdout=f, stderr=subprocess.STDOUT).returncode
    return {"status": "trained" if code == 0 else "failed", "exit_code": code, "log": str(log)}


def run_grid(runs: list[SweepRun], out: Path, jobs: int = 1,
             on_run: Callable[[dict], None] | None = None) -> list[dict]:
    """Train the runs not yet complete (here for ``jobs == 1``, else in ``jobs`` processes)."""

    def one(run: SweepRun) -> dict:
        row = {"arm": run.arm, "seed": run.seed, "path": str(run.path)}
        if is_complete(run.path):
            row["status"] = "complete"
        else:
            row.update(_train_here(run) if jobs == 1 else _train_process(run, out / "logs"))
        if on_run is not None:
            on_run(row)
        return row

    if jobs == 1:
        return [one(r) for r in runs]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, runs))


def sweep(base: TrainConfig, *, lambdas: Sequence[float], losses: Sequence[str], cams: Sequence[str],
          seeds: Sequence[int], out: str | Path, jobs: int = 1, emit: str | None = None,
          on_run: Callable[[dict], None] | None = None) -> SweepResult:
    """Train (or, with ``emit``, script) the grid; see the module docstring."""
    if emit is not None and emit not in EMITS:
        raise CamstatError(f"unknown --emit {emit!r}; choose from {', '.join(EMITS)}")
    if jobs < 1:
        raise CamstatError("--jobs must be at least 1")
    start = time.perf_counter()
    out = Path(out)
    runs = grid(base, lambdas=lambdas, losses=losses, cams=cams, seeds=seeds, out=out)
    if emit is not None:
        script = emit_script(runs, out, emit)
        rows = [{"arm": r.arm, "seed": r.seed, "path": str(r.path), "status": "scripted"} for r in runs]
        return SweepResult(str(out), rows, str(script), time.perf_counter() - start, {"scripted": len(rows)})
    rows = run_grid(runs, out, jobs, on_run)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "trained", "failed")}
    return SweepResult(str(out), rows, None, time.perf_counter() - start, counts)
