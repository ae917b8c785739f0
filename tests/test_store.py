"""The store for readers: derived results, checksums and `verify`, xarray, consolidated metadata, the Python API."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

import camstat
from camstat import store as store_mod
from camstat.cli import main
from camstat.errors import CamstatError
from camstat.extract import extract
from camstat.locks import LEGACY_LOCK, LockFile, derived_bytes, lock_path

LAYER = "features"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    extract("camstat:smallcnn", "builtin:digits", path, num_classes=10, limit=24, chunk=8, device="cpu")
    return path


@pytest.fixture
def fresh(made, tmp_path) -> Path:
    """A private copy of the module's store (tests that damage or write into it)."""
    import shutil

    path = tmp_path / "s.zarr"
    shutil.copytree(made, path)
    return path


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_every_array_is_checksummed_named_and_consolidated(made):
    root = zarr.open_group(str(made), mode="r", use_consolidated=False)
    arrays = [a for _, a in root.members(max_depth=None) if isinstance(a, zarr.Array)]
    assert len(arrays) == 8 + 2  # samples (index ... done, logits, embedding) and two methods' maps
    for a in arrays:
        assert [type(c).__name__ for c in a.metadata.codecs][-2:] == ["ZstdCodec", "Crc32cCodec"], a.path
        assert a.metadata.dimension_names is not None and a.metadata.dimension_names[0] == "sample", a.path
    doc = json.loads((made / "zarr.json").read_text())
    assert f"maps/gradcam/{LAYER}/pred" in doc["consolidated_metadata"]["metadata"]
    assert "camstat_creating" not in doc["attributes"]
    assert not (made / LEGACY_LOCK).exists() and lock_path(made).is_file()  # the lock lies beside the store


def test_xarray_reads_samples_and_maps_without_warnings(made):
    s = camstat.open_store(made)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr's "not recognized" or a consolidated-metadata fallback fails
        samples = xr.open_zarr(made, group="samples")
        maps = xr.open_zarr(made, group=f"maps/gradcam/{LAYER}")
        tree = xr.open_datatree(made, engine="zarr")
    for name, values in s.samples.items():
        np.testing.assert_array_equal(samples[name].values, values)
    assert maps["pred"].dims == ("sample", "y", "x")
    np.testing.assert_array_equal(maps["pred"].values, s.raw_maps("gradcam"))
    assert tree["samples"]["logits"].dims == ("sample", "class")


def test_maps_api_options(made):
    s = camstat.open_store(made)
    np.testing.assert_array_equal(s.maps("gradcam", normalize=None), s.maps("gradcam", normalize="none"))
    raw = s.raw_maps("gradcam")
    np.testing.assert_array_equal(s.maps("gradcam", size="layer", normalize=None), raw)
    assert s.maps("gradcam", size="layer").shape == raw.shape and s.maps("gradcam").shape == (24, *s.input_size)
    with pytest.raises(CamstatError, match="unknown size"):
        s.maps("gradcam", size="input")


