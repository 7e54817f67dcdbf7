"""FLS records: read an export (CSV, Excel or SQL), check it against a declared schema.

An FLS database export has one row per FLS record (a patient's episode with the service).
:data:`FLS_SCHEMA` declares every column the suite understands: its type, whether it must be
present, allowed values and plausible ranges. :func:`validate_records` turns the raw text
into typed columns and lists every problem with the row, the column, the value and the fix;
a bad cell never stops the batch: the cell is left empty and the problem is kept with the
record. :func:`date_problems` then reports dates that cannot all be true together
(assessment after death, DXA years before the referral...). Nothing is dropped silently.

Identifiers: ``nhs_number`` and ``mrn`` are read only to compute the pseudonymous patient
key (see :mod:`fracture_qi.outcomes.linkage`); messages mask them to the last 3 characters.

An export is refused as a whole (with the file, the column or row, and the fix) when it is
larger than :data:`DEFAULT_MAX_EXPORT_MB` (or the source's ``max_mb``), holds a NUL byte (a
UTF-16 or damaged file), or has a column the schema does not know: a column is mapped
(``columns:``) or explicitly left out (``ignore_columns:``) in the manifest, never ignored
silently.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from fracture_qi.errors import ConfigError, ValidationError
from fracture_qi.pseudonym import nhs_number_is_valid, normalise_identifier

logger = logging.getLogger(__name__)

#: largest FLS export file (CSV or .xlsx, MB) read unless the source sets ``max_mb``. Reading
#: costs about 45x the file in memory (a 50 MB CSV took 2.2 GB, issue 21); an FLS export of
#: a large trust over several years (50,000 records of ~300 bytes) is about 15 MB.
DEFAULT_MAX_EXPORT_MB = 25.0

FieldType = Literal["str", "nhs", "bool", "date", "float", "category"]

#: drugs recorded by FLS services (NICE TA464/TA791 and the FLS-DB drug list), lower case
DRUGS = (
    "alendronate",
    "risedronate",
    "ibandronate",
    "zoledronate",
    "denosumab",
    "teriparatide",
    "romosozumab",
    "abaloparatide",
    "raloxifene",
    "hrt",
    "strontium",
    "calcitriol",
)
#: index fracture sites recorded by the FLS (FLS-DB fracture site groups), lower case
FRACTURE_SITES = ("spine", "hip", "wrist", "humerus", "pelvis", "other")
_SITE_ALIASES = {"vertebral": "spine", "vertebra": "spine", "femur": "hip",
                 "distal radius": "wrist", "radius": "wrist", "shoulder": "humerus"}
_DRUG_ALIASES = {
    "alendronic acid": "alendronate",
    "risedronate sodium": "risedronate",
    "zoledronic acid": "zoledronate",
    "ibandronic acid": "ibandronate",
    "prolia": "denosumab",
    "forsteo": "teriparatide",
    "evenity": "romosozumab",
    "aclasta": "zoledronate",
    "hormone replacement therapy": "hrt",
}
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: earliest date accepted as plausible in an FLS record
EARLIEST_DATE = dt.date(1990, 1, 1)
#: a DXA this many days before the referral is reported (an old scan, or a wrong year)
DXA_BEFORE_REFERRAL_DAYS = 365


@dataclass(frozen=True)
class FieldSpec:
    """One declared column of an FLS export.

    Attributes
    ----------
    name
        Column name the suite uses (the synthetic generator writes these).
    type
        ``str``, ``nhs`` (NHS number, mod-11 checked), ``bool`` (1/0, yes/no, true/false),
        ``date`` (ISO ``YYYY-MM-DD``; Excel date cells too), ``float``, ``category``.
    required
        The column must be present (cells may still be blank unless ``not_blank``).
    not_blank
        Every row needs a value.
    allowed
        For ``category``: the accepted values (case-insensitive; aliases mapped).
    low, high
        Plausible range for ``float``.
    aliases
        Other header names accepted for this column.
    description
        What the column means, for docs and messages.
    """

    name: str
    type: FieldType
    required: bool = False
    not_blank: bool = False
    allowed: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""


FLS_SCHEMA: tuple[FieldSpec, ...] = (
    FieldSpec(
        "record_id",
        "str",
        required=True,
        not_blank=True,
        aliases=("id", "fls_id", "episode_id"),
        description="the FLS database's own record identifier (unique per export)",
    ),
    FieldSpec(
        "nhs_number",
        "nhs",
        aliases=("nhs_no", "nhs"),
        description="10-digit NHS number (preferred for linkage)",
    ),
    FieldSpec(
        "mrn",
        "str",
        aliases=("hospital_number", "patient_id"),
        description="local hospital number (linkage fallback)",
    ),
    FieldSpec(
        "accession_number",
        "str",
        aliases=("accession",),
        description="accession number of the index CT, when the FLS knows it",
    ),
    FieldSpec(
        "reported_by_radiology",
        "bool",
        description="the radiology report mentioned the vertebral fracture",
    ),
    FieldSpec(
        "known_to_fls_before",
        "bool",
        aliases=("known_to_fls",),
        description="the patient was already known to the FLS before the index CT",
    ),
    FieldSpec(
        "on_therapy_before", "bool", description="already on bone therapy before the index fracture"
    ),
    FieldSpec(
        "referral_date",
        "date",
        required=True,
        description="date the FLS received the referral / identified the patient",
    ),
    FieldSpec(
        "fls_assessment_date",
        "date",
        aliases=("assessment_date",),
        description="date of the FLS assessment",
    ),
    FieldSpec("dxa_date", "date", description="date of the DXA scan"),
    FieldSpec(
        "dxa_t_score",
        "float",
        low=-7.0,
        high=5.0,
        aliases=("t_score",),
        description="lowest DXA T-score",
    ),
    FieldSpec("therapy_recommended", "bool", description="bone therapy recommended"),
    FieldSpec("therapy_recommended_date", "date", description="date therapy was recommended"),
    FieldSpec("drug", "category", allowed=DRUGS, description="drug recommended or started"),
    FieldSpec(
        "therapy_start_date",
        "date",
        aliases=("treatment_start_date",),
        description="date bone therapy started",
    ),
    FieldSpec(
        "adherent_52w",
        "bool",
        aliases=("adherent_52_weeks",),
        description="still taking therapy at 52 weeks (blank if not yet known)",
    ),
    FieldSpec("death_date", "date", aliases=("date_of_death",), description="date of death"),
    FieldSpec(
        "index_fracture_site",
        "category",
        allowed=FRACTURE_SITES,
        aliases=("fracture_site", "index_fracture"),
        description="site of the index fracture (FLS-DB: spine, hip, ...; spine for a "
        "CT-identified vertebral fracture)",
    ),
    FieldSpec(
        "falls_assessment_date",
        "date",
        aliases=("falls_date",),
        description="date of the falls risk assessment, or of the referral to a falls service",
    ),
    FieldSpec(
        "strength_balance_date",
        "date",
        aliases=("exercise_start_date",),
        description="date a strength and balance exercise programme started",
    ),
    FieldSpec(
        "followup_date",
        "date",
        aliases=("monitoring_date", "followup_16w_date"),
        description="date of the first follow-up (monitoring) contact after the assessment",
    ),
)
SCHEMA_BY_NAME = {f.name: f for f in FLS_SCHEMA}
_ALIASES = {a: f.name for f in FLS_SCHEMA for a in (f.name, *f.aliases)}
DATE_COLUMNS = tuple(f.name for f in FLS_SCHEMA if f.type == "date")


def mask_identifier(value: Any) -> str:
    """Show only the last 3 characters of an identifier in messages.

    Examples
    --------
    >>> mask_identifier("943 476 5919")
    '*******919'
    """
    s = normalise_identifier(str(value)) if value is not None else ""
    return "*" * max(0, len(s) - 3) + s[-3:]


@dataclass
class RecordProblem:
    """A problem with one FLS record, as shown to the FLS team and stored with the record.

    Attributes
    ----------
    row
        1-based data row in the export (file line = row + 1 for CSV/Excel with a header).
    record_id
        The record's id, when readable.
    column
        The column concerned (or a comma-separated pair for date conflicts).
    value
        The offending value as text (identifiers masked).
    code
        Stable short code, e.g. ``invalid_date``, ``assessment_after_death``.
    kind
        ``invalid`` (cell unreadable, left empty), ``impossible`` (dates that cannot all be
        true; kept as recorded), ``linkage`` (could not link) or ``warning``.
    message, fix
        What is wrong and what to do.
    """

    row: int | None
    record_id: str | None
    column: str
    value: str
    code: str
    kind: str
    message: str
    fix: str

    def line(self) -> str:
        """One human-readable line naming row, record, column, value and fix."""
        where = f"row {self.row}" if self.row is not None else "export"
        rid = f" (record_id {self.record_id})" if self.record_id else ""
        return (
            f"{where}{rid}, column {self.column}, value {self.value!r}: {self.message}. "
            f"Fix: {self.fix}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form stored in ``fls_episodes.problems``."""
        return asdict(self)


