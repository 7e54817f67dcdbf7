"""The DICOM index: header scans persisted into the database (layer 2 over :mod:`.scan`).

``fracture-qi index --manifest M`` calls :func:`index_sources`, which scans each folder
source of the manifest (PACS sources are indexed by :mod:`fracture_qi.dicom.pacs`) and writes
patients, studies, series, instances and index_problems. Eligibility, reason codes and the
chosen series are exactly those of :func:`fracture_qi.dicom.scan.scan_paths`, which
``fracture-qi screen PATH...`` uses without a database.

Incremental and idempotent: files already indexed (by path) are not read again; a study
that receives new files is re-assembled from all its files (already indexed ones are re-read
from disk) so its eligibility and chosen series are decided on the whole study. Re-indexing
the same folder adds nothing. File-level problems are recorded once per (path, reason) and
re-checked on the next run (a file fixed in place is then indexed and its problem removed).

Patients are keyed by :func:`patient_key_for`: HMAC of the NHS number when the headers carry
a valid one, else of the PatientID in the namespace ``MRN:<issuer>`` where the issuer is
IssuerOfPatientID, else the study's site (InstitutionName), else the manifest's ``site``,
else ``local``; the issuer used is kept in ``patients.mrn_issuer``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, insert, or_, select, text, update
from sqlalchemy.orm import Session

from fracture_qi.dicom.headers import FileHeader, FileProblem, dicomdir_files
from fracture_qi.dicom.reasons import EXCLUSIONS, ReasonCode
from fracture_qi.dicom.scan import (
    MAX_SLICE_MM,
    ScanResult,
    SeriesHeader,
    assemble,
    iter_files,
    read_headers,
    study_key,
    study_reason,
)
from fracture_qi.errors import ManifestError
from fracture_qi.pseudonym import patient_key
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import (
    IndexProblem,
    Instance,
    Patient,
    Screening,
    Series,
    Study,
    screening_is_current,
)

log = logging.getLogger(__name__)

#: studies written per database transaction (short transactions keep SQLite writers moving)
STUDIES_PER_COMMIT = 100
_UTC = dt.UTC


def _clip(value: str | None, n: int) -> str | None:
    return value[:n] if value else None


def mrn_issuer(issuer: str | None, site: str | None, manifest_site: str | None) -> str:
    """The MRN namespace issuer: IssuerOfPatientID, else the study site, else the
    manifest's ``site``, else ``local``.

    >>> mrn_issuer("", "Test General Hospital", None)
    'Test General Hospital'
    """
    return (issuer or site or manifest_site or "local").strip()


def patient_key_for(
    secret: bytes,
    *,
    nhs_number: str | None,
    mrn: str | None,
    issuer: str | None = None,
) -> str | None:
    """The pseudonymous key of a patient as the index computes it.

    Parameters
    ----------
    secret
        The site's secret (``Manifest.secret()``).
    nhs_number
        A mod-11-valid NHS number, or empty.
    mrn
        The local PatientID, used when there is no NHS number.
    issuer
        The MRN namespace (see :func:`mrn_issuer`).

    Returns
    -------
    str or None
        None when neither identifier is present.

    Examples
    --------
    >>> k = patient_key_for(b"0123456789abcdef", nhs_number="9990000018", mrn="M1")
    >>> k == patient_key(b"0123456789abcdef", "9990000018")
    True
    """
    if nhs_number:
        return patient_key(secret, nhs_number)
    if mrn and mrn.strip():
        return patient_key(secret, mrn, f"MRN:{issuer or 'local'}")
    return None


@dataclass
class IndexSummary:
    """What an index run did.

    Attributes
    ----------
    by_status
        Series counted by status (``ok`` = chosen for screening, ``excluded``, ``error``).
    by_reason
        Series counted by reason code (``ok`` for chosen ones).
    problems
        Files counted by problem reason (NOT_DICOM, TRUNCATED, DUPLICATE_STUDY...).

    Counts of studies, series, reasons and problems are totals in the database for the
    sources indexed (after the run); ``n_new_files``, ``n_new_series`` and
    ``n_touched_studies`` describe the run itself.
    """

    n_files: int = 0
    n_new_files: int = 0
    n_series: int = 0
    n_studies: int = 0
    n_new_series: int = 0
    n_touched_studies: int = 0
    n_eligible_studies: int = 0
    seconds: float = 0.0
    database: str = ""
    sources: list[str] = field(default_factory=list)
    by_status: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)

    def add(self, other: IndexSummary) -> None:
        """Accumulate another source's summary into this one."""
        for name in ("n_files", "n_new_files", "n_series", "n_studies", "n_new_series",
                     "n_touched_studies", "n_eligible_studies", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sources += other.sources
        self.by_status.update(other.by_status)
        self.by_reason.update(other.by_reason)
        self.problems.update(other.problems)

    def table(self) -> str:
        """A plain-text table of counts per reason, for the command line."""
        lines = [
            (f"indexed {self.n_files} files ({self.n_new_files} new) from "
             f"{', '.join(self.sources) or '-'} in {self.seconds:.1f} s"),
            (f"{self.n_studies} studies ({self.n_touched_studies} added or updated by this run), "
             f"{self.n_eligible_studies} with a series chosen for screening; "
             f"{self.n_series} series ({self.n_new_series} new)"),
            "",
            f"{'series reason':<22}{'status':<10}{'series':>8}",
        ]
        for reason, n in sorted(self.by_reason.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0])):
            status = "ok" if reason == "ok" else ("excluded" if reason in {str(r) for r in EXCLUSIONS} else "error")
            lines.append(f"{reason:<22}{status:<10}{n:>8}")
        if self.problems:
            lines += ["", f"{'file problem':<32}{'files':>8}"]
            for reason, n in sorted(self.problems.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"{reason:<32}{n:>8}")
        if self.database:
            lines += ["", f"database: {self.database}"]
        return "\n".join(lines)


