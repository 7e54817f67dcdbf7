"""What an audit run was made from: code, packages, inputs and the state of the database.

An auditor defending a number needs to know which code computed it from which data.
:func:`build_provenance` gathers that into one JSON-able dict (written as
``reports/NAME/provenance.json``); :func:`db_state_hash` fingerprints the rows that feed the
measures so that a rerun can tell "same data" from "data changed" without keeping a copy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from fracture_qi.integrity import canonical_json, code_version, sha256_file, sha256_text
from fracture_qi.store import schema as S

log = logging.getLogger(__name__)

#: packages whose versions can change a number or a figure
TRACKED_PACKAGES: tuple[str, ...] = (
    "fracture-qi", "numpy", "pandas", "scipy", "statsmodels", "lifelines", "SQLAlchemy",
    "plotly", "matplotlib", "papermill", "nbconvert", "nbclient", "ipykernel", "pydicom",
    "torch", "onnxruntime",
)

#: the columns, per table, whose values feed the measures (processing timestamps such as
#: ``indexed_at`` are left out: re-indexing the same files must not change the hash)
STATE_COLUMNS: dict[Any, tuple[str, ...]] = {
    S.Study: (
        "id", "patient_id", "study_date", "site", "referral_source", "age_years", "eligible",
        "reason", "chosen_series_id",
    ),
    S.Series: ("id", "study_id", "manufacturer", "model_name", "status", "reason", "chosen"),
    S.Patient: ("id", "patient_key", "sex"),
    S.Screening: (
        "id", "series_id", "model_id", "model_version", "status", "reason", "flagged",
        "score", "max_grade", "n_vertebrae",
    ),
    S.WorklistItem: (
        "id", "audit_name", "study_id", "screening_id", "stratum", "sampling_probability",
        "double_read",
    ),
    S.AdjudicationEvent: (
        "id", "study_id", "screening_id", "read_number", "reviewer", "recorded_at", "decision",
        "levels", "previously_known", "action", "supersedes_id", "simulated",
    ),
    S.FlsEpisode: (
        "id", "source", "record_id", "patient_key", "study_id", "reported_by_radiology",
        "known_to_fls", "on_therapy_before", "referral_date", "assessment_date", "dxa_date",
        "therapy_recommended", "therapy_recommended_date", "drug", "therapy_start_date",
        "adherent_52w", "death_date", "index_fracture_site", "falls_assessment_date",
        "strength_balance_date", "followup_date",
    ),
}


def _canonical(value: Any) -> str:
    # one spelling per value whatever the backend returns (SQLite gives naive datetimes,
    # PostgreSQL aware ones; JSON may come back as str or list)
    if value is None:
        return "\\N"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 9))
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def db_state_hash(engine: Engine, *, batch: int = 50_000) -> dict[str, Any]:
    """Fingerprint the rows that feed the measures.

    Each table in :data:`STATE_COLUMNS` is read ordered by primary key; every row's values
    are written in a canonical text form (ISO dates, UTC datetimes, 0/1 booleans, floats
    rounded to 9 digits, JSON with sorted keys) and hashed with SHA-256. The overall hash
    covers the per-table hashes in a fixed order.

    Parameters
    ----------
    engine
        The audit's database.
    batch
        Rows fetched per round trip.

    Returns
    -------
    dict
        ``{"sha256": overall, "tables": {name: {"rows": n, "sha256": h}}}``.

    Examples
    --------
    >>> from fracture_qi.store.db import connect
    >>> eng = connect("sqlite://"); S.Base.metadata.create_all(eng)
    >>> db_state_hash(eng)["tables"]["studies"]["rows"]
    0
    """
    overall = hashlib.sha256()
    tables: dict[str, Any] = {}
    with engine.connect() as conn:
        for model, cols in STATE_COLUMNS.items():
            table = model.__table__
            h = hashlib.sha256()
            n = 0
            stmt = select(*[table.c[c] for c in cols]).order_by(table.c.id)
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            for part in result.partitions(batch):
                for row in part:
                    h.update("\t".join(_canonical(v) for v in row).encode())
                    h.update(b"\n")
                    n += 1
            digest = h.hexdigest()
            tables[table.name] = {"rows": n, "sha256": digest}
            overall.update(f"{table.name}:{n}:{digest}\n".encode())
    return {"sha256": overall.hexdigest(), "tables": tables}


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of *names* (``None`` for a package that is not installed).

    Examples
    --------
    >>> package_versions(["pandas", "surely-not-installed-xyz"])["surely-not-installed-xyz"] is None
    True
    """
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest_inputs(manifest: Any) -> dict[str, Any]:
    """SHA-256 of the manifest and of every file input it declares that exists.

    Parameters
    ----------
    manifest
        A :class:`fracture_qi.manifest.Manifest` (duck-typed: ``path``, ``base``,
        ``fls_records`` entries with ``path``, ``model`` with ``path``).

    Returns
    -------
    dict
        ``{"manifest": {"path", "sha256"}, "inputs": {name: {"path", "sha256"}}}``; paths
        are as written relative to the manifest folder where possible.
    """
    mpath = Path(manifest.path)
    base = Path(getattr(manifest, "base", mpath.parent))
    out: dict[str, Any] = {
        "manifest": {"path": mpath.name, "sha256": sha256_file(mpath)},
        "inputs": {},
    }
    candidates: list[tuple[str, Any]] = []
    for i, rec in enumerate(getattr(manifest, "fls_records", None) or []):
        candidates.append((f"fls_records[{i}]:{getattr(rec, 'name', i)}", getattr(rec, "path", None)))
    model = getattr(manifest, "model", None)
    for attr in ("path", "card"):
        candidates.append((f"model.{attr}", getattr(model, attr, None) if model else None))
    for key, p in candidates:
        if not p:
            continue
        fp = Path(p)
        if not fp.is_absolute():
            fp = base / fp
        if fp.is_file():
            try:
                shown = str(fp.resolve().relative_to(base.resolve()))
            except ValueError:
                shown = str(fp)
            out["inputs"][key] = {"path": shown, "sha256": sha256_file(fp)}
    return out


def ran_by(command: str) -> dict[str, str]:
    """Who ran an audit, where, and with what command (the provenance's ``ran_by``)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        user = os.environ.get("USER") or "unknown"
    return {"user": user, "host": socket.gethostname() or platform.node() or "unknown",
            "command": command}


def provenance_hash(provenance: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a provenance record without its ``integrity`` key.

    ``provenance.json`` carries this hash, and the run's ``audit_runs`` row keeps it, so an
    edit of the file after the run is detected by ``fracture-qi audit --verify``.

    Examples
    --------
    >>> provenance_hash({"run": "x"}) == provenance_hash({"run": "x", "integrity": {}})
    True
    """
    body = {k: v for k, v in provenance.items() if k != "integrity"}
    return sha256_text(canonical_json(json.loads(json.dumps(body, default=str))))


def environment() -> dict[str, str]:
    """Python and platform (who ran it and where is under ``ran_by``)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
    }


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with a Z."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