@dataclass
class ValidatedRecords:
    """Typed FLS records and every problem found while reading them.

    Attributes
    ----------
    frame
        One row per input row, columns of :data:`FLS_SCHEMA` (typed: dates as
        ``datetime.date`` or None, bools as True/False/None, floats), plus ``row``.
    problems
        Every problem, in row order.
    missing_columns
        Optional schema columns absent from the export (treated as blank).
    unknown_columns
        Export columns the schema does not know (ignored).
    """

    frame: pd.DataFrame
    problems: list[RecordProblem] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    unknown_columns: list[str] = field(default_factory=list)

    def problems_for_row(self, row: int) -> list[RecordProblem]:
        """Problems of one data row."""
        return [p for p in self.problems if p.row == row]


def _norm_header(h: Any) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(h).strip().lower()).strip("_")


def _blank(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if v is pd.NaT:
        return True
    return isinstance(v, str) and v.strip() in ("", "NA", "N/A", "NULL", "null", "None", "nan")


def _parse(spec: FieldSpec, v: Any) -> tuple[Any, tuple[str, str] | None]:
    """Parse one cell: (value, None) or (None, (code, message/fix)) on failure."""
    if _blank(v):
        return None, None
    if spec.type == "str":
        s = str(v).strip()
        if isinstance(v, float) and v.is_integer():  # Excel turns 12345 into 12345.0
            s = str(int(v))
        return s, None
    if spec.type == "nhs":
        s = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()
        if not nhs_number_is_valid(s):
            return None, (
                "invalid_nhs_number",
                "not a valid 10-digit NHS number (modulus-11 "
                "check failed)|check the number against the patient record; the "
                "record will link by MRN if it has one",
            )
        return normalise_identifier(s), None
    if spec.type == "bool":
        if isinstance(v, bool):
            return v, None
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v), None
        s = str(v).strip().lower()
        if s in _TRUE:
            return True, None
        if s in _FALSE:
            return False, None
        return None, (
            "invalid_bool",
            "not a yes/no value|use 1 or 0 (yes/no, true/false "
            "also accepted); leave blank when unknown",
        )
    if spec.type == "date":
        if isinstance(v, dt.datetime):
            return v.date(), None
        if isinstance(v, dt.date):
            return v, None
        if isinstance(v, pd.Timestamp):
            return v.date(), None
        s = str(v).strip()
        if len(s) > 10 and _ISO_DATE.match(s[:10]) and s[10] in "T ":
            s = s[:10]  # a timestamp: the date part is what the FLS means
        if not _ISO_DATE.match(s):
            return None, (
                "invalid_date",
                "not an ISO date|export dates as YYYY-MM-DD (e.g. 2025-03-31)",
            )
        try:
            return dt.date.fromisoformat(s), None
        except ValueError:
            return None, ("invalid_date", "no such calendar date|correct the day or month")
    if spec.type == "float":
        try:
            x = float(str(v).strip())
        except ValueError:
            return None, ("invalid_number", "not a number|use a decimal point, e.g. -2.7")
        if (
            not math.isfinite(x)
            or (spec.low is not None and x < spec.low)
            or (spec.high is not None and x > spec.high)
        ):
            return None, (
                "out_of_range",
                f"outside the plausible range {spec.low} to "
                f"{spec.high}|check the value (T-scores run from about -6 to +4)",
            )
        return x, None
    if spec.type == "category":
        s = str(v).strip().lower()
        aliases = {"drug": _DRUG_ALIASES, "index_fracture_site": _SITE_ALIASES}.get(spec.name, {})
        s = aliases.get(s, s)
        if s in spec.allowed:
            return s, None
        return None, (
            "invalid_value",
            f"not one of the allowed values|use one of: {', '.join(spec.allowed)}",
        )
    raise AssertionError(spec.type)  # pragma: no cover - the schema is closed