@dataclass(frozen=True)
class SeriesRef:
    """A chosen series as the screening engine needs it.

    Attributes
    ----------
    paths
        Instance file paths sorted along the slice normal (z ascending).
    path
        The folder (or PACS reference) the series came from.
    """

    series_id: int
    study_id: int
    study_instance_uid: str
    series_instance_uid: str
    paths: tuple[str, ...]
    path: str | None
    site: str | None
    source: str | None
    study_date: dt.date | None
    slice_thickness: float | None
    kernel: str | None
    n_instances: int
    transfer_syntax: str | None


# --------------------------------------------------------------------------------------
# read side
# --------------------------------------------------------------------------------------


def chosen_series(
    engine: Engine,
    *,
    unscreened_for: tuple[str, str] | None = None,
    source: str | None = None,
    limit: int | None = None,
    studies: Iterable[str] | None = None,
) -> list[SeriesRef]:
    """The series chosen for screening, one per eligible study, oldest study first.

    Parameters
    ----------
    engine
        The suite's database.
    unscreened_for
        ``(model_id, model_version)``: leave out series whose current screening by that
        model version (whatever its status) was made on the instances the series holds now,
        so a rerun resumes where it stopped, and a series that gained instances since it
        was screened (a study completed late) is screened again.
    source
        Only series indexed from this manifest source.
    limit
        At most this many.
    studies
        Only these StudyInstanceUIDs (the listener screens the study it just received).

    Returns
    -------
    list of SeriesRef
    """
    stmt = (
        select(Series, Study)
        .join(Study, Series.study_id == Study.id)
        .where(Series.chosen.is_(True), Series.status == "ok", Study.chosen_series_id == Series.id)
        .order_by(Study.study_date, Study.id)
    )
    if unscreened_for is not None:
        model_id, version = unscreened_for
        stmt = stmt.where(
            ~exists().where(
                and_(
                    Screening.series_id == Series.id,
                    Screening.model_id == model_id,
                    Screening.model_version == version,
                    screening_is_current(),
                    # screened before revision 0008 (count unknown): taken as complete
                    or_(Screening.n_instances.is_(None),
                        Screening.n_instances == Series.n_instances),
                )
            )
        )
    if source is not None:
        stmt = stmt.where(Study.source == source)
    if studies is not None:
        stmt = stmt.where(Study.study_instance_uid.in_(list(studies)))
    if limit is not None:
        stmt = stmt.limit(limit)
    with Session(engine) as s:
        rows = s.execute(stmt).all()
        ids = [se.id for se, _ in rows]
        paths: dict[int, list[str]] = defaultdict(list)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for sid, p in s.execute(
                select(Instance.series_id, Instance.path)
                .where(Instance.series_id.in_(chunk))
                .order_by(Instance.series_id, Instance.z, Instance.instance_number, Instance.id)
            ):
                paths[sid].append(p)
        return [
            SeriesRef(
                series_id=se.id, study_id=st.id, study_instance_uid=st.study_instance_uid,
                series_instance_uid=se.series_instance_uid, paths=tuple(paths[se.id]),
                path=se.path, site=st.site, source=st.source, study_date=st.study_date,
                slice_thickness=se.slice_thickness, kernel=se.kernel,
                n_instances=se.n_instances, transfer_syntax=se.transfer_syntax,
            )
            for se, st in rows
        ]


