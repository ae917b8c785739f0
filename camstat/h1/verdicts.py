"""The H1 verdict of a command's analyses: one primary metric, Holm-adjusted across its analyses (SPEC 4).

Every analysis of the command (methods x layers x targets, e.g. the stores
and methods of one ``camstat report``) contributes the primary metric's
pooled permutation p; these p-values are adjusted together
(:func:`camstat.stats.h1_verdicts`, Holm 1979 by default), and an analysis
supports H1 when its adjusted p is below alpha *and* its within-class AUC
CI lies above 0.5. The primary metric's ``pooled.p_adjusted`` and
``finding`` are rewritten to the command's family, so a table and the
verdict never disagree.

Holm, S. (1979). A simple sequentially rejective multiple test procedure.
    Scand. J. Statist. 6, 65-70.
"""

from __future__ import annotations

from camstat import stats
from camstat.h1.options import ALPHA
from camstat.h1.tables import finding


def primary_verdicts(results: list[dict], *, alpha: float = ALPHA, correction: str | None = None) -> None:
    """Set ``verdict`` of every H1 result dict in ``results`` (in place), adjusting across all of them.

    Results without a primary metric (``by="class"``, or no consistency
    metric analysed) get ``verdict = None`` and stay out of the family.
    ``correction`` defaults to the first result's ``params.correction``.
    """
    family = [d for d in results if d.get("primary") and d["primary"] in d.get("metrics", {})]
    for d in results:
        if d not in family:
            d["verdict"] = None
    if not family:
        return
    method = correction or family[0]["params"]["correction"]
    pooled = [d["metrics"][d["primary"]]["pooled"] for d in family]
    nan = float("nan")

    def num(x):
        return nan if x is None else x

    verdicts = stats.h1_verdicts(
        family[0]["primary"] if len({d["primary"] for d in family}) == 1 else "mixed",
        [num(p.get("p_permutation")) for p in pooled], [num(p.get("auc_within_class")) for p in pooled],
        [[num(c) for c in (p.get("auc_within_class_ci95") or (None, None))] for p in pooled],
        alpha=alpha, correction=method)
    names = [f"{d['method']}/{d['layer']}/{d['target']}" for d in family]
    for d, p, v in zip(family, pooled, verdicts):
        out = v.to_dict()
        out.update(primary=d["primary"], alpha=alpha, correction=method, family_size=len(family), family=names)
        d["verdict"] = out
        p["p_adjusted"] = out["p_adjusted"]
        p["adjusted_over"] = names
        m = d["metrics"][d["primary"]]
        m["finding"] = finding(p, m["higher_is_more_consistent"], alpha)