def _nul_cells(raw: pd.DataFrame) -> list[tuple[int, str]]:
    """(row, column) of every text cell (or header) holding a NUL character, rows from 1."""
    out = [(0, str(c)) for c in raw.columns if "\x00" in str(c)]
    for col in raw.columns:
        values = raw[col]
        if not (pd.api.types.is_object_dtype(values.dtype)
                or pd.api.types.is_string_dtype(values.dtype)):
            continue
        hit = values.map(lambda v: isinstance(v, str) and "\x00" in v)
        out += [(int(i) + 1, str(col)) for i in hit.to_numpy().nonzero()[0]]
    return out


def validate_records(raw: pd.DataFrame, *, source: str = "fls") -> ValidatedRecords:
    """Check an FLS export against :data:`FLS_SCHEMA` and type its columns.

    Parameters
    ----------
    raw
        The export as read (strings, or Excel/SQL native types), one row per record.
    source
        Name of the source, for messages.

    Returns
    -------
    ValidatedRecords
        Typed frame (unreadable cells left empty), problems (``invalid`` cells, duplicate
        record ids, impossible date combinations from :func:`date_problems`).

    Raises
    ------
    ValidationError
        When the export cannot be used at all: a required column is missing, neither
        ``nhs_number`` nor ``mrn`` is present, a column is not in the schema, or a cell holds
        a NUL character. The message names the column (and row) and the fix.

    Examples
    --------
    >>> raw = pd.DataFrame({"record_id": ["1"], "nhs_number": ["9434765919"],
    ...                     "referral_date": ["2025-02-30"]})
    >>> v = validate_records(raw)
    >>> v.problems[0].line()
    "row 1 (record_id 1), column referral_date, value '2025-02-30': no such calendar date. Fix: correct the day or month"
    """
    nul_cells = _nul_cells(raw)
    if nul_cells:
        raise ValidationError(
            [f"row {r}, column {c} contains a NUL character. Fix: correct the cell in the FLS "
             "system and export again (a NUL usually means a damaged export)"
             for r, c in nul_cells[:10]],
            source=source,
        )
    rename: dict[str, str] = {}
    unknown: list[str] = []
    for col in raw.columns:
        name = _ALIASES.get(_norm_header(col))
        if name is None:
            unknown.append(str(col))
        elif name in rename.values():
            unknown.append(str(col))  # a second alias of a column already present
        else:
            rename[col] = name
    df = raw.rename(columns=rename)
    fatal: list[str] = []
    for spec in FLS_SCHEMA:
        if spec.required and spec.name not in df.columns:
            fatal.append(
                f"column {spec.name} is missing ({spec.description}). Fix: add it to the export "
                f"(accepted names: {', '.join((spec.name,) + spec.aliases)}); columns found: "
                f"{', '.join(map(str, raw.columns))}"
            )
    if "nhs_number" not in df.columns and "mrn" not in df.columns:
        fatal.append(
            "neither nhs_number nor mrn is present, so no record can be linked to a patient. "
            "Fix: include the NHS number (preferred) or the hospital number (mrn)"
        )
    for col in unknown:
        fatal.append(
            f"column {col!r} is not in the FLS schema. Fix: map it to a schema column under "
            f"fls_records ({source}) columns:, list it under ignore_columns: to leave it out, "
            "or remove it from the export (schema: docs/measures.md, FLS records)"
        )
    if fatal:
        raise ValidationError(fatal, source=source)
    missing = [f.name for f in FLS_SCHEMA if f.name not in df.columns]
    if missing:
        logger.warning("%s: columns not in the export, treated as blank: %s", source, missing)

    problems: list[RecordProblem] = []
    out: dict[str, list[Any]] = {f.name: [] for f in FLS_SCHEMA}
    rows = df.to_dict("records")
    for i, rec in enumerate(rows, start=1):
        rid_raw = rec.get("record_id")
        rid = None if _blank(rid_raw) else _parse(SCHEMA_BY_NAME["record_id"], rid_raw)[0]
        for spec in FLS_SCHEMA:
            v = rec.get(spec.name)
            value, err = _parse(spec, v)
            if err is None and value is None and spec.not_blank:
                err = ("blank", f"is required|fill in {spec.name} for every row")
            if err is not None:
                code, text = err
                message, fix = text.split("|", 1)
                shown = mask_identifier(v) if spec.type == "nhs" or spec.name == "mrn" else str(v)
                problems.append(
                    RecordProblem(i, rid, spec.name, shown, code, "invalid", message, fix)
                )
            out[spec.name].append(value)
    frame = pd.DataFrame(out, dtype=object)
    frame.insert(0, "row", range(1, len(rows) + 1))
    # a record must be identifiable by NHS number or MRN
    for i, (nhs, mrn, rid) in enumerate(
        zip(frame["nhs_number"], frame["mrn"], frame["record_id"]), start=1
    ):
        if nhs is None and mrn is None:
            problems.append(
                RecordProblem(
                    i,
                    rid,
                    "nhs_number,mrn",
                    "",
                    "no_identifier",
                    "linkage",
                    "neither a valid NHS number nor an MRN, so the record cannot be linked",
                    "add the patient's NHS number or hospital number",
                )
            )
    # record ids must be unique: re-import is keyed on (source, record_id)
    dup = frame["record_id"].dropna()
    for rid, grp in frame[
        dup.duplicated(keep=False).reindex(frame.index, fill_value=False)
    ].groupby("record_id"):
        rows_ = grp["row"].tolist()
        for r in rows_[1:]:
            problems.append(
                RecordProblem(
                    r,
                    str(rid),
                    "record_id",
                    str(rid),
                    "duplicate_record_id",
                    "invalid",
                    f"record_id also used on row {rows_[0]}; only the first row is imported",
                    "give every record its own id in the FLS export",
                )
            )
    problems.extend(date_problems(frame))
    problems.sort(key=lambda p: (p.row or 0, p.column))
    return ValidatedRecords(frame, problems, missing, unknown)


