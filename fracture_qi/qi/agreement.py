"""Agreement: Cohen's kappa, AI versus nurse and nurse versus nurse, with intervals.

Kappa and its asymptotic standard error (Fleiss, Cohen & Everitt 1969) are computed from the
contingency table by :func:`kappa_from_table` (the arithmetic of statsmodels'
``cohens_kappa``, checked against it in the tests); the interval is ``kappa +/- z * se``.
Grades (Genant 0-3) use a **weighted** kappa (linear weights by default: the credit for a
disagreement falls in proportion to the number of grades between the two ratings).

Studies compared:

* **AI vs nurse (presence)**: adjudicated studies with an assessable first read
  (confirmed / not confirmed): AI flag versus confirmed. Because the adjudicated set is
  enriched with AI-flagged studies (all flagged, a sample of negatives), this kappa
  describes agreement on the reviewed cases, not in the whole screened population.
* **AI vs nurse (grade)**: the same studies, AI maximum grade versus the nurse's maximum
  grade (0 when not confirmed), weighted kappa.
* **Nurse vs nurse**: double-read studies with both reads recorded, decision (four
  categories) and maximum grade (weighted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from fracture_qi.qi.proportions import z_value

logger = logging.getLogger(__name__)

Weights = Literal["linear", "quadratic"] | None

DECISIONS = ("confirmed", "not_confirmed", "indeterminate", "not_assessable")


@dataclass(frozen=True)
class KappaResult:
    """Cohen's kappa with its interval.

    Attributes
    ----------
    kappa, low, high, se
        Estimate, confidence limits (clipped to [-1, 1]) and asymptotic standard error.
    n
        Cases compared.
    observed, expected
        Observed and chance-expected (weighted) agreement.
    weights
        ``None``, ``"linear"`` or ``"quadratic"``.
    table
        Contingency table (rater a in rows, rater b in columns).
    """

    kappa: float
    low: float
    high: float
    se: float
    n: int
    observed: float
    expected: float
    weights: str | None
    table: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (for a summary table)."""
        return {
            k: getattr(self, k)
            for k in ("kappa", "low", "high", "se", "n", "observed", "expected", "weights")
        }


def kappa(
    a: Sequence[Any] | pd.Series,
    b: Sequence[Any] | pd.Series,
    *,
    categories: Sequence[Any] | None = None,
    weights: Weights = None,
    confidence: float = 0.95,
) -> KappaResult:
    """Cohen's kappa (weighted for ordered categories) between two raters.

    Parameters
    ----------
    a, b
        Ratings of the same cases by two raters (pairs with a missing value are dropped).
    categories
        All possible categories in order (default: the sorted union of those seen); for
        weighted kappa the order defines the distance.
    weights
        ``None`` (unweighted), ``"linear"`` or ``"quadratic"``.
    confidence
        Two-sided level for the interval.

    Returns
    -------
    KappaResult
        NaN kappa when fewer than 2 cases, or when chance agreement is 1 (one category only).

    Examples
    --------
    >>> r = kappa([1, 1, 0, 0, 1, 0], [1, 1, 0, 1, 1, 0])
    >>> round(r.kappa, 3), r.n
    (0.667, 6)
    """
    sa, sb = pd.Series(list(a)), pd.Series(list(b))
    keep = sa.notna() & sb.notna()
    sa, sb = sa[keep], sb[keep]
    cats = list(categories) if categories is not None else sorted(set(sa) | set(sb))
    unknown = (set(sa) | set(sb)) - set(cats)
    if unknown:
        raise ValueError(f"ratings {sorted(map(str, unknown))} are not in categories {cats}")
    pos = {c: i for i, c in enumerate(cats)}
    t = np.zeros((len(cats), len(cats)))
    np.add.at(t, ([pos[x] for x in sa], [pos[x] for x in sb]), 1)
    table = pd.DataFrame(
        t.astype(int), index=pd.Index(cats, name="a"), columns=pd.Index(cats, name="b")
    )
    n = int(keep.sum())
    nan = float("nan")
    if n < 2:
        return KappaResult(nan, nan, nan, nan, n, nan, nan, weights, table)
    res = kappa_from_table(t, weights=weights, confidence=confidence)
    return KappaResult(res.kappa, res.low, res.high, res.se, n, res.observed, res.expected,
                       weights, table)


def weight_matrix(k: int, weights: Weights) -> np.ndarray:
    """Agreement weights ``1 - |i-j|/(k-1)`` (linear), ``1 - (|i-j|/(k-1))^2`` (quadratic)
    or the identity (unweighted)."""
    if weights is None:
        return np.eye(k)
    if weights not in ("linear", "quadratic"):
        raise ValueError(f"weights={weights!r}: use None, 'linear' or 'quadratic'")
    d = np.abs(np.subtract.outer(np.arange(k), np.arange(k))) / max(k - 1, 1)
    return 1 - (d if weights == "linear" else d**2)


