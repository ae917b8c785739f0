"""The options of an H1 analysis, checked once (SPEC 4): bad input becomes one clear error, here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from camstat import composition
from camstat import metrics as metrics_mod
from camstat.errors import CamstatError
from camstat.store import Store, open_store

BY = ("correct", "class", "cluster")
CLASS_OF = ("pred", "label")
CORRECTIONS = ("holm", "fdr_bh", "bonferroni")
CONTROLS = ("permuted",)
ALPHA = 0.05


@dataclass(frozen=True)
class Options:
    """Validated options of :func:`camstat.h1.analyze` (names as in its signature)."""

    method: str
    layer: str
    target: str
    by: str
    metrics: list[str]
    class_of: str
    size: tuple[int, int]
    q: float
    correction: str
    permutations: int
    n_boot: int
    min_group: int
    seed: int
    control: str | None
    clusters: int | str  # K, or "auto"
    features: str  # composition features of --by cluster
    within_class: bool
    pair_sample: int
    block: int | None
    primary: str | None = None
    null_repeats: int = 200

    @property
    def label(self) -> str:
        """What a group is: ``cluster`` or ``class``."""
        return "cluster" if self.by == "cluster" else "class"

    @property
    def grouped(self) -> bool:
        """Group-level consistency wanted (``by`` class or cluster)."""
        return self.by in ("class", "cluster")

    @property
    def needs_masks(self) -> bool:
        return any(metrics_mod.PER_IMAGE[m].needs_masks for m in self.metrics)


def rng(seed: int, *names: Any) -> np.random.Generator:
    """A generator derived from the seed and names (independent of other streams, whatever their order)."""
    digest = hashlib.sha256("\x1f".join(map(str, names)).encode()).digest()
    key = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def valid_metrics(has_masks: bool = True) -> list[str]:
    """Names ``--metrics`` accepts by default (the per-image metrics of SPEC 3 that apply)."""
    return metrics_mod.default_metric_names(has_masks)


def parse_metrics(metrics: str | Sequence[str] | None, has_masks: bool) -> list[str]:
    """Metric names: every applicable one by default; unknown names are an error listing the valid ones."""
    if metrics is None or (isinstance(metrics, str) and not metrics.strip()):
        return valid_metrics(has_masks)
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    known = list(metrics_mod.PER_IMAGE)
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise CamstatError(f"unknown metric(s) {', '.join(unknown) or repr(metrics)}; valid: {', '.join(known)}")
    no_mask = [m for m in names if metrics_mod.PER_IMAGE[m].needs_masks and not has_masks]
    if no_mask:
        raise CamstatError(f"metric(s) {', '.join(no_mask)} need ground-truth masks, which this store lacks")
    return list(dict.fromkeys(names))


def resolve_primary(primary: str | None, names: list[str], by: str) -> str | None:
    """The metric that decides the verdict: ``primary`` (a consistency metric among ``names``), by default
    ``dist`` when analysed, else the first consistency metric; None for ``by="class"`` or no consistency metric."""
    consistency = [m for m in names if metrics_mod.family(m) == "consistency"]
    if primary is not None:
        if primary not in metrics_mod.PER_IMAGE or metrics_mod.family(primary) != "consistency":
            valid = [m for m in metrics_mod.PER_IMAGE if metrics_mod.family(m) == "consistency"]
            raise CamstatError(f"--primary {primary!r} is not a consistency metric; choose one of {', '.join(valid)}")
        if primary not in names:
            raise CamstatError(f"--primary {primary} is not among the analysed metrics ({', '.join(names)}); "
                               "add it to --metrics")
    if by == "class":
        return None
    return primary or ("dist" if "dist" in consistency else (consistency[0] if consistency else None))


def analysis_size(size: int | Sequence[int] | None, store: Store) -> tuple[int, int]:
    """(H, W) of the analysis maps: the store's input size by default."""
    if size is None:
        return tuple(int(s) for s in store.input_size)
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise CamstatError(f"invalid analysis size {size}; give a positive number of pixels")
    return size


def as_store(store: Store | str | Path | None, what: str = "store") -> Store:
    """A :class:`Store`, opening a path."""
    if isinstance(store, Store):
        return store
    if store is None:
        raise CamstatError(f"no {what} given")
    return open_store(store)


def _choice(value: Any, allowed: Sequence[str], option: str) -> None:
    if value not in allowed:
        raise CamstatError(f"invalid {option} {value!r}; choose {', '.join(allowed)}")


def resolve(store: Store, *, method: str | None, layer: str | None, target: str, by: str,
            metrics: str | Sequence[str] | None, class_of: str, size: int | Sequence[int] | None, q: float,
            correction: str, permutations: int, n_boot: int, min_group: int, seed: int, control: str | None,
            clusters: int | str, features: str, within_class: bool, pair_sample: int,
            block: int | None, primary: str | None = None, null_repeats: int = 200) -> Options:
    """Check every option against each other and the store; defaults filled in from the store."""
    _choice(by, BY, "--by")
    _choice(class_of, CLASS_OF, "--class-of")
    _choice(correction, CORRECTIONS, "--correction")
    if control is not None:
        _choice(control, CONTROLS, "--control")
    if not 0 < q < 1:
        raise CamstatError(f"--q must lie in (0, 1), got {q}")
    if permutations < 1 or n_boot < 0 or min_group < 1 or pair_sample < 2:
        raise CamstatError("need --permutations >= 1, --bootstrap >= 0, --min-group >= 1 and --pair-sample >= 2")
    if control is not None and by == "class":
        raise CamstatError("--control permuted needs --by correct or cluster (--by class runs no tests)")
    if null_repeats < 1:
        raise CamstatError(f"--null-repeats must be at least 1, got {null_repeats}")
    clusters = composition.parse_clusters(clusters)
    if by == "cluster":
        composition.require(store, features)
    method = method or store.methods[0]
    layer = layer or store.layers[0]
    store.require(method, layer, target)
    names = parse_metrics(metrics, store.has_masks)
    return Options(method=method, layer=layer, target=target, by=by, metrics=names, class_of=class_of,
                   size=analysis_size(size, store), q=q, correction=correction, permutations=permutations,
                   n_boot=n_boot, min_group=min_group, seed=seed, control=control, clusters=clusters,
                   features=features, within_class=bool(within_class), pair_sample=pair_sample, block=block,
                   primary=resolve_primary(primary, names, by), null_repeats=int(null_repeats))