def _d(v: Any) -> dt.date | None:
    return v if isinstance(v, dt.date) else None


def date_problems(
    frame: pd.DataFrame,
    *,
    ct_dates: Iterable[dt.date | None] | None = None,
    today: dt.date | None = None,
) -> list[RecordProblem]:
    """Dates within a record that cannot all be true (reported, never dropped or changed).

    Checks, each with its code:

    * ``assessment_after_death``, ``dxa_after_death``, ``therapy_after_death``,
      ``referral_after_death`` (more than 30 days after death: posthumous paperwork aside);
    * ``assessment_before_referral``: assessed before the FLS was referred the patient;
    * ``dxa_long_before_referral``: DXA more than 365 days before the referral (an old
      scan recorded against this episode, or a wrong year);
    * ``therapy_before_recommendation``: started before it was recommended;
    * ``future_date`` (after *today*) and ``implausible_date`` (before 1990);
    * with *ct_dates* (the linked index CT's date per row): ``therapy_before_ct``,
      ``assessment_before_ct``, ``referral_before_ct`` (a referral that the CT prompted
      cannot predate it).

    Parameters
    ----------
    frame
        Typed records (from :func:`validate_records`), with a ``row`` column.
    ct_dates
        Date of the linked index CT per row, or None.
    today
        Reference date for ``future_date`` (default: today).

    Returns
    -------
    list of RecordProblem
        ``kind == "impossible"`` (``warning`` for the softer checks).
    """
    today = today or dt.date.today()
    cts = list(ct_dates) if ct_dates is not None else [None] * len(frame)
    probs: list[RecordProblem] = []
    recs = frame.to_dict("records")
    for rec, ct in zip(recs, cts):
        row, rid = rec.get("row"), rec.get("record_id")
        get = {c: _d(rec.get(c)) for c in DATE_COLUMNS}

        def add(
            cols: str,
            value: str,
            code: str,
            kind: str,
            msg: str,
            fix: str,
            row: Any = row,
            rid: Any = rid,
        ) -> None:
            probs.append(RecordProblem(row, rid, cols, value, code, kind, msg, fix))

        for c, d in get.items():
            if d is None:
                continue
            if d > today:
                add(
                    c,
                    d.isoformat(),
                    "future_date",
                    "impossible",
                    f"date is after {today}",
                    "correct the date (typing error in the year?)",
                )
            elif d < EARLIEST_DATE:
                add(
                    c,
                    d.isoformat(),
                    "implausible_date",
                    "impossible",
                    f"date is before {EARLIEST_DATE}",
                    "correct the date",
                )
        death = get["death_date"]
        if death is not None:
            for c, code, grace in (
                ("fls_assessment_date", "assessment_after_death", 0),
                ("dxa_date", "dxa_after_death", 0),
                ("therapy_start_date", "therapy_after_death", 0),
                ("falls_assessment_date", "falls_assessment_after_death", 0),
                ("strength_balance_date", "strength_balance_after_death", 0),
                ("followup_date", "followup_after_death", 0),
                ("referral_date", "referral_after_death", 30),
            ):
                d = get[c]
                if d is not None and d > death + dt.timedelta(days=grace):
                    add(
                        f"{c},death_date",
                        f"{d} > {death}",
                        code,
                        "impossible",
                        f"{c} {d} is after the death date {death}",
                        f"check {c} and death_date in the FLS record",
                    )
        ref, ass = get["referral_date"], get["fls_assessment_date"]
        if ref and ass and ass < ref:
            add(
                "fls_assessment_date,referral_date",
                f"{ass} < {ref}",
                "assessment_before_referral",
                "impossible",
                f"assessment {ass} is before the referral {ref}",
                "check both dates in the FLS record",
            )
        dxa = get["dxa_date"]
        if ref and dxa and (ref - dxa).days > DXA_BEFORE_REFERRAL_DAYS:
            add(
                "dxa_date,referral_date",
                f"{dxa} < {ref}",
                "dxa_long_before_referral",
                "warning",
                f"DXA {dxa} is {(ref - dxa).days} days before the referral {ref}",
                "record the DXA done for this episode, or correct the year",
            )
        rec_d, start = get["therapy_recommended_date"], get["therapy_start_date"]
        if rec_d and start and start < rec_d:
            add(
                "therapy_start_date,therapy_recommended_date",
                f"{start} < {rec_d}",
                "therapy_before_recommendation",
                "warning",
                f"therapy started {start} before it was recommended {rec_d}",
                "check both dates (an existing prescription belongs in on_therapy_before)",
            )
        if ct is not None:
            if start and start < ct:
                add(
                    "therapy_start_date",
                    f"{start} < CT {ct}",
                    "therapy_before_ct",
                    "impossible",
                    f"therapy start {start} is before the index CT of {ct}",
                    "check the start date; therapy begun earlier belongs in on_therapy_before",
                )
            if ass and ass < ct:
                add(
                    "fls_assessment_date",
                    f"{ass} < CT {ct}",
                    "assessment_before_ct",
                    "impossible",
                    f"assessment {ass} is before the index CT of {ct}",
                    "check the assessment date and the accession number of the index CT",
                )
            if ref and ref < ct:
                add(
                    "referral_date",
                    f"{ref} < CT {ct}",
                    "referral_before_ct",
                    "impossible",
                    f"referral {ref} is before the index CT of {ct} it should follow",
                    "check the referral date and the accession number of the index CT",
                )
    return probs


