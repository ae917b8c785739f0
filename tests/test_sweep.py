"""camstat sweep: the grid, skipping and resuming runs, cluster scripts, and compare of a sweep folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camstat.cli import main
from camstat.errors import CamstatError
from camstat.runs import is_complete, read_info
from camstat.sweep import grid, parse_seeds, sweep
from camstat.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "camstat:smallcnn", "--data", "builtin:digits", "--limit", "64", "--eval-limit", "30",
        "--batch-size", "32", "--epochs", "3", "--device", "cpu"]
GRID = ["--lambda", "0,0.3", "--loss", "variance", "--seeds", "0-1"]


def test_grid_arms_and_folders(tmp_path):
    base = TrainConfig(model="camstat:smallcnn", data="builtin:digits", means="m.zarr")
    runs = grid(base, lambdas=[0, 0.2], losses=["mean", "variance"], cams=["gradcam", "gradcam++"],
                seeds=[0, 1, 2], out=tmp_path)
    arms = sorted({r.arm for r in runs})
    # lambda 0 is one arm per cam (its loss does not matter); each lambda > 0 arm is loss x cam
    assert arms == sorted(["lambda0", "lambda0-gradcam++", "lambda0.2-mean", "lambda0.2-variance",
                           "lambda0.2-mean-gradcam++", "lambda0.2-variance-gradcam++"])
    assert len(runs) == 6 * 3
    assert {r.config.out for r in runs} == {str(tmp_path / r.arm / f"s{r.seed}") for r in runs}
    assert all(r.config.means == "m.zarr" for r in runs)
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("", "a", "2,2", "-1"):
        with pytest.raises(CamstatError):
            parse_seeds(bad)
    with pytest.raises(CamstatError, match="--means"):  # the mean loss without means is refused before training
        grid(TrainConfig(), lambdas=[0.2], losses=["mean"], cams=["gradcam"], seeds=[0], out=tmp_path)


def test_slurm_script_is_valid_bash_with_one_array_task_per_run(tmp_path):
    out = tmp_path / "sw"
    assert main(["sweep", *TINY, *GRID, "--cam", "gradcam,gradcam++", "--out", str(out), "--emit", "slurm",
                 "--json", str(tmp_path / "s.json")]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    script = Path(result["script"])
    assert script == out / "sweep.slurm" and not (out / "lambda0").exists()  # nothing trained
    runs = result["runs"]
    assert len(runs) == 4 * 2  # arms lambda0, lambda0-gradcam++, lambda0.3-variance(-gradcam++) x 2 seeds
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert f"#SBATCH --array=0-{len(runs) - 1}" in text
    # each task runs exactly its run's command: run it with a stand-in camstat that prints its arguments
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "camstat").write_text('#!/bin/bash\necho "$@"\n')
    (bin_dir / "camstat").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for task, run in enumerate(runs):
        proc = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        args = proc.stdout.split()
        assert args[0] == "train-reg" and args[args.index("--out") + 1] == run["path"]
        assert args[args.index("--seed") + 1] == str(run["seed"]) if run["seed"] else "--seed" not in args
    bad = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(len(runs))},
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert main(["sweep", *TINY, *GRID, "--out", str(out), "--emit", "torchrun"]) == 0
    torchrun = out / "sweep-torchrun.sh"
    assert subprocess.run(["bash", "-n", str(torchrun)]).returncode == 0
    assert sum(line.startswith("torchrun ") for line in torchrun.read_text().splitlines()) == 4


def digest(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def test_killed_sweep_rerun_completes_only_the_missing_runs(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "camstat", "sweep", *TINY, *GRID, "--out", str(out)]
    runs = [out / "lambda0" / "s0", out / "lambda0" / "s1", out / "lambda0.3-variance" / "s0",
            out / "lambda0.3-variance" / "s1"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        # kill it in the middle of the second run: the first complete, the second one epoch in
        while time.time() < deadline:
            records = runs[1] / "metrics.jsonl"
            if is_complete(runs[0]) and records.is_file() and records.read_text().strip():
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert is_complete(runs[0]) and not is_complete(runs[1]) and not runs[2].exists()
    before = digest(runs[0])
    result = sweep(TrainConfig(model="camstat:smallcnn", data="builtin:digits", limit=64, eval_limit=30,
                               batch_size=32, epochs=3, device="cpu"),
                   lambdas=[0, 0.3], losses=["variance"], cams=["gradcam"], seeds=[0, 1], out=out)
    assert [r["status"] for r in result.runs] == ["complete", "trained", "trained", "trained"]
    assert digest(runs[0]) == before  # bitwise unchanged
    assert all(is_complete(r) for r in runs)
    assert [r["epoch"] for r in read_info(runs[1])["resumes"]] in ([1], [2])  # resumed, not restarted
    again = sweep(TrainConfig(model="camstat:smallcnn", data="builtin:digits", limit=64, eval_limit=30,
                              batch_size=32, epochs=3, device="cpu"),
                  lambdas=[0, 0.3], losses=["variance"], cams=["gradcam"], seeds=[0, 1], out=out)
    assert again.counts == {"complete": 4, "trained": 0, "failed": 0}

    # camstat compare of the sweep folder: every arm against the lambda-0 arm, paired by seed
    path = tmp_path / "cmp.json"
    assert main(["compare", str(out), "--json", str(path)]) == 0
    d = json.loads(path.read_text())
    (c,) = d["comparisons"]
    assert list(c["arms"]) == ["lambda=0.3 variance", "lambda=0"]
    assert [p["seed"] for p in c["paired"]["pairs"]] == [0, 1]
    assert c["paired"]["accuracy"]["p_signflip"] in (0.5, 1.0)


@pytest.mark.slow
def test_jobs_train_in_separate_processes(tmp_path):
    base = TrainConfig(model="camstat:smallcnn", data="builtin:digits", limit=64, eval_limit=30, batch_size=32,
                       epochs=1, device="cpu")
    result = sweep(base, lambdas=[0], losses=["mean"], cams=["gradcam"], seeds=[0, 1], out=tmp_path / "sw", jobs=2)
    assert result.counts == {"complete": 0, "trained": 2, "failed": 0}
    assert all(r["exit_code"] == 0 and Path(r["log"]).is_file() for r in result.runs)
    # the same runs as in this process: one seed retrained here gives the same records
    from camstat.runs import read_records
    from camstat.training.train import train

    here = train(TrainConfig(**{**base.__dict__, "out": str(tmp_path / "here"), "seed": 1}))
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    theirs, ours = drop(read_records(tmp_path / "sw" / "lambda0" / "s1")), drop(here.records)
    # Training is the same to the bit; held-out maps may differ in the last float digits when the child process
    # runs with another intra-op thread count (summation order), hence approx for the evaluation metrics.
    assert [{k: r[k] for k in ("epoch", "loss", "loss_cls", "train_accuracy", "accuracy")} for r in theirs] == \
        [{k: r[k] for k in ("epoch", "loss", "loss_cls", "train_accuracy", "accuracy")} for r in ours]
    for a, b in zip(theirs, ours, strict=True):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] if not isinstance(b[k], float) else a[k] == pytest.approx(b[k], rel=1e-6) for k in b)
