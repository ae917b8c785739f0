"""Derived results (``derived/<name>`` in a store): written whole, swapped in atomically, read only when they match.

A result is a Zarr group holding arrays and attributes; its ``params``
attribute records the parameters that made it.

Writing (:func:`write_derived`):

1. take the result's writer lock (a second writer of the *same* result waits,
   with a message; writers of *different* results go on side by side);
2. write every array and attribute into a hidden sibling group
   ``.<leaf>.tmp-<id>``;
3. swap it with the old result in one atomic step: ``renameat2(RENAME_EXCHANGE)``
   on Linux (a plain rename when there is no old result), under an exclusive
   lock that readers share while they read;
4. delete the old result and refresh the root's consolidated metadata.

A SIGKILL before step 3 leaves the old result in place (the temporary group
is removed by the next writer); after it, the new one. Where the filesystem
cannot exchange two folders, the old result is first renamed to
``.<leaf>.old`` and the new one renamed in: a kill between the two renames
leaves the old result whole under that name, where readers find it and the
next writer restores it.

Reading (:func:`read_derived`) returns None unless the stored parameters equal
the ones asked for, so no caller ever uses a result made with other parameters.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import zarr
from zarr.errors import ZarrUserWarning

from camstat.errors import CamstatError
from camstat.integrity import checked_read, compressors, write_config
from camstat.locks import METADATA_BYTE, LockFile, derived_bytes


@dataclass
class Derived:
    """A derived result as read back: its path in the store, parameters, other attributes and arrays."""

    path: str
    params: dict
    attrs: dict
    arrays: dict[str, np.ndarray]


def canonical(value) -> str:
    """The JSON text parameters are stored and compared as (tuples become lists, keys sorted)."""
    return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)


def _check_name(name: str) -> list[str]:
    parts = name.split("/")
    if not name or any(not p or p.startswith(".") for p in parts):
        raise CamstatError(f"invalid derived result name {name!r}: use non-empty parts not starting with '.'")
    return parts


def say_waiting(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def consolidate(path: str | Path) -> None:
    """Rewrite the root's consolidated metadata from the hierarchy as it is now."""
    with warnings.catch_warnings():
        # Zarr warns that consolidated metadata is not yet in the v3 spec (readers use it all the same).
        warnings.simplefilter("ignore", ZarrUserWarning)
        zarr.consolidate_metadata(str(path))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _put_in_place(tmp: Path, dst: Path) -> None:
    """Make ``tmp`` the result at ``dst``; afterwards ``tmp`` holds the old result (or nothing)."""
    if not dst.exists():
        tmp.rename(dst)
        return
    if _exchange(tmp, dst):
        return
    old = dst.with_name(f".{dst.name}.old")
    dst.rename(old)
    tmp.rename(dst)  # a kill right before this leaves the old result whole at `old` (see _recover)
    old.rename(tmp)


def _recover(dst: Path) -> None:
    """Restore a result a kill left between the two renames of the fallback, and drop stale temporaries."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        if dst.exists():
            shutil.rmtree(old)
        else:
            old.rename(dst)
    for stale in dst.parent.glob(f".{dst.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_group(tmp: Path, params: dict, arrays: Mapping[str, np.ndarray], attrs: Mapping,
                 dims: Mapping[str, Sequence[str]], n: int, chunk: int) -> None:
    doc = json.loads(json.dumps({**attrs, "params": params}, default=str))
    group = zarr.create_group(str(tmp), attributes=doc)
    with zarr.config.set(write_config()):
        for key, value in arrays.items():
            value = np.asarray(value)
            if value.ndim == 0:
                raise ValueError(f"derived array {key!r} is a scalar; keep scalars in the attributes")
            head, _, leaf = key.rpartition("/")
            parent = group.require_group(head) if head else group
            first = (max(1, min(chunk, value.shape[0])),)
            names = dims.get(key) or tuple("sample" if i == 0 and value.shape[0] == n else f"{leaf}_{i}"
                                           for i in range(value.ndim))
            array = parent.create_array(leaf, shape=value.shape, chunks=first + value.shape[1:], dtype=value.dtype,
                                        fill_value=np.zeros((), value.dtype)[()], compressors=compressors(),
                                        dimension_names=tuple(names))
            array[...] = value


def write_derived(store: str | Path, name: str, params: dict, arrays: Mapping[str, np.ndarray],
                  attrs: Mapping | None = None, *, dims: Mapping[str, Sequence[str]] | None = None, n: int = -1,
                  chunk: int = 256, on_wait: Callable[[str], None] | None = say_waiting) -> str:
    """Write ``derived/<name>`` whole and swap it in atomically; returns its path in the store.

    ``arrays`` maps paths inside the result (``"dist"``, ``"controls/permuted/dist"``)
    to numpy arrays, chunked along their first axis by ``chunk``; ``dims`` names
    their dimensions (default: ``sample`` for a first axis of length ``n``).
    The attributes are ``attrs`` plus ``params``. A concurrent writer of the
    same result makes this one wait (``on_wait`` is told once); with
    ``on_wait=None`` it is refused instead.
    """
    store = Path(store)
    parts = _check_name(name)
    dst = store.joinpath("derived", *parts)
    writer_byte, reader_byte = derived_bytes(name)
    with LockFile(store) as locks:
        if not locks.lock(writer_byte):
            if on_wait is None:
                raise CamstatError(f"derived/{name} of {store} is being written by another process; try again later")
            on_wait(f"waiting for another process writing derived/{name} of {store} ...")
            locks.lock(writer_byte, blocking=True)
        locks.lock(METADATA_BYTE, blocking=True)
        try:
            for depth in range(1, len(parts) + 1):  # the parent groups, as Zarr nodes
                zarr.open_group(str(store.joinpath("derived", *parts[:depth - 1])), mode="a", use_consolidated=False)
            _recover(dst)
        finally:
            locks.unlock(METADATA_BYTE)
        tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex}")
        try:
            _write_group(tmp, params, arrays, attrs or {}, dims or {}, n, chunk)
            locks.lock(METADATA_BYTE, blocking=True)
            locks.lock(reader_byte, blocking=True)
            _put_in_place(tmp, dst)
            locks.unlock(reader_byte)
            shutil.rmtree(tmp, ignore_errors=True)  # the old result: gone before the hierarchy is listed
            consolidate(store)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the old result, or our unfinished one after an error
    return f"derived/{name}"


def read_derived(store: str | Path, name: str, params: dict | None) -> Derived | None:
    """``derived/<name>`` read whole, or None when absent or made with parameters other than ``params``.

    ``params=None`` accepts any parameters (for listing what is stored).
    """
    store = Path(store)
    dst = store.joinpath("derived", *_check_name(name))
    locks = LockFile.for_reading(store)
    try:
        if locks is not None:
            locks.lock(derived_bytes(name)[1], blocking=True, shared=True)
        if not dst.exists():
            dst = dst.with_name(f".{dst.name}.old")  # left by a kill inside the fallback swap (see _put_in_place)
            if not dst.exists():
                return None
        group = zarr.open_group(str(store), path=dst.relative_to(store).as_posix(), mode="r", use_consolidated=False)
        found = dict(group.attrs)
        stored = found.pop("params", None)
        if params is not None and canonical(stored) != canonical(params):
            return None
        arrays = {key: checked_read(node, slice(None), store) for key, node in group.members(max_depth=None)
                  if isinstance(node, zarr.Array)}
        return Derived(f"derived/{name}", stored, found, arrays)
    finally:
        if locks is not None:
            locks.close()