# --------------------------------------------------------------------------------------
# write side
# --------------------------------------------------------------------------------------


def _known(engine: Engine) -> tuple[dict[str, str], set[str], dict[Any, tuple[str, str]]]:
    """(SOP UID -> path, indexed paths, study key -> (study UID, folder)) from the database."""
    sops: dict[str, str] = {}
    with Session(engine) as s:
        for sop, path in s.execute(select(Instance.sop_instance_uid, Instance.path)):
            sops[sop] = path
        studies: dict[Any, tuple[str, str]] = {}
        for uid, acc, date, nhs, mrn, folder in s.execute(
            select(Study.study_instance_uid, Study.accession_number, Study.study_date,
                   Patient.nhs_number, Patient.mrn, Series.path)
            .join(Patient, Study.patient_id == Patient.id, isouter=True)
            .join(Series, Series.study_id == Study.id, isouter=True)
        ):
            key = study_key(nhs or "", mrn or "", acc or "", date)
            if key is not None and key not in studies:
                studies[key] = (uid, folder or "")
    return sops, set(sops.values()), studies


def _duplicate_paths(engine: Engine) -> set[str]:
    """Files already recorded as copies (of an instance, or of a slice at the same position
    with identical pixels): not read again on the next run."""
    with Session(engine) as s:
        return set(s.scalars(select(IndexProblem.path).where(IndexProblem.reason.in_(
            (str(ReasonCode.DUPLICATE_STUDY), str(ReasonCode.DUPLICATE_POSITION))))))


def _study_files(engine: Engine, study_uids: Iterable[str]) -> list[str]:
    uids = sorted(set(study_uids))
    out: list[str] = []
    with Session(engine) as s:
        for i in range(0, len(uids), 500):
            out += list(
                s.scalars(
                    select(Instance.path)
                    .join(Series, Instance.series_id == Series.id)
                    .join(Study, Series.study_id == Study.id)
                    .where(Study.study_instance_uid.in_(uids[i : i + 500]))
                )
            )
    return out


def index_folder(
    path: str | os.PathLike[str],
    engine: Engine,
    secret: bytes,
    *,
    source_name: str = "folder",
    site: str | None = None,
    workers: int = 1,
    progress: bool = False,
    rescan: bool = False,
    max_slice_mm: float | None = None,
) -> IndexSummary:
    """Scan a folder tree and record what it holds in the database.

    Parameters
    ----------
    path
        The folder (walked recursively; DICOMDIR understood) or a single file.
    engine
        From :func:`fracture_qi.store.open_store`.
    secret
        Pseudonymisation secret for patient keys.
    source_name
        Recorded as ``studies.source`` and ``index_problems.source``.
    site
        The manifest's ``site`` (last-resort MRN namespace).
    workers
        Header-reading processes (used for big folders).
    progress
        Show a progress bar.
    rescan
        Re-read every file, not only new ones, and decide eligibility and the chosen series
        again (``fracture-qi index --rebuild-choice``).
    max_slice_mm
        Coarsest slice step screened (``SLICE_TOO_THICK`` beyond it; default
        :data:`fracture_qi.dicom.scan.MAX_SLICE_MM`, manifest ``screening.max_slice_mm``).

    Returns
    -------
    IndexSummary
    """
    t0 = time.perf_counter()
    known_sops, known_paths, known_studies = _known(engine)
    files: list[str] = []
    seen: set[str] = set()
    for f in iter_files([path]):
        cands = [f] + (dicomdir_files(f) if os.path.basename(f).upper() == "DICOMDIR" else [])
        for g in cands:
            real = os.path.realpath(g)
            if real not in seen:
                seen.add(real)
                files.append(g)
    skip = known_paths | (set() if rescan else _duplicate_paths(engine))
    new_files = files if rescan else [f for f in files if f not in skip]
    records = read_headers(new_files, workers=workers, progress=progress)
    if not rescan:  # copies of instances already indexed elsewhere touch no study
        records = [
            FileProblem(r.path, ReasonCode.DUPLICATE_STUDY,
                        f"same SOPInstanceUID as {known_sops[r.sop_instance_uid]} (kept); "
                        "this copy is ignored")
            if isinstance(r, FileHeader) and known_sops.get(r.sop_instance_uid, r.path) != r.path
            else r
            for r in records
        ]
    # a study receiving new files is decided again on all its files
    touched = {r.study_instance_uid for r in records if isinstance(r, FileHeader)}
    old_files = [] if rescan else [p for p in _study_files(engine, touched) if p not in set(new_files)]
    if old_files:
        old_records = read_headers(old_files, workers=workers, progress=False)
        missing = [r for r in old_records if isinstance(r, FileProblem)]
        for m in missing:  # indexed before, unreadable now (moved or deleted): keep the row
            log.warning("%s: indexed before but now %s (%s)", m.path, m.reason, m.detail)
        records = [r for r in old_records if isinstance(r, FileHeader)] + list(records)
    # instances of the studies being rebuilt are not "already known" copies of themselves
    rebuilt = {r.path for r in records if isinstance(r, FileHeader)}
    sops = {k: v for k, v in known_sops.items() if v not in rebuilt}
    studies = {k: v for k, v in known_studies.items() if v[0] not in touched}
    result = assemble(records, known_sops=sops, known_studies=studies,
                      max_slice_mm=MAX_SLICE_MM if max_slice_mm is None else max_slice_mm)
    result.n_files = len(files)
    summary = _persist(result, engine, secret, source_name=source_name, site=site,
                       n_new_files=len(new_files))
    summary.sources = [source_name]
    _totals(engine, source_name, summary)
    summary.seconds = time.perf_counter() - t0
    log.info("index of %s: %d files (%d new), %d series in %.1f s", path, len(files),
             len(new_files), summary.n_series, summary.seconds)
    return summary