def _resolve_env(value: str, what: str) -> str:
    """``env:NAME`` -> the variable's value (secrets are never written in manifests)."""
    if value.startswith("env:"):
        name = value[4:]
        got = os.environ.get(name)
        if not got:
            raise ConfigError(
                f"{what}: environment variable {name} is not set. Fix: export {name}=<value> "
                "before running (the manifest names it with env:)"
            )
        return got
    return value


def read_source(entry: Any, *, base: Path | None = None) -> pd.DataFrame:
    """Read the export named by a manifest ``fls_records`` entry, renaming its columns.

    Parameters
    ----------
    entry
        A :class:`fracture_qi.manifest.CsvRecords`, ``ExcelRecords`` or ``SqlRecords`` (any
        object with ``name``, ``kind`` and the matching ``path``/``url``/``query``/``sheet``/
        ``delimiter``/``encoding``, and optionally ``columns``: site name -> schema name,
        ``ignore_columns``: export columns to leave out, ``max_mb``: size limit).
    base
        Folder for a relative path (the manifest's folder).

    Returns
    -------
    pandas.DataFrame
        Raw cells, with the site's column names mapped to the schema's.
    """
    kind = entry.kind
    path = getattr(entry, "path", None)
    if path is not None and base is not None and not Path(path).is_absolute():
        path = base / path
    url = getattr(entry, "url", None)
    if kind == "sql" and hasattr(entry, "resolved_url"):
        url = entry.resolved_url(base)
    raw = read_fls_export(
        kind=kind,
        path=path,
        url=url,
        query=getattr(entry, "query", None),
        sheet=getattr(entry, "sheet", None),
        name=entry.name,
        delimiter=getattr(entry, "delimiter", ","),
        encoding=getattr(entry, "encoding", "utf-8"),
        max_mb=getattr(entry, "max_mb", None) or DEFAULT_MAX_EXPORT_MB,
    )
    ignored = [c for c in (getattr(entry, "ignore_columns", None) or []) if c in raw.columns]
    if ignored:
        logger.info("%s: columns left out as the manifest says (ignore_columns): %s",
                    entry.name, ignored)
        raw = raw.drop(columns=ignored)
    mapping = dict(getattr(entry, "columns", {}) or {})
    absent = [c for c in mapping if c not in raw.columns]
    if absent:
        raise ValidationError(
            [
                f"fls_records {entry.name}.columns maps {c!r}, which the export does not have "
                f"(columns: {', '.join(map(str, raw.columns))}). Fix: correct the mapping"
                for c in absent
            ],
            source=entry.name,
        )
    return raw.rename(columns=mapping)


