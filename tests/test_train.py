"""H2 training: differentiable CAMs, the loss terms, schedules, train-reg runs, resume, validation, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camstat import models
from camstat.cams import CamEngine, scale_maps
from camstat.cli import main
from camstat.data import load_dataset, parse_normalize
from camstat.errors import CamstatError
from camstat.extract import extract
from camstat.runs import read_records
from camstat.training.config import TrainConfig, lambda_at, loss_weights, parse_hybrid
from camstat.training.evaluate import own_reference, ssim_pairs
from camstat.training.losses import CamHook, CamLoss, mean_term, spread_term, training_cams, variance_term
from camstat.training.means import class_means_from_store
from camstat.training.train import train

LOSS_KINDS = ("mean", "variance", "spread", "neg-variance", "hybrid")
# a tiny, fast configuration of digits runs
TINY = dict(model="camstat:smallcnn", data="builtin:digits", limit=192, eval_limit=60, batch_size=32, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(c: int, h: int, w: int) -> torch.Tensor:
    """One Gaussian blob per class in a different quadrant: stand-in class means."""
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([torch.exp(-((yy - (k // 2 + 0.5) * h / 2) ** 2 + (xx - (k % 2 + 0.5) * w / 2) ** 2) / 4)
                        for k in range(c)])


def batch(n=16, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % classes


def cams_of(net, layer, x, y, method):
    hook = CamHook(models.get_layer(net, layer))
    hook.active = True
    logits = net(x)
    hook.active = False
    maps = training_cams(hook.take(), logits.gather(1, y[:, None])[:, 0], method)
    hook.remove()
    return logits, maps


# -- differentiable CAM == extraction engine ----------------------------------------------------------


@pytest.mark.parametrize("spec,layer", [("camstat:smallcnn", "features"), ("camstat:resnet20", "layer3"),
                                        ("camstat:resnet20", "layer2")])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_differentiable_cam_equals_extraction_engine(spec, layer, method):
    torch.manual_seed(0)
    net = models.build_model(spec, 10).eval()
    x, y = batch(6, 10)
    _, maps = cams_of(net, layer, x, y, method)
    assert maps.dtype == torch.float32 and maps.requires_grad
    with CamEngine(net, [layer], [method]) as engine:
        out = engine(x, y, ["true"])
    raw = out.maps[(method, layer, "true")]
    ref = scale_maps(raw, tuple(raw.shape[-2:]))  # the store's minmax maps at the layer's resolution
    np.testing.assert_allclose(maps.detach().numpy(), ref, rtol=0, atol=1e-6)


def test_cams_under_bf16_autocast_stay_float32():
    torch.manual_seed(0)
    net = models.build_model("camstat:smallcnn", 4).train()
    x, y = batch(8)
    hook = CamHook(models.get_layer(net, "features"))
    hook.active = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    hook.active = False
    acts = hook.take()
    assert acts.dtype == torch.bfloat16
    maps = training_cams(acts, logits.gather(1, y[:, None])[:, 0], "gradcam++")
    assert maps.dtype == torch.float32
    loss = CamLoss({"mean": 1.0}, means=blobs(4, 8, 8), num_classes=4)(maps, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# -- the loss terms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_loss_gradients_are_finite_and_nonzero(kind, method):
    torch.manual_seed(0)
    net = models.build_model("camstat:smallcnn", 4).train()
    x, y = batch(16)
    _, maps = cams_of(net, "features", x, y, method)
    weights = loss_weights(kind, "mean=1,variance=1,spread=1")
    loss = CamLoss(weights, means=blobs(4, 8, 8), num_classes=4)(maps, y)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    # through the activations to the first convolution, and through the gradient to the head
    assert grads["features.stage1.0.weight"].abs().sum() > 0
    assert grads["fc.weight"].abs().sum() > 0


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_each_loss_decreases_its_own_term(kind):
    """Cross-entropy + 1.0 x the term on one batch: the term falls (neg-variance: the variance rises)."""
    torch.manual_seed(0)
    net = models.build_model("camstat:smallcnn", 4).train()
    x, y = batch(32)
    cam_loss = CamLoss(loss_weights(kind, "mean=1,spread=1"), means=blobs(4, 8, 8), num_classes=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    values = []
    for _ in range(25):
        logits, maps = cams_of(net, "features", x, y, "gradcam")
        term = cam_loss(maps, y)
        values.append(term.item())
        opt.zero_grad()
        (F.cross_entropy(logits, y) + term).backward()
        opt.step()
    first, last = values[0], np.mean(values[-3:])
    assert last < first - 0.15 * abs(first), values


def test_loss_terms_values():
    maps = torch.rand(6, 8, 8)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    means = torch.rand(3, 8, 8)
    assert torch.allclose(mean_term(maps, labels, means), ((maps - means[labels]) ** 2).mean())
    # variance: class 2 has one member and is left out
    expected = torch.cat([((maps[:2] - maps[:2].mean(0)) ** 2).mean(dim=(1, 2)),
                          ((maps[2:5] - maps[2:5].mean(0)) ** 2).mean(dim=(1, 2))]).mean()
    assert torch.allclose(variance_term(maps, labels, 3), expected)
    assert variance_term(maps, torch.arange(6), 6).item() == 0.0
    # spread is metrics.spread (an all-zero map counts as uniform)
    from camstat import metrics

    maps[0] = 0
    assert spread_term(maps).item() == pytest.approx(metrics.spread(maps.numpy()).mean(), abs=1e-6)
    assert parse_hybrid("mean=1, spread=0.5") == {"mean": 1.0, "spread": 0.5}
    for bad in ("mean", "foo=1", "mean=-1", "mean=0"):
        with pytest.raises(CamstatError):
            parse_hybrid(bad)
    with pytest.raises(ValueError, match="class mean maps"):
        CamLoss({"mean": 1.0})
    assert loss_weights("spread", "mean=2") == {"spread": 1.0}


def test_lambda_schedules():
    assert [lambda_at(e, 0.2, "constant", 4) for e in range(4)] == [0.2] * 4
    assert [lambda_at(e, 0.4, "linear", 4) for e in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [lambda_at(e, 1.0, "curriculum", 6, warmup=2, ramp=2) for e in range(6)] == [0, 0, 0.5, 1, 1, 1]
    assert [lambda_at(e, 0.0, "curriculum", 3, 1, 1) for e in range(3)] == [0, 0, 0]
    with pytest.raises(CamstatError, match="schedule"):
        TrainConfig(schedule="cosine").validate()


def test_own_reference_is_leave_one_out():
    rng = np.random.default_rng(0)
    maps = rng.random((7, 4, 4)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    correct = np.array([True, True, False, True, False, True, False])
    ref, valid = own_reference(maps, labels, correct, 3)
    np.testing.assert_allclose(ref[0], maps[1], atol=1e-6)  # class 0 without image 0: only image 1
    np.testing.assert_allclose(ref[2], maps[:2].mean(0), atol=1e-6)  # incorrect: all correct of its class
    assert valid.tolist() == [True, True, True, False, True, False, True]


# -- runs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A baseline run and its train-split store (the --means of the regularised runs)."""
    root = tmp_path_factory.mktemp("h2")
    run = train(TrainConfig(out=str(root / "base"), epochs=2, lam=0.0, lr=0.1, **TINY))
    store = root / "base_train.zarr"
    extract("camstat:smallcnn", "builtin:digits", store, split="train", checkpoint=str(root / "base" / "model.pt"),
            methods="gradcam,gradcam++", limit=TINY["limit"], device="cpu")
    return root, run, store


