"""Proportions with confidence intervals, plain and under the audit's sampling design.

Two kinds of estimate are needed:

* **Plain proportions** (PPV of the AI flag, KPI percentages): every case in the denominator
  was looked at. :func:`wilson_interval` (Wilson score interval) is used because it behaves
  well at small counts and at 0 % / 100 %, where the textbook Wald interval collapses.
* **Design-weighted proportions** (sensitivity, specificity, NPV): AI-negative studies are
  only reviewed in a random *audit sample* (e.g. 10 %), so each reviewed negative stands for
  ``1 / sampling_probability`` studies. :func:`weighted_proportion` gives the
  inverse-probability-weighted (Horvitz-Thompson ratio) estimate and a Wilson interval on the
  design-based *effective sample size* (Korn & Graubard 1998): the variance of the ratio is
  estimated by Taylor linearisation within sampling strata, and ``n_eff = p(1-p)/var``.

The Wilson interval is written out in numpy (statsmodels' formula, checked against it in
the tests), so nothing here imports statsmodels or scipy except the exact
(Clopper-Pearson) interval, which needs the beta distribution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from statistics import NormalDist

import numpy as np

# statsmodels (and the scipy it pulls in: 0.5 s of CPU, 1.5 s+ on a loaded machine) is only
# imported for the exact interval, so that importing this module (e.g. for the QI
# dashboard's first paint) stays cheap

logger = logging.getLogger(__name__)

#: two-sided 95 % standard normal quantile
Z95 = 1.959963984540054
#: interval methods understood by :func:`proportion` (statsmodels names)
METHODS = {"wilson": "wilson", "clopper-pearson": "beta", "exact": "beta"}


def z_value(confidence: float = 0.95) -> float:
    """Two-sided standard normal quantile for *confidence* (1.959964 for 0.95).

    Examples
    --------
    >>> round(z_value(0.95), 6)
    1.959964
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be between 0 and 1, e.g. 0.95")
    return Z95 if confidence == 0.95 else NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    The arithmetic of statsmodels' ``proportion_confint(method="wilson")``, written out in
    numpy so that the dashboard's first paint needs neither statsmodels nor scipy
    (``tests/test_qi_proportions.py`` checks the two agree).

    Parameters
    ----------
    successes
        Number of cases with the outcome (may be a weighted, non-integer count).
    n
        Number of cases in the denominator (may be an effective sample size).
    confidence
        Two-sided confidence level, e.g. 0.95.

    Returns
    -------
    tuple of float
        ``(low, high)`` as proportions in [0, 1]; ``(nan, nan)`` when ``n == 0``.

    Raises
    ------
    ValueError
        When ``n < 0``, ``successes`` is outside ``[0, n]`` or ``confidence`` is not in (0, 1).

    Examples
    --------
    >>> low, high = wilson_interval(45, 50)
    >>> round(low, 3), round(high, 3)
    (0.786, 0.957)
    >>> wilson_interval(0, 0)
    (nan, nan)
    """
    z = z_value(confidence)
    if n < 0 or successes < 0 or successes > n + 1e-9:
        raise ValueError(
            f"successes={successes!r}, n={n!r}: need 0 <= successes <= n. "
            "Fix: pass the numerator and the denominator of the proportion"
        )
    if n == 0:
        return (math.nan, math.nan)
    k = min(successes, n)
    q = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (q + z2 / (2 * n)) / denom
    half = z * math.sqrt(q * (1.0 - q) / n + z2 / (4.0 * n * n)) / denom
    # at k == 0 or k == n the exact limit is 0 or 1; floating point can miss it by 1e-16
    return (float(min(max(0.0, centre - half), q)), float(max(min(1.0, centre + half), q)))


@dataclass(frozen=True)
class Proportion:
    """A proportion with its interval, ready for a table.

    Attributes
    ----------
    numerator, denominator
        The counts (weighted estimates of counts for design-weighted proportions).
    estimate
        ``numerator / denominator`` (nan when the denominator is 0).
    low, high
        Confidence limits.
    n
        Unweighted number of cases in the denominator.
    n_effective
        Sample size the interval was computed on (equals ``n`` for plain proportions).
    method
        How the interval was computed.
    confidence
        Two-sided level.
    """

    numerator: float
    denominator: float
    estimate: float
    low: float
    high: float
    n: int
    n_effective: float
    method: str
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for DataFrames and JSON)."""
        return asdict(self)


