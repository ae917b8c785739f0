"""Where a result came from: versions, command line, time, file hashes."""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path


def versions() -> dict[str, str]:
    """Versions of camstat and of the libraries whose behaviour shapes the numbers."""
    import numpy
    import scipy
    import torch
    import torchvision
    import zarr

    import camstat

    return {
        "camstat": camstat.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "zarr": zarr.__version__,
    }


def command_line() -> str:
    """The command as the user typed it (as far as ``sys.argv`` tells)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("camstat", "__main__.py")):
        argv[0] = "camstat"
    return shlex.join(argv)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, streamed so large checkpoints don't fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
