"""One conversion of results to JSON-ready Python: every ``--json``, results.json and run file uses it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def jsonable(value: Any) -> Any:
    """Plain JSON types, deterministically.

    Result records (anything with ``to_dict()``) become dicts; numpy arrays and
    scalars and torch tensors become Python lists and numbers; tuples become
    lists; NaN and infinities become ``None`` (JSON has no spelling for them).
    """
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
