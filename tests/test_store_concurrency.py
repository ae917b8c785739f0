"""Concurrent writers of one store: shards that own no chunk, derived results written side by side or killed.

Writers are forked processes (separate processes, as the locks require; forked
so that they start in milliseconds instead of re-importing torch), started
together at a barrier.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import camstat
from camstat import derived
from camstat.h1 import analyze
from camstat.extract import extract

FORK = multiprocessing.get_context("fork")
EXTRACT = dict(num_classes=10, limit=16, chunk=8, batch_size=4, device="cpu")  # 2 chunks


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of the store except the root's zarr.json (provenance: time, command line)."""
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.relative_to(path).as_posix() != "zarr.json"}


def _in_child(barrier, queue, job, *args) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        barrier.wait(timeout=60)
        queue.put(job(*args))
    except BaseException as exc:  # reported to the test, which fails with it
        queue.put(f"{type(exc).__name__}: {exc}")


def together(jobs: list[tuple]) -> list:
    """Run ``job(*args)`` for each (job, *args) in its own process, all released at once; their results."""
    barrier, queue = FORK.Barrier(len(jobs)), FORK.Queue()
    procs = [FORK.Process(target=_in_child, args=(barrier, queue, *job)) for job in jobs]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return results


def _shard(store: Path, shard: str) -> tuple[int, int]:
    res = extract("camstat:smallcnn", "builtin:digits", store, shard=shard, **EXTRACT)
    return res.owned_chunks, res.processed


@pytest.mark.slow
def test_shards_started_together_equal_one_process_even_when_some_own_no_chunk(tmp_path):
    one = tmp_path / "one.zarr"
    extract("camstat:smallcnn", "builtin:digits", one, **EXTRACT)
    expected = store_bytes(one)
    for trial in range(10):
        for n in (3, 2):  # fewer chunks (2) than shards, and exactly as many
            store = tmp_path / f"s{trial}-{n}.zarr"
            results = together([(_shard, store, f"{k}/{n}") for k in range(n)])
            assert all(isinstance(r, tuple) for r in results), results
            assert sorted(results) == ([(0, 0)] if n == 3 else []) + [(1, 8), (1, 8)], (trial, n)
            assert camstat.open_store(store).complete and store_bytes(store) == expected, (trial, n)


def test_an_empty_shard_says_so_and_locks_nothing(tmp_path, capsys):
    from camstat.cli import main
    from camstat.locks import LockFile

    store = tmp_path / "e.zarr"
    args = ["extract", "--model", "camstat:smallcnn", "--num-classes", "10", "--data", "builtin:digits",
            "--limit", "16", "--chunk", "8", "--device", "cpu", "--store", str(store)]
    with LockFile(store) as other:  # another writer holds every chunk byte: an empty shard needs none of them
        other.lock(0, 1 << 40)
        assert main([*args, "--shard", "0/3"]) == 0
    # rich wraps the line at the console width, wherever the (varying) tmp path puts the break
    assert "shard 0/3 owns no chunk: nothing to do" in " ".join(capsys.readouterr().out.split())
    assert camstat.open_store(store).done.sum() == 0  # it created the store, its siblings fill it


def _consistency(store: Path, q: float, method: str = "gradcam") -> str:
    return analyze(store, method=method, metrics="iou", q=q, permutations=9, n_boot=0).derived


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("c") / "c.zarr"
    extract("camstat:smallcnn", "builtin:shapes?n=40", path, limit=40, chunk=16, device="cpu")
    return path


@pytest.mark.slow
def test_two_writers_of_one_result_with_different_q_never_mix(small_store):
    name = "consistency/gradcam/features/pred/correct"
    s = camstat.open_store(small_store)
    recomputed = {q: analyze(small_store, metrics="iou", q=q, permutations=9, n_boot=0, save=False).values["iou"]
                  for q in (0.1, 0.5)}
    assert not np.allclose(recomputed[0.1], recomputed[0.5], equal_nan=True)  # the two runs are told apart
    for trial in range(5):
        results = together([(_consistency, small_store, 0.1), (_consistency, small_store, 0.5)])
        assert results == [f"derived/{name}"] * 2, results
        stored = s.read_derived(name, None)
        q = stored.params["q"]
        assert stored.attrs["result"]["params"]["q"] == q
        np.testing.assert_array_equal(stored.arrays["iou"], recomputed[q].astype(np.float32))


