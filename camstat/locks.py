"""The writers' lock file of a store: POSIX record locks on byte ranges of one file.

The file lies *beside* the store (``.NAME.zarr.camstat-lock``), not inside it:
Zarr 3 warns about every entry of a group folder that is not a Zarr node, and
readers (xarray, dask, tensorstore) should find nothing but Zarr there. The locks
are Linux open-file-description locks where available (POSIX record locks
elsewhere): released by the kernel when a process dies, even by SIGKILL, so a
crash never leaves a store locked; unlike record locks, they are not dropped
when the same process closes another handle of the file, and two handles of one
process exclude each other as two processes do. The file itself holds no data; its bytes
are lock names:

* byte ``k`` (``k < CREATE_BYTE``): sample chunk ``k``, held by the extractor
  writing it;
* ``CREATE_BYTE``: creating or joining the store;
* ``METADATA_BYTE``: changing the hierarchy (putting a derived result in
  place, refreshing the consolidated metadata);
* two bytes per derived result from ``DERIVED_BASE`` on (:func:`derived_bytes`):
  its writer (exclusive for the whole write) and its readers (shared, while
  they read; exclusive while the result is swapped).

``--overwrite`` takes every byte from 0 on, so it is refused while anyone
writes or reads a derived result.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
from pathlib import Path

CREATE_BYTE = 1 << 40  # beyond any chunk number
METADATA_BYTE = CREATE_BYTE + 1
DERIVED_BASE = 1 << 41
LEGACY_LOCK = "camstat.lock"
_OFD = hasattr(fcntl, "F_OFD_SETLK")  # inside the store, as camstat wrote it before the lock moved beside it


def lock_path(store: str | Path) -> Path:
    """The lock file of a store: beside it, hidden, named after it (symlinks resolved: one store, one lock)."""
    store = Path(store).resolve()
    return store.parent / f".{store.name}.camstat-lock"


def derived_bytes(name: str) -> tuple[int, int]:
    """(writer byte, reader byte) of derived result ``name``; a hash collision only makes two writers wait."""
    slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return DERIVED_BASE + 2 * slot, DERIVED_BASE + 2 * slot + 1


class LockFile:
    """An open lock file; :meth:`lock` takes byte-range locks, closing releases them all."""

    def __init__(self, store: str | Path, *, create: bool = True):
        path = lock_path(store)
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if create else os.open(path, os.O_RDONLY)

    @classmethod
    def for_reading(cls, store: str | Path) -> "LockFile | None":
        """The lock file opened read-only (shared locks only), or None when no writer has ever made one."""
        try:
            return cls(store, create=False)
        except FileNotFoundError:
            return None

    def lock(self, start: int, length: int = 1, *, blocking: bool = False, shared: bool = False) -> bool:
        """Lock ``length`` bytes from ``start`` (0 = to infinity); False when another process holds them."""
        try:
            if _OFD:
                _ofd(self.fd, fcntl.F_RDLCK if shared else fcntl.F_WRLCK, start, length, blocking)
            else:
                flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
                fcntl.lockf(self.fd, flags, length, start, os.SEEK_SET)
            return True
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise

    def unlock(self, start: int, length: int = 1) -> None:
        if _OFD:
            _ofd(self.fd, fcntl.F_UNLCK, start, length, False)
        else:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases every lock of ours on the file
            self.fd = None

    def __enter__(self) -> "LockFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ofd(fd: int, kind: int, start: int, length: int, blocking: bool) -> None:
    # struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid (0 for OFD locks)}
    request = struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK, request)
