"""The run directory of ``camstat train-reg``: lock, start/resume/done decision, files, resume state.

Every file is written atomically (temporary file + rename); under
``torchrun`` only rank 0 calls these.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from camstat.atomic import atomic_write
from camstat.errors import CamstatError
from camstat.records import jsonable
from camstat.runs import is_complete
from camstat.training.config import TrainConfig

RUN_FORMAT = 1
RUN_FILES = ("run.json", "metrics.jsonl", "state.pt", "model.pt", "heldout.npz")
LOCK_FILE = ".camstat-train.lock"


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(jsonable(obj), indent=2) + "\n"), "w")


def write_records(path: Path, records: list[dict]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(jsonable(r)) + "\n" for r in records)), "w")


def save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(out: Path) -> dict:
    return torch.load(Path(out) / "state.pt", map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict:
    """Every generator training draws from, as plain tensors and Python types (``weights_only`` loads it)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lock_out(out: Path, overwrite: bool = False) -> int:
    """Hold an exclusive lock on the run directory (released when the process ends, even by SIGKILL)."""
    if out.exists() and not out.is_dir():
        raise CamstatError(f"--out {out} exists and is not a directory; choose another --out")
    # Refuse someone else's folder before the lock file is put into it (see prepare_out).
    if (out.is_dir() and not overwrite and not (out / "run.json").is_file() and not (out / LOCK_FILE).exists()
            and any(out.iterdir())):
        raise CamstatError(f"--out {out} exists and holds no camstat run; choose another --out (or --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise CamstatError(f"--out {out} is being trained by another process; wait for it or use another --out") from None
        raise
    return fd


def prepare_out(cfg: TrainConfig, world: int) -> dict:
    """Decide, on rank 0, whether to start (``fresh``), ``resume`` or report a ``complete`` run.

    Returns ``{"action": ..., "run": run.json or None}``.
    """
    out = Path(cfg.out)
    run_json = out / "run.json"
    if out.exists() and not out.is_dir():
        raise CamstatError(f"--out {out} exists and is not a directory")
    if run_json.is_file() and cfg.overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    elif run_json.is_file():
        try:
            found = json.loads(run_json.read_text())
        except ValueError:
            raise CamstatError(f"{run_json} is unreadable; pass --overwrite to start the run again") from None
        _check_same_run(cfg, found, world)
        if is_complete(out, found):
            return {"action": "complete", "run": found}
        return {"action": "resume" if (out / "state.pt").is_file() else "fresh", "run": found}
    elif out.is_dir() and any(p for p in out.iterdir() if p.name != LOCK_FILE) and not cfg.overwrite:
        raise CamstatError(f"--out {out} exists and holds no camstat run; choose another --out (or --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return {"action": "fresh", "run": None}


def _check_same_run(cfg: TrainConfig, found: dict, world: int) -> None:
    old = TrainConfig.from_dict(found.get("options", {})).identity()
    new = cfg.identity()
    diff = [k for k in new if json.dumps(old.get(k)) != json.dumps(new.get(k))]
    if diff:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in diff[:4])
        raise CamstatError(
            f"--out {cfg.out} holds a run with other options: {shown}; rerun with the same options to resume,"
            " choose another --out, or pass --overwrite to start again"
        )
    if found.get("world_size", 1) != world:
        raise CamstatError(
            f"--out {cfg.out} was trained with {found.get('world_size')} process(es), this is {world};"
            " resume with the same number of torchrun processes (or --overwrite)"
        )
