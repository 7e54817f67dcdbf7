"""Small-number suppression for published outputs (statistical disclosure control).

Rules (as in NHS England / OpenSAFELY-style outputs):

* a count of 1 to 7 is shown as ``*``; 0 is shown as ``0``;
* every other count is rounded to the nearest 5 (8 -> 10, 12 -> 10, 13 -> 15);
* percentages are computed from the *rounded* counts, and not at all when either count is
  suppressed;
* **secondary suppression**: in a table whose row and column totals are (or could be)
  published, a row or column with exactly one hidden cell would let a reader recover it by
  subtraction, so a second cell (the smallest visible non-zero one) is hidden too, repeated
  until every row and column has none or at least two hidden cells;
* medians, means and other statistics from fewer than 8 patients are shown as ``*``.

Internal, nurse-facing views are not suppressed: every function that formats for display
takes an explicit ``mode`` (``"publish"`` or ``"internal"``) and nothing here guesses it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: counts from 1 to this value are hidden
SUPPRESS_MAX = 7
#: published counts are rounded to a multiple of this
ROUND_TO = 5
#: a statistic (median, mean) needs at least this many patients to be shown
MIN_FOR_STATISTIC = 8
#: what a hidden value shows
HIDDEN = "*"

Mode = Literal["publish", "internal"]


def _check_mode(mode: str) -> None:
    if mode not in ("publish", "internal"):
        raise ValueError(
            f"mode={mode!r}: use 'publish' (suppressed, for anything leaving the FLS team) "
            "or 'internal' (unsuppressed, nurse-facing)"
        )


def rounded_count(n: int | float | None) -> int | None:
    """The published value of a count: ``None`` when hidden, else rounded to the nearest 5.

    Examples
    --------
    >>> [rounded_count(n) for n in (0, 1, 7, 8, 12, 13, 102)]
    [0, None, None, 10, 10, 15, 100]
    """
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return None
    if n < 0:
        raise ValueError(f"count {n!r} is negative; counts of patients cannot be")
    if n != int(n):
        raise ValueError(f"count {n!r} is not a whole number; round weighted estimates first")
    n = int(n)
    if n == 0:
        return 0
    if n <= SUPPRESS_MAX:
        return None
    # n/5 is never exactly .5 for whole n, so round() has no tie to break
    return ROUND_TO * int(round(n / ROUND_TO))


def publishable_count(n: int | float | None) -> str:
    """Format a count for publication: 0 -> "0", 1-7 -> "*", else nearest 5.

    Parameters
    ----------
    n
        A non-negative whole count (``None``/NaN gives ``""``: not available).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For negative or fractional counts.

    Examples
    --------
    >>> [publishable_count(n) for n in (0, 1, 7, 8, 12, 13)]
    ['0', '*', '*', '10', '10', '15']
    """
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    r = rounded_count(n)
    return HIDDEN if r is None else str(r)


def format_count(n: int | float | None, mode: Mode) -> str:
    """A count as shown in *mode*: suppressed and rounded, or exact.

    Examples
    --------
    >>> format_count(6, "publish"), format_count(6, "internal")
    ('*', '6')
    """
    _check_mode(mode)
    if mode == "publish":
        return publishable_count(n)
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    return str(int(n))


def publishable_percent(
    numerator: int, denominator: int, *, decimals: int = 1, mode: Mode = "publish"
) -> str:
    """A percentage for display; in publish mode computed from the rounded counts.

    Examples
    --------
    >>> publishable_percent(13, 41)      # 15 / 40
    '37.5%'
    >>> publishable_percent(5, 41)
    '*'
    >>> publishable_percent(13, 41, mode="internal")
    '31.7%'
    """
    _check_mode(mode)
    if mode == "publish":
        num, den = rounded_count(numerator), rounded_count(denominator)
        if num is None or den is None:
            return HIDDEN
    else:
        num, den = numerator, denominator
    if not den:
        return ""
    return f"{100 * num / den:.{decimals}f}%"


def publishable_statistic(
    value: float | None, n_patients: int, *, fmt: str = "{:.0f}", mode: Mode = "publish"
) -> str:
    """A median/mean for display: hidden in publish mode when based on < 8 patients.

    Examples
    --------
    >>> publishable_statistic(42.0, 7), publishable_statistic(42.0, 8)
    ('*', '42')
    """
    _check_mode(mode)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if mode == "publish" and n_patients < MIN_FOR_STATISTIC:
        return HIDDEN
    return fmt.format(value)


def secondary_suppression_mask(
    counts: np.ndarray, *, row_totals: bool = True, column_totals: bool = True
) -> np.ndarray:
    """Which cells of a count table (and its margins) must be hidden.

    Primary: cells of 1-7. Secondary: while some row (with its total) or column (with its
    total) has exactly one hidden entry, hide the smallest visible non-zero entry of that
    line (a body cell in preference to the total; a zero only when nothing else is left).

    Parameters
    ----------
    counts
        2-D array of non-negative whole counts (rows x columns), without totals.
    row_totals, column_totals
        Whether row totals (one per row) / column totals (one per column) are published.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape ``(rows + 1, columns + 1)``: the body, the row-total column
        last, the column-total row last, the grand total bottom-right.

    Examples
    --------
    >>> m = secondary_suppression_mask(np.array([[3, 20], [10, 40]]))
    >>> m[:2, :2].tolist()
    [[True, True], [True, True]]
    """
    c = np.asarray(counts)
    if c.ndim != 2:
        raise ValueError("counts must be a 2-D table")
    r, k = c.shape
    full = np.zeros((r + 1, k + 1), dtype=np.int64)
    full[:r, :k] = c
    full[:r, k] = c.sum(axis=1)
    full[r, :k] = c.sum(axis=0)
    full[r, k] = c.sum()
    hidden = (full >= 1) & (full <= SUPPRESS_MAX)
    # lines (as index arrays into `full`) whose sum equation a reader could solve
    lines: list[tuple[np.ndarray, np.ndarray, int]] = []  # (rows idx, cols idx, total pos)
    if row_totals:
        for i in range(r + (1 if column_totals else 0)):
            lines.append((np.full(k + 1, i), np.arange(k + 1), k))
    if column_totals:
        for j in range(k + (1 if row_totals else 0)):
            lines.append((np.arange(r + 1), np.full(r + 1, j), r))
    if not row_totals:
        hidden[:, k] = False
    if not column_totals:
        hidden[r, :] = False
    for _ in range((r + 1) * (k + 1) + 1):
        changed = False
        for ri, ci, tpos in lines:
            h = hidden[ri, ci]
            if h.sum() != 1:
                continue
            vals = full[ri, ci]
            order = sorted(
                (p for p in range(len(vals)) if not h[p]),
                # non-zero before zero, body before total, then smallest value
                key=lambda p: (vals[p] == 0, p == tpos, vals[p], p),
            )
            if not order:
                continue
            p = order[0]
            hidden[ri[p], ci[p]] = True
            changed = True
        if not changed:
            break
    return hidden


def suppress_table(
    df: pd.DataFrame,
    count_columns: Sequence[str] | None = None,
    *,
    mode: Mode,
    row_totals: bool = True,
    column_totals: bool = True,
    add_totals: bool = False,
    total_label: str = "Total",
) -> pd.DataFrame:
    """Format a table of counts for display, with primary and secondary suppression.

    Parameters
    ----------
    df
        One row per category (e.g. site), count columns holding whole numbers. Other columns
        (labels) are passed through unchanged.
    count_columns
        Columns holding counts (default: every integer column).
    mode
        ``"publish"``: suppress and round; ``"internal"``: exact counts as strings.
    row_totals, column_totals
        Whether row / column totals are or may be published alongside: secondary
        suppression protects against recovery from them. Keep both True unless you know
        no total of that direction is shown anywhere.
    add_totals
        Append a ``total_label`` column and row with the (rounded) totals.
    total_label
        Label of the added total row/column.

    Returns
    -------
    pandas.DataFrame
        Same rows (plus a total row when asked); count columns as strings.

    Raises
    ------
    ValueError
        When a count column is missing, negative or not whole, or *mode* is unknown.

    Examples
    --------
    >>> t = pd.DataFrame({"site": ["A", "B"], "yes": [3, 20], "no": [10, 40]})
    >>> suppress_table(t, mode="publish").to_dict("list")
    {'site': ['A', 'B'], 'yes': ['*', '*'], 'no': ['*', '*']}
    """
    _check_mode(mode)
    cols = (
        list(count_columns)
        if count_columns is not None
        else [c for c in df.columns if pd.api.types.is_integer_dtype(df[c])]
    )
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"count columns {missing} not in the table (columns: {list(df.columns)})")
    values = df[cols].to_numpy()
    if values.size and (np.any(pd.isna(values)) or np.any(values < 0) or np.any(values % 1)):
        raise ValueError(f"columns {cols} must hold non-negative whole counts")
    values = values.astype(np.int64)
    r, k = values.shape
    out = df.copy()
    if mode == "internal":
        hidden = np.zeros((r + 1, k + 1), dtype=bool)
    else:
        hidden = secondary_suppression_mask(
            values, row_totals=row_totals, column_totals=column_totals
        )
    full = np.zeros((r + 1, k + 1), dtype=np.int64)
    full[:r, :k] = values
    full[:r, k] = values.sum(axis=1)
    full[r, :k] = values.sum(axis=0)
    full[r, k] = values.sum()

    def show(i: int, j: int) -> str:
        if mode == "internal":
            return str(int(full[i, j]))
        if hidden[i, j]:
            return HIDDEN
        return publishable_count(int(full[i, j]))

    for j, c in enumerate(cols):
        out[c] = [show(i, j) for i in range(r)]
    if add_totals:
        out[total_label] = [show(i, k) for i in range(r)]
        total_row: dict[str, object] = {c: "" for c in out.columns}
        for j, c in enumerate(cols):
            total_row[c] = show(r, j)
        total_row[total_label] = show(r, k)
        labels = [c for c in out.columns if c not in cols and c != total_label]
        if labels:
            total_row[labels[0]] = total_label
        out = pd.concat([out, pd.DataFrame([total_row])], ignore_index=True)
    n_hidden = int(hidden.sum())
    if n_hidden:
        logger.debug("suppress_table: %d cell(s) hidden", n_hidden)
    return out
