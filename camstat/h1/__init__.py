"""Hypothesis 1 on a store: per-image consistency metrics and their tests (SPEC 3, 4).

``camstat consistency`` is a thin layer over :func:`analyze`, which a
notebook calls the same way::

    from camstat import open_store
    from camstat.h1 import analyze
    result = analyze(open_store("store/test.zarr"), by="correct", permutations=2000)
    result.to_dict()["metrics"]["dist"]["pooled"]

The modules, in the order an analysis runs them:

* :mod:`~camstat.h1.options` -- every option checked once, against the store.
* :mod:`~camstat.h1.groups` -- images grouped by class (the prediction by
  default, ``class_of="label"`` for the true label) or by composition
  (k-means on composition features, :mod:`camstat.composition`: thumbnails,
  HOG, the model's embedding or the object's position and scale);
  group-level consistency (pairwise SSIM/IoU on a seeded sample of at most
  ``pair_sample`` maps, exact centre-of-mass dispersion and distance to
  the group mean).
* :mod:`~camstat.h1.streaming` -- the per-image metrics against each
  image's reference: the mean map of the *correct* images of its group,
  leave-one-out, or another store's class means (``reference=``, e.g. the
  train split), in two passes over the store's chunks
  (:mod:`camstat.references` holds the one rule for a group without
  correct maps: NaN, counted as ``undefined_reference`` and left out of the
  tests, never silently).
* :mod:`~camstat.h1.tables` -- :func:`camstat.stats.h1_analysis` per metric
  (correct vs incorrect within each group and pooled), the within-class
  AUC (the headline) and the marginal AUC, the odds ratio given a flexible
  confidence adjustment, each metric's role (primary, secondary
  consistency, concentration, localisation) with its p adjusted within the
  role, and its finding by the verdict rule; metric medians for
  ``by="class"``.
* :mod:`~camstat.h1.verdicts` -- the H1 verdict from the primary metric,
  Holm-adjusted across the command's primary analyses.
* :mod:`~camstat.h1.controls` -- the whole pipeline under the null
  (:mod:`camstat.nullsim`: correctness shuffled within group, references
  rebuilt, tests rerun, ``null_repeats`` times), and the randomised-weights
  sanity check of Adebayo et al. (2018) with the random maps' within-class
  AUC. The dispersion test (:mod:`camstat.dispersion`, "more consistent
  among themselves?") runs beside the reference-based tests.
* :mod:`~camstat.h1.analyze` -- :func:`analyze` ties them together and
  saves the per-image arrays and the result under ``derived/consistency/
  <method>/<layer>/<target>/<by>`` of the store (primary arrays untouched;
  ``<by>`` of a clustering also names its features, K and ``-within``).

Results hold numbers and flags; every sentence about them is written by
:mod:`camstat.present`.
"""

from camstat.h1.analyze import ConsistencyResult, analyze
from camstat.h1.options import BY, CLASS_OF, CONTROLS, CORRECTIONS, parse_metrics, valid_metrics

__all__ = ["BY", "CLASS_OF", "CONTROLS", "CORRECTIONS", "ConsistencyResult", "analyze", "parse_metrics",
           "valid_metrics"]