def manifest_max_slice_mm(manifest: Any) -> float:
    """The manifest's ``screening.max_slice_mm`` (default
    :data:`fracture_qi.dicom.scan.MAX_SLICE_MM`, also for manifests without a screening
    section)."""
    screening = getattr(manifest, "screening", None)
    value = (screening.get("max_slice_mm") if isinstance(screening, dict)
             else getattr(screening, "max_slice_mm", None))
    return MAX_SLICE_MM if value is None else float(value)


def index_sources(
    manifest: Any,
    engine: Engine,
    *,
    progress: bool = False,
    workers: int | None = None,
    rescan: bool = False,
    sources: Sequence[str] | None = None,
) -> IndexSummary:
    """Index every folder source of a manifest.

    Parameters
    ----------
    manifest
        A :class:`~fracture_qi.manifest.Manifest`.
    engine
        From :func:`fracture_qi.store.open_store`.
    progress
        Show progress bars.
    workers
        Header-reading processes (default FRACTURE_QI_WORKERS, else the CPU count up to 8).
    rescan
        See :func:`index_folder`.
    sources
        Only these source names (default: all folder sources).

    Returns
    -------
    IndexSummary
        Summed over the sources.

    Raises
    ------
    ManifestError
        When a named source does not exist in the manifest.
    """
    from fracture_qi.config import default_workers
    from fracture_qi.manifest import FolderSource

    n_workers = workers if workers is not None else default_workers()
    secret = manifest.secret()
    folder = [s for s in manifest.dicom_sources if isinstance(s, FolderSource)]
    if sources is not None:
        names = {s.name for s in manifest.dicom_sources}
        unknown = [n for n in sources if n not in names]
        if unknown:
            raise ManifestError("dicom_sources", unknown, "no source of that name",
                                f"use one of {sorted(names)}", manifest.path)
        folder = [s for s in folder if s.name in set(sources)]
    others = [s.name for s in manifest.dicom_sources if not isinstance(s, FolderSource)]
    if others:
        log.info("PACS sources %s are indexed by fracture_qi.dicom.pacs, not here", others)
    total = IndexSummary(database=engine.url.render_as_string(hide_password=True))
    for src in folder:
        part = index_folder(src.path, engine, secret, source_name=src.name, site=manifest.site,
                            workers=n_workers, progress=progress, rescan=rescan,
                            max_slice_mm=manifest_max_slice_mm(manifest))
        total.add(part)
    return total


