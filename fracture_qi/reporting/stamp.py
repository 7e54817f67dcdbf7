"""What every output states: the filter, the mode, the data cut-off, the run, the code version,
and whether the data are synthetic.

The dashboard's page and downloads, the audit's pages, charts and slides all carry the same
context, so a table or a PNG that travels on its own still says what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def data_label(meta: Mapping[str, Any]) -> str:
    """``'SIMULATED SERVICE HISTORY (synthetic demo data)'``, ``'synthetic demo data'`` or
    ``''`` for a real site.

    Examples
    --------
    >>> data_label({"synthetic": True}), data_label({})
    ('synthetic demo data', '')
    """
    if meta.get("simulated"):
        return "SIMULATED SERVICE HISTORY (synthetic demo data)"
    if meta.get("synthetic"):
        return "synthetic demo data"
    return ""


#: what a simulated service history's manifest is named (fracture_qi.simulation)
SIMULATED_NAME = "simulated service history"


def meta_from_manifest(manifest: Any) -> dict[str, Any]:
    """``name``, ``synthetic`` and ``simulated`` of a site, from its manifest.

    Examples
    --------
    >>> class M: name, synthetic = "SIMULATED service history (demo)", True
    >>> meta_from_manifest(M())["simulated"]
    True
    """
    name = str(getattr(manifest, "name", None) or "")
    return {"name": name, "synthetic": bool(getattr(manifest, "synthetic", False)),
            "simulated": SIMULATED_NAME in name.lower()}


def filter_text(filters: Mapping[str, Any]) -> str:
    """A filter in words.

    Examples
    --------
    >>> filter_text({"month": ("2024-01", "2025-12"), "site": "North", "scanner": "All"})
    'months 2024-01 to 2025-12; site North'
    >>> filter_text({})
    'everything'
    """
    parts = []
    for k, v in filters.items():
        if isinstance(v, (tuple, list)):
            if k == "month" and len(v) == 2:
                parts.append(f"months {v[0]} to {v[1]}")
            elif v:
                parts.append(f"{k} {', '.join(map(str, v))}")
        elif v not in (None, "", "All"):
            parts.append(f"{k} {v}")
    return "; ".join(parts) or "everything"


def context(*, filters: Mapping[str, Any], mode: str, cutoff: str, run: str,
            code_version: str, meta: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The context an output states (``filter, mode, data cut-off, run, code version`` and,
    for synthetic data, ``data``)."""
    out = {
        "filter": filter_text(filters),
        "mode": "publication (suppressed)" if mode == "publish" else "internal (exact counts)",
        "data cut-off": str(cutoff),
        "run": run or "unnamed",
        "code version": code_version or "unknown",
    }
    label = data_label(meta or {})
    if label:
        out["data"] = label
    return out


def context_line(ctx: Mapping[str, str]) -> str:
    """The context as one line, for chart captions and slide footers.

    Examples
    --------
    >>> context_line({"filter": "everything", "mode": "internal (exact counts)",
    ...               "data cut-off": "2025-12-31", "run": "demo", "code version": "abc",
    ...               "data": "synthetic demo data"})
    'SYNTHETIC DEMO DATA. Filter: everything. Mode: internal (exact counts). Data cut-off: 2025-12-31. Run: demo. Code: abc.'
    """
    head = f"{ctx['data'].upper()}. " if ctx.get("data") else ""
    return (f"{head}Filter: {ctx['filter']}. Mode: {ctx['mode']}. Data cut-off: "
            f"{ctx['data cut-off']}. Run: {ctx['run']}. Code: {ctx['code version']}.")


__all__ = ["SIMULATED_NAME", "context", "context_line", "data_label", "filter_text",
           "meta_from_manifest"]
