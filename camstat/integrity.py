"""Chunk integrity: checksummed arrays, reads that name a bad chunk, and the scan behind ``camstat verify``.

Every array camstat writes ends its codec chain with Zarr v3's ``crc32c``
checksum codec (after zstd), and every chunk is written even when it holds
only the fill value (``write_empty_chunks``), so:

* a flipped bit in a chunk file fails the checksum on read, and
* a chunk file that disappeared is noticed instead of read back as zeros.

Reading through :func:`checked_read` turns a bad chunk into a
:class:`~camstat.errors.CamstatError` that names the array and the chunk.
Stores written before checksums existed stay readable; :func:`scan_array`
reports that they carry none (a corrupt zstd frame is still caught, a flipped
bit inside a valid frame is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from camstat.errors import CamstatError


def compressors() -> tuple:
    """The bytes-to-bytes codecs of every camstat array: zstd, then the crc32c checksum (last, as v3 requires)."""
    return (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def write_config() -> dict:
    """Zarr configuration for writes: store every chunk, so that a missing chunk file means damage."""
    return {"array.write_empty_chunks": True}


def has_checksum(array: zarr.Array) -> bool:
    return any(isinstance(codec, Crc32cCodec) for codec in array.metadata.codecs)


def chunk_key(array: zarr.Array, index: tuple[int, ...]) -> str:
    return array.metadata.encode_chunk_key(index)


@dataclass(frozen=True)
class BadChunk:
    """One unreadable chunk: the array's path in the store, the chunk's key and what failed."""

    array: str
    chunk: str
    problem: str  # "checksum", "undecodable" or "missing"

    def __str__(self) -> str:
        return f"{self.array} chunk {self.chunk} ({self.problem})"


def _problem(exc: Exception) -> str:
    return "checksum" if "checksum" in str(exc).lower() else "undecodable"


def scan_array(array: zarr.Array, root: Path, required: np.ndarray | None = None) -> list[BadChunk]:
    """Decode every chunk of ``array``; ``required[i]`` (over the chunk grid) says chunk i must exist on disk.

    ``root`` is the store folder (a chunk file's path is ``root/array.path/chunk_key``).
    """
    bad = []
    for index in np.ndindex(*array.cdata_shape):
        key = chunk_key(array, index)
        if not (root / array.path / key).is_file():
            if required is not None and required[index]:
                bad.append(BadChunk(array.path, key, "missing"))
            continue
        try:
            array.get_block_selection(index)
        except Exception as exc:  # checksum mismatch (ValueError) or a corrupt zstd frame (RuntimeError, ...)
            bad.append(BadChunk(array.path, key, _problem(exc)))
    return bad


def checked_read(array: zarr.Array, selection=slice(None), root: str | Path = ".") -> np.ndarray:
    """``array[selection]``, or a CamstatError naming the array and the bad chunk when a chunk is damaged."""
    try:
        return array[selection]
    except Exception as exc:
        bad = scan_array(array, Path(root))
        if not bad:
            raise  # not damage: a programming error, shown as it is
        raise CamstatError(
            f"store {root} is damaged: {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''};"
            f" run `camstat verify {root}` and extract the store again"
        ) from exc