def _totals(engine: Engine, source: str, summary: IndexSummary) -> None:
    """Fill the summary's counts from the database (everything indexed from *source*)."""
    from sqlalchemy import func

    summary.by_status.clear()
    summary.by_reason.clear()
    summary.problems.clear()
    with Session(engine) as s:
        for status, reason, chosen, n in s.execute(
            select(Series.status, Series.reason, Series.chosen, func.count())
            .join(Study, Series.study_id == Study.id)
            .where(Study.source == source)
            .group_by(Series.status, Series.reason, Series.chosen)
        ):
            summary.by_status["ok" if chosen else status] += n
            summary.by_reason[reason or "ok"] += n
        summary.n_series = sum(summary.by_reason.values())
        summary.n_studies = s.scalar(select(func.count()).select_from(Study).where(Study.source == source)) or 0
        summary.n_eligible_studies = s.scalar(
            select(func.count()).select_from(Study).where(Study.source == source, Study.eligible.is_(True))
        ) or 0
        for reason, n in s.execute(
            select(IndexProblem.reason, func.count()).where(IndexProblem.source == source)
            .group_by(IndexProblem.reason)
        ):
            summary.problems[reason] += n


#: PostgreSQL advisory lock key serialising index writers ("fqi-idx" as an integer)
_PG_INDEX_LOCK = 0x6671692D696478