def test_run_directory_contents(base):
    root, run, store = base
    out = root / "base"
    assert sorted(p.name for p in out.iterdir() if p.name != ".camstat-train.lock") == sorted(
        ["run.json", "metrics.jsonl", "state.pt", "model.pt", "heldout.npz"])
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 1 and info["lambda"] == 0.0
    assert info["options"]["seed"] == 0 and info["versions"]["torch"] == torch.__version__
    assert info["resolved"]["layer"] == "features" and info["resolved"]["layer_size"] == [8, 8]
    records = read_records(out)
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("epoch", "lambda", "loss", "loss_cls", "loss_cam", "accuracy", "dist", "ssim", "seconds", "lr"):
        assert key in records[-1]
    assert records[-1]["loss_cam"] is None  # lambda 0: the CAM is never computed
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    loaded = models.load_model(None, checkpoint=out / "model.pt")
    assert loaded.spec == "camstat:smallcnn" and loaded.meta["size"] == [32, 32]
    assert loaded.meta["classes"] == [str(d) for d in range(10)] and len(loaded.meta["normalize"]) == 2
    with np.load(out / "heldout.npz") as h:
        assert h["maps"].shape == (60, 8, 8) and h["correct"].mean() == pytest.approx(records[-1]["accuracy"])
        assert np.nanmean(h["dist"]) == pytest.approx(records[-1]["dist"])


