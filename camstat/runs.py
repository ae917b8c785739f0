"""Reading ``camstat train-reg`` run directories: the one place that knows their files and an arm's identity.

A run directory holds ``run.json``, ``metrics.jsonl``, ``heldout.npz``,
``model.pt`` and ``state.pt`` (see :mod:`camstat.training.train`). An *arm* is
the set of runs that differ only by ``--seed``; :func:`arm_key` is its identity
(used by ``compare``, ``report`` and ``sweep``), :func:`arm_name` and
:func:`arm_dirname` its two spellings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camstat.errors import CamstatError

HELDOUT_KEYS = ("index", "label", "pred", "correct", "dist_self", "ssim_self", "maps")
DEFAULT_CAM = "gradcam"
DEFAULT_SCHEDULE = "constant"


def read_records(run: str | Path) -> list[dict]:
    """The epoch records of ``metrics.jsonl`` ([] when there is none yet)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_info(run: str | Path) -> dict:
    """``run.json`` of a run directory (CamstatError when missing or unreadable)."""
    path = Path(run) / "run.json"
    if not path.is_file():
        raise CamstatError(f"{run} is not a camstat train-reg run (no run.json)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise CamstatError(f"{path} is not valid JSON") from None


def is_complete(run: str | Path, info: dict | None = None) -> bool:
    """A run is complete when ``run.json`` says so and its final files are there."""
    path = Path(run)
    if info is None:
        try:
            info = read_info(path)
        except CamstatError:
            return False
    return info.get("status") == "complete" and (path / "model.pt").is_file() and (path / "heldout.npz").is_file()


def arm_key(info: dict) -> tuple:
    """An arm's identity from ``run.json``: (lambda, loss, schedule, cam, hybrid terms).

    At lambda 0 the CAM term is off, so loss, schedule and hybrid do not
    matter; the cam does (it makes the held-out maps that are measured), so a
    baseline is one arm per cam.
    """
    lam = float(info.get("lambda") or 0.0)
    if lam == 0:
        return (0.0, "", "", str(info.get("cam") or DEFAULT_CAM), ())
    loss = str(info.get("loss", ""))
    hybrid = (info.get("resolved") or {}).get("hybrid") if loss == "hybrid" else None
    return (lam, loss, str(info.get("schedule") or DEFAULT_SCHEDULE), str(info.get("cam") or DEFAULT_CAM),
            tuple(sorted((hybrid or {}).items())))


def arm_name(key: tuple) -> str:
    """``lambda=0``, ``lambda=0.2 mean``, ``lambda=0.2 mean gradcam++ curriculum``, ... (defaults left out)."""
    lam, loss, schedule, cam, hybrid = key
    if lam == 0:
        return "lambda=0" + ("" if cam == DEFAULT_CAM else f" {cam}")
    parts = [f"lambda={lam:g}", loss + ("(" + ",".join(f"{k}={w:g}" for k, w in hybrid) + ")" if hybrid else "")]
    parts += [v for v, default in ((cam, DEFAULT_CAM), (schedule, DEFAULT_SCHEDULE)) if v != default]
    return " ".join(parts)


def arm_dirname(key: tuple) -> str:
    """The folder of an arm in a sweep: ``lambda0``, ``lambda0.2-mean``, ``lambda0.2-hybrid-gradcam++``, ..."""
    return arm_name(key).replace("=", "").replace(" ", "-").replace(",", "_").replace("(", "_").replace(")", "")


@dataclass
class Run:
    """One complete ``train-reg`` run as the analyses read it."""

    path: str
    info: dict  # run.json
    heldout: dict[str, np.ndarray] = field(repr=False)

    @property
    def seed(self) -> int:
        return int(self.info.get("seed", 0))

    @property
    def key(self) -> tuple:
        return arm_key(self.info)

    @property
    def resolved(self) -> dict:
        return self.info.get("resolved", {})

    @property
    def final(self) -> dict:
        return self.info.get("final", {})

    def records(self) -> list[dict]:
        return read_records(self.path)


def load_run(path: str | Path) -> Run:
    """Read ``run.json`` and ``heldout.npz`` of a complete run (CamstatError otherwise)."""
    info = read_info(path)
    if not is_complete(path, info):
        raise CamstatError(
            f"run {path} is not complete; finish it by rerunning its `camstat train-reg` command (it resumes)"
        )
    with np.load(Path(path) / "heldout.npz", allow_pickle=False) as npz:
        heldout = {k: npz[k] for k in npz.files}
    missing = [k for k in HELDOUT_KEYS if k not in heldout]
    if missing:
        raise CamstatError(f"{path}/heldout.npz lacks {', '.join(missing)}; was it written by camstat train-reg?")
    return Run(path=str(path), info=info, heldout=heldout)


def find_runs(root: str | Path) -> list[Path]:
    """The run directories of a sweep folder ``root/<arm>/s<seed>/`` (sorted)."""
    return sorted(p.parent for p in Path(root).glob("*/s*/run.json"))
