"""Link FLS records to patients and index CT studies, and store them as ``fls_episodes``.

Linkage rules (in order; the first that applies wins, and the method is counted):

1. **Patient by NHS number**: ``patient_key(secret, nhs_number)`` (namespace ``NHS``), the
   same HMAC key the DICOM index gives a patient whose NHS number is in the headers.
2. **Patient by MRN**: ``patient_key(secret, mrn, namespace=f"MRN:{issuer}")`` tried for
   every issuer the index may have used (each ``patients.mrn_issuer``, each site in
   ``studies.site``, ``local``, plus the manifest's ``site``); accepted only when exactly one
   patient matches.
3. **Study by accession number**: among the linked patient's studies, the one with the same
   accession number (case and spaces ignored). An accession that belongs to another patient
   is reported (``accession_other_patient``), never linked.
4. **Study by date** when the accession is blank or unknown: the patient's latest eligible
   CT dated within 180 days before (or on) the referral date.

Records for patients the database does not know (FLS referrals from elsewhere) are stored
with their key and no study; they count in the FLS KPIs but not in the CT funnel.

Only the pseudonymous key is stored: ``fls_episodes`` has no NHS number or MRN column.
Re-import is idempotent: rows are keyed on ``(source, record_id)``; a record already stored
is updated when the export changed it and left alone otherwise.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine, bindparam, insert, select, update

from fracture_qi.errors import ValidationError
from fracture_qi.outcomes.records import (
    RecordProblem,
    ValidatedRecords,
    date_problems,
    mask_identifier,
    validate_records,
)
from fracture_qi.pseudonym import normalise_identifier, patient_key
from fracture_qi.store.schema import FlsEpisode, Patient, Study

logger = logging.getLogger(__name__)

#: how far before the referral a CT may be and still be taken as the index CT (rule 4)
DATE_LINK_WINDOW_DAYS = 180
_CHUNK = 900  # stays under SQLite's bound-parameter limit

#: FlsEpisode column <- validated record column
EPISODE_COLUMNS = {
    "accession_number": "accession_number",
    "reported_by_radiology": "reported_by_radiology",
    "known_to_fls": "known_to_fls_before",
    "on_therapy_before": "on_therapy_before",
    "referral_date": "referral_date",
    "assessment_date": "fls_assessment_date",
    "dxa_date": "dxa_date",
    "dxa_t_score": "dxa_t_score",
    "therapy_recommended": "therapy_recommended",
    "therapy_recommended_date": "therapy_recommended_date",
    "drug": "drug",
    "therapy_start_date": "therapy_start_date",
    "adherent_52w": "adherent_52w",
    "death_date": "death_date",
    "index_fracture_site": "index_fracture_site",
    "falls_assessment_date": "falls_assessment_date",
    "strength_balance_date": "strength_balance_date",
    "followup_date": "followup_date",
}


@dataclass
class ImportSummary:
    """What an FLS import did.

    Attributes
    ----------
    source
        Source name (``fls_episodes.source``).
    n_rows
        Rows in the export.
    n_inserted, n_updated, n_unchanged
        Episodes written for the first time, changed, or already identical.
    n_skipped
        Rows not stored (duplicate record id, or no record id).
    link_patient, link_study
        Counts by linkage method (``nhs``, ``mrn``, ``none``; ``accession``, ``date``, ``none``).
    problems
        Every problem (invalid cells, impossible dates, linkage), in row order.
    seconds
        Wall time.
    """

    source: str
    n_rows: int = 0
    n_inserted: int = 0
    n_updated: int = 0
    n_unchanged: int = 0
    n_skipped: int = 0
    link_patient: Counter[str] = field(default_factory=Counter)
    link_study: Counter[str] = field(default_factory=Counter)
    problems: list[RecordProblem] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problem_counts(self) -> pd.DataFrame:
        """Problems counted by kind and code (for the CLI and the data-quality notebook)."""
        if not self.problems:
            return pd.DataFrame(columns=["kind", "code", "n"])
        c = Counter((p.kind, p.code) for p in self.problems)
        return pd.DataFrame(
            [(k, code, n) for (k, code), n in sorted(c.items())], columns=["kind", "code", "n"]
        )

    def table(self, max_problems: int = 20) -> str:
        """Plain-text summary for the command line (no identifiers)."""
        lines = [
            (f"FLS source {self.source}: {self.n_rows} rows; {self.n_inserted} new, "
             f"{self.n_updated} updated, {self.n_unchanged} unchanged, {self.n_skipped} "
             f"skipped ({self.seconds:.1f} s)"),
            "patients linked by: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.link_patient.items())),
            "index CT linked by: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.link_study.items())),
        ]
        if self.missing_columns:
            lines.append("columns absent (treated as blank): " + ", ".join(self.missing_columns))
        counts = self.problem_counts()
        if len(counts):
            lines.append(
                f"problems ({len(self.problems)}; records are kept, problems stored with them):"
            )
            lines += [f"  {r.kind:<10} {r.code:<32} {r.n}" for r in counts.itertuples()]
            lines.append("first problems:")
            lines += ["  " + p.line() for p in self.problems[:max_problems]]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _norm_acc(a: Any) -> str | None:
    if a is None:
        return None
    s = normalise_identifier(str(a))
    return s or None


def mrn_issuers(engine: Engine, extra: Iterable[str] = ()) -> list[str]:
    """Issuers an MRN key may have been made with.

    The namespace the index used for each patient is kept in ``patients.mrn_issuer``
    (IssuerOfPatientID when the DICOM names one, else the site, else ``local``), so every
    distinct value there is tried, plus each study site, ``local`` (the index's default when
    DICOM names no issuer and no site) and *extra*. A record still links only when exactly
    one patient matches, so trying more namespaces never links a record twice.
    """
    with engine.connect() as conn:
        sites = [s for (s,) in conn.execute(select(Study.site).distinct()) if s]
        used = [s for (s,) in conn.execute(select(Patient.mrn_issuer).distinct()) if s]
    return sorted(set(sites) | set(used) | {"local"} | {e for e in extra if e})


def link_records(
    records: ValidatedRecords,
    engine: Engine,
    secret: bytes,
    *,
    mrn_issuers_extra: Iterable[str] = (),
    fallback_issuer: str = "FLS",
) -> tuple[pd.DataFrame, list[RecordProblem], Counter[str], Counter[str]]:
    """Compute patient keys and find each record's patient and index CT.

    Parameters
    ----------
    records
        Output of :func:`~fracture_qi.outcomes.records.validate_records`.
    engine
        The suite's database.
    secret
        The site's pseudonymisation secret (``Manifest.secret()``).
    mrn_issuers_extra
        Issuers (beyond the study sites) to try for MRN keys.
    fallback_issuer
        Namespace issuer for the key of an MRN-only record whose patient is unknown.

    Returns
    -------
    tuple
        ``(frame, problems, patient_methods, study_methods)``: *frame* is the typed records
        plus ``patient_key, patient_id, study_id, ct_date, link_patient, link_study``.
    """
    df = records.frame.copy()
    problems: list[RecordProblem] = []
    issuers = mrn_issuers(engine, mrn_issuers_extra)
    nhs_keys = [patient_key(secret, n) if n else None for n in df["nhs_number"]]
    mrn_cands: list[dict[str, str]] = []
    for m in df["mrn"]:
        mrn_cands.append({patient_key(secret, m, f"MRN:{i}"): i for i in issuers} if m else {})
    wanted = {k for k in nhs_keys if k} | {k for c in mrn_cands for k in c}
    key_to_pid: dict[str, int] = {}
    wl = sorted(wanted)
    with engine.connect() as conn:
        for chunk in _chunks(wl):
            for db_pid, db_key in conn.execute(
                select(Patient.id, Patient.patient_key).where(Patient.patient_key.in_(chunk))
            ):
                key_to_pid[db_key] = db_pid
    keys: list[str | None] = []
    pids: list[int | None] = []
    pmethod: list[str] = []
    key: str | None
    pid: int | None
    for i, (nk, cands, mrn) in enumerate(zip(nhs_keys, mrn_cands, df["mrn"])):
        hits = [k for k in cands if k in key_to_pid]
        if nk and nk in key_to_pid:
            key, pid, how = nk, key_to_pid[nk], "nhs"
        elif len(hits) == 1:
            key, pid, how = hits[0], key_to_pid[hits[0]], "mrn"
        else:
            if len(hits) > 1:
                problems.append(
                    RecordProblem(
                        int(df["row"].iloc[i]),
                        df["record_id"].iloc[i],
                        "mrn",
                        "(masked)",
                        "mrn_ambiguous",
                        "linkage",
                        f"the MRN matches patients at {len(hits)} sites",
                        "add the NHS number to the FLS record",
                    )
                )
            # unknown to the database: keep a key so one person's episodes group together
            if nk:
                key = nk
            elif mrn:
                key = patient_key(secret, mrn, f"MRN:{fallback_issuer}")
            else:
                key = None
            pid, how = None, "none"
        keys.append(key)
        pids.append(pid)
        pmethod.append(how)
    df["patient_key"] = keys
    df["patient_id"] = pids
    df["link_patient"] = pmethod

    # studies of the linked patients, and accession owners for the mismatch check
    pid_set = sorted({p for p in pids if p is not None})
    studies: list[Any] = []
    acc_owner: dict[str, int | None] = {}
    with engine.connect() as conn:
        for chunk in _chunks(pid_set):
            studies += list(
                conn.execute(
                    select(
                        Study.id,
                        Study.patient_id,
                        Study.accession_number,
                        Study.study_date,
                        Study.eligible,
                    ).where(Study.patient_id.in_(chunk))
                )
            )
        raw_accs = sorted({str(x).strip() for x in df["accession_number"] if x})
        for chunk in _chunks(raw_accs):
            for owner_acc, owner_pid in conn.execute(
                select(Study.accession_number, Study.patient_id).where(
                    Study.accession_number.in_(chunk)
                )
            ):
                acc_owner[_norm_acc(owner_acc) or ""] = owner_pid
    by_patient: dict[int, list[tuple[int, str | None, dt.date | None, bool]]] = {}
    for s_id, s_pid, s_acc, s_date, s_elig in studies:
        by_patient.setdefault(s_pid, []).append((s_id, _norm_acc(s_acc), s_date, bool(s_elig)))

    sids: list[int | None] = []
    ct_dates: list[dt.date | None] = []
    smethod: list[str] = []
    link: tuple[int | None, dt.date | None, str]
    for rec in df.to_dict("records"):
        # a column of ids with gaps comes back as floats with NaN
        rec_pid = None if pd.isna(rec["patient_id"]) else int(rec["patient_id"])
        acc, ref = _norm_acc(rec["accession_number"]), rec["referral_date"]
        row, rid = int(rec["row"]), rec["record_id"]
        found: tuple[int, dt.date | None, str] | None = None
        if rec_pid is not None and acc:
            for sid, sacc, sdate, _e in by_patient.get(rec_pid, []):
                if sacc == acc:
                    found = (sid, sdate, "accession")
                    break
        if found is None and acc and acc in acc_owner and acc_owner[acc] != rec_pid:
            problems.append(
                RecordProblem(
                    row,
                    rid,
                    "accession_number",
                    mask_identifier(rec["accession_number"]),
                    "accession_other_patient",
                    "linkage",
                    "this accession number belongs to another patient's CT; not linked",
                    "check the accession number and the patient identifiers in the FLS record",
                )
            )
        elif found is None and acc and rec_pid is not None:
            problems.append(
                RecordProblem(
                    row,
                    rid,
                    "accession_number",
                    mask_identifier(rec["accession_number"]),
                    "accession_not_found",
                    "warning",
                    "no CT of this patient has this accession number; linked by date if possible",
                    "check the accession number (or index the CT it refers to)",
                )
            )
        if found is None and rec_pid is not None and isinstance(ref, dt.date):
            date_cands = [
                (sdate, sid)
                for sid, _a, sdate, elig in by_patient.get(rec_pid, [])
                if elig
                and sdate is not None
                and dt.timedelta(0) <= ref - sdate <= dt.timedelta(days=DATE_LINK_WINDOW_DAYS)
            ]
            if date_cands:
                best_date, best_sid = max(date_cands)
                found = (best_sid, best_date, "date")
        link = found if found is not None else (None, None, "none")
        sids.append(link[0])
        ct_dates.append(link[1])
        smethod.append(link[2])
    df["study_id"] = sids
    df["ct_date"] = ct_dates
    df["link_study"] = smethod
    # dates that contradict the linked CT
    problems += [
        p
        for p in date_problems(df, ct_dates=ct_dates)
        if p.code in ("therapy_before_ct", "assessment_before_ct", "referral_before_ct")
    ]
    return df, problems, Counter(pmethod), Counter(smethod)


def _episode_row(rec: dict[str, Any], source: str, probs: list[RecordProblem]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": source,
        "record_id": str(rec["record_id"]),
        "patient_key": rec["patient_key"],
        # pandas turns a column of ids with gaps into floats with NaN
        "study_id": None if pd.isna(rec["study_id"]) else int(rec["study_id"]),
        "problems": [p.to_dict() for p in probs],
    }
    for col, src in EPISODE_COLUMNS.items():
        v = rec.get(src)
        row[col] = None if v is None or (isinstance(v, float) and pd.isna(v)) else v
    return row


def import_fls_records(
    raw: pd.DataFrame,
    engine: Engine,
    secret: bytes,
    *,
    source: str = "fls",
    strict: bool = False,
    mrn_issuers_extra: Iterable[str] = (),
    today: dt.date | None = None,
) -> ImportSummary:
    """Validate, link and store an FLS export (idempotent).

    Parameters
    ----------
    raw
        The export as read by :func:`~fracture_qi.outcomes.records.read_fls_export`.
    engine
        The suite's database (tables already created/migrated).
    secret
        Pseudonymisation secret.
    source
        Source name from the manifest (part of the idempotency key).
    strict
        Refuse the whole export (nothing written) if any cell is invalid; otherwise invalid
        cells are stored empty and the problem is kept with the record.
    mrn_issuers_extra
        Extra MRN issuers to try (see :func:`link_records`).
    today
        Reference date for future-date checks (tests pin it).

    Returns
    -------
    ImportSummary

    Raises
    ------
    ValidationError
        When required columns are missing, or with *strict* when any cell is invalid (every
        problem listed with row, column, value and fix).
    """
    t0 = time.perf_counter()
    v = validate_records(raw, source=source)
    if today is not None:  # re-run the future-date check against the pinned day
        v.problems = [p for p in v.problems if p.code != "future_date"] + [
            p for p in date_problems(v.frame, today=today) if p.code == "future_date"
        ]
    if strict:
        bad = [p for p in v.problems if p.kind == "invalid"]
        if bad:
            raise ValidationError([p.line() for p in bad], source=source)
    df, link_probs, pm, sm = link_records(v, engine, secret, mrn_issuers_extra=mrn_issuers_extra)
    problems = sorted(v.problems + link_probs, key=lambda p: (p.row or 0, p.column))
    by_row: dict[int, list[RecordProblem]] = {}
    for p in problems:
        if p.row is not None:
            by_row.setdefault(p.row, []).append(p)
    summary = ImportSummary(
        source=source,
        n_rows=len(df),
        link_patient=pm,
        link_study=sm,
        problems=problems,
        missing_columns=v.missing_columns,
    )
    rows: dict[str, dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        rid = rec["record_id"]
        if rid is None or rec["patient_key"] is None or str(rid) in rows:
            summary.n_skipped += 1
            continue
        rows[str(rid)] = _episode_row(rec, source, by_row.get(int(rec["row"]), []))
    compare = ["patient_key", "study_id", "problems", *EPISODE_COLUMNS]
    with engine.begin() as conn:
        existing: dict[str, dict[str, Any]] = {}  # record_id -> stored values
        rid_list = sorted(rows)
        cols = [FlsEpisode.id, FlsEpisode.record_id] + [getattr(FlsEpisode, c) for c in compare]
        for chunk in _chunks(rid_list):
            for found_row in conn.execute(
                select(*cols).where(FlsEpisode.source == source, FlsEpisode.record_id.in_(chunk))
            ):
                existing[found_row.record_id] = dict(found_row._mapping)
        new = [r for rid, r in rows.items() if rid not in existing]
        changed = []
        for rid, r in rows.items():
            old = existing.get(rid)
            if old is None:
                continue
            if any(old[c] != r[c] for c in compare):
                changed.append({**{c: r[c] for c in compare}, "b_id": old["id"]})
            else:
                summary.n_unchanged += 1
        if new:
            conn.execute(insert(FlsEpisode), new)
        if changed:
            stmt = (
                update(FlsEpisode)
                .where(FlsEpisode.id == bindparam("b_id"))
                .values({c: bindparam(c) for c in compare})
            )
            conn.execute(stmt, changed)
        summary.n_inserted, summary.n_updated = len(new), len(changed)
    summary.seconds = time.perf_counter() - t0
    logger.info(
        "FLS import %s: %d new, %d updated, %d unchanged, %d problems",
        source,
        summary.n_inserted,
        summary.n_updated,
        summary.n_unchanged,
        len(problems),
    )
    return summary