@pytest.mark.slow
def test_two_methods_analysed_side_by_side_both_land(small_store):
    results = together([(_consistency, small_store, 0.2, "gradcam"), (_consistency, small_store, 0.2, "gradcam++")])
    s = camstat.open_store(small_store)
    for path in results:
        stored = s.read_derived(path[len("derived/"):], None)
        assert stored is not None and stored.params["q"] == 0.2 and len(stored.arrays["iou"]) == 40
    import json

    listed = json.loads((small_store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert all(f"{path}/iou" in listed for path in results)  # the last refresh saw both


def _write_forever(store: Path, fallback: bool) -> None:
    if fallback:  # a filesystem without RENAME_EXCHANGE
        derived._exchange = lambda a, b: False
    for version in range(1, 10**6):
        arrays = {key: np.full((64, 32, 32), version, np.float32) for key in ("a", "b", "nested/c")}
        derived.write_derived(store, "r", {"version": version}, arrays, {"version": version}, n=64)


def _assert_whole(store: Path) -> int:
    found = derived.read_derived(store, "r", None)
    version = found.params["version"]
    assert found.attrs == {"version": version} and set(found.arrays) == {"a", "b", "nested/c"}
    for values in found.arrays.values():
        assert values.shape == (64, 32, 32) and (values == version).all()
    return version


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_sigkill_while_saving_leaves_the_previous_result_whole(tmp_path, fallback):
    store = tmp_path / "d.zarr"
    zarr.create_group(str(store))
    derived.write_derived(store, "r", {"version": 0}, {k: np.zeros((64, 32, 32), np.float32)
                                                     for k in ("a", "b", "nested/c")}, {"version": 0}, n=64)
    rng = random.Random(0)
    versions = []
    for _ in range(6):
        child = FORK.Process(target=_write_forever, args=(store, fallback))
        child.start()
        time.sleep(rng.uniform(0.3, 1.0))  # the child does nothing but save: any moment is mid-save
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        versions.append(_assert_whole(store))
    assert max(versions) > 0  # the children did replace the result (each kill found some version whole)
    derived.write_derived(store, "r", {"version": -1}, {"a": np.ones(3)}, n=3)  # the next writer cleans up
    assert sorted(p.name for p in (store / "derived").iterdir()) == ["r", "zarr.json"]


def _create_slowly(store: str, started, release) -> None:
    """A writer half-way through creating ``store``: its lock file made, the creation lock held, and only
    Zarr's temporary metadata file in the folder; it finishes (a creation cut short) when released."""
    from camstat.locks import CREATE_BYTE, LockFile

    locks = LockFile(store)
    locks.lock(CREATE_BYTE, blocking=True)
    Path(store).mkdir()
    (Path(store) / "zarr.json.partial").write_text("{")
    started.set()
    release.wait(timeout=60)
    (Path(store) / "zarr.json.partial").unlink()
    locks.close()


def test_a_store_half_created_by_another_writer_is_waited_for_not_refused(tmp_path):
    # shards started together race like this: one sees the folder the other is creating before its metadata
    # exists; it must wait for the creation lock instead of calling the folder foreign
    store = tmp_path / "s.zarr"
    started, release = FORK.Event(), FORK.Event()
    creator = FORK.Process(target=_create_slowly, args=(str(store), started, release))
    creator.start()
    assert started.wait(timeout=60)
    threading.Timer(3.0, release.set).start()  # after extract has reached the store (it loads for ~1 s)
    res = extract("camstat:smallcnn", "builtin:digits", store, shard="0/2", **EXTRACT)
    creator.join()
    assert creator.exitcode == 0 and res.owned_chunks == 1
    assert camstat.open_store(store).samples["done"].sum() == 8