def proportion(
    successes: int, n: int, *, method: str = "wilson", confidence: float = 0.95
) -> Proportion:
    """A plain proportion with a Wilson (default) or Clopper-Pearson interval.

    Parameters
    ----------
    successes, n
        Numerator and denominator counts.
    method
        ``"wilson"`` or ``"clopper-pearson"`` (alias ``"exact"``).
    confidence
        Two-sided confidence level.

    Returns
    -------
    Proportion

    Raises
    ------
    ValueError
        For an unknown method or impossible counts.

    Examples
    --------
    >>> p = proportion(8, 10)
    >>> p.estimate, round(p.low, 3), round(p.high, 3)
    (0.8, 0.49, 0.943)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {sorted(METHODS)}")
    if method == "wilson":
        low, high = wilson_interval(successes, n, confidence)
    else:
        if n < 0 or not 0 <= successes <= n:
            raise ValueError(f"successes={successes!r}, n={n!r}: need 0 <= successes <= n")
        if n == 0:
            low, high = math.nan, math.nan
        else:
            from statsmodels.stats.proportion import proportion_confint

            low, high = proportion_confint(successes, n, alpha=1 - confidence, method="beta")
            low, high = float(low), float(high)
    est = successes / n if n else math.nan
    return Proportion(
        float(successes), float(n), est, low, high, int(n), float(n), method, confidence
    )


def kish_effective_n(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``.

    Examples
    --------
    >>> kish_effective_n(np.array([1.0, 1.0, 1.0, 1.0]))
    4.0
    >>> round(kish_effective_n(np.array([1.0, 1.0, 10.0])), 2)
    1.41
    """
    w = np.asarray(weights, dtype=float)
    s2 = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / s2) if s2 > 0 else 0.0


@dataclass(frozen=True)
class StratumSums:
    """Sufficient statistics of one sampling stratum for a weighted proportion.

    Attributes
    ----------
    n
        Reviewed cases in the stratum (all of them, in or out of the denominator).
    n_x, n_y
        Unweighted cases in the denominator / numerator.
    w_x, w_y
        Sums of the weights over denominator / numerator cases.
    w2_x, w2_y
        Sums of the squared weights over denominator / numerator cases.
    """

    n: float
    n_x: float
    n_y: float
    w_x: float
    w_y: float
    w2_x: float
    w2_y: float


def weighted_proportion_from_sums(strata: list[StratumSums], *,
                                  confidence: float = 0.95) -> Proportion:
    """:func:`weighted_proportion` from per-stratum sums (what an aggregate cube holds).

    The Taylor-linearised variance only needs, per stratum, the number of cases and the sums
    of ``w`` and ``w^2`` over the numerator and the denominator cases, because
    ``z_i = w_i (y_i - R x_i) / X`` is ``w_i (1 - R) / X`` for a numerator case,
    ``-w_i R / X`` for the rest of the denominator and 0 otherwise.
    """
    n_den = sum(s.n_x for s in strata)
    X = sum(s.w_x for s in strata)
    Y = sum(s.w_y for s in strata)
    if n_den == 0 or X == 0:
        return Proportion(Y, X, math.nan, math.nan, math.nan, 0, 0.0, "ipw-wilson-neff",
                          confidence)
    r = Y / X
    var = 0.0
    for s in strata:
        if s.n > 1:
            sum_z = (s.w_y - r * s.w_x) / X
            sum_z2 = ((1 - r) ** 2 * s.w2_y + r * r * (s.w2_x - s.w2_y)) / (X * X)
            var += s.n / (s.n - 1) * max(0.0, sum_z2 - sum_z * sum_z / s.n)
    if var > 1e-15 and 0 < r < 1:
        n_eff = min(r * (1 - r) / var, float(n_den))
    else:
        w2 = sum(s.w2_x for s in strata)
        n_eff = X * X / w2 if w2 > 0 else 0.0
    low, high = wilson_interval(r * n_eff, n_eff, confidence)
    # Wilson on a non-integer n_eff can, by rounding, exclude r by a hair: keep r inside
    low, high = min(low, r), max(high, r)
    return Proportion(Y, X, r, low, high, int(round(n_den)), float(n_eff), "ipw-wilson-neff",
                      confidence)


