"""Extraction into the store: equality with pytorch-grad-cam, resume, shards, locks, streaming."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camstat
from camstat.cli import main
from camstat.data import load_dataset
from camstat.errors import CamstatError, command_line_spelling
from camstat.extract import extract

# A model file as a user would write one; SLOW makes every forward take a while,
# so that tests can kill or race a running extraction.
MODEL_FILE = '''
import os, time, torch
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        time.sleep(float(os.environ.get("CAMSTAT_TEST_SLOW", "0")))
        return self.head(self.features(x).mean(dim=(2, 3)))

def make(num_classes=10):
    torch.manual_seed(0)
    return Net(num_classes)
'''


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "mynet.py"
    path.write_text(MODEL_FILE)
    return path


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every array chunk and array/group metadata file except the root's provenance (and consolidated metadata)."""
    out = {}
    for f in sorted(Path(path).rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and rel != "zarr.json":
            out[rel] = f.read_bytes()
    return out


def file_hashes(path: Path) -> dict[str, str]:
    return {f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(path).rglob("*")) if f.is_file()}


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "camstat", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def test_resnet18_maps_equal_pytorch_grad_cam(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / "r18.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    store = tmp_path / "r18.zarr"
    res = extract("torchvision:resnet18", "builtin:digits", store, checkpoint=str(ckpt), num_classes=10,
                  size=64, limit=12, batch_size=5, chunk=8, device="cpu")
    assert res.n == 12 and res.layers == ["layer4"] and res.complete

    s = camstat.open_store(store)
    ds = load_dataset("builtin:digits", "test", size=64, normalize=tuple(map(tuple, s.attrs["normalize"])), limit=12)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    net.eval()
    pred = net(x).argmax(1)
    assert np.array_equal(s.samples["pred"], pred.numpy())
    targets = [ClassifierOutputTarget(int(p)) for p in pred]
    for method, cls in (("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)):
        ref = cls(model=net, target_layers=[net.layer4])(x, targets)
        ours = s.maps(method, normalize="minmax")
        assert ours.shape == (12, 64, 64)
        assert np.abs(ours - ref).max() <= 1e-4


def test_file_factory_maps_equal_pytorch_grad_cam(tmp_path, model_file):
    store = tmp_path / "user.zarr"
    extract(f"{model_file}:make", "builtin:digits", store, limit=10, device="cpu", normalize="none")
    s = camstat.open_store(store)
    assert s.layers == ["features"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet_ref", model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.make(10).eval()
    ds = load_dataset("builtin:digits", "test", normalize=((0.0,) * 3, (1.0,) * 3), limit=10)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    targets = [ClassifierOutputTarget(int(p)) for p in s.samples["pred"]]
    for method, cls in (("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)):
        ref = cls(model=net, target_layers=[net.features])(x, targets)
        assert np.abs(s.maps(method) - ref).max() <= 1e-4


def test_store_contents_and_api(tmp_path):
    store = tmp_path / "shapes.zarr"
    res = extract("camstat:smallcnn", "builtin:shapes?n=40", store, split="test",
                  methods="gradcam,gradcam++,layercam", target="both", limit=30, chunk=16, device="cpu")
    s = camstat.open_store(store)
    a = s.attrs
    for key in ("camstat_schema", "created", "model",
                "checkpoint_sha256", "data", "split", "classes", "input_size", "normalize", "methods", "layers",
                "targets", "seed", "command", "versions"):
        assert key in a
    assert a["versions"]["torch"] == torch.__version__ and a["versions"]["camstat"] == camstat.__version__
    sm = s.samples
    assert set(sm) >= {"index", "label", "pred", "confidence", "correct", "logits", "done"}
    assert sm["done"].all() and len(sm["index"]) == 30
    assert np.array_equal(sm["correct"], sm["pred"] == sm["label"])
    probs = torch.softmax(torch.from_numpy(sm["logits"]), 1).numpy()
    assert np.allclose(sm["confidence"], probs.max(1), atol=1e-6)
    assert res.accuracy == pytest.approx(sm["correct"].mean())
    raw = s.raw_maps("gradcam", target="true")
    h, w = a["layer_shapes"][s.layers[0]]
    assert raw.shape == (30, h, w) and raw.dtype == np.float32 and raw.min() >= 0
    assert s.maps("gradcam").shape == (30, *s.input_size)
    assert s.maps("gradcam", size=(8, 8), normalize="sum").sum(axis=(1, 2)) == pytest.approx(np.ones(30), abs=1e-5)
    assert np.array_equal(s.maps("layercam", normalize="none", size=(h, w)), s.raw_maps("layercam"))
    assert s.has_masks and s.masks().shape == (30, *s.input_size)
    arr = s.root["maps/gradcam/" + s.layers[0] + "/pred"]
    assert arr.chunks[0] == 16 and arr.compressors  # chunked along samples, compressed
    with pytest.raises(CamstatError, match="no method"):
        s.maps("scorecam")


def test_existing_store_is_refused_and_unchanged(tmp_path):
    store = tmp_path / "s.zarr"
    args = ["extract", "--model", "camstat:smallcnn", "--num-classes", "10", "--data", "builtin:digits",
            "--limit", "20", "--store", str(store), "--device", "cpu"]
    assert main(args) == 0
    before = file_hashes(store)
    assert main(args) == 2  # exists, no --resume/--overwrite
    assert main([*args[:-4], "--methods", "hirescam", "--resume", "--store", str(store), "--device", "cpu"]) == 2
    assert file_hashes(store) == before
    assert main([*args, "--overwrite", "--methods", "hirescam"]) == 0
    assert camstat.open_store(store).methods == ["hirescam"]


def test_two_runs_are_bitwise_equal(tmp_path):
    for name in ("a", "b"):
        extract("camstat:smallcnn", "builtin:digits", tmp_path / f"{name}.zarr", num_classes=10, limit=40,
                chunk=16, batch_size=7, device="cpu")
    assert store_bytes(tmp_path / "a.zarr") == store_bytes(tmp_path / "b.zarr")


def done_count(store: Path) -> int:
    """Samples marked done so far, read while a writer runs (Zarr writes each chunk file atomically)."""
    import zarr

    try:
        return int(zarr.open_group(str(store), mode="r", use_consolidated=False)["samples/done"][:].sum())
    except Exception:  # the store is not created yet
        return 0


def test_a_resumed_run_processes_exactly_the_pending_chunks(tmp_path, monkeypatch):
    from camstat.store import StoreWriter

    store = tmp_path / "r.zarr"
    kw = dict(num_classes=10, limit=40, chunk=8, batch_size=3, device="cpu")  # 5 chunks
    first = extract("camstat:smallcnn", "builtin:digits", store, shard="1/3", **kw)  # chunks 1 and 2
    assert first.processed == 16 and not first.complete
    written = []
    original = StoreWriter.write_chunk
    monkeypatch.setattr(StoreWriter, "write_chunk", lambda self, k, *a, **kw_: (written.append(k), original(self, k, *a, **kw_)))
    resumed = extract("camstat:smallcnn", "builtin:digits", store, mode="resume", **kw)
    assert resumed.processed == 24 and sorted(written) == [0, 3, 4] and resumed.complete
    written.clear()
    again = extract("camstat:smallcnn", "builtin:digits", store, mode="resume", **kw)
    assert again.processed == 0 and written == []
    ref = tmp_path / "ref.zarr"
    extract("camstat:smallcnn", "builtin:digits", ref, **kw)
    assert store_bytes(store) == store_bytes(ref)


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_equal(tmp_path, model_file):
    common = ["extract", "--model", f"{model_file}:make", "--data", "builtin:digits", "--limit", "96",
              "--chunk", "8", "--batch-size", "4", "--device", "cpu"]
    ref = tmp_path / "ref.zarr"
    assert main([*common, "--store", str(ref)]) == 0
    for trial, at in enumerate((8, 40, 80)):  # kill after ~1, 5 and 10 of the 12 chunks
        store = tmp_path / f"killed{trial}.zarr"
        proc = cli(*common, "--store", str(store), env={"CAMSTAT_TEST_SLOW": "0.05"})
        deadline = time.time() + 120
        while done_count(store) < at and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = done_count(store)
        assert 0 < done < 96, f"trial {trial}: the kill landed at {done}/96 samples done"
        code = main([*common, "--store", str(store), "--resume", "--json", str(tmp_path / f"r{trial}.json")])
        assert code == 0
        assert json.loads((tmp_path / f"r{trial}.json").read_text())["processed"] == 96 - done
        assert store_bytes(store) == store_bytes(ref), f"trial {trial}"


@pytest.mark.slow
def test_shards_together_equal_one_process(tmp_path, model_file):
    common = ["extract", "--model", f"{model_file}:make", "--data", "builtin:digits", "--limit", "64",
              "--chunk", "8", "--batch-size", "2", "--device", "cpu"]
    one = tmp_path / "one.zarr"
    assert main([*common, "--store", str(one)]) == 0
    both = tmp_path / "both.zarr"
    slow = {"CAMSTAT_TEST_SLOW": "0.2"}  # 16 batches per shard: the two overlap
    procs = [cli(*common, "--store", str(both), "--shard", f"{k}/2", env=slow) for k in range(2)]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err
    s = camstat.open_store(both)
    assert s.complete
    assert store_bytes(both) == store_bytes(one)


def test_a_second_writer_of_the_same_chunks_is_refused(tmp_path, capsys):
    from camstat.locks import LockFile

    store = tmp_path / "l.zarr"
    args = ["extract", "--model", "camstat:smallcnn", "--num-classes", "10", "--data", "builtin:digits",
            "--limit", "40", "--chunk", "8", "--device", "cpu", "--store", str(store)]
    with LockFile(store) as shard:  # another writer (a separate lock holder, as another process is) at work
        assert shard.lock(3, 2)  # on chunks 3 and 4 of 5
        assert main([*args, "--resume"]) == 2
        assert "(chunks 0 to 4 are locked)" in capsys.readouterr().err
        assert main([*args, "--resume", "--shard", "1/5"]) == 0  # chunk 1 is free
        assert main([*args, "--resume", "--shard", "3/5"]) == 2
        assert "(chunk 3 is locked)" in capsys.readouterr().err
        assert main([*args, "--overwrite"]) == 2
    assert main([*args, "--resume"]) == 0 and camstat.open_store(store).complete


def test_shard_numbering_and_invalid_shard(tmp_path):
    from camstat.store import chunk_range, parse_shard

    parts = [chunk_range(1000, 64, (k, 3)) for k in range(3)]
    assert [c for r in parts for c in r] == list(range(16))
    assert parse_shard("0/1") == (0, 1)
    for bad in ("2/2", "1", "a/b", "-1/2", "1/0"):
        with pytest.raises(CamstatError, match="invalid shard"):  # named as extract()'s argument in Python
            parse_shard(bad)
        with command_line_spelling(), pytest.raises(CamstatError, match="invalid --shard"):
            parse_shard(bad)


def test_peak_memory_does_not_grow_with_dataset_size(tmp_path, model_file):
    """Maps at 32x32 for 2 methods and 2 targets: 16 KB per image, so the 5,700 more images of the larger run
    held in memory would add ~93 MB. The data itself (generated in memory) adds ~20-33 MB; the limit leaves room
    for that and for the run-to-run noise (up to ~15 MB), not for a leak.

    The peak is the child's own (VmHWM of /proc/self/status): ``ru_maxrss`` of a
    child started from pytest reports the parent's peak when that is larger.
    """
    code = (
        "import sys; from camstat.extract import extract;"
        "extract('camstat:smallcnn', 'builtin:shapes?n=6000', sys.argv[1], limit=int(sys.argv[2]),"
        " layer='features.stage1.0', target='both', device='cpu', chunk=128, batch_size=64);"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1])"
    )
    peaks = {}
    for n in (300, 6000):
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"m{n}.zarr"), str(n)],
                             capture_output=True, text=True, check=True)
        peaks[n] = int(res.stdout.split()[-1]) / 1024  # MB
    assert peaks[6000] - peaks[300] < 70, peaks  # measured: 20-33 MB; holding the maps: 114 MB


def test_info_and_layers_commands(tmp_path, capsys):
    store = tmp_path / "i.zarr"
    extract("camstat:smallcnn", "builtin:digits", store, num_classes=10, limit=16, device="cpu")
    assert main(["info", str(store), "--json", str(tmp_path / "info.json")]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["n"] == 16 and info["complete"] and info["methods"] == ["gradcam", "gradcam++"]
    assert main(["layers", "--model", "torchvision:resnet18", "--num-classes", "10", "--size", "64",
                 "--json", str(tmp_path / "layers.json")]) == 0
    layers = json.loads((tmp_path / "layers.json").read_text())
    assert layers["auto"] == ["layer4"]
    assert any(x["name"] == "layer4" and x["shape"][-2:] == [2, 2] for x in layers["layers"])
