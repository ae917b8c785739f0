"""The one exception type that reaches the user as ``error: ...`` and exit code 2, and how messages name options."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator


class CamstatError(Exception):
    """Bad input or a refused operation.

    The CLI prints ``error: <message>`` on one line and exits with code 2;
    the message should name the problem and what to do about it.
    """


_SPELLING: contextvars.ContextVar[str] = contextvars.ContextVar("camstat_spelling", default="python")


def spell(flag: str, argument: str) -> str:
    """An option as the user wrote it: ``flag`` under the command line, else the Python ``argument``.

    Messages name what the reader can change: ``spell("--resume", "mode='resume'")``.
    """
    return flag if _SPELLING.get() == "cli" else argument


@contextmanager
def command_line_spelling() -> Iterator[None]:
    """Within this block, :func:`spell` names command-line flags (the CLI runs every command inside it)."""
    token = _SPELLING.set("cli")
    try:
        yield
    finally:
        _SPELLING.reset(token)