def test_class_means_from_store(base, tmp_path):
    root, run, store = base
    kw = dict(model="camstat:smallcnn", classes=[str(d) for d in range(10)], method="gradcam", layer="features",
              size=(8, 8))
    first = class_means_from_store(store, **kw)
    second = class_means_from_store(store, **kw)
    assert second.cached
    np.testing.assert_array_equal(first.means, second.means)
    from camstat.store import open_store

    s = open_store(store)
    maps, smp = s.maps("gradcam", "features", "pred", size=(8, 8)), s.samples
    for c in range(10):
        sel = (smp["label"] == c) & smp["correct"]
        if sel.any():
            np.testing.assert_allclose(first.means[c], maps[sel].mean(0), atol=1e-6)
    with pytest.raises(CamstatError, match="model"):
        class_means_from_store(store, **{**kw, "model": "camstat:resnet20"})
    with pytest.raises(CamstatError, match="classes"):
        class_means_from_store(store, **{**kw, "classes": list("abcdefghij")})
    with pytest.raises(CamstatError, match="layer"):
        class_means_from_store(store, **{**kw, "layer": "features.stage2"})
    test_store = tmp_path / "test.zarr"
    extract("camstat:smallcnn", "builtin:digits", test_store, split="test", checkpoint=str(root / "base" / "model.pt"),
            methods="gradcam", limit=20, device="cpu")
    with pytest.raises(CamstatError, match="train"):
        class_means_from_store(test_store, **kw)


def plain_training(epochs: int, seed: int, batch_size: int, limit: int) -> dict:
    """Textbook cross-entropy training with the data, order, optimiser and schedule train-reg documents."""
    ds = load_dataset("builtin:digits", "train", normalize=parse_normalize(None, None), limit=limit, augment=True)
    torch.manual_seed(seed)
    net = models.build_model("camstat:smallcnn", 10)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1 * batch_size / 128, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y, _ in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.state_dict()


def test_lambda_zero_is_plain_training_bit_for_bit(tmp_path):
    cfg = dict(TINY, epochs=2, seed=3)
    run = train(TrainConfig(out=str(tmp_path / "l0"), lam=0.0, loss="variance", cam="gradcam++",
                            schedule="curriculum", **cfg))
    expected = plain_training(2, 3, TINY["batch_size"], TINY["limit"])
    got = torch.load(tmp_path / "l0" / "model.pt", weights_only=True)["state_dict"]
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    # a curriculum's warm-up epoch is plain training too; once lambda > 0 the run departs
    cur = train(TrainConfig(out=str(tmp_path / "cur"), lam=0.5, loss="variance", cam="gradcam++",
                            schedule="curriculum", cam_warmup=1, cam_ramp=1, **cfg))
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    assert drop(cur.records[0]) == drop(run.records[0])
    assert cur.records[1]["lambda"] == 0.5 and cur.records[1]["loss_cam"] is not None
    assert cur.records[1]["loss_cls"] != run.records[1]["loss_cls"]


class Stop(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(base, tmp_path):
    root, _, store = base
    cfg = dict(TINY, epochs=3, lam=0.3, loss="hybrid", hybrid="mean=1,variance=1", cam="gradcam++",
               means=str(store), means_update="ema", ema_decay=0.9, seed=1)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **cfg))

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Stop

    part = TrainConfig(out=str(tmp_path / "part"), **cfg)
    with pytest.raises(Stop):
        train(part, on_epoch=stop_after_first)
    assert [r["epoch"] for r in read_records(part.out)] == [1]
    steps = json.loads((tmp_path / "part" / "run.json").read_text())["resolved"]["steps_per_epoch"]

    def stop_in_third(done, total):
        if done == 2 * steps + 2:  # mid-epoch: the last saved state is epoch 2's
            raise Stop

    with pytest.raises(Stop):
        train(part, progress=stop_in_third)
    resumed = train(part)
    assert resumed.resumed_from == 2
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert drop(read_records(part.out)) == drop(read_records(whole.out))
    assert read_records(whole.out)[0]["loss_cam"] > 0
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with np.load(tmp_path / "whole" / "heldout.npz") as h1, np.load(tmp_path / "part" / "heldout.npz") as h2:
        for key in h1.files:
            np.testing.assert_array_equal(h1[key], h2[key])
    info = json.loads((tmp_path / "part" / "run.json").read_text())
    assert [r["epoch"] for r in info["resumes"]] == [1, 2]
    # a finished run is reported, not retrained
    again = train(part)
    assert again.already_complete and again.epochs == 3