def test_errors_name_python_arguments_in_python_and_flags_in_the_cli(made, capsys):
    with pytest.raises(CamstatError, match="mode='resume'") as info:
        extract("camstat:smallcnn", "builtin:digits", made, num_classes=10, limit=24, chunk=8, device="cpu")
    assert "--" not in str(info.value)
    code = main(["extract", "--model", "camstat:smallcnn", "--num-classes", "10", "--data", "builtin:digits",
                 "--limit", "24", "--chunk", "8", "--store", str(made), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err and "mode=" not in err


def test_derived_results_round_trip_and_match_parameters(fresh):
    s = camstat.open_store(fresh)
    params = {"q": 0.2, "size": (8, 8)}
    arrays = {"dist": np.arange(24, dtype=np.float32), "controls/permuted/dist": np.ones(24, np.float32),
              "means": np.zeros((10, 4, 4), np.float32)}
    path = s.write_derived("a/b", params, arrays, {"note": "x"}, dims={"means": ("class", "y", "x")})
    assert path == "derived/a/b"
    got = s.read_derived("a/b", {"q": 0.2, "size": [8, 8]})  # tuples and lists are the same JSON
    assert got.params == {"q": 0.2, "size": [8, 8]} and got.attrs == {"note": "x"}
    assert set(got.arrays) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got.arrays[key], value)
    assert s.read_derived("a/b", {**params, "q": 0.5}) is None  # other parameters: never used
    assert s.read_derived("a/c", params) is None
    # Replaced whole: the second result has other arrays and no trace of the first.
    s.write_derived("a/b", {"q": 0.5}, {"iou": np.ones(24, np.float32)})
    assert set(s.read_derived("a/b", {"q": 0.5}).arrays) == {"iou"}
    assert sorted(p.name for p in (fresh / "derived" / "a").iterdir()) == ["b", "zarr.json"]  # no temporaries
    group = zarr.open_group(str(fresh), mode="r", use_consolidated=False)["derived/a/b/iou"]
    assert group.metadata.dimension_names == ("sample",)
    doc = json.loads((fresh / "zarr.json").read_text())
    assert "derived/a/b/iou" in doc["consolidated_metadata"]["metadata"]  # kept current after the write
    assert "derived/a/b/dist" not in doc["consolidated_metadata"]["metadata"]
    assert not any(".tmp" in key for key in doc["consolidated_metadata"]["metadata"])  # no temporary listed
    assert s.verify().ok
    with pytest.raises(CamstatError, match="invalid derived result name"):
        s.write_derived("../x", {}, {})


def test_a_second_writer_of_one_result_waits_or_is_refused(fresh):
    s = camstat.open_store(fresh)
    holder = LockFile(fresh)
    assert holder.lock(derived_bytes("r")[0])  # another writer of derived/r at work
    with pytest.raises(CamstatError, match="being written by another process"):
        s.write_derived("r", {"q": 1}, {"x": np.ones(24)}, wait=False)
    s.write_derived("other", {"q": 1}, {"x": np.ones(24)}, wait=False)  # a different result goes on
    threading.Timer(0.5, holder.close).start()
    start = time.perf_counter()
    messages = []
    from camstat import derived

    derived.write_derived(fresh, "r", {"q": 2}, {"x": np.ones(24)}, on_wait=messages.append)
    assert time.perf_counter() - start >= 0.4 and len(messages) == 1 and "waiting" in messages[0]
    assert s.read_derived("r", {"q": 2}) is not None


def test_a_result_a_kill_left_between_the_two_renames_is_restored_by_the_next_writer(fresh):
    from camstat import derived

    s = camstat.open_store(fresh)
    s.write_derived("r", {"v": 1}, {"x": np.arange(24.0)})
    result = fresh / "derived" / "r"
    result.rename(result.with_name(".r.old"))  # what the fallback swap leaves when killed between its renames
    assert s.read_derived("r", {"v": 1}) is not None  # readers find it under that name
    with pytest.raises(ValueError, match="scalar"):  # the next writer fails, after its recovery step
        derived.write_derived(fresh, "r", {"v": 2}, {"x": np.float64(1.0)})
    assert result.is_dir() and not result.with_name(".r.old").exists()  # restored, not dropped
    np.testing.assert_array_equal(s.read_derived("r", {"v": 1}).arrays["x"], np.arange(24.0))


def test_overwrite_is_refused_while_a_derived_result_is_read(fresh, capsys):
    s = camstat.open_store(fresh)
    args = ["extract", "--model", "camstat:smallcnn", "--num-classes", "10", "--data", "builtin:digits",
            "--limit", "24", "--chunk", "8", "--device", "cpu", "--store", str(fresh), "--overwrite"]
    with LockFile(fresh) as reader:  # a reader of derived/r (shared lock on its reader byte)
        assert reader.lock(derived_bytes("r")[1], shared=True)
        before = {f: f.read_bytes() for f in fresh.rglob("*") if f.is_file()}
        assert main(args) == 2
        assert "being written or read by another process" in capsys.readouterr().err
        assert {f: f.read_bytes() for f in fresh.rglob("*") if f.is_file()} == before
    assert s.verify().ok


def test_chunks_of_fill_values_are_written_so_that_a_missing_one_is_damage(fresh):
    s = camstat.open_store(fresh)
    s.write_derived("zeros", {}, {"x": np.zeros(24, np.float32)})  # every chunk holds only the fill value
    assert sorted(p.name for p in (fresh / "derived" / "zeros" / "x" / "c").iterdir()) == ["0", "1", "2"]
    assert s.verify().ok


def test_a_flipped_byte_is_named_by_verify_reads_and_consistency(fresh, capsys):
    chunk = fresh / "maps" / "gradcam" / LAYER / "pred" / "c" / "1" / "0" / "0"
    assert main(["verify", str(fresh)]) == 0
    flip_byte(chunk)
    name = f"maps/gradcam/{LAYER}/pred chunk c/1/0/0"
    capsys.readouterr()
    assert main(["verify", str(fresh), "--json", str(fresh.parent / "v.json")]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    report = json.loads((fresh.parent / "v.json").read_text())
    assert report["bad"] == [{"array": f"maps/gradcam/{LAYER}/pred", "chunk": "c/1/0/0", "problem": "checksum"}]
    with pytest.raises(CamstatError, match=name.replace("+", r"\+")):
        camstat.open_store(fresh).maps("gradcam")
    camstat.open_store(fresh).maps("gradcam++")  # the other arrays read as ever
    assert main(["consistency", str(fresh), "--method", "gradcam", "--permutations", "9", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err


def test_a_missing_chunk_is_damage_not_zeros(fresh, capsys):
    (fresh / "samples" / "label" / "c" / "2").unlink()
    assert main(["verify", str(fresh)]) == 2
    assert "samples/label chunk c/2 (missing)" in capsys.readouterr().err


def test_stores_without_checksums_stay_readable(tmp_path, monkeypatch, capsys):
    """A store as camstat wrote it before checksums: zstd only, empty chunks skipped, the lock inside."""
    monkeypatch.setattr(store_mod, "compressors", lambda: (ZstdCodec(level=0),))
    monkeypatch.setattr(store_mod, "write_config", lambda: {})
    old = tmp_path / "old.zarr"
    extract("camstat:smallcnn", "builtin:digits", old, num_classes=10, limit=16, chunk=8, device="cpu")
    (old / LEGACY_LOCK).touch()
    monkeypatch.undo()
    s = camstat.open_store(old)
    assert s.maps("gradcam").shape == (16, *s.input_size) and s.complete
    assert main(["verify", str(old)]) == 0
    assert "10 of 10 arrays carry no checksum" in capsys.readouterr().out  # samples (8, embedding too), maps (2)
    extract("camstat:smallcnn", "builtin:digits", old, num_classes=10, limit=16, chunk=8, device="cpu",
            mode="resume")  # the old lock file still marks the folder as ours
