"""Write audit outputs in byte-stable forms: CSV tables and code-free HTML of notebooks.

Tables must come out byte-identical when a run is repeated on the same inputs, so that
``fracture-qi audit --verify`` can compare them with ``==``: rows are put in a stable order,
floats get a fixed format, line endings are ``\\n``, and no timestamp is ever written into a
table. Text that a spreadsheet would run as a formula is escaped (:mod:`fracture_qi.csvsafe`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fracture_qi.csvsafe import frame_to_csv
from fracture_qi.errors import ReportError

log = logging.getLogger(__name__)

#: every float in a published table is written with this format
FLOAT_FORMAT = "%.4f"


def stable_table(df: pd.DataFrame, sort_by: Sequence[str] | None = None) -> pd.DataFrame:
    """Return *df* in a deterministic form: sorted (stable), index dropped, no NaN floats.

    Parameters
    ----------
    df
        The table.
    sort_by
        Columns to sort by (a stable merge sort, so ties keep their given order);
        ``None`` keeps the row order the caller chose.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> stable_table(pd.DataFrame({"a": [2, 1], "b": ["x", "y"]}), ["a"])["b"].tolist()
    ['y', 'x']
    """
    out = df.reset_index(drop=True)
    if sort_by:
        missing = [c for c in sort_by if c not in out.columns]
        if missing:
            raise ReportError(
                f"cannot sort table by {missing}: not among its columns {list(out.columns)}. "
                "Fix: pass existing column names as sort_by"
            )
        out = out.sort_values(list(sort_by), kind="mergesort").reset_index(drop=True)
    return out


def write_table(
    df: pd.DataFrame, path: str | Path, *, sort_by: Sequence[str] | None = None
) -> Path:
    """Write *df* as a byte-stable CSV (formula-like text escaped, see :mod:`fracture_qi.csvsafe`).

    Parameters
    ----------
    df
        The table (already suppressed if it is for publication).
    path
        Destination ``.csv``; parent folders are created.
    sort_by
        See :func:`stable_table`.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> import tempfile, os
    >>> p = write_table(pd.DataFrame({"x": [0.1, 2.0]}), os.path.join(tempfile.mkdtemp(), "t.csv"))
    >>> p.read_text()
    'x\\n0.1000\\n2.0000\\n'
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(table_bytes(df, sort_by=sort_by))
    return p


def table_bytes(df: pd.DataFrame, *, sort_by: Sequence[str] | None = None) -> bytes:
    """The byte-stable CSV of *df* (what :func:`write_table` writes; the dashboard's zip of
    tables uses it too, so every CSV the suite publishes is written in one place).

    Examples
    --------
    >>> table_bytes(pd.DataFrame({"x": [0.5]}))
    b'x\\n0.5000\\n'
    """
    table = stable_table(df, sort_by)
    text = frame_to_csv(table, index=False, float_format=FLOAT_FORMAT, lineterminator="\n",
                        na_rep="")
    return text.encode("utf-8")


def notebook_to_html(notebook: str | Path, html: str | Path, *, title: str | None = None) -> Path:
    """Render an executed notebook to a self-contained HTML page without the code.

    Input cells and prompts are left out (``exclude_input``), so readers see the text,
    tables and figures; papermill's error banner of a failed notebook stays visible.

    Parameters
    ----------
    notebook
        An executed ``.ipynb``.
    html
        Destination file.
    title
        Page title (default: the notebook's file stem).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportError
        When nbconvert cannot render the notebook.
    """
    import nbformat
    from nbconvert import HTMLExporter

    src = Path(notebook)
    out = Path(html)
    try:
        nb = nbformat.read(src, as_version=4)
        nb.metadata["title"] = title or src.stem
        exporter = HTMLExporter(
            template_name="lab",
            exclude_input=True,
            exclude_input_prompt=True,
            exclude_output_prompt=True,
        )
        body, _ = exporter.from_notebook_node(nb)
    except Exception as e:  # nbconvert raises many types; name the file and stop
        raise ReportError(
            f"cannot render {src} to HTML: {e}. Fix: open the notebook in JupyterLab to see "
            "whether it is valid; rerun the audit"
        ) from e
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out
