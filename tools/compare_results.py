"""Diff two camstat JSON results (results.json, ``--json`` files) number for number.

    python tools/compare_results.py A.json B.json [--tol 0] [--ignore KEY,...]

Walks both documents together and compares every number, flag (bool) and
null at the same path. Strings are not compared (paths, timestamps, command
lines and prose differ between runs and between versions of the wording);
their paths are only counted. A number or flag present on one side only is a
difference, so a refactor that drops a statistic fails. Keys named in
``--ignore`` (e.g. ``seconds``, wall times) are skipped wherever they occur.
Exit code 0 when every number agrees (within ``--tol``, absolute), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Iterator

DEFAULT_IGNORE = ("seconds", "steps", "images_per_second", "created", "finished", "store_created")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _leaves(x: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every non-container value."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def _same(a: Any, b: Any, tol: float) -> bool:
    if _is_number(a) and _is_number(b):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b or abs(a - b) <= tol
    return type(a) is type(b) and a == b


def compare(a: Any, b: Any, *, tol: float = 0.0, ignore: tuple[str, ...] = DEFAULT_IGNORE) -> dict:
    """Differences of numbers/flags/nulls between two JSON documents, and the counts compared."""

    def keep(path: str) -> bool:
        parts = path.replace("[", "/[").split("/")
        return not any(p in ignore for p in parts)

    la = {p: v for p, v in _leaves(a) if keep(p)}
    lb = {p: v for p, v in _leaves(b) if keep(p)}
    diffs, strings, compared = [], 0, 0
    for path in sorted(set(la) | set(lb)):
        va, vb = la.get(path, KeyError), lb.get(path, KeyError)
        if isinstance(va, str) or isinstance(vb, str):
            strings += 1
            if not (isinstance(va, str) or va is KeyError) or not (isinstance(vb, str) or vb is KeyError):
                diffs.append((path, va, vb))  # a number turned into text or back
            continue
        compared += 1
        if va is KeyError or vb is KeyError or not _same(va, vb, tol):
            diffs.append((path, va, vb))
    return {"compared": compared, "strings_skipped": strings, "differences": diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--tol", type=float, default=0.0, help="absolute tolerance (default 0: bitwise equal)")
    parser.add_argument("--ignore", default=",".join(DEFAULT_IGNORE), help="comma list of keys to skip")
    args = parser.parse_args(argv)
    docs = []
    for name in (args.a, args.b):
        with open(name) as f:
            docs.append(json.load(f))
    res = compare(*docs, tol=args.tol, ignore=tuple(k for k in args.ignore.split(",") if k))
    missing = "(missing)"
    for path, va, vb in res["differences"]:
        print(f"{path}: {missing if va is KeyError else va!r} != {missing if vb is KeyError else vb!r}")
    print(f"{res['compared']} numbers/flags compared, {len(res['differences'])} differ; "
          f"{res['strings_skipped']} strings not compared", file=sys.stderr)
    return 1 if res["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