@pytest.mark.parametrize("args,match", [
    (["--lambda", "-0.1"], "lambda"),
    (["--lambda", "abc"], "lambda"),
    (["--lambda", "nan"], "lambda"),
    (["--loss", "cosine"], "loss"),
    (["--schedule", "step"], "schedule"),
    (["--cam", "scorecam"], "cam"),
    (["--lambda", "0.2"], "--means"),
    (["--lambda", "0.2", "--loss", "hybrid", "--hybrid", "variance=1,mean=1"], "--means"),
    (["--means-update", "ema", "--lambda", "0.2", "--loss", "variance"], "--means"),
    (["--epochs", "0"], "epochs"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, match):
    code = main(["train-reg", "--data", "builtin:digits", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and match in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_out_with_another_configuration(tmp_path, capsys):
    args = ["train-reg", "--model", "camstat:smallcnn", "--data", "builtin:digits", "--limit", "64",
            "--eval-limit", "30", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main(args + ["--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["epochs"] == 1 and 0 <= result["accuracy"] <= 1
    capsys.readouterr()
    assert main(args + ["--lambda", "0.1", "--loss", "spread"]) == 2
    err = capsys.readouterr().err
    assert "other options" in err and "--overwrite" in err
    assert main(args) == 0
    assert "already complete" in " ".join(capsys.readouterr().out.split())
    assert main(args + ["--lambda", "0.1", "--loss", "spread", "--overwrite"]) == 0
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["lambda"] == 0.1 and info["loss"] == "spread"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(args[:-1] + [str(tmp_path / "other")]) == 2
    # a second trainer of the same directory is refused while the first holds it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"),
        str(tmp_path / "r" / ".camstat-train.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(args + ["--overwrite"]) == 2
        assert "another process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "camstat",
           "train-reg", "--model", "camstat:smallcnn", "--data", "builtin:digits", "--limit", "128",
           "--eval-limit", "40", "--batch-size", "32", "--epochs", "1", "--lambda", "0.2", "--loss", "variance",
           "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.name != ".camstat-train.lock") == sorted(
        ["run.json", "metrics.jsonl", "state.pt", "model.pt", "heldout.npz"])
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "complete"
    assert info["resolved"]["batch_size_per_rank"] == 16
    records = read_records(out)
    assert len(records) == 1 and records[0]["loss_cam"] > 0
    state = torch.load(out / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # every rank's generators, for an exact resume
    models.load_model(None, checkpoint=out / "model.pt")


def test_ssim_of_maps_under_7x7_is_taken_at_the_input_size():
    from camstat import metrics

    rng = np.random.default_rng(0)
    maps, refs = rng.random((5, 4, 4)), rng.random((5, 4, 4))
    got = ssim_pairs(maps, refs, (16, 16))
    up = lambda a: F.interpolate(torch.tensor(a, dtype=torch.float32)[:, None], size=(16, 16), mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(got, metrics.ssim(up(maps), up(refs)), atol=1e-12)
    assert np.allclose(ssim_pairs(maps.repeat(2, 1).repeat(2, 2), maps.repeat(2, 1).repeat(2, 2), (8, 8)), 1.0)


def test_eval_split_defaults_to_val_and_test_is_evaluated_apart(tmp_path, monkeypatch):
    """A data set with a validation split: epochs are evaluated on it, the test split once at the end."""
    from camstat import data as data_mod

    original = data_mod.load_dataset

    def with_val(spec, split, **kw):  # digits has no val split: stand one in (30 test images)
        return original(spec, "test", **{**kw, "limit": 30}) if split == "val" else original(spec, split, **kw)

    monkeypatch.setattr(data_mod, "load_dataset", with_val)
    run = train(TrainConfig(out=str(tmp_path / "v"), epochs=1, **TINY))
    info = json.loads((tmp_path / "v" / "run.json").read_text())
    assert info["eval_split"] == "val" and info["resolved"]["n_heldout"] == 30
    assert info["test"]["split"] == "test" and info["test"]["n"] == TINY["eval_limit"] == run.test["n"]
    with np.load(tmp_path / "v" / "heldout.npz") as h:  # the per-image file is the test split's
        assert len(h["correct"]) == TINY["eval_limit"]
        assert info["test"]["accuracy"] == pytest.approx(h["correct"].mean())
    monkeypatch.setattr(data_mod, "load_dataset", original)
    plain = train(TrainConfig(out=str(tmp_path / "t"), epochs=1, **TINY))
    info = json.loads((tmp_path / "t" / "run.json").read_text())
    assert info["eval_split"] == "test"
    assert info["test"]["accuracy"] == plain.final["accuracy"] and info["test"]["dist"] == plain.final["dist"]
    with pytest.raises(CamstatError, match="validation split"):
        train(TrainConfig(out=str(tmp_path / "x"), epochs=1, eval_split="val", **TINY))


def test_config_to_args_round_trips_through_the_command_line(monkeypatch):
    from camstat.training import train as train_mod

    cfg = TrainConfig(out="runs/x", lam=0.2, loss="hybrid", hybrid="mean=1,variance=2", cam="gradcam++",
                      means="store/m.zarr", augment=False, amp=True, limit=64, eval_split="test", lr=0.05, **{
                          k: v for k, v in TINY.items() if k not in ("limit",)})
    seen = []
    monkeypatch.setattr(train_mod, "train", lambda config, **kw: seen.append(config) or (_ for _ in ()).throw(Stop))
    with pytest.raises(Stop):
        main(["--debug", "train-reg", *cfg.to_args()])
    assert seen[0] == cfg
