"""npz:PATH in MedMNIST's layout: grayscale and RGB arrays, splits, class
names, and corrupt or mislabelled files refused with one line (exit 2)."""

import numpy as np
import pytest
import torch

from camstat.cli import main
from camstat.data import load_dataset
from camstat.errors import CamstatError


def _medmnist(path, rgb=False, counts=(6, 2, 4), side=8, seed=0, **extra):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, side, side, 3) if rgb else (n, side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
    arrays.update(extra)
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.mark.parametrize("rgb", [False, True])
def test_npz_images_reach_the_model_exactly(tmp_path, rgb):
    arrays = _medmnist(tmp_path / "m.npz", rgb=rgb)
    for split in ("train", "val", "test"):
        ds = load_dataset(f"npz:{tmp_path / 'm.npz'}", split, normalize="none")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0]
        assert len(ds) == len(images) and ds.size == (8, 8) and ds.classes == ["0", "1", "2"]
        assert np.array_equal(ds.labels, labels)
        expected = images if rgb else np.repeat(images[..., None], 3, axis=-1)
        for i in range(len(ds)):
            tensor, label, _ = ds[i]
            assert label == labels[i]
            assert torch.equal(tensor, torch.from_numpy(expected[i]).permute(2, 0, 1).float() / 255)


def test_npz_class_names_option_and_size(tmp_path):
    _medmnist(tmp_path / "m.npz")
    ds = load_dataset(f"npz:{tmp_path / 'm.npz'}?classes=a,b,c", "val", size=16)
    assert ds.classes == ["a", "b", "c"] and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(CamstatError, match="labels up to 2 .* names 2 classes"):
        load_dataset(f"npz:{tmp_path / 'm.npz'}?classes=a,b", "val")
    with pytest.raises(CamstatError, match="unknown option 'k'"):
        load_dataset(f"npz:{tmp_path / 'm.npz'}?k=3", "val")
    with pytest.raises(CamstatError, match="unknown split 'dev'"):
        load_dataset(f"npz:{tmp_path / 'm.npz'}", "dev")


def test_npz_minmax_intensity(tmp_path):
    arrays = _medmnist(tmp_path / "m.npz")
    ds = load_dataset(f"npz:{tmp_path / 'm.npz'}", "test", normalize="none", intensity="minmax")
    image = arrays["test_images"][1].astype(np.float64)
    expected = (image - image.min()) / (image.max() - image.min())
    assert np.allclose(ds[1][0][0].numpy(), expected, atol=1e-6)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _bad_files(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)
    labels = np.zeros((4, 1), np.uint8)
    cut = tmp_path / "cut.npz"
    _medmnist(cut)
    cut.write_bytes(cut.read_bytes()[:200])
    return {
        "lacks test_labels": _write(tmp_path / "a.npz", test_images=images),
        "holds 4 images but test_labels 3 labels": _write(tmp_path / "b.npz", test_images=images, test_labels=labels[:3]),
        "multi-label": _write(tmp_path / "c.npz", test_images=images, test_labels=np.zeros((4, 5), np.uint8)),
        "expected \\(N, H, W\\)": _write(tmp_path / "d.npz", test_images=np.zeros((4, 8), np.uint8), test_labels=labels),
        "class numbers": _write(tmp_path / "e.npz", test_images=images, test_labels=labels - 1.5),
        "cannot read .* as an .npz": f"npz:{cut}",
        "not found": f"npz:{tmp_path / 'missing.npz'}",
    }


def test_corrupt_or_mislabelled_npz_is_refused(tmp_path):
    for message, spec in _bad_files(tmp_path).items():
        with pytest.raises(CamstatError, match=message):
            load_dataset(spec, "test")


def test_corrupt_npz_exits_2_with_one_line(tmp_path, capsys):
    for message, spec in _bad_files(tmp_path).items():
        code = main(["extract", "--model", "camstat:smallcnn", "--data", spec, "--store", str(tmp_path / "s.zarr"),
                     "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err, (message, err)
        assert not (tmp_path / "s.zarr").exists()


def test_classes_option_names_npz_classes_in_the_store(tmp_path, capsys):
    from camstat import open_store

    _medmnist(tmp_path / "m.npz", counts=(6, 2, 12), side=16)
    store = tmp_path / "s.zarr"
    args = ["extract", "--model", "camstat:smallcnn", "--data", f"npz:{tmp_path / 'm.npz'}", "--split", "test",
            "--classes", "a,b,c", "--methods", "gradcam", "--device", "cpu"]
    assert main([*args, "--store", str(store)]) == 0
    s = open_store(store)
    assert s.classes == ["a", "b", "c"] and s.attrs["data"].endswith("?classes=a,b,c")
    assert s.dataset().classes == ["a", "b", "c"]  # provenance rebuilds the same names
    capsys.readouterr()
    assert main([*args[:-2], "--data", f"imagefolder:{tmp_path}", "--store", str(tmp_path / "t.zarr")]) == 2
    assert "--classes names the classes of npz: data only" in capsys.readouterr().err
