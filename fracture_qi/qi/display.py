"""Display arithmetic shared by the dashboard and the report tables: shown counts, rates with
their Wilson intervals, and their text, in publication or internal mode.

Publication mode (:mod:`fracture_qi.qi.suppression`): a count of 1-7 is hidden, others are
rounded to 5; a rate is **computed from the rounded counts** and hidden when its numerator or
the rest of its denominator is 1-7 (so "all but three" is never published); its Wilson
interval is computed from the same rounded counts. Internal mode shows exact numbers. Every
function takes the mode explicitly.
"""

from __future__ import annotations

import math

from fracture_qi.qi.proportions import wilson_interval
from fracture_qi.qi.suppression import HIDDEN, MIN_FOR_STATISTIC, SUPPRESS_MAX, Mode, rounded_count

#: what a publication-mode output says about its numbers
NOTE_PUBLISH = ("Publication mode: counts of 1-7 shown as *, other counts rounded to the "
                "nearest 5; rates and their 95% intervals from the rounded counts.")
NOTE_INTERNAL = "Internal view: exact counts, for the FLS team only; not for publication."


def note(mode: Mode) -> str:
    """The sentence that says how the numbers of *mode* were treated."""
    return NOTE_PUBLISH if mode == "publish" else NOTE_INTERNAL


def small(n: float) -> bool:
    """A count that publication hides (1-7).

    Examples
    --------
    >>> [small(n) for n in (0, 1, 7, 8)]
    [False, True, True, False]
    """
    return 1 <= round(n) <= SUPPRESS_MAX


def shown_count(n: float, mode: Mode) -> float | None:
    """The number shown (or plotted) for a count: rounded, ``None`` when hidden, in publish.

    Examples
    --------
    >>> shown_count(13, "publish"), shown_count(5, "publish"), shown_count(13, "internal")
    (15.0, None, 13.0)
    """
    if mode == "publish":
        r = rounded_count(int(round(n)))
        return None if r is None else float(r)
    return float(n)


def rate_hidden(k: float, n: float, mode: Mode) -> bool:
    """Publication hides a rate whose numerator or remainder is 1-7.

    Examples
    --------
    >>> rate_hidden(3, 40, "publish"), rate_hidden(37, 40, "publish"), rate_hidden(3, 40, "internal")
    (True, True, False)
    """
    return mode == "publish" and (small(k) or small(n - k))


def rate(k: float, n: float, mode: Mode, confidence: float = 0.95
         ) -> tuple[float | None, float | None, float | None]:
    """A proportion and its Wilson interval, from rounded counts in publish mode.

    Returns ``(None, None, None)`` when hidden or when the denominator is 0.

    Examples
    --------
    >>> [round(v, 3) for v in rate(13, 41, "publish")]   # 15 / 40
    [0.375, 0.242, 0.53]
    >>> rate(5, 41, "publish")
    (None, None, None)
    """
    if rate_hidden(k, n, mode):
        return (None, None, None)
    a, b = shown_count(k, mode), shown_count(n, mode)
    if a is None or b is None or not b:
        return (None, None, None)
    a = min(a, b)  # rounding can push a numerator past its denominator
    lo, hi = wilson_interval(a, b, confidence)
    return (a / b, lo, hi)


def pct(x: float | None, decimals: int = 1) -> str:
    """``0.375`` -> ``'37.5%'``; ``''`` for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{100 * x:.{decimals}f}%"


def ci_text(lo: float | None, hi: float | None) -> str:
    """``'24.2-53.0%'``; ``''`` when either limit is missing."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f"{100 * lo:.1f}-{100 * hi:.1f}%"


def rate_parts(k: float, n: float, mode: Mode) -> tuple[str, str]:
    """``(estimate, interval)`` texts of a rate: ``('*', '')`` when hidden, ``('', '')``
    with no denominator."""
    if rate_hidden(k, n, mode):
        return (HIDDEN, "")
    est, lo, hi = rate(k, n, mode)
    if est is None:
        return ("", "")
    return (pct(est), ci_text(lo, hi))


def rate_text(k: float, n: float, mode: Mode) -> str:
    """``'37.5% (24.2-53.0%)'``, ``'*'`` or ``''``.

    Examples
    --------
    >>> rate_text(40, 49, "publish")
    '80.0% (67.0-88.8%)'
    >>> rate_text(45, 49, "publish")
    '*'
    """
    est, ci = rate_parts(k, n, mode)
    return f"{est} ({ci})" if ci else est


def count_text(n: float, mode: Mode) -> str:
    """A count as shown: ``'*'``, rounded or exact."""
    if mode == "publish":
        r = rounded_count(int(round(n)))
        return HIDDEN if r is None else str(r)
    return str(int(round(n)))


def stat_text(value: float | None, n: float, mode: Mode, fmt: str = "{:.0f}") -> str:
    """A statistic (median, kappa) hidden in publication mode when from fewer than 8."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if mode == "publish" and n < MIN_FOR_STATISTIC:
        return HIDDEN
    return fmt.format(value)


__all__ = [
    "NOTE_INTERNAL",
    "NOTE_PUBLISH",
    "ci_text",
    "count_text",
    "note",
    "pct",
    "rate",
    "rate_hidden",
    "rate_parts",
    "rate_text",
    "shown_count",
    "small",
    "stat_text",
]
