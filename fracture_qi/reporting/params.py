"""Audit parameters: what the notebooks declare, and checking what the user passes.

Each audit notebook has a cell tagged ``parameters`` with typed, commented defaults, e.g.::

    flag_grade: int = 0  # Genant grade at or above which the AI flags a study (0: the run's flag)

:func:`notebook_parameters` reads those cells (papermill's own inspector) so the notebooks
stay the single place where a parameter is declared. :func:`validate_parameters` then checks
a user's ``-p KEY VALUE`` pairs *before* any kernel starts: an unknown key, a value of the
wrong type or outside the allowed values is a :class:`~fracture_qi.errors.ReportError` whose
message names the key, the value and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture_qi.errors import ReportError

log = logging.getLogger(__name__)

#: set by the runner itself, never by ``-p``
RESERVED: dict[str, str] = {
    "manifest": "use --manifest",
    "out_dir": "use --out",
    "publish": "use --publish or --internal",
}

#: extra checks on values, by parameter name: (check, description of the allowed values)
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class ParamSpec:
    """One parameter as declared in the notebooks' ``parameters`` cells.

    Attributes
    ----------
    name
        Parameter name.
    type
        ``"int"``, ``"float"``, ``"bool"``, ``"str"`` or ``"list"``.
    default
        The default as written in the notebook (source text).
    help
        The comment after the default.
    notebooks
        Notebook file names that declare it.
    """

    name: str
    type: str
    default: str
    help: str = ""
    notebooks: list[str] = field(default_factory=list)


def notebook_parameters(notebooks: Iterable[str | Path]) -> dict[str, ParamSpec]:
    """Collect the parameters declared by *notebooks*.

    Parameters
    ----------
    notebooks
        Notebook files with a ``parameters``-tagged cell.

    Returns
    -------
    dict
        Name -> :class:`ParamSpec`, in first-declared order.

    Raises
    ------
    ReportError
        When a notebook has no parameters cell, a parameter has no type annotation, or
        two notebooks declare one name with different types.
    """
    import papermill

    specs: dict[str, ParamSpec] = {}
    for nb in notebooks:
        path = Path(nb)
        try:
            found = papermill.inspect_notebook(str(path))
        except Exception as e:  # papermill raises plain exceptions on unreadable notebooks
            raise ReportError(f"cannot read the parameters of {path}: {e}") from e
        if not found:
            raise ReportError(
                f"{path.name} has no cell tagged 'parameters'. Fix: tag the first code cell "
                "'parameters' (JupyterLab: property inspector > cell tags)"
            )
        for name, info in found.items():
            typ = (info.get("inferred_type_name") or "None").lower()
            if typ in ("none", ""):
                raise ReportError(
                    f"{path.name}: parameter {name!r} has no type annotation. "
                    f"Fix: write it as `{name}: int = ...` (int, float, bool, str or list)"
                )
            spec = specs.get(name)
            if spec is None:
                specs[name] = ParamSpec(name, typ, str(info.get("default")),
                                        (info.get("help") or "").strip(), [path.name])
            elif spec.type != typ:
                raise ReportError(
                    f"parameter {name!r} is declared as {spec.type} in {spec.notebooks[0]} "
                    f"but as {typ} in {path.name}. Fix: use one type in every notebook"
                )
            else:
                spec.notebooks.append(path.name)
    return specs


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(name: str, value: Any, typ: str) -> Any:
    """Convert *value* (a CLI string or a Python value) to the declared type.

    Parameters
    ----------
    name
        Parameter name (for messages).
    value
        What the user gave.
    typ
        Declared type.

    Returns
    -------
    Any

    Raises
    ------
    ReportError
        Naming the key, the value, the expected type and an example.

    Examples
    --------
    >>> coerce("flag_grade", "3", "int"), coerce("sites", "A, B", "list"), coerce("x", "no", "bool")
    (3, ['A', 'B'], False)
    """
    def bad(example: str) -> ReportError:
        return ReportError(
            f"parameter {name!r}: {value!r} is not a valid {typ}. Fix: e.g. -p {name} {example}"
        )

    if typ == "int":
        if isinstance(value, bool):
            raise bad("2")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad("2") from None
        raise bad("2")
    if typ == "float":
        if isinstance(value, bool):
            raise bad("0.5")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad("0.5") from None
        raise bad("0.5")
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true")
    if typ == "str":
        if isinstance(value, str):
            return value
        raise bad("'text'")
    if typ == "list":
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("["):
                try:
                    parsed = json.loads(s)
                except ValueError:
                    raise bad('\'["A", "B"]\'') from None
                if isinstance(parsed, list):
                    return [str(v) for v in parsed]
                raise bad('\'["A", "B"]\'')
            return [p.strip() for p in s.split(",") if p.strip()]
        raise bad("'A,B'")
    return value


def _check_date(name: str, value: str) -> None:
    if value:
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ReportError(
                f"parameter {name!r}: {value!r} is not a date. Fix: use YYYY-MM-DD, e.g. "
                f"-p {name} 2025-01-01, or '' for no limit"
            ) from None


def validate_parameters(
    given: Mapping[str, Any],
    specs: Mapping[str, ParamSpec],
    *,
    sites: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check and convert user parameters against the notebooks' declarations.

    Parameters
    ----------
    given
        ``{key: value}`` from ``-p KEY VALUE`` (strings) or from Python.
    specs
        From :func:`notebook_parameters`.
    sites, models
        Sites and model ids known to the database, when available: ``sites`` and ``model``
        values must be among them.

    Returns
    -------
    dict
        Converted values (only the keys given).

    Raises
    ------
    ReportError
        On the first unknown key, reserved key, wrong type or value outside the allowed
        ones, naming the key, the value and what is allowed.

    Examples
    --------
    >>> specs = {"flag_grade": ParamSpec("flag_grade", "int", "2")}
    >>> validate_parameters({"flag_grade": "3"}, specs)
    {'flag_grade': 3}
    >>> validate_parameters({"flag_grad": "3"}, specs)
    Traceback (most recent call last):
    ...
    fracture_qi.errors.ReportError: unknown parameter 'flag_grad' (did you mean 'flag_grade'?). Allowed: flag_grade
    """
    import difflib

    out: dict[str, Any] = {}
    allowed = sorted(specs)
    for key, value in given.items():
        if key in RESERVED:
            raise ReportError(f"parameter {key!r} is set by the audit command: {RESERVED[key]}")
        if key not in specs:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(k for k in allowed if k not in RESERVED)
            raise ReportError(f"unknown parameter {key!r}{hint}. Allowed: {shown}")
        v = coerce(key, value, specs[key].type)
        if key in ("period_start", "period_end", "change_date", "cutoff"):
            _check_date(key, v)
        elif key == "flag_grade" and v not in (0, 1, 2, 3):
            raise ReportError(
                f"parameter 'flag_grade': {v!r} is not a Genant grade. Allowed: 0 (the "
                "screening run's own flag, as the dashboard counts), 1, 2 or 3"
            )
        elif key == "device" and v not in DEVICES:
            raise ReportError(f"parameter 'device': {v!r}. Allowed: {', '.join(DEVICES)}")
        elif key in ("batch_size", "workers") and v < 1:
            raise ReportError(f"parameter {key!r}: {v!r}. Allowed: a whole number >= 1")
        elif key == "sites" and sites is not None:
            unknown = [s for s in v if s not in sites]
            if unknown:
                raise ReportError(
                    f"parameter 'sites': {unknown} not in the database. Allowed: "
                    f"{', '.join(sorted(sites)) or '(no sites indexed yet)'}"
                )
        elif key == "model" and models is not None and v and v not in models:
            raise ReportError(
                f"parameter 'model': {v!r} has no screenings in the database. Allowed: "
                f"{', '.join(sorted(models)) or '(nothing screened yet)'}, or '' for the "
                "default model"
            )
        out[key] = v
    start, end = out.get("period_start"), out.get("period_end")
    if start and end and start > end:
        raise ReportError(
            f"period_start {start} is after period_end {end}. Fix: swap them"
        )
    return out


def describe(specs: Mapping[str, ParamSpec]) -> str:
    """A help text listing every parameter: name, type, default and comment."""
    lines = []
    for s in specs.values():
        if s.name in RESERVED:
            continue
        lines.append(f"  {s.name} ({s.type}, default {s.default}): {s.help}")
    return "\n".join(lines)
