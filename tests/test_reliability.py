"""Reliability: bad input is one `error:` line and exit code 2; refused commands change no byte of a store;
write errors leave a store resumable; untrusted files and store attributes are data, never code; degenerate
models give defined numbers or a clear refusal.

Cases already covered elsewhere are not repeated here: SIGKILL + resume trials and shards (test_extract),
two extractions bitwise equal without a checkpoint (test_extract), training interrupted and resumed equal to an
uninterrupted run and train-reg's option errors such as a negative or non-numeric --lambda (test_train),
library-level checkpoint and data refusals (test_models, test_data), same seed same JSON in-process
(test_consistency).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import camstat
from camstat import metrics, models
from camstat.cli import main
from camstat.locks import lock_path

# Models as a user would write them (file.py:factory), each broken in one way.
USER_MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, zero_features=False, zero_head=False, nan_from_batch=None):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, num_classes)
        if zero_features:  # the target layer's output is all zero
            nn.init.zeros_(self.features[0].weight)
            nn.init.zeros_(self.features[0].bias)
        if zero_head:  # the score ignores the features: every gradient at the target layer is zero
            nn.init.zeros_(self.head.weight)
        self.nan_from_batch, self.batches = nan_from_batch, 0

    def forward(self, x):
        logits = self.head(self.features(x).mean(dim=(2, 3)))
        if x.shape[0] > 1:  # real batches only, not the one-image probes of layer resolution
            self.batches += 1
            if self.nan_from_batch is not None and self.batches >= self.nan_from_batch:
                logits = logits * float("nan")
        return logits


class Overflow(nn.Module):
    """The hooked layer itself outputs inf: CAMs are NaN while the logits stay finite."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Scale())
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(torch.nan_to_num(self.features(x), posinf=1.0).mean(dim=(2, 3)))


class Scale(nn.Module):
    def forward(self, x):
        return x * 1e38 * 1e38


def _seeded(**kw):
    torch.manual_seed(0)
    return Net(**kw)


def zero_features(num_classes=10):
    return _seeded(num_classes=num_classes, zero_features=True)


def zero_head(num_classes=10):
    return _seeded(num_classes=num_classes, zero_head=True)


def nan_second_batch(num_classes=10):
    return _seeded(num_classes=num_classes, nan_from_batch=2)


def overflow(num_classes=10):
    torch.manual_seed(0)
    return Overflow(num_classes)
