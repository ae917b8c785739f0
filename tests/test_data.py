"""Datasets: builtin data, on-disk formats written here in their real layouts,
bad images, --limit, normalisation."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from camstat.data import load_dataset, make_shapes, parse_normalize, stratified_order
from camstat.errors import CamstatError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _write_image(path, shape=(20, 24), seed=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert(mode) if mode != "RGB" else image
    image.save(path)
    return path


def _unnormalised(dataset, i):
    image, _, _ = dataset[i]
    mean = torch.tensor(dataset.normalize[0]).view(3, 1, 1)
    std = torch.tensor(dataset.normalize[1]).view(3, 1, 1)
    return image * std + mean


# --------------------------------------------------------------------------
# builtin:digits


def test_digits_split_is_stratified_deterministic_and_32px():
    train = load_dataset("builtin:digits", "train", normalize="none")
    test = load_dataset("builtin:digits", "test", normalize="none")
    assert (len(train), len(test)) == (1347, 450)
    assert train.classes == [str(d) for d in range(10)]
    counts_all = np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10)
    assert np.all(np.abs(np.bincount(test.labels, minlength=10) - 0.25 * counts_all) <= 1)
    assert np.array_equal(test.index, np.arange(450))

    again = load_dataset("builtin:digits", "test", normalize="none")
    assert np.array_equal(again.labels, test.labels)
    image, label, i = test[7]
    assert torch.equal(image, again[7][0]) and (label, i) == (int(test.labels[7]), 7)
    assert image.shape == (3, 32, 32) and test.size == (32, 32)
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.9
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # gray as RGB
    assert not test.has_masks
    with pytest.raises(CamstatError, match="no ground-truth masks"):
        test.masks([0])


def test_digits_resized_on_request():
    dataset = load_dataset("builtin:digits", "test", size=48)
    assert dataset[0][0].shape == (3, 48, 48) and dataset.raw_image(0).shape == (48, 48, 3)
    assert dataset.normalize == IMAGENET  # the default without checkpoint metadata


# --------------------------------------------------------------------------
# builtin:shapes


def test_shapes_are_deterministic_per_seed_and_split():
    a = make_shapes(30, "train", decoy=0.5)
    b = make_shapes(30, "train", decoy=0.5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, make_shapes(30, "train", decoy=0.5, seed=1).images)
    assert not np.array_equal(a.images, make_shapes(30, "test", decoy=0.5).images)
    # image i depends on i only, not on n
    assert np.array_equal(make_shapes(10, "train", decoy=0.5).images, a.images[:10])
    assert np.array_equal(a.labels, np.arange(30) % 6)


def test_shape_masks_cover_exactly_the_painted_object():
    data = make_shapes(60, "train", noise=0.0)
    for image, mask, name in zip(data.images, data.masks, np.array(data.classes)[data.labels]):
        assert 0.03 < mask.mean() < 0.35
        inside = image[mask]
        colour = inside[0]  # the silhouette's first pixel lies on its (painted) edge
        painted = np.all(image == colour, axis=-1)
        if name != "ring":
            assert np.all(inside == colour)  # the whole silhouette is the object
        assert (painted & ~mask).mean() < 0.01  # and the object stays inside it


def test_decoy_rate_and_information_as_configured():
    train = make_shapes(1200, "train", decoy=0.3)
    test = make_shapes(1200, "test", decoy=0.3)
    has = train.decoy >= 0
    assert abs(has.mean() - 0.3) < 0.05
    assert np.array_equal(train.decoy[has], train.labels[has])  # class-coded in training
    assert abs((test.decoy >= 0).mean() - 0.3) < 0.05
    agree = (test.decoy == test.labels)[test.decoy >= 0].mean()
    assert agree < 0.3  # uninformative in test: about 1/6
    # decoys do not move the objects
    clean = make_shapes(1200, "train", decoy=0.0)
    assert np.array_equal(clean.masks, train.masks) and (clean.decoy < 0).all()


def test_decoy_sits_in_a_corner_away_from_the_object():
    data = make_shapes(40, "train", decoy=1.0, noise=0.0)
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)])
    for image, mask, decoy in zip(data.images, data.masks, data.decoy):
        patch = np.all(image == colours[decoy], axis=-1)
        assert patch.sum() >= 16 and not (patch & mask).any()
        ys, xs = np.nonzero(patch)
        assert min(ys.min(), 31 - ys.max()) <= 2 and min(xs.min(), 31 - xs.max()) <= 2


def test_shapes_dataset_with_masks_options_and_size():
    dataset = load_dataset("builtin:shapes?n=24&classes=3&decoy=0.5&seed=2", "test", size=40)
    assert len(dataset) == 24 and dataset.classes == ["circle", "square", "triangle"]
    assert dataset.size == (40, 40) and dataset[0][0].shape == (3, 40, 40)
    masks = dataset.masks(np.array([3, 0]))
    assert masks.shape == (2, 40, 40) and masks.dtype == bool
    expected = make_shapes(24, "test", (40, 40), classes=3, decoy=0.5, seed=2)
    assert np.array_equal(masks, expected.masks[[3, 0]])
    assert np.array_equal(dataset.raw_image(3), expected.images[3])
    assert len(load_dataset("builtin:shapes", "train")) == 2000


@pytest.mark.parametrize(
    "spec, message",
    [
        ("builtin:shapes?colour=red", "unknown option 'colour'"),
        ("builtin:shapes?n=abc", "not a int"),
        ("builtin:shapes?decoy=1.5", "decoy=1.5 out of range"),
        ("builtin:shapes?classes=9", "classes=9 out of range"),
        ("builtin:shapes?n", "key=value"),
        ("builtin:digits?n=3", "unknown option 'n'"),
        ("builtin:mnist", "digits, shapes"),
        ("mnist:/tmp", "unknown data spec"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(CamstatError, match=message):
        load_dataset(spec, "train")


def test_unknown_split_and_bad_arguments():
    with pytest.raises(CamstatError, match="--split train|test"):
        load_dataset("builtin:digits", "val")
    with pytest.raises(CamstatError, match="on-bad-image"):
        load_dataset("builtin:digits", "test", on_bad_image="ignore")
    with pytest.raises(CamstatError, match="--limit"):
        load_dataset("builtin:digits", "test", limit=0)


# --------------------------------------------------------------------------
# cifar10:ROOT


def _write_cifar(root, per_batch=4):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 3, per_batch)]
        written[name] = (data, labels)
        # protocol 2 with bytes keys, as the original Python 2 files
        with open(base / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, handle, protocol=2)
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [b"cat", b"dog", b"frog"], b"num_vis": 3072}, handle, protocol=2)
    return base, written


def test_cifar10_batches(tmp_path):
    base, written = _write_cifar(tmp_path)
    train = load_dataset(f"cifar10:{tmp_path}", "train", normalize="none")
    assert len(train) == 20 and train.classes == ["cat", "dog", "frog"] and train.size == (32, 32)
    assert list(train.labels) == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    expected = written["data_batch_2"][0][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(train.raw_image(5), expected)
    assert torch.allclose(train[5][0], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)

    test = load_dataset(f"cifar10:{base}", "test")  # the batches folder itself works too
    assert len(test) == 4 and list(test.labels) == written["test_batch"][1]

    (base / "test_batch").unlink()
    with pytest.raises(CamstatError, match="lacks test_batch"):
        load_dataset(f"cifar10:{tmp_path}", "test")


def test_cifar10_batch_with_code_is_refused(tmp_path):
    base, _ = _write_cifar(tmp_path)
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    with open(base / "test_batch", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(CamstatError, match="not a CIFAR-10 batch"):
        load_dataset(f"cifar10:{tmp_path}", "test")
    assert not target.exists()


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CamstatError, match="data folder not found"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}", "train")


# --------------------------------------------------------------------------
# imagefolder:ROOT


def test_imagefolder_with_split_folders(tmp_path):
    _write_image(tmp_path / "train" / "bird" / "b0.png", (30, 20))
    _write_image(tmp_path / "train" / "cat" / "c0.png", (10, 10), seed=1)
    _write_image(tmp_path / "train" / "cat" / "nested" / "c1.jpg", (12, 14), seed=2)
    _write_image(tmp_path / "train" / "dog" / "d0.png", seed=3, mode="L")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    _write_image(tmp_path / "test" / "dog" / "d1.png", seed=4)

    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert train.classes == ["bird", "cat", "dog"] and list(train.labels) == [0, 1, 1, 2]
    assert train.size == (30, 20)  # the first image's
    assert all(train[i][0].shape == (3, 30, 20) for i in range(len(train)))
    gray = train.raw_image(3)
    assert np.array_equal(gray[..., 0], gray[..., 2])

    test = load_dataset(f"imagefolder:{tmp_path}", "test", size=16)
    assert test.classes == ["bird", "cat", "dog"] and list(test.labels) == [2]  # numbering shared
    with pytest.raises(CamstatError, match="no 'val' folder"):
        load_dataset(f"imagefolder:{tmp_path}", "val")


def test_imagefolder_without_split_folders_serves_every_split(tmp_path):
    _write_image(tmp_path / "a" / "0.png")
    _write_image(tmp_path / "b" / "0.png")
    for split in ("train", "test"):
        assert list(load_dataset(f"imagefolder:{tmp_path}", split).labels) == [0, 1]


def test_empty_imagefolder_is_refused(tmp_path):
    with pytest.raises(CamstatError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path}", "train")
    (tmp_path / "cls").mkdir()
    with pytest.raises(CamstatError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}", "train")


def test_bad_images_reported_and_skipped_or_failing(tmp_path):
    for k in range(3):
        _write_image(tmp_path / "cat" / f"{k}.png", seed=k)
    broken = tmp_path / "cat" / "1b.png"
    broken.write_bytes(b"\x89PNG this is not really an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*1b.png"):
        dataset = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert dataset.bad_images == [str(broken)]
    assert len(dataset) == 3 and list(dataset.index) == [0, 1, 3]  # positions before skipping
    with pytest.raises(CamstatError, match="1b.png"):
        load_dataset(f"imagefolder:{tmp_path}", "train", on_bad_image="fail")


def test_image_failing_only_at_decode_names_the_file(tmp_path):
    path = _write_image(tmp_path / "cat" / "t.jpg", (64, 64))
    path.write_bytes(path.read_bytes()[:-200])  # header intact, pixels cut short
    dataset = load_dataset(f"imagefolder:{tmp_path}", "train")
    with pytest.raises(CamstatError, match="cannot decode image .*t.jpg"):
        dataset[0]


# --------------------------------------------------------------------------
# stanford-cars:ROOT


def _annotations(rows):
    fields = [(name, "O") for name in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    return np.array([(1, 1, 5, 5, label, name) for label, name in rows], dtype=fields)


def _write_stanford_cars(root):
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array(["Audi A4", "BMW M3", "Fiat 500"], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    train = _annotations([(3, "00001.jpg"), (1, "00002.jpg")])
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": train})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _annotations([(2, "00001.jpg")])})
    for split, count in (("train", 2), ("test", 1)):
        for k in range(1, count + 1):
            _write_image(base / f"cars_{split}" / f"{k:05d}.jpg", (30, 40), seed=k)
    return base


def test_stanford_cars_layout(tmp_path):
    base = _write_stanford_cars(tmp_path)
    train = load_dataset(f"stanford-cars:{tmp_path}", "train")
    assert train.classes == ["Audi A4", "BMW M3", "Fiat 500"]
    assert list(train.labels) == [2, 0]  # 1-based in the .mat files
    assert train.size == (224, 224) and train[0][0].shape == (3, 224, 224)
    test = load_dataset(f"stanford-cars:{base}", "test", size=32)
    assert list(test.labels) == [1] and test[0][0].shape == (3, 32, 32)

    (base / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(CamstatError, match="cars_test_annos_withlabels.mat"):
        load_dataset(f"stanford-cars:{tmp_path}", "test")


# --------------------------------------------------------------------------
# --limit


def test_limit_is_stratified_deterministic_and_keeps_dataset_index(tmp_path):
    for c in "abc":
        for k in range(10):
            _write_image(tmp_path / c / f"{k}.png", (4, 4), seed=k)
    full = load_dataset(f"imagefolder:{tmp_path}", "train")
    small = load_dataset(f"imagefolder:{tmp_path}", "train", limit=6)
    assert np.bincount(small.labels).tolist() == [2, 2, 2]
    assert np.array_equal(small.labels, full.labels[small.index])
    assert np.all(np.diff(small.index) > 0)
    again = load_dataset(f"imagefolder:{tmp_path}", "train", limit=6)
    assert np.array_equal(small.index, again.index)
    other = load_dataset(f"imagefolder:{tmp_path}", "train", limit=6, seed=1)
    assert not np.array_equal(small.index, other.index)
    assert np.array_equal(small.raw_image(0), full.raw_image(int(small.index[0])))

    digits = load_dataset("builtin:digits", "test", limit=50)
    assert np.bincount(digits.labels, minlength=10).tolist() == [5] * 10


def test_stratified_order_prefixes_are_proportional():
    labels = np.array([0] * 80 + [1] * 20)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    assert np.bincount(labels[order[:10]]).tolist() == [8, 2]


# --------------------------------------------------------------------------
# normalisation and augmentation


def test_parse_normalize():
    assert parse_normalize("imagenet", None) == IMAGENET
    assert parse_normalize("CIFAR", None)[0] == (0.4914, 0.4822, 0.4465)
    assert parse_normalize("none", None) == ((0.0,) * 3, (1.0,) * 3)
    assert parse_normalize("0.5,0.25", None) == ((0.5,) * 3, (0.25,) * 3)
    assert parse_normalize("0.1:0.2:0.3,1:2:3", None) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    meta = {"normalize": [[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]}
    assert parse_normalize(None, meta) == ((0.5,) * 3, (0.2,) * 3)
    assert parse_normalize("none", {"normalize": [[0.5] * 3, [0.2] * 3]})[1] == (1.0,) * 3  # explicit wins
    assert parse_normalize(None, {}) == IMAGENET and parse_normalize(None, None) == IMAGENET
    for bad in ("imagenett", "0.5,0", "0.1:0.2,0.5", "a,b", "0.5", "0.5,0.2,0.1", "nan,1"):
        with pytest.raises(CamstatError):
            parse_normalize(bad, None)
    with pytest.raises(CamstatError, match="metadata"):
        parse_normalize(None, {"normalize": "imagenet"})


def test_items_are_normalised_raw_images():
    dataset = load_dataset("builtin:shapes?n=4", "train", normalize="0.5,0.25")
    raw = torch.from_numpy(dataset.raw_image(2)).permute(2, 0, 1).float() / 255
    image, label, i = dataset[2]
    assert torch.allclose(image, (raw - 0.5) / 0.25) and (label, i) == (2, 2)
    assert torch.allclose(_unnormalised(dataset, 2), raw, atol=1e-6)


@pytest.mark.parametrize("size", [32, 96])
def test_augmentation_keeps_size_and_varies(size):
    dataset = load_dataset("builtin:shapes?n=2", "train", size=size, augment=True, normalize="none")
    torch.manual_seed(0)
    views = [dataset[0][0] for _ in range(6)]
    assert all(v.shape == (3, size, size) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    plain = load_dataset("builtin:shapes?n=2", "train", size=size, normalize="none")
    assert torch.equal(plain[0][0], plain[0][0])


def _expected_box_mask(box, stored_hw, size):
    """Nearest-neighbour sampling at pixel centres of the 1-based inclusive box."""
    x1, y1, x2, y2 = box
    rows = np.floor((np.arange(size[0]) + 0.5) * stored_hw[0] / size[0])
    cols = np.floor((np.arange(size[1]) + 0.5) * stored_hw[1] / size[1])
    return ((rows >= y1 - 1) & (rows <= y2 - 1))[:, None] & ((cols >= x1 - 1) & (cols <= x2 - 1))[None, :]


def test_stanford_cars_boxes_become_object_masks(tmp_path):
    from scipy.io import savemat

    base = _write_stanford_cars(tmp_path)
    fields = [(name, "O") for name in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    boxes = [(3, 4, 20, 12), (10, 1, 40, 30)]
    rows = np.array([(*boxes[0], 3, "00001.jpg"), (*boxes[1], 1, "00002.jpg")], dtype=fields)
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": rows})
    # the second image carries EXIF orientation 6: its box is in the stored frame, turned with the image
    second = base / "cars_train" / "00002.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(second).save(second, exif=exif)

    train = load_dataset(f"stanford-cars:{tmp_path}", "train", size=(48, 56))
    assert train.has_masks
    masks = train.masks([0, 1])
    assert masks.shape == (2, 48, 56) and masks.dtype == bool
    assert np.array_equal(masks[0], _expected_box_mask(boxes[0], (30, 40), (48, 56)))
    # columns 10-40 of the stored 30 x 40 image become rows 10-40 of the turned 40 x 30 one
    stored = _expected_box_mask(boxes[1], (30, 40), (30, 40))
    turned = np.rot90(stored, -1)  # (40, 30), as exif_transpose turns orientation 6
    rows_idx = np.floor((np.arange(48) + 0.5) * 40 / 48).astype(int)
    cols_idx = np.floor((np.arange(56) + 0.5) * 30 / 56).astype(int)
    assert np.array_equal(masks[1], turned[rows_idx][:, cols_idx])
    assert masks[1].any() and not masks[1].all()