def _check_size(path: Path, name: str, max_mb: float) -> None:
    try:
        size_mb = path.stat().st_size / 1e6
    except OSError:
        return  # the reader names the missing file
    if size_mb > max_mb:
        raise ValidationError(
            [f"{path} is {size_mb:.1f} MB, over the limit of {max_mb:g} MB for an FLS export "
             f"(reading takes about 45x the file in memory). Fix: export a shorter period, or "
             f"raise fls_records ({name}) max_mb in the manifest if the machine has the memory"],
            source=name,
        )


def _check_no_nul(data: bytes, path: Path, name: str) -> None:
    at = data.find(b"\x00")
    if at >= 0:
        line = data.count(b"\n", 0, at) + 1
        raise ValidationError(
            [f"{path} line {line} contains a NUL byte. Fix: export the FLS records again as "
             "UTF-8 CSV (a NUL byte means a UTF-16 file or a damaged export)"],
            source=name,
        )


def read_fls_export(
    *,
    kind: str,
    path: str | Path | None = None,
    url: str | None = None,
    query: str | None = None,
    sheet: str | int | None = None,
    name: str = "fls",
    delimiter: str = ",",
    encoding: str = "utf-8",
    max_mb: float = DEFAULT_MAX_EXPORT_MB,
) -> pd.DataFrame:
    """Read an FLS export as raw cells (no typing yet: see :func:`validate_records`).

    Parameters
    ----------
    kind
        ``csv``, ``excel`` (``.xlsx`` through openpyxl) or ``sql``.
    path
        File for csv/excel.
    url, query
        For sql: a SQLAlchemy URL (``env:VARNAME`` to read it from the environment, as
        database passwords must not sit in a manifest) and the SELECT to run.
    sheet
        Excel sheet name or index (default: the first).
    name
        Source name, for messages.
    delimiter, encoding
        CSV dialect (a byte-order mark is ignored for UTF-8).
    max_mb
        Largest file (CSV or Excel) read, in MB (:data:`DEFAULT_MAX_EXPORT_MB`).

    Returns
    -------
    pandas.DataFrame
        Every cell as read (CSV: strings; Excel/SQL: native types).

    Raises
    ------
    ValidationError
        When the file cannot be read or parsed, is over *max_mb*, or a CSV holds a NUL byte
        (named, with the line and the fix).
    ConfigError
        When an ``env:`` URL variable is unset.
    """
    if kind in ("csv", "excel") and path is not None:
        _check_size(Path(path), name, max_mb)
    if kind == "csv":
        if path is None:
            raise ValidationError([f"fls_records {name}: kind csv needs a path"], source=name)
        try:
            data = Path(path).read_bytes()
            _check_no_nul(data, Path(path), name)
            enc = "utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding
            return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding=enc,
                               sep=delimiter)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise ValidationError(
                [
                    f"cannot read CSV {path}: {e}. Fix: export the FLS records as UTF-8 CSV with a "
                    "header row"
                ],
                source=name,
            ) from e
    if kind == "excel":
        if path is None:
            raise ValidationError([f"fls_records {name}: kind excel needs a path"], source=name)
        try:
            return pd.read_excel(path, sheet_name=sheet or 0, dtype=object, engine="openpyxl")
        except (OSError, ValueError, KeyError) as e:
            raise ValidationError(
                [
                    f"cannot read Excel workbook {path}: {e}. Fix: save it as .xlsx with the "
                    "records on the first sheet (or name the sheet) and a header row"
                ],
                source=name,
            ) from e
    if kind == "sql":
        if not url or not query:
            raise ValidationError(
                [f"fls_records {name}: kind sql needs url (e.g. env:FLS_DB_URL) and query"],
                source=name,
            )
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError

        real_url = _resolve_env(url, f"fls_records {name}.url")
        eng = None
        try:
            eng = create_engine(real_url)
            with eng.connect() as conn:
                return pd.read_sql(text(query), conn)
        except SQLAlchemyError as e:
            raise ValidationError(
                [
                    f"the FLS query failed: {type(e).__name__}: {str(e).splitlines()[0]}. Fix: run "
                    "the query against the FLS database by hand and correct it or the URL"
                ],
                source=name,
            ) from e
        finally:
            if eng is not None:
                eng.dispose()
    raise ValidationError(
        [f"fls_records {name}: kind {kind!r} is not csv, excel or sql"], source=name
    )