def _lock(session: Session) -> None:
    """Serialise index writers: two `fracture-qi index` runs at once must not both insert
    the same study. SQLite already takes its write lock at BEGIN IMMEDIATE; PostgreSQL
    takes a transaction-scoped advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_INDEX_LOCK})


def _persist(
    result: ScanResult,
    engine: Engine,
    secret: bytes,
    *,
    source_name: str,
    site: str | None,
    n_new_files: int,
) -> IndexSummary:
    """Write a ScanResult: upsert patients, studies, series, instances; record problems."""
    summary = IndexSummary(n_files=result.n_files, n_new_files=n_new_files,
                           database=engine.url.render_as_string(hide_password=True))
    by_study: dict[str, list[SeriesHeader]] = defaultdict(list)
    for s in result.series:
        by_study[s.study_instance_uid].append(s)
    study_uids = list(by_study)
    for i in range(0, len(study_uids), STUDIES_PER_COMMIT):
        with session_scope(engine) as session:
            _lock(session)
            for uid in study_uids[i : i + STUDIES_PER_COMMIT]:
                _write_study(session, by_study[uid], secret, source_name, site, summary)
    # file problems: one row per (path, reason); a path now indexed loses its old problems
    indexed = {p for s in result.series for p in s.files}
    with session_scope(engine) as session:
        _lock(session)
        existing = {(path, reason) for path, reason in session.execute(
            select(IndexProblem.path, IndexProblem.reason))}
        new_rows = []
        for p in result.problems:
            key = (p.path, str(p.reason))
            if key not in existing:
                existing.add(key)
                new_rows.append({"path": p.path, "source": source_name, "reason": str(p.reason),
                                 "detail": p.detail, "seen_at": dt.datetime.now(_UTC)})
        if new_rows:
            session.execute(insert(IndexProblem), new_rows)
        fixed = [path for path, _ in existing if path in indexed]
        for j in range(0, len(fixed), 500):
            session.execute(delete(IndexProblem).where(IndexProblem.path.in_(fixed[j : j + 500])))
    return summary


def _write_study(
    session: Session,
    series: list[SeriesHeader],
    secret: bytes,
    source_name: str,
    manifest_site: str | None,
    summary: IndexSummary,
) -> None:
    first = series[0]
    site = next((s.site for s in series if s.site), "") or manifest_site or ""
    issuer = mrn_issuer(first.issuer_of_patient_id, site, manifest_site)
    key = patient_key_for(secret, nhs_number=first.nhs_number, mrn=first.patient_id, issuer=issuer)
    patient = None
    if key is not None:
        patient = session.scalars(select(Patient).where(Patient.patient_key == key)).first()
        if patient is None:
            patient = Patient(patient_key=key)
            session.add(patient)
        # fill identifiers the row lacks (a later study may carry what an earlier one missed)
        patient.nhs_number = patient.nhs_number or (first.nhs_number or None)
        patient.mrn = patient.mrn or _clip(first.patient_id, 64)
        patient.mrn_issuer = patient.mrn_issuer or (None if first.nhs_number else _clip(issuer, 64))
        patient.name = patient.name or _clip(first.patient_name, 200)
        patient.birth_date = patient.birth_date or first.birth_date
        patient.sex = patient.sex or (first.sex or None)
        session.flush()
    study = session.scalars(select(Study).where(Study.study_instance_uid == first.study_instance_uid)).first()
    if study is None:
        study = Study(study_instance_uid=first.study_instance_uid)
        session.add(study)
    study.patient_id = patient.id if patient is not None else study.patient_id
    study.accession_number = _clip(first.accession_number, 64)
    study.study_date = first.study_date
    study.description = _clip(first.study_description, 200)
    study.site = _clip(site, 200)
    study.referral_source = next((s.referral_source for s in series if s.referral_source), None)
    study.age_years = first.age_years
    study.source = source_name
    study.indexed_at = dt.datetime.now(_UTC)
    session.flush()
    chosen_id = None
    for s in series:
        row = session.scalars(select(Series).where(Series.series_instance_uid == s.series_instance_uid)).first()
        if row is None:
            row = Series(series_instance_uid=s.series_instance_uid, study_id=study.id)
            session.add(row)
            summary.n_new_series += 1
        row.study_id = study.id
        row.path = s.folder
        row.modality = _clip(s.modality, 16)
        row.series_number = s.series_number
        row.description = _clip(s.description, 200)
        row.manufacturer = _clip(s.manufacturer, 100)
        row.model_name = _clip(s.model_name, 100)
        row.station_name = _clip(s.station_name, 100)
        row.kernel = _clip(s.kernel, 64)
        row.image_type = _clip("\\".join(s.image_type), 200)
        row.body_part = _clip(s.body_part, 64)
        row.contrast = s.contrast
        row.transfer_syntax = _clip(s.transfer_syntax, 64)
        row.slice_thickness = s.slice_thickness
        row.slice_spacing = s.slice_spacing
        row.pixel_spacing = s.pixel_spacing[0] if s.pixel_spacing else None
        row.rows, row.columns = s.rows, s.columns
        row.n_instances = s.n_instances
        row.z_min, row.z_max = s.z_min, s.z_max
        row.status = s.status
        row.reason = s.reason
        row.detail = s.detail or None
        row.chosen = s.chosen
        row.indexed_at = dt.datetime.now(_UTC)
        session.flush()
        _sync_instances(session, row.id, s)
        if s.chosen:
            chosen_id = row.id
    study.chosen_series_id = chosen_id
    study.eligible = chosen_id is not None
    study.reason = study_reason(series)
    summary.n_touched_studies += 1


def _sync_instances(session: Session, series_id: int, s: SeriesHeader) -> None:
    """Make the series' instance rows match the files it holds now."""
    z_of = dict(zip(s.files, s.z)) if len(s.z) == len(s.files) else {}
    wanted = {
        sop: (path, num, z_of.get(path))
        for sop, path, num in zip(s.sop_instance_uids, s.files, s.instance_numbers)
    }
    have = {
        sop: (iid, path, num, z)
        for iid, sop, path, num, z in session.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.path,
                   Instance.instance_number, Instance.z).where(Instance.series_id == series_id)
        )
    }
    gone = [v[0] for sop, v in have.items() if sop not in wanted]
    if gone:  # e.g. a localizer image now split out of the series
        session.execute(delete(Instance).where(Instance.id.in_(gone)))
    new_rows = []
    for sop, (path, num, z) in wanted.items():
        if sop in have:
            iid, opath, onum, oz = have[sop]
            if (opath, onum, oz) != (path, num, z):
                session.execute(update(Instance).where(Instance.id == iid)
                                .values(path=path, instance_number=num, z=z))
        else:
            new_rows.append({"series_id": series_id, "sop_instance_uid": sop, "path": path,
                             "instance_number": num, "z": z})
    if new_rows:
        # a SOP instance moved here from another series row (re-grouped) must leave it first
        moved = [r["sop_instance_uid"] for r in new_rows]
        for j in range(0, len(moved), 500):
            session.execute(delete(Instance).where(Instance.sop_instance_uid.in_(moved[j : j + 500])))
        session.execute(insert(Instance), new_rows)


# public names for other index front ends (fracture_qi.dicom.pacs indexes PACS sources
# through the same persistence as folders)
known_state = _known
persist_scan = _persist
fill_totals = _totals

__all__ = [
    "IndexSummary",
    "SeriesRef",
    "chosen_series",
    "fill_totals",
    "index_folder",
    "index_sources",
    "known_state",
    "mrn_issuer",
    "patient_key_for",
    "persist_scan",
]
