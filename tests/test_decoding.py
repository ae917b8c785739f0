"""Image fidelity (issue 17): tiny files in every format, written here; the
tensor that reaches the model holds the file's intensities (to 1/255 for
8-bit, 1e-4 for deeper files); bad floats are refused naming the file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from camstat.cli import main
from camstat.data import load_dataset
from camstat.decoding import decode_file, to_unit
from camstat.errors import CamstatError
from camstat.store import open_store


def _folder_dataset(path, **kwargs):
    """The file as the only image of an image folder, at its native size, unnormalised."""
    return load_dataset(f"imagefolder:{path.parent.parent}", "train", normalize="none", **kwargs)


def _model_input(path, **kwargs) -> np.ndarray:
    """(H, W, 3) float: the unnormalised tensor the model is given for the file."""
    image, _, _ = _folder_dataset(path, **kwargs)[0]
    return image.permute(1, 2, 0).numpy()


def _place(tmp_path, name):
    path = tmp_path / "data" / "cls" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _gradient(shape=(12, 20), top=65535, seed=0):
    """Values spread over 0..top (both ends present), in random order."""
    values = np.linspace(0, top, shape[0] * shape[1]).round()
    return np.random.default_rng(seed).permutation(values).reshape(shape).astype(np.uint16)


def _png16(path, pixels, sbit=None):
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(pixels).save(path, pnginfo=info)
    assert Image.open(path).mode == "I;16"
    return path


def _gray3(values):
    return np.repeat(np.asarray(values, np.float64)[..., None], 3, axis=-1)


# --------------------------------------------------------------------------
# bit depths


def test_8bit_png_reaches_the_model_as_v_over_255(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    path = _place(tmp_path, "a.png")
    Image.fromarray(pixels).save(path)
    assert np.abs(_model_input(path) - pixels / 255).max() <= 1 / 255 / 2


def test_16bit_png_is_scaled_by_its_full_range(tmp_path):
    pixels = _gradient()
    path = _png16(_place(tmp_path, "a.png"), pixels)
    seen = _model_input(path)
    assert np.abs(seen - _gray3(pixels / 65535)).max() <= 1e-4
    assert seen.min() == 0 and seen.max() == 1  # both ends of the type's range reached exactly
    # what the issue saw: convert("RGB") clipped 99 % of it to white
    assert (seen == 1).mean() < 0.01 and len(np.unique(seen)) > 200


def test_12bit_png_with_sbit_uses_the_declared_depth(tmp_path):
    pixels = _gradient(top=4095)
    path = _png16(_place(tmp_path, "a.png"), pixels, sbit=12)
    assert np.abs(_model_input(path) - _gray3(pixels / 4095)).max() <= 1e-4

    too_high = pixels.copy()
    too_high[0, 0] = 5000
    bad = _png16(tmp_path / "b.png", too_high, sbit=12)
    with pytest.raises(CamstatError, match="b.png .*above its declared 12-bit range"):
        decode_file(str(bad), "dtype")


def test_12bit_png_without_sbit_is_dark_under_dtype_and_full_under_minmax(tmp_path):
    pixels = _gradient(top=4095)
    path = _png16(_place(tmp_path, "a.png"), pixels)
    assert np.abs(_model_input(path) - _gray3(pixels / 65535)).max() <= 1e-4  # the documented rule
    seen = _model_input(path, intensity="minmax")
    assert np.abs(seen - _gray3(pixels / 4095)).max() <= 1e-4  # min 0 and max 4095 are present


def test_16bit_resize_agrees_with_the_8bit_path(tmp_path):
    pixels = (np.add.outer(np.arange(16), np.arange(24)) * 1500).astype(np.uint16)
    deep = _png16(_place(tmp_path, "a.png"), pixels)
    shallow = tmp_path / "b.png"
    Image.fromarray((pixels / 257).round().astype(np.uint8)).save(shallow)
    resized = _folder_dataset(deep, size=(9, 13))[0][0]
    reference = torch.from_numpy(decode_file(str(shallow), "dtype")).permute(2, 0, 1)
    reference = torch.from_numpy(np.array(Image.fromarray(reference[0].numpy()).resize((13, 9), Image.BILINEAR)))
    assert resized.shape == (3, 9, 13)
    assert (resized[0] - reference / 255).abs().max() <= 2 / 255


# --------------------------------------------------------------------------
# floats


def _float_tiff(path, values):
    Image.fromarray(np.asarray(values, np.float32)).save(path)
    assert Image.open(path).mode == "F"
    return path


def test_float_tiff_in_range_is_taken_as_is(tmp_path):
    values = np.random.default_rng(2).uniform(0, 1, (9, 11)).astype(np.float32)
    values[0, 0], values[0, 1] = 0.0, 1.0
    path = _float_tiff(_place(tmp_path, "a.tif"), values)
    seen = _model_input(path)
    assert np.abs(seen - _gray3(values)).max() <= 1e-6
    assert len(np.unique(seen)) > 90  # not the one black value of convert("RGB")


@pytest.mark.parametrize("bad", [1.5, -0.25, np.nan, np.inf])
def test_float_tiff_out_of_range_or_nonfinite_is_refused(tmp_path, bad):
    values = np.full((6, 6), 0.5, np.float32)
    values[2, 3] = bad
    path = _float_tiff(_place(tmp_path, "f.tif"), values)
    with pytest.raises(CamstatError, match="f.tif"):
        _model_input(path)


def test_float_tiff_out_of_range_under_minmax(tmp_path):
    values = np.linspace(-3, 5, 36).reshape(6, 6).astype(np.float32)
    path = _float_tiff(_place(tmp_path, "f.tif"), values)
    assert np.abs(_model_input(path, intensity="minmax") - _gray3((values + 3) / 8)).max() <= 1e-6
    nan = values.copy()
    nan[0, 0] = np.nan
    _float_tiff(path, nan)
    with pytest.raises(CamstatError, match="f.tif .*non-finite"):
        _model_input(path, intensity="minmax")


def test_signed_and_unknown_arrays():
    with pytest.raises(CamstatError, match="signed integers .*--intensity minmax"):
        to_unit(np.zeros((2, 2), np.int32), "dtype", "x")
    assert to_unit(np.array([[-5, 5]], np.int32), "minmax", "x").tolist() == [[[0, 0, 0], [1, 1, 1]]]
    assert to_unit(np.full((2, 2), 7, np.uint16), "minmax", "x").max() == 0  # constant image
    with pytest.raises(CamstatError, match="has shape"):
        to_unit(np.zeros((2, 2, 5), np.uint8), "dtype", "x")
    with pytest.raises(CamstatError, match="bad --intensity"):
        load_dataset("builtin:digits", "test", intensity="window")


# --------------------------------------------------------------------------
# 8-bit colour formats and orientation


def test_rgba_drops_alpha(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (8, 10, 4), dtype=np.uint8)
    path = _place(tmp_path, "a.png")
    Image.fromarray(pixels, "RGBA").save(path)
    assert np.abs(_model_input(path) - pixels[..., :3] / 255).max() <= 1 / 510


def test_palette_png_is_looked_up(tmp_path):
    colours = np.array([[200, 10, 30], [5, 180, 90], [20, 40, 250], [255, 255, 0]], np.uint8)
    which = np.random.default_rng(4).integers(0, 4, (9, 12))
    path = _place(tmp_path, "a.png")
    Image.fromarray(colours[which]).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    assert Image.open(path).mode == "P"
    assert np.abs(_model_input(path) - colours[which] / 255).max() <= 1 / 510


def test_cmyk_jpeg_comes_back_as_its_rgb(tmp_path):
    colours = np.array([[200, 10, 30], [5, 180, 90], [20, 40, 250], [240, 240, 20]], np.uint8)
    rgb = np.kron(colours.reshape(2, 2, 3).transpose(2, 0, 1), np.ones((8, 8), np.uint8)).transpose(1, 2, 0)
    path = _place(tmp_path, "a.jpg")
    Image.fromarray(np.ascontiguousarray(rgb)).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    seen = _model_input(path)
    inner = (slice(2, 6), slice(2, 6))  # block interiors: away from JPEG's edge ringing
    for r in (0, 8):
        for c in (0, 8):
            block = seen[r:r + 8, c:c + 8][inner]
            assert np.abs(block - rgb[r, c] / 255).max() <= 6 / 255


@pytest.mark.parametrize("orientation, turn", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:8, :8] = 255  # a white corner block: where it ends up tells the rotation
    path = _place(tmp_path, "a.jpg")
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    stored = np.array(Image.open(path).convert("RGB"))  # the same JPEG losses, unturned
    dataset = _folder_dataset(path)
    expected = np.rot90(stored, turn)
    assert dataset.size == expected.shape[:2]
    assert np.abs(_model_input(path) - expected / 255).max() <= 1 / 510


# --------------------------------------------------------------------------
# arrays with an implicit range


def test_npz_deeper_dtypes_follow_the_rule(tmp_path):
    deep = _gradient((2 * 6, 6)).reshape(2, 6, 6)
    np.savez(tmp_path / "d.npz", test_images=deep, test_labels=np.array([[0], [1]]))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", "test", normalize="none")
    assert np.abs(ds[1][0][0].numpy() - deep[1] / 65535).max() <= 1e-4
    floats = np.full((2, 6, 6), 0.5, np.float32)
    floats[1, 0, 0] = 2.0
    np.savez(tmp_path / "f.npz", test_images=floats, test_labels=np.array([[0], [1]]))
    ds = load_dataset(f"npz:{tmp_path / 'f.npz'}", "test", normalize="none")
    assert ds[0][0].max() == 0.5
    with pytest.raises(CamstatError, match="f.npz test_images image 1 .*outside \\[0, 1\\]"):
        ds[1]


# --------------------------------------------------------------------------
# through the command line


MODEL_FILE = '''
import numpy as np
import torch


class Recorder(torch.nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        np.save(OUT, x.detach().cpu().numpy())
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def factory(num_classes=2):
    return Recorder(num_classes)
'''


def _extract(tmp_path, *extra):
    return main(["extract", "--model", f"{tmp_path / 'model.py'}:factory", "--data", f"imagefolder:{tmp_path / 'data'}",
                 "--split", "train", "--store", str(tmp_path / "s.zarr"), "--normalize", "none", "--device", "cpu",
                 "--methods", "gradcam", *extra])


def test_extract_gives_the_model_the_files_intensities_and_records_the_rule(tmp_path):
    (tmp_path / "model.py").write_text(f"OUT = {str(tmp_path / 'input.npy')!r}\n" + MODEL_FILE)
    pixels = _gradient((8, 8))
    _png16(_place(tmp_path, "a.png"), pixels)
    (tmp_path / "data" / "other").mkdir()
    _png16(tmp_path / "data" / "other" / "b.png", pixels[::-1])
    assert _extract(tmp_path) == 0
    seen = np.load(tmp_path / "input.npy")  # the last batch: both images
    assert np.abs(seen[0].transpose(1, 2, 0) - _gray3(pixels / 65535)).max() <= 1e-4
    attrs = open_store(tmp_path / "s.zarr").attrs
    assert attrs["intensity"] == "dtype" and "sBIT" in attrs["decoding"]
    assert _extract(tmp_path, "--intensity", "minmax", "--overwrite") == 0
    assert open_store(tmp_path / "s.zarr").attrs["intensity"] == "minmax"


@pytest.mark.parametrize("bad", [1.5, np.nan])
def test_extract_refuses_bad_floats_with_exit_2_naming_the_file(tmp_path, capsys, bad):
    (tmp_path / "model.py").write_text(f"OUT = {str(tmp_path / 'input.npy')!r}\n" + MODEL_FILE)
    values = np.full((6, 6), 0.25, np.float32)
    values[1, 1] = bad
    _float_tiff(_place(tmp_path, "odd.tif"), values)
    _float_tiff(tmp_path / "data" / "cls" / "ok.tif", np.full((6, 6), 0.5, np.float32))
    assert _extract(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "odd.tif" in err and "\n" not in err
    assert not (tmp_path / "s.zarr").exists()


def test_a_bad_float_found_mid_run_leaves_an_incomplete_store_that_resumes(tmp_path, capsys):
    """The first image is checked before the store exists; a later bad one stops the run with one line that says
    what the store holds and how to go on, and after the file is fixed --resume finishes the store."""
    (tmp_path / "model.py").write_text(f"OUT = {str(tmp_path / 'input.npy')!r}\n" + MODEL_FILE)
    for i in range(6):
        _float_tiff(_place(tmp_path, f"{i}.tif"), np.full((6, 6), 0.1 * (i + 1), np.float32))
    bad = np.full((6, 6), 0.25, np.float32)
    bad[2, 2] = 1.5
    _float_tiff(_place(tmp_path, "5.tif"), bad)
    assert _extract(tmp_path, "--chunk", "2", "--batch-size", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar: one line
    assert err.startswith("error: ") and "5.tif" in err and "Traceback" not in err
    assert "is left incomplete (4 of 6 images done" in err and "--resume" in err
    s = open_store(tmp_path / "s.zarr")
    assert not s.complete and s.samples["done"].sum() == 4
    _float_tiff(_place(tmp_path, "5.tif"), np.full((6, 6), 0.25, np.float32))
    assert _extract(tmp_path, "--chunk", "2", "--batch-size", "2", "--resume") == 0
    assert open_store(tmp_path / "s.zarr").complete


def test_train_reg_takes_intensity_and_extract_inherits_it_from_the_checkpoint(tmp_path, capsys):
    """Float images beyond [0, 1] train under --intensity minmax (refused under dtype); the run records the rule,
    and extract of its checkpoint decodes the same way without being told."""
    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = tmp_path / "data" / split / c
            folder.mkdir(parents=True)
            for i in range(6):
                _float_tiff(folder / f"{i}.tif", rng.uniform(0, 40, (16, 16)).astype(np.float32))
    data = f"imagefolder:{tmp_path / 'data'}"
    args = ["train-reg", "--model", "camstat:smallcnn", "--data", data, "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "--normalize", "none"]
    assert main([*args, "--out", str(tmp_path / "dtype")]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err
    assert main([*args, "--intensity", "minmax", "--out", str(tmp_path / "run")]) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["options"]["intensity"] == "minmax"
    assert main(["extract", "--model", "camstat:smallcnn", "--checkpoint", str(tmp_path / "run" / "model.pt"),
                 "--data", data, "--split", "test", "--methods", "gradcam", "--store", str(tmp_path / "t.zarr"),
                 "--device", "cpu"]) == 0
    assert open_store(tmp_path / "t.zarr").attrs["intensity"] == "minmax"


# --------------------------------------------------------------------------
# DICOM (when pydicom is installed: the camstat[dicom] extra)


def _dicom(path, stored, *, bits=12, photometric="MONOCHROME2", pixels=True, **elements):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixels:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_stored_range_window_rescale_and_monochrome1(tmp_path):
    stored = _gradient((6, 10), top=4095)
    plain = _dicom(_place(tmp_path, "a.dcm"), stored)
    assert _folder_dataset(plain).size == (6, 10)
    assert np.abs(_model_input(plain) - _gray3(stored / 4095)).max() <= 1e-4

    # modality values 2 x stored - 1000, shown through a window of centre 1000, width 2001
    _dicom(plain, stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2001)
    modality = 2.0 * stored - 1000
    windowed = np.clip((modality - 999.5) / 2000 + 0.5, 0, 1)  # DICOM PS3.3 C.11.2.1.2.1
    assert np.abs(_model_input(plain) - _gray3(windowed)).max() <= 1e-4
    assert np.abs(_model_input(plain, intensity="minmax") - _gray3(stored / 4095)).max() <= 1e-4

    _dicom(plain, stored, photometric="MONOCHROME1")
    assert np.abs(_model_input(plain) - _gray3(1 - stored / 4095)).max() <= 1e-4


def test_dicom_without_pixel_data_is_refused_naming_the_file(tmp_path):
    path = _dicom(_place(tmp_path, "empty.dcm"), np.zeros((4, 4), np.uint16), pixels=False)
    with pytest.raises(CamstatError, match="empty.dcm has no pixel data"):
        _folder_dataset(path, on_bad_image="fail")
    with pytest.raises(CamstatError, match="empty.dcm has no pixel data"):
        decode_file(str(path), "dtype")


def test_augmentation_keeps_deep_intensities(tmp_path):
    pixels = _gradient((16, 16))
    path = _png16(_place(tmp_path, "a.png"), pixels)
    torch.manual_seed(0)
    image, _, _ = _folder_dataset(path, augment=True)[0]
    allowed = np.append(pixels.ravel() / 65535, 0.0)  # padding of the random crop is 0
    assert image.dtype == torch.float32
    assert np.abs(image[0].numpy().ravel()[:, None] - allowed[None, :]).min(axis=1).max() <= 1e-6