def stratum_sums(numerator: np.ndarray, denominator: np.ndarray, weights: np.ndarray,
                 strata: np.ndarray | None = None) -> list[StratumSums]:
    """Per-stratum :class:`StratumSums` of boolean numerator/denominator arrays."""
    y = np.asarray(numerator, dtype=bool)
    x = np.asarray(denominator, dtype=bool)
    w = np.asarray(weights, dtype=float)
    s = np.zeros(len(w), dtype=object) if strata is None else np.asarray(strata, dtype=object)
    out = []
    for h in np.unique(s) if len(s) else []:
        m = s == h
        out.append(StratumSums(float(m.sum()), float((x & m).sum()), float((y & m).sum()),
                               float(w[x & m].sum()), float(w[y & m].sum()),
                               float((w[x & m] ** 2).sum()), float((w[y & m] ** 2).sum())))
    return out


def weighted_proportion(
    numerator: np.ndarray,
    denominator: np.ndarray,
    weights: np.ndarray,
    strata: np.ndarray | None = None,
    *,
    confidence: float = 0.95,
) -> Proportion:
    """Inverse-probability-weighted proportion with a design-based Wilson interval.

    The estimate is the Horvitz-Thompson ratio ``R = sum(w * y) / sum(w * x)`` over the
    reviewed cases, where ``x`` marks cases in the denominator (e.g. true fractures), ``y``
    cases also in the numerator (e.g. true fractures the AI flagged) and ``w`` is
    ``1 / sampling probability``.

    Interval: the variance of ``R`` is estimated by Taylor linearisation, treating each
    stratum (e.g. ``flagged`` and ``audit_negative``) as sampled independently with
    replacement (conservative, no finite-population correction):
    ``z_i = w_i (y_i - R x_i) / X``, ``var = sum_h n_h/(n_h-1) sum_i (z_i - mean_h z)^2``.
    The effective sample size is ``n_eff = R (1 - R) / var`` (capped at the unweighted
    number of denominator cases), and the Wilson interval is computed for ``R * n_eff``
    successes out of ``n_eff``. When ``R`` is 0 or 1 the variance is 0, and Kish's effective
    size of the denominator cases' weights is used instead, so an estimate of 100 % still
    gets a lower limit below 100 %.

    Parameters
    ----------
    numerator, denominator
        Boolean arrays over the reviewed cases; ``numerator`` must imply ``denominator``.
    weights
        Positive inverse-probability weights, one per case.
    strata
        Sampling stratum of each case (``None``: one stratum).
    confidence
        Two-sided confidence level.

    Returns
    -------
    Proportion
        ``numerator``/``denominator`` are the weighted counts; ``n`` the unweighted number of
        denominator cases; ``method`` is ``"ipw-wilson-neff"``.

    Raises
    ------
    ValueError
        When the arrays differ in length, a weight is not positive, or a numerator case is
        not in the denominator.

    Examples
    --------
    Ten reviewed flagged fractures (weight 1) and one missed fracture found in a 10 % audit
    sample (weight 10): sensitivity is 10 / (10 + 10) = 50 %.

    >>> y = np.array([1] * 10 + [0], bool); x = np.ones(11, bool)
    >>> w = np.array([1.0] * 10 + [10.0])
    >>> p = weighted_proportion(y, x, w, np.array(["f"] * 10 + ["n"]))
    >>> p.estimate
    0.5
    """
    y = np.asarray(numerator, dtype=bool)
    x = np.asarray(denominator, dtype=bool)
    w = np.asarray(weights, dtype=float)
    if not (len(y) == len(x) == len(w)):
        raise ValueError("numerator, denominator and weights must have the same length")
    if len(w) and (not np.all(np.isfinite(w)) or np.any(w <= 0)):
        raise ValueError(
            "weights must be positive and finite (1 / sampling probability). "
            "Fix: check sampling_probability is in (0, 1] for every reviewed case"
        )
    if np.any(y & ~x):
        raise ValueError("a numerator case is not in the denominator")
    return weighted_proportion_from_sums(stratum_sums(y, x, w, strata), confidence=confidence)