def kappa_from_table(table: np.ndarray | Sequence[Sequence[float]], *, weights: Weights = None,
                     confidence: float = 0.95) -> KappaResult:
    """Cohen's kappa and its asymptotic standard error from a square contingency table.

    The variance is Fleiss, Cohen & Everitt's (1969) large-sample formula, as SAS and
    statsmodels' ``cohens_kappa`` compute it (unweighted and weighted); written in numpy so
    that an aggregate table (the dashboard's cube) gives the audit's kappa without
    statsmodels (``tests/test_qi_measures.py`` checks the two agree).

    Examples
    --------
    >>> r = kappa_from_table([[40, 10], [10, 40]])
    >>> round(r.kappa, 3), round(r.observed, 2)
    (0.6, 0.8)
    """
    t = np.asarray(table, dtype=float)
    k = t.shape[0]
    nan = float("nan")
    frame = pd.DataFrame(t)
    n = float(t.sum())
    if n < 2:
        return KappaResult(nan, nan, nan, nan, int(n), nan, nan, weights, frame)
    w = weight_matrix(k, weights)
    p = t / n
    row, col = p.sum(1), p.sum(0)
    expected = np.outer(row, col)
    po = float((w * p).sum())
    pe = float((w * expected).sum())
    if np.isclose(pe, 1.0):
        return KappaResult(nan, nan, nan, nan, int(n), po, pe, weights, frame)
    kap = (po - pe) / (1 - pe)
    w_row = (col * w).sum(1)  # weighted column marginal seen from each row category
    w_col = (row[:, None] * w).sum(0)
    term = (p * (w - (w_col[None, :] + w_row[:, None]) * (1 - kap)) ** 2).sum()
    var = (term - (kap - pe * (1 - kap)) ** 2) / ((1 - pe) ** 2 * n)
    se = math.sqrt(max(var, 0.0))
    z = z_value(confidence)
    return KappaResult(float(kap), max(-1.0, kap - z * se), min(1.0, kap + z * se), se, int(n),
                       po, pe, weights, frame)


def ai_vs_nurse(
    studies: pd.DataFrame, *, grade_weights: Weights = "linear", confidence: float = 0.95
) -> dict[str, KappaResult]:
    """Kappa between the AI and the first-read nurse (see the module docstring).

    Returns
    -------
    dict
        ``{"presence": KappaResult, "grade": KappaResult}``.
    """
    s = studies[
        studies["read1_decision"].isin(["confirmed", "not_confirmed"])
        & studies["screened"].eq(True)
    ]
    pres = kappa(
        s["ai_flagged"].eq(True).astype(int),
        s["read1_decision"].eq("confirmed").astype(int),
        categories=[0, 1],
        confidence=confidence,
    )
    nurse_grade = np.where(
        s["read1_decision"] == "confirmed", s["read1_max_grade"].fillna(0).astype(int), 0
    )
    grade = kappa(
        s["ai_max_grade"].fillna(0).astype(int).clip(0, 3),
        nurse_grade,
        categories=[0, 1, 2, 3],
        weights=grade_weights,
        confidence=confidence,
    )
    return {"presence": pres, "grade": grade}


def nurse_vs_nurse(
    studies: pd.DataFrame, *, grade_weights: Weights = "linear", confidence: float = 0.95
) -> dict[str, KappaResult]:
    """Kappa between first and second reads of double-read studies.

    Returns
    -------
    dict
        ``{"decision": KappaResult, "presence": KappaResult, "grade": KappaResult}``:
        four-category decision, confirmed yes/no (assessable pairs), weighted max grade.
    """
    s = studies[studies["read1_decision"].notna() & studies["read2_decision"].notna()]
    dec = kappa(
        s["read1_decision"], s["read2_decision"], categories=DECISIONS, confidence=confidence
    )
    both = s[
        s["read1_decision"].isin(["confirmed", "not_confirmed"])
        & s["read2_decision"].isin(["confirmed", "not_confirmed"])
    ]
    pres = kappa(
        both["read1_decision"].eq("confirmed").astype(int),
        both["read2_decision"].eq("confirmed").astype(int),
        categories=[0, 1],
        confidence=confidence,
    )
    g1 = np.where(both["read1_decision"] == "confirmed", both["read1_max_grade"].fillna(0), 0)
    g2 = np.where(both["read2_decision"] == "confirmed", both["read2_max_grade"].fillna(0), 0)
    grade = kappa(
        g1.astype(int),
        g2.astype(int),
        categories=[0, 1, 2, 3],
        weights=grade_weights,
        confidence=confidence,
    )
    return {"decision": dec, "presence": pres, "grade": grade}


def agreement_summary(studies: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """All kappas in one table: ``comparison, what, kappa, low, high, se, n, observed,
    expected, weights``."""
    rows = []
    for comp, res in (
        ("AI vs nurse", ai_vs_nurse(studies, confidence=confidence)),
        ("nurse vs nurse", nurse_vs_nurse(studies, confidence=confidence)),
    ):
        for what, r in res.items():
            rows.append({"comparison": comp, "what": what, **r.to_dict()})
    return pd.DataFrame(rows)