'''

DIGITS = ["--data", "builtin:digits", "--limit", "16", "--device", "cpu"]


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store but the root's provenance (creation time, command line) and the lock."""
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(Path(path).rglob("*"))
            if f.is_file() and f.relative_to(path).as_posix() not in ("zarr.json", "camstat.lock")}


def file_hashes(path: Path) -> dict[str, str]:
    """Every file under ``path`` (root metadata and lock file included)."""
    return {f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(path).rglob("*")) if f.is_file()}


def run(capsys, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *expected: str, rc: int = 2, alone: bool = True) -> str:
    """``alone``: stderr holds nothing else; otherwise the progress bar of the work done may precede it."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == rc, err
    assert "Traceback" not in err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert len(lines) == 1 or not alone, err
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def set_root_attrs(store: Path, **changes) -> None:
    """Edit a store's root attributes as a text editor (or another program) would."""
    meta = json.loads((store / "zarr.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta["attributes"].pop(key, None)
        else:
            meta["attributes"][key] = value
    (store / "zarr.json").write_text(json.dumps(meta))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    """Files from others: checkpoints (good, garbage, evil), image folders, a store and damaged copies of it."""
    root = tmp_path_factory.mktemp("rel")
    w = {"root": root}
    (root / "usermodels.py").write_text(USER_MODELS)
    w["user"] = root / "usermodels.py"
    torch.manual_seed(0)
    w["ckpt"] = root / "small.pt"
    models.save_checkpoint(w["ckpt"], models.build_model("camstat:smallcnn", 10),
                           {"model": "camstat:smallcnn", "num_classes": 10})
    (root / "garbage.pt").write_bytes(b"PK\x03\x04 not a checkpoint" * 8)
    (root / "empty.pt").write_bytes(b"")
    w["pwned"] = root / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {w['pwned']}",))

    torch.save({"state_dict": models.build_model("camstat:smallcnn", 10).state_dict(), "payload": Evil()},
               root / "evil.pt")

    from PIL import Image

    for cls in ("cat", "dog"):
        (root / "imgs" / cls).mkdir(parents=True)
        for k in range(3):
            pixels = np.random.default_rng(k).integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "imgs" / cls / f"{k}.png")
    (root / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    (root / "empty").mkdir()
    (root / "noimages" / "cat").mkdir(parents=True)
    (root / "noimages" / "cat" / "notes.txt").write_text("no image here")
    (root / "afile").write_text("not a folder")
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("\\chapter{Results}")

    w["store"] = root / "s.zarr"
    assert main(["extract", "--model", "camstat:smallcnn", "--checkpoint", str(w["ckpt"]), *DIGITS,
                 "--chunk", "8", "--store", str(w["store"])]) == 0
    for version in (0, 99):
        shutil.copytree(w["store"], root / f"schema{version}.zarr")
        set_root_attrs(root / f"schema{version}.zarr", camstat_schema=version)
    shutil.copytree(w["store"], root / "noattr.zarr")
    set_root_attrs(root / "noattr.zarr", model=None)
    shutil.copytree(w["store"], root / "badtype.zarr")
    set_root_attrs(root / "badtype.zarr", classes="0123456789")
    shutil.copytree(w["store"], root / "nodone.zarr")
    shutil.rmtree(root / "nodone.zarr" / "samples" / "done")
    shutil.copytree(w["store"], root / "badroot.zarr")
    (root / "badroot.zarr" / "zarr.json").write_text("{ truncated")
    shutil.copytree(w["store"], root / "incomplete.zarr")
    zarr.open_group(str(root / "incomplete.zarr"), mode="r+")["samples/done"][8:] = False
    return w


def _extract(w, *args, store="new.zarr", model=("--model", "camstat:smallcnn"), checkpoint="ckpt"):
    ck = ["--checkpoint", w[checkpoint] if checkpoint in w else w["root"] / checkpoint] if checkpoint else []
    return ["extract", *model, *ck, *DIGITS, "--store", w["root"] / store, *args]


def _train(w, *args, out="run"):
    return ["train-reg", "--model", "camstat:smallcnn", "--data", "builtin:digits", "--limit", "64",
            "--eval-limit", "20", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--out", w["root"] / out,
            *args]


# (id, argv builder, texts the one error line must hold). Usage errors (click) come first.
BAD_INPUT = [
    ("missing required option", lambda w: ["extract", "--data", "builtin:digits"], ["Missing option '--model'"]),
    ("unknown option", lambda w: ["info", w["store"], "--frobnicate"], ["No such option: --frobnicate"]),
    ("non-numeric --limit", lambda w: _extract(w, "--limit", "many"), ["Invalid value for '--limit'"]),
    # checkpoints
    ("missing checkpoint", lambda w: _extract(w, checkpoint="nope.pt"), ["checkpoint not found", "nope.pt"]),
    ("checkpoint is a folder", lambda w: _extract(w, checkpoint="empty"), ["checkpoint not found"]),
    ("unreadable checkpoint", lambda w: _extract(w, checkpoint="garbage.pt"),
     ["cannot read checkpoint", "garbage.pt", "not a PyTorch or .safetensors file"]),
    ("empty checkpoint file", lambda w: _extract(w, checkpoint="empty.pt"), ["cannot read checkpoint", "empty.pt"]),
    ("checkpoint of another architecture", lambda w: _extract(w, model=("--model", "camstat:resnet20")),
     ["missing keys (conv1.weight", "unexpected keys (features.stage1.0.weight", "check --model"]),
    ("checkpoint with another class count", lambda w: _extract(w, "--num-classes", "5"),
     ["shape mismatch", "fc.weight", "[10, 64]", "[5, 64]"]),
    ("pickle that runs code", lambda w: _extract(w, checkpoint="evil.pt"),
     ["needs full unpickling", "posix.system", "--trust-checkpoint"]),
    ("layers: pickle that runs code", lambda w: ["layers", "--model", "camstat:smallcnn", "--checkpoint",
                                                 w["root"] / "evil.pt"], ["--trust-checkpoint"]),
    # models, layers, methods, targets
    ("unknown camstat model", lambda w: _extract(w, model=("--model", "camstat:vgg"), checkpoint=None),
     ["unknown camstat model 'vgg'", "resnet20, smallcnn"]),
    ("unknown torchvision model", lambda w: _extract(w, "--num-classes", "10", checkpoint=None,
                                                     model=("--model", "torchvision:resnet1234")),
     ["unknown torchvision model 'resnet1234'", "resnet18"]),
    ("unknown model spec", lambda w: _extract(w, model=("--model", "foo bar"), checkpoint=None),
     ["unknown model spec 'foo bar'", "torchvision:NAME"]),
    ("missing model file", lambda w: _extract(w, model=("--model", "nowhere.py:make"), checkpoint=None),
     ["model file not found: nowhere.py"]),
    ("model file without the factory", lambda w: _extract(w, model=("--model", f"{w['user']}:nope"),
                                                          checkpoint=None),
     ["has no factory 'nope'", "zero_features"]),
    ("unknown layer", lambda w: _extract(w, "--layer", "features.nope"),
     ["unknown layer features.nope", "candidates:", "features.stage3", "camstat layers"]),
    ("layer without a feature map", lambda w: _extract(w, "--layer", "fc"), ["gives no feature map"]),
    ("unknown method", lambda w: _extract(w, "--methods", "gradcam,foo"),
     ["unknown CAM method 'foo'", "gradcam++", "scorecam"]),
    ("unknown target", lambda w: _extract(w, "--target", "best"), ["Invalid value for '--target'", "'best' is not one of 'pred', 'true', 'both'"]),
    ("model outputs != data classes", lambda w: _extract(w, "--num-classes", "3", checkpoint=None),
     ["3 outputs", "10 classes", "--num-classes"]),
    ("unknown device", lambda w: _extract(w, "--device", "tpu"), ["invalid --device 'tpu'"]),
    # data
    ("unknown data kind", lambda w: ["extract", "--model", "camstat:smallcnn", "--data", "mnist:/tmp",
                                     "--store", w["root"] / "new.zarr"], ["unknown data spec 'mnist:/tmp'",
                                                                         "imagefolder:ROOT"]),
    ("unknown builtin data", lambda w: ["extract", "--model", "camstat:smallcnn", "--data", "builtin:mnist",
                                        "--store", w["root"] / "new.zarr"], ["digits, shapes"]),
    ("unknown split", lambda w: _extract(w, "--split", "val"), ["--split train|test"]),
    ("missing data folder", lambda w: _extract(w, "--data", f"imagefolder:{w['root'] / 'nofolder'}"),
     ["data folder not found", "nofolder"]),
    ("empty data folder", lambda w: _extract(w, "--data", f"imagefolder:{w['root'] / 'empty'}"),
     ["no class folders in", "<class>/<image files>"]),
    ("class folder without images", lambda w: _extract(w, "--data", f"imagefolder:{w['root'] / 'noimages'}"),
     ["no images in", ".png"]),
    ("corrupt image, --on-bad-image fail", lambda w: _extract(
        w, "--data", f"imagefolder:{w['root'] / 'imgs'}", "--num-classes", "2", "--on-bad-image", "fail",
        checkpoint=None), ["broken.png", "--on-bad-image skip"]),
    ("invalid --on-bad-image", lambda w: _extract(w, "--on-bad-image", "ignore"), ["Invalid value for '--on-bad-image'", "'ignore' is not one of 'skip', 'fail'"]),
    ("--limit 0", lambda w: _extract(w, "--limit", "0"), ["bad --limit 0"]),
    ("--size 0", lambda w: _extract(w, "--size", "0"), ["bad --size 0"]),
    ("--batch-size 0", lambda w: _extract(w, "--batch-size", "0"), ["--batch-size and --chunk must be at least 1"]),
    # --shard and store paths
    ("--shard K >= N", lambda w: _extract(w, "--shard", "2/2"), ["invalid --shard '2/2'", "numbered from 0"]),
    ("--shard not K/N", lambda w: _extract(w, "--shard", "a/b"), ["invalid --shard 'a/b'", "K/N"]),
    ("--shard N = 0", lambda w: _extract(w, "--shard", "0/0"), ["invalid --shard '0/0'"]),
    ("--resume with --overwrite", lambda w: _extract(w, "--resume", "--overwrite"), ["exclude each other"]),
    ("existing store without --resume", lambda w: _extract(w, store="s.zarr"),
     ["already exists", "--resume", "--overwrite"]),
    ("resume with other options", lambda w: _extract(w, "--resume", "--methods", "hirescam", store="s.zarr"),
     ["made with different methods", "--overwrite"]),
    ("store path is a file", lambda w: _extract(w, store="afile"), ["exists and is not a directory", "--store"]),
    ("store path is someone's folder", lambda w: _extract(w, store="mine"),
     ["is not a camstat store", "choose another --store"]),
    ("someone's folder with --overwrite", lambda w: _extract(w, "--overwrite", store="mine"),
     ["is not a camstat store", "choose another --store"]),
    ("resume into a store whose root metadata is damaged", lambda w: _extract(w, "--resume", store="badroot.zarr"),
     ["is damaged", "holds data", "--overwrite"]),
    ("resume a store of a newer schema", lambda w: _extract(w, "--resume", store="schema99.zarr"),
     ["schema version 99", "cannot resume", "--overwrite"]),
    ("resume a store missing an array", lambda w: _extract(w, "--resume", "--chunk", "8", store="nodone.zarr"),
     ["is damaged", "samples/done", "--overwrite"]),
    # reading stores
    ("info: not a store", lambda w: ["info", w["root"] / "mine"], ["is not a camstat store", "`camstat extract`"]),
    ("info: no such path", lambda w: ["info", w["root"] / "nowhere.zarr"], ["does not exist", "camstat extract"]),
    ("info: a file", lambda w: ["info", w["root"] / "afile"], ["is not a camstat store"]),
    ("info: damaged root metadata", lambda w: ["info", w["root"] / "badroot.zarr"], ["is not a camstat store"]),
    ("info: older schema", lambda w: ["info", w["root"] / "schema0.zarr"],
     ["schema version 0", "reads version 1", "re-extract"]),
    ("info: newer schema", lambda w: ["info", w["root"] / "schema99.zarr"], ["schema version 99"]),
    ("info: attribute missing", lambda w: ["info", w["root"] / "noattr.zarr"],
     ["is damaged", "attributes missing: model"]),
    ("info: attribute of the wrong type", lambda w: ["info", w["root"] / "badtype.zarr"],
     ["is damaged", "wrong type: classes"]),
    ("info: array missing", lambda w: ["info", w["root"] / "nodone.zarr"], ["is damaged", "samples/done"]),
    ("consistency: newer schema", lambda w: ["consistency", w["root"] / "schema99.zarr"], ["schema version 99"]),
    ("consistency: not a store", lambda w: ["consistency", w["root"] / "mine"], ["is not a camstat store"]),
    ("consistency: incomplete store", lambda w: ["consistency", w["root"] / "incomplete.zarr"],
     ["incomplete (8/16 samples done)", "--resume"]),
    ("consistency: unknown --by", lambda w: ["consistency", w["store"], "--by", "image"],
     ["Invalid value for '--by'", "'image' is not one of 'correct', 'class', 'cluster'"]),
    ("consistency: unknown --metrics", lambda w: ["consistency", w["store"], "--metrics", "dist,foo"],
     ["unknown metric(s) foo", "valid:", "ssim"]),
    ("consistency: mask metric without masks", lambda w: ["consistency", w["store"], "--metrics", "pointing"],
     ["need ground-truth masks"]),
    ("consistency: unknown method", lambda w: ["consistency", w["store"], "--method", "scorecam"],
     ["no method 'scorecam'", "gradcam, gradcam++"]),
    ("consistency: unknown layer", lambda w: ["consistency", w["store"], "--layer", "fc"],
     ["no layer 'fc'", "features"]),
    ("consistency: target not extracted", lambda w: ["consistency", w["store"], "--target", "true"],
     ["no target 'true'", "pred"]),
    ("consistency: unknown --class-of", lambda w: ["consistency", w["store"], "--class-of", "true"],
     ["Invalid value for '--class-of'", "'true' is not one of 'pred', 'label'"]),
    ("consistency: unknown --correction", lambda w: ["consistency", w["store"], "--correction", "sidak"],
     ["Invalid value for '--correction'", "'sidak' is not one of 'holm', 'fdr_bh', 'bonferroni'"]),
    ("consistency: --q out of range", lambda w: ["consistency", w["store"], "--q", "1.5"], ["--q must lie in (0, 1)"]),
    ("consistency: --reference is itself", lambda w: ["consistency", w["store"], "--reference", w["store"]],
     ["--reference is the analysed store itself"]),
    ("consistency: --reference not a store", lambda w: ["consistency", w["store"], "--reference", w["root"]],
     ["is not a camstat store"]),
    ("consistency: --clusters 1", lambda w: ["consistency", w["store"], "--by", "cluster", "--clusters", "1"],
     ["--clusters must be at least 2"]),
    # train-reg
    ("train-reg: --means of another model", lambda w: _train(
        w, "--model", "camstat:resnet20", "--lambda", "0.2", "--means", w["store"], out="r-model"),
     ["--means store", "is of model 'camstat:smallcnn', not 'camstat:resnet20'", "same --model"]),
    ("train-reg: --means of another class set", lambda w: _train(
        w, "--data", "builtin:shapes?n=64", "--lambda", "0.2", "--means", w["store"], out="r-classes"),
     ["--means store", "other classes than the training data", "same --data"]),
    ("train-reg: --means of a held-out split", lambda w: _train(w, "--lambda", "0.2", "--means", w["store"],
                                                                out="r-split"),
     ["is of the 'test' split", "--split train"]),
    ("train-reg: --means not a store", lambda w: _train(w, "--lambda", "0.2", "--means", w["root"] / "mine",
                                                        out="r-notstore"), ["is not a camstat store"]),
    ("train-reg: --out is a file", lambda w: _train(w, out="afile"), ["exists and is not a directory"]),
    ("train-reg: --out is someone's folder", lambda w: _train(w, out="mine"),
     ["holds no camstat run", "choose another --out"]),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_error_line_and_exit_2(ws, capsys, case):
    _, build, expected = case
    before = {name: file_hashes(ws["root"] / name) for name in ("s.zarr", "mine", "badroot.zarr", "schema99.zarr")}
    code, out, err = run(capsys, build(ws))
    assert_one_error_line(code, err, *expected)
    assert "Traceback" not in out
    assert not (ws["root"] / "new.zarr").exists()  # nothing half-made
    assert {name: file_hashes(ws["root"] / name) for name in before} == before
    assert not ws["pwned"].exists()


def test_refused_commands_leave_a_store_byte_for_byte_unchanged(ws, capsys, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(ws["store"], store)
    before = file_hashes(store)
    base = ["extract", "--model", "camstat:smallcnn", "--checkpoint", ws["ckpt"], *DIGITS, "--store", store]
    refused = [
        base,  # exists
        [*base, "--chunk", "8"],
        [*base, "--resume", "--methods", "gradcam"],
        [*base, "--resume", "--limit", "20", "--chunk", "8"],
        [*base, "--resume", "--layer", "features.stage2", "--chunk", "8"],
        [*base, "--resume", "--target", "both", "--chunk", "8"],
        [*base, "--resume", "--overwrite"],
        [*base, "--overwrite", "--layer", "nope"],  # bad options are refused before anything is replaced
        [*base, "--overwrite", "--methods", "bogus"],
        [*base[:3], "--checkpoint", ws["root"] / "evil.pt", *base[5:], "--overwrite"],
        ["consistency", store, "--by", "nope"],
        ["consistency", store, "--metrics", "dist,foo"],
        ["consistency", store, "--reference", store],
        ["consistency", store, "--method", "scorecam"],
        _train(ws, "--model", "camstat:resnet20", "--lambda", "0.2", "--means", store, out="r1"),
        _train(ws, "--lambda", "0.2", "--means", store, out="r2"),  # test split
    ]
    for args in refused:
        code, _, err = run(capsys, args)
        assert_one_error_line(code, err)
        assert file_hashes(store) == before, args
    assert main(["info", str(store)]) == 0  # reading changes nothing either
    assert file_hashes(store) == before
    assert not ws["pwned"].exists()


def test_second_writer_is_refused_while_the_first_holds_the_store(ws, capsys, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(ws["store"], store)
    before = file_hashes(store)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0); print('locked', flush=True); time.sleep(60)"),
        str(lock_path(store))], stdout=subprocess.PIPE, text=True)
    base = ["extract", "--model", "camstat:smallcnn", "--checkpoint", ws["ckpt"], *DIGITS, "--chunk", "8",
            "--store", store]
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flag in ("--resume", "--overwrite"):
            code, _, err = run(capsys, [*base, flag])
            assert_one_error_line(code, err, "being written by another process")
        assert file_hashes(store) == before
    finally:
        holder.kill()
        holder.wait()
    assert main([*base, "--resume"]) == 0  # the lock dies with its process


def test_untrusted_checkpoints_are_loaded_weights_only_and_code_never_runs(ws, capsys, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    code, _, err = run(capsys, ["layers", "--model", "camstat:smallcnn", "--checkpoint", ws["ckpt"]])
    assert code == 0 and calls == [True]
    for command in (["layers", "--model", "camstat:smallcnn", "--checkpoint", ws["root"] / "evil.pt"],
                    _extract(ws, checkpoint="evil.pt")):
        code, _, err = run(capsys, command)
        assert_one_error_line(code, err, "--trust-checkpoint")
    assert set(calls) == {True}
    assert not ws["pwned"].exists()


def test_store_attributes_are_data_never_evaluated(ws, capsys, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(ws["store"], store)
    marker = tmp_path / "X"
    payload = f"__import__('os').system('touch {marker}')"
    classes = [payload, "[/x]", "[bold]7[/bold]", ":cat:"] + [str(d) for d in range(4, 10)]
    set_root_attrs(store, model=payload, command=[payload], classes=classes, note={"code": payload})
    code, out, err = run(capsys, ["info", store, "--json", tmp_path / "info.json"])
    assert code == 0, err
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["model"] == payload and info["classes"] == classes and info["command"] == [payload]
    flat = " ".join(out.split())
    for text in ("[/x]", "[bold]7[/bold]", ":cat:"):  # shown as written, not as terminal markup
        assert text in flat, text
    code, out, err = run(capsys, ["consistency", store, "--metrics", "dist", "--min-group", "1", "--permutations",
                                  "20", "--bootstrap", "0", "--json", tmp_path / "c.json"])
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["provenance"]["model"] == payload
    assert not marker.exists()


def test_write_errors_leave_the_store_resumable(ws, capsys, tmp_path, monkeypatch):
    """A full disk at any point -- creating the store, mid-chunk, at a done flag -- is exit code 1 with one
    line, and --resume then completes a store bitwise equal to an uninterrupted one."""
    import zarr.storage._local as local

    args = ["extract", "--model", "camstat:smallcnn", "--checkpoint", ws["ckpt"], *DIGITS, "--chunk", "4",
            "--batch-size", "4"]
    reference = tmp_path / "ref.zarr"
    real_put = local._put
    written: list[str] = []

    def counting(path, value, exclusive=False):
        written.append(Path(path).relative_to(reference).as_posix())
        return real_put(path, value, exclusive)

    monkeypatch.setattr(local, "_put", counting)
    assert main([*args, "--store", str(reference)]) == 0
    first_chunk = next(i for i, name in enumerate(written) if "/c/" in name)
    second_done = [i for i, name in enumerate(written) if name.startswith("samples/done/c/")][1]
    assert written[first_chunk - 1] == "zarr.json"  # the attributes, in one write, last of the creation
    mid_chunk = second_done + 3  # inside the third chunk: some of its arrays written, its done flag not
    for trial, k in enumerate([1, first_chunk - 1, mid_chunk, second_done, len(written) - 1]):
        store = tmp_path / f"full{trial}.zarr"
        count = [0]

        def full_disk(path, value, exclusive=False):
            count[0] += 1
            if count[0] > k:  # a partial file, as a real full disk leaves, which zarr's atomic write removes
                data = bytes(value.as_buffer_like())
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                with local._atomic_write(Path(path), "wb") as f:
                    f.write(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_put(path, value, exclusive)

        monkeypatch.setattr(local, "_put", full_disk)
        code, _, err = run(capsys, [*args, "--store", store])
        monkeypatch.setattr(local, "_put", real_put)
        line = assert_one_error_line(code, err, "No space left on device", rc=1, alone=False)
        assert str(store) in line, line
        if trial == 3:  # died writing the second done flag: the first chunk is kept, nothing later marked done
            done = zarr.open_group(str(store), mode="r")["samples/done"][:]
            assert done[:4].all() and not done[4:].any()
        code, _, err = run(capsys, [*args, "--store", store, "--resume"])
        assert code == 0, (k, err)
        assert store_bytes(store) == store_bytes(reference), f"failed after {k} writes"
        assert not list(store.rglob("*.partial"))


def test_nan_logits_are_reported_and_never_marked_done(ws, capsys, tmp_path):
    store = tmp_path / "nan.zarr"
    code, _, err = run(capsys, ["extract", "--model", f"{ws['user']}:nan_second_batch", *DIGITS, "--chunk", "8",
                                "--batch-size", "8", "--store", store])
    assert_one_error_line(code, err, "non-finite logits for 8 image(s)", "--normalize", alone=False)
    s = camstat.open_store(store)
    done = s.done
    assert done[:8].all() and not done[8:].any()  # the good chunk kept, the NaN one not marked done
    assert np.isfinite(s.samples["logits"][:8]).all()
    code, _, err = run(capsys, ["consistency", store])
    assert_one_error_line(code, err, "incomplete")
    # NaN maps under finite logits are refused the same way, never stored
    code, _, err = run(capsys, ["extract", "--model", f"{ws['user']}:overflow", *DIGITS, "--store",
                                tmp_path / "inf.zarr"])
    assert_one_error_line(code, err, "non-finite (NaN or inf)", "gradcam", "--layer", alone=False)
    assert not camstat.open_store(tmp_path / "inf.zarr").done.any()


@pytest.mark.parametrize("factory", ["zero_features", "zero_head"])
def test_constant_cams_give_the_documented_metric_values(ws, capsys, tmp_path, factory):
    """All-zero activations or all-zero gradients: every CAM is constant, and every metric takes the
    value metrics.py documents for a map without structure (no NaN; nulls only where a test is undefined)."""
    store = tmp_path / "c.zarr"
    code, _, err = run(capsys, ["extract", "--model", f"{ws['user']}:{factory}", "--data", "builtin:digits",
                                "--limit", "40", "--device", "cpu", "--store", store])
    assert code == 0, err
    s = camstat.open_store(store)
    for method in s.methods:
        assert np.isfinite(s.raw_maps(method)).all() and s.maps(method).max() == 0
    out = tmp_path / "c.json"
    code, _, err = run(capsys, ["consistency", store, "--method", "gradcam++", "--min-group", "1", "--permutations",
                                "50", "--bootstrap", "20", "--json", out])
    assert code == 0, err

    def no_constants(token):
        raise AssertionError(f"{token} in the JSON")

    result = json.loads(out.read_text(), parse_constant=no_constants)
    group = zarr.open_group(str(store), mode="r")[result["derived"]]
    undefined = group["reference_undefined"][:]
    assert result["undefined_reference"]["n"] == undefined.sum()
    expected = {"dist": 0.0, "ssim": 1.0, "iou": 1.0, "corr": 0.0, "com": 0.0, "entropy": 1.0,
                "spread": float(metrics.spread(np.ones((1, 32, 32)))[0])}  # documented: a uniform map's
    assert set(result["metrics"]) == set(expected)
    # IoU of a constant map has no top-q region: NaN, counted and left out of the tests (never raster order)
    assert np.isnan(group["iou"][:]).all()
    del expected["iou"]
    for name, value in expected.items():
        values = group[name][:]
        needs_reference = name not in ("entropy", "spread")
        defined = values[~undefined] if needs_reference else values
        assert np.isfinite(defined).all() and np.allclose(defined, value, atol=1e-5), name
        m = result["metrics"][name]
        pooled = m["pooled"]
        assert pooled["auc_within_class"] == 0.5 and pooled["auc_marginal"] == 0.5 and pooled["p_permutation"] == 1.0
        if pooled["odds_ratio_per_sd"] is None:  # undefined for a constant metric, and said so
            assert any("constant" in note for note in pooled["notes"])
        for row in m["per_class"]:
            assert row["p_value"] == 1.0 and row["cliffs_delta"] == 0.0
        # classes without correct (or incorrect) images are listed with the reason, never dropped silently
        assert m["skipped"] and all("n_correct=" in reason or "n_incorrect=" in reason for _, reason in m["skipped"])
        assert len(m["per_class"]) + len(m["skipped"]) == 10


def test_same_checkpoint_same_store_and_same_seed_same_json(ws, capsys, tmp_path):
    for name in ("a", "b"):
        assert main(["extract", "--model", "camstat:smallcnn", "--checkpoint", str(ws["ckpt"]), *DIGITS,
                     "--chunk", "8", "--batch-size", "5", "--store", str(tmp_path / f"{name}.zarr")]) == 0
    assert store_bytes(tmp_path / "a.zarr") == store_bytes(tmp_path / "b.zarr")
    args = ["consistency", str(tmp_path / "a.zarr"), "--min-group", "1", "--permutations", "99", "--bootstrap",
            "50", "--control", "permuted", "--null-repeats", "20", "--seed", "7", "--no-save"]
    assert main([*args, "--json", str(tmp_path / "1.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "2.json")]) == 0
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    """test_train interrupts a run by an exception; here the process dies by SIGKILL (no cleanup at all)."""
    import signal
    import time

    from camstat.runs import read_records

    args = ["train-reg", "--model", "camstat:smallcnn", "--data", "builtin:digits", "--limit", "192",
            "--eval-limit", "60", "--batch-size", "32", "--epochs", "3", "--lambda", "0.3", "--loss", "variance",
            "--seed", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "camstat", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not read_records(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # somewhere in epoch 2
    proc.wait()
    done = len(read_records(killed))
    assert 1 <= done < 3, done
    assert main([*args, "--out", str(killed)]) == 0
    info = json.loads((killed / "run.json").read_text())
    # killed between the state and metrics.jsonl writes, the state (one epoch ahead) is what counts
    assert info["status"] == "complete" and info["resumes"][0]["epoch"] in (done, done + 1)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert drop(read_records(killed)) == drop(read_records(tmp_path / "whole"))
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
