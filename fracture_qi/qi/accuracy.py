"""Diagnostic accuracy of the AI flag against the nurse's adjudication.

Reference standard: the first read's decision (``read1_decision``) on an adjudicated
study: ``confirmed`` = fracture present, ``not_confirmed`` = absent. ``indeterminate`` and
``not_assessable`` studies are left out of every accuracy measure (and counted in
``n_excluded``).

Who is adjudicated depends on the worklist design: every AI-flagged study (sampling
probability 1) and a random audit sample of AI-negative studies (probability e.g. 0.1). An
audited negative therefore stands for ``1 / 0.1 = 10`` negatives, and each adjudicated study
is weighted by ``weight = 1 / sampling_probability``:

* **PPV** = confirmed flagged / adjudicated flagged (all weights 1: a plain proportion with
  a Wilson interval);
* **sensitivity** = weighted true positives / weighted confirmed fractures
  = ``TP / (TP + 10 x FN_audit)`` with a 10 % audit;
* **specificity** = weighted true negatives / weighted non-fractures;
* **NPV** = audited negatives not confirmed / audited negatives (one stratum, one weight);
* **prevalence** = weighted confirmed / weighted adjudicated.

Weighted measures use :func:`fracture_qi.qi.proportions.weighted_proportion`: the
Horvitz-Thompson ratio with a Wilson interval on the design-based effective sample size
(strata: the worklist strata). If the flag threshold used here differs from the worklist's
(``flag_grade``), PPV is weighted too, since some newly flagged studies were only seen in
the audit sample.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fracture_qi.qi.proportions import Proportion, proportion, weighted_proportion

logger = logging.getLogger(__name__)

#: rows of :func:`accuracy`
MEASURES = ("ppv", "sensitivity", "specificity", "npv", "prevalence")


def _row(name: str, p: Proportion, n_num: int, n_den: int, definition: str) -> dict:
    d = p.to_dict()
    d.update(measure=name, n_numerator=int(n_num), n_denominator=int(n_den), definition=definition)
    return d


def accuracy(studies: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """PPV, sensitivity, specificity, NPV and prevalence with intervals (see module doc).

    Parameters
    ----------
    studies
        ``AnalysisData.studies`` (needs ``ai_flagged, read1_decision, sampling_probability,
        stratum``).
    confidence
        Two-sided level.

    Returns
    -------
    pandas.DataFrame
        One row per measure: ``measure, estimate, low, high, numerator, denominator``
        (weighted counts), ``n_numerator, n_denominator`` (unweighted), ``n, n_effective,
        method, confidence, definition``; attribute ``attrs["n_excluded"]`` counts
        indeterminate / not assessable studies.

    Examples
    --------
    >>> s = pd.DataFrame({
    ...     "ai_flagged": [True] * 10 + [False] * 5,
    ...     "read1_decision": ["confirmed"] * 8 + ["not_confirmed"] * 2
    ...                       + ["confirmed"] + ["not_confirmed"] * 4,
    ...     "sampling_probability": [1.0] * 10 + [0.1] * 5,
    ...     "stratum": ["flagged"] * 10 + ["audit_negative"] * 5})
    >>> a = accuracy(s).set_index("measure")
    >>> float(a.loc["ppv", "estimate"]), float(a.loc["sensitivity", "estimate"])
    (0.8, 0.4444444444444444)
    """
    dec = studies["read1_decision"]
    ok = dec.isin(["confirmed", "not_confirmed"]) & studies["sampling_probability"].notna()
    n_excluded = int((studies["read1_decision"].notna() & ~ok).sum())
    s = studies[ok]
    flag = s["ai_flagged"].eq(True).to_numpy()
    conf = (s["read1_decision"] == "confirmed").to_numpy()
    w = (1.0 / s["sampling_probability"].astype(float)).to_numpy()
    strata = s["stratum"].fillna("unknown").astype(str).to_numpy()
    rows = []
    if len(s) and np.allclose(w[flag], 1.0):
        ppv = proportion(int((flag & conf).sum()), int(flag.sum()), confidence=confidence)
    else:
        ppv = weighted_proportion(flag & conf, flag, w, strata, confidence=confidence)
    rows.append(
        _row(
            "ppv",
            ppv,
            (flag & conf).sum(),
            flag.sum(),
            "confirmed / adjudicated, among AI-flagged studies",
        )
    )
    rows.append(
        _row(
            "sensitivity",
            weighted_proportion(flag & conf, conf, w, strata, confidence=confidence),
            (flag & conf).sum(),
            conf.sum(),
            "weighted AI-flagged confirmed / weighted confirmed (audit weights 1/p)",
        )
    )
    rows.append(
        _row(
            "specificity",
            weighted_proportion(~flag & ~conf, ~conf, w, strata, confidence=confidence),
            (~flag & ~conf).sum(),
            (~conf).sum(),
            "weighted AI-negative not confirmed / weighted not confirmed",
        )
    )
    rows.append(
        _row(
            "npv",
            weighted_proportion(~flag & ~conf, ~flag, w, strata, confidence=confidence),
            (~flag & ~conf).sum(),
            (~flag).sum(),
            "not confirmed / adjudicated, among AI-negative audit-sample studies",
        )
    )
    rows.append(
        _row(
            "prevalence",
            weighted_proportion(conf, np.ones(len(s), bool), w, strata, confidence=confidence),
            conf.sum(),
            len(s),
            "weighted confirmed / weighted adjudicated (screened population)",
        )
    )
    out = pd.DataFrame(rows)
    cols = [
        "measure",
        "estimate",
        "low",
        "high",
        "numerator",
        "denominator",
        "n_numerator",
        "n_denominator",
        "n",
        "n_effective",
        "method",
        "confidence",
        "definition",
    ]
    out = out[cols]
    out.attrs["n_excluded"] = n_excluded
    return out
