"""SQLAlchemy models for the fracture-qi data model.

Identifiers a nurse needs to act (name, NHS number, MRN, birth date) live only in
``patients``; everything published joins on the pseudonymous ``patient_key`` and is
scanned for identifiers before it leaves the building.

``adjudication_events`` is append-only: corrections are new rows that point at the row
they supersede, and the database itself refuses UPDATE, DELETE, TRUNCATE and any insert that
would replace an existing event (SQLite ``REPLACE``, upserts): triggers created in the
migrations, see :mod:`fracture_qi.store.migrations`. ``access_events`` (the access log) is
append-only in the same way.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    exists,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC (stored naive-UTC on SQLite, timestamptz on PostgreSQL)."""
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is what Alembic migrates."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


UTC = DateTime(timezone=True)


class Patient(Base):
    """A person, keyed by an HMAC pseudonym; identifiers are for nurse-facing views only."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    nhs_number: Mapped[str | None] = mapped_column(String(16))
    mrn: Mapped[str | None] = mapped_column(String(64))
    # namespace of the MRN key ("MRN:<mrn_issuer>"): IssuerOfPatientID, else the site
    mrn_issuer: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(1))
    created_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """One imaging study (StudyInstanceUID) and its eligibility for screening."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[dt.date | None] = mapped_column(Date, index=True)
    description: Mapped[str | None] = mapped_column(String(200))
    site: Mapped[str | None] = mapped_column(String(200), index=True)
    referral_source: Mapped[str | None] = mapped_column(String(32))
    age_years: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(100))
    eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(String(40))
    chosen_series_id: Mapped[int | None] = mapped_column(
        ForeignKey("series.id", use_alter=True, name="fk_studies_chosen_series")
    )
    indexed_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)

    patient: Mapped[Patient | None] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(
        back_populates="study", foreign_keys="Series.study_id"
    )


class Series(Base):
    """One series with the header facts the chooser and the screener need."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    path: Mapped[str | None] = mapped_column(Text)  # folder (or PACS URL) it came from
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(200))
    manufacturer: Mapped[str | None] = mapped_column(String(100))
    model_name: Mapped[str | None] = mapped_column(String(100))
    station_name: Mapped[str | None] = mapped_column(String(100))
    kernel: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(200))
    body_part: Mapped[str | None] = mapped_column(String(64))
    contrast: Mapped[bool | None] = mapped_column(Boolean)
    transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    slice_spacing: Mapped[float | None] = mapped_column(Float)
    pixel_spacing: Mapped[float | None] = mapped_column(Float)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    z_min: Mapped[float | None] = mapped_column(Float)
    z_max: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | excluded | error
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    indexed_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series", foreign_keys=[study_id])
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored image (file path or PACS reference) of a series."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    z: Mapped[float | None] = mapped_column(Float)

    series: Mapped[Series] = relationship(back_populates="instances")


class IndexProblem(Base):
    """A file the indexer could not use (not DICOM, truncated...) with its reason code."""

    __tablename__ = "index_problems"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    seen_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    __table_args__ = (UniqueConstraint("path", "reason", name="uq_index_problem"),)


class ScreeningRun(Base):
    """One invocation of the screening engine: model, parameters, host and counts."""

    __tablename__ = "screening_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[str | None] = mapped_column(String(32))
    host: Mapped[str | None] = mapped_column(String(100))
    code_version: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTC)
    # running | finished | interrupted (Ctrl-C, or found dead by a later run) | failed
    status: Mapped[str] = mapped_column(String(16), default="running")
    n_ok: Mapped[int] = mapped_column(Integer, default=0)
    n_error: Mapped[int] = mapped_column(Integer, default=0)
    # liveness: the process id on ``host`` and the last time the run said it was working
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTC)


class Screening(Base):
    """The result of one model version on one series, for the instances the series held.

    Once per (series, model, version) and content: when the series gains instances after it
    was screened (the rest of a study arriving late), it is screened again and the new row
    ``supersedes`` the old one, which is kept (revision 0008). Only a screening that nothing
    supersedes is *current* (:func:`screening_is_current`); rows form one chain per
    (series, model, version): one first screening, each superseded at most once.
    """

    __tablename__ = "screenings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("screening_runs.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16))  # ok | error
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    score: Mapped[float | None] = mapped_column(Float)
    max_grade: Mapped[int] = mapped_column(Integer, default=0)
    n_vertebrae: Mapped[int] = mapped_column(Integer, default=0)
    l1_hu: Mapped[float | None] = mapped_column(Float)
    bone_density_level: Mapped[str | None] = mapped_column(String(4))
    low_density: Mapped[bool | None] = mapped_column(Boolean)
    keyimage_path: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    # instances of the series the model was given (the index's count when the job was made;
    # None before revision 0008): a series that holds more now is screened again
    n_instances: Mapped[int | None] = mapped_column(Integer)
    # the earlier screening of the same series and model version this one replaces
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("screenings.id"))

    findings: Mapped[list[VertebraFinding]] = relationship(back_populates="screening")
    __table_args__ = (
        # one first screening per (series, model, version); later ones supersede it
        Index(
            "uq_screening_once",
            "series_id",
            "model_id",
            "model_version",
            unique=True,
            sqlite_where=supersedes_id.is_(None),
            postgresql_where=supersedes_id.is_(None),
        ),
        UniqueConstraint("supersedes_id", name="uq_screening_supersedes_once"),
    )


def screening_is_current() -> Any:
    """SQL condition on :class:`Screening`: no later screening supersedes this one.

    The current screening of a series by a model version is the one that counts
    (:mod:`fracture_qi.screening.counting`), is sent to the PACS and is listed for nurses;
    superseded ones are kept for the record.
    """
    newer = aliased(Screening)
    return ~exists().where(newer.supersedes_id == Screening.id)


class VertebraFinding(Base):
    """One assessed vertebral body: level, heights (mm), Genant grade and type."""

    __tablename__ = "vertebra_findings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    screening_id: Mapped[int] = mapped_column(ForeignKey("screenings.id"), index=True)
    level: Mapped[str | None] = mapped_column(String(4))  # T4..L5, None when unsure
    genant_grade: Mapped[int] = mapped_column(Integer, default=0)
    morph_type: Mapped[str] = mapped_column(String(12), default="normal")
    ha_mm: Mapped[float | None] = mapped_column(Float)
    hm_mm: Mapped[float | None] = mapped_column(Float)
    hp_mm: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    trabecular_hu: Mapped[float | None] = mapped_column(Float)
    geometry: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # outline/centre for overlays

    screening: Mapped[Screening] = relationship(back_populates="findings")


class WorklistItem(Base):
    """A study put before nurses: flagged, audit sample of negatives, or double read."""

    __tablename__ = "worklist_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    audit_name: Mapped[str] = mapped_column(String(100), default="default")
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    screening_id: Mapped[int | None] = mapped_column(ForeignKey("screenings.id"))
    stratum: Mapped[str] = mapped_column(String(24))  # flagged | audit_negative
    sampling_probability: Mapped[float] = mapped_column(Float, default=1.0)
    double_read: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    __table_args__ = (UniqueConstraint("audit_name", "study_id", name="uq_worklist_study"),)


class Claim(Base):
    """A lease on a worklist item by one reviewer for one read; leases expire."""

    __tablename__ = "claims"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worklist_item_id: Mapped[int] = mapped_column(ForeignKey("worklist_items.id"), index=True)
    read_number: Mapped[int] = mapped_column(Integer, default=1)
    reviewer: Mapped[str] = mapped_column(String(100))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTC)
    __table_args__ = (UniqueConstraint("worklist_item_id", "read_number", name="uq_claim_read"),)


class AdjudicationEvent(Base):
    """A nurse's decision on a study: append-only; corrections supersede, never update."""

    __tablename__ = "adjudication_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_uid: Mapped[str] = mapped_column(String(36), unique=True)  # idempotency key
    worklist_item_id: Mapped[int | None] = mapped_column(ForeignKey("worklist_items.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    screening_id: Mapped[int | None] = mapped_column(ForeignKey("screenings.id"))
    read_number: Mapped[int] = mapped_column(Integer, default=1)
    reviewer: Mapped[str] = mapped_column(String(100))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    app_version: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(24))
    not_assessable_reason: Mapped[str | None] = mapped_column(Text)
    levels: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{"level","grade"}]
    previously_known: Mapped[str | None] = mapped_column(String(24))
    action: Mapped[str | None] = mapped_column(String(24))
    action_reason: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("adjudication_events.id"))
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    # True: made without the AI's result on screen (an audit-sample case's first answer);
    # False: changed after the nurse asked to see it; None: the AI's result is part of the
    # task (flagged studies), or saved before revision 0007
    blind: Mapped[bool | None] = mapped_column(Boolean)
    __table_args__ = (
        # a second save of the same read without superseding is a conflict, not a new row
        Index(
            "uq_event_first_read",
            "study_id",
            "read_number",
            unique=True,
            sqlite_where=supersedes_id.is_(None),
            postgresql_where=supersedes_id.is_(None),
        ),
        UniqueConstraint("supersedes_id", name="uq_event_supersedes_once"),
    )


class FlsEpisode(Base):
    """An FLS record linked to a patient (and, where known, the index CT study)."""

    __tablename__ = "fls_episodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(100))
    record_id: Mapped[str] = mapped_column(String(64))
    patient_key: Mapped[str] = mapped_column(String(64), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    reported_by_radiology: Mapped[bool | None] = mapped_column(Boolean)
    known_to_fls: Mapped[bool | None] = mapped_column(Boolean)
    on_therapy_before: Mapped[bool | None] = mapped_column(Boolean)
    referral_date: Mapped[dt.date | None] = mapped_column(Date)
    assessment_date: Mapped[dt.date | None] = mapped_column(Date)
    dxa_date: Mapped[dt.date | None] = mapped_column(Date)
    dxa_t_score: Mapped[float | None] = mapped_column(Float)
    therapy_recommended: Mapped[bool | None] = mapped_column(Boolean)
    therapy_recommended_date: Mapped[dt.date | None] = mapped_column(Date)
    drug: Mapped[str | None] = mapped_column(String(64))
    therapy_start_date: Mapped[dt.date | None] = mapped_column(Date)
    adherent_52w: Mapped[bool | None] = mapped_column(Boolean)
    death_date: Mapped[dt.date | None] = mapped_column(Date)
    # FLS-DB KPI fields (revision 0006)
    index_fracture_site: Mapped[str | None] = mapped_column(String(16))
    falls_assessment_date: Mapped[dt.date | None] = mapped_column(Date)
    strength_balance_date: Mapped[dt.date | None] = mapped_column(Date)
    followup_date: Mapped[dt.date | None] = mapped_column(Date)
    problems: Mapped[list[Any]] = mapped_column(JSON, default=list)  # impossible dates etc.
    imported_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    __table_args__ = (UniqueConstraint("source", "record_id", name="uq_fls_record"),)


class AuditRun(Base):
    """One papermill audit run: parameters, code and input fingerprints, outcome."""

    __tablename__ = "audit_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    out_dir: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code_version: Mapped[str | None] = mapped_column(String(64))
    tree_clean: Mapped[bool | None] = mapped_column(Boolean)
    input_hashes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    db_state_hash: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTC)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|ok|failed
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the run's provenance.json (revision 0006): a later edit is detected
    provenance_sha256: Mapped[str | None] = mapped_column(String(64))


class ReceivedStudy(Base):
    """A study arriving at ``fracture-qi listen``: when it came, whether it was processed.

    ``state`` is ``receiving`` (instances still arriving), ``complete`` (quiet for the
    listener's ``quiet_seconds``: to be indexed, screened and sent), ``processed`` or
    ``failed`` (processing failed ``attempts`` times; ``last_error`` says why). A study that
    receives new instances after it was processed goes back to ``receiving``.
    """

    __tablename__ = "received_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    origin: Mapped[str] = mapped_column(String(16), default="dimse")  # dimse | orthanc
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    n_processed: Mapped[int] = mapped_column(Integer, default=0)  # instances at last processing
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTC)
    last_error: Mapped[str | None] = mapped_column(Text)


class ReceivedInstance(Base):
    """One instance stored by the listener (its file is written before this row commits)."""

    __tablename__ = "received_instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)


class ServiceState(Base):
    """Small durable facts of a long-running service (the Orthanc changes cursor...)."""

    __tablename__ = "service_state"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)


class ResultObject(Base):
    """A DICOM object made from a screening (SR, key image, SEG) and where it was sent.

    UIDs are derived from the screening, so a retry after an interrupted send stores the
    same instance again rather than a second copy. ``status``: ``pending`` (made, not yet
    acknowledged), ``sent`` or ``failed`` (``detail`` says why; retried on the next run).
    """

    __tablename__ = "result_objects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    screening_id: Mapped[int] = mapped_column(ForeignKey("screenings.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # sr | keyimage | seg
    destination: Mapped[str] = mapped_column(String(100))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    detail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTC)
    __table_args__ = (
        UniqueConstraint("screening_id", "kind", "destination", name="uq_result_object_once"),
    )


class User(Base):
    """A person who signs in to ``fracture-qi serve``: one role, an argon2id password hash.

    ``password_hash`` is empty for accounts the hospital's sign-on vouches for. Sessions
    signed in before ``sessions_valid_after`` (set when the account is disabled or its
    password changes) are refused.
    """

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # nurse | qi_lead | auditor | admin
    password_hash: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(UTC)
    sessions_valid_after: Mapped[dt.datetime | None] = mapped_column(UTC)


class AccessEvent(Base):
    """One entry of the access log: who did what to which patient's record, when, from where.

    Append-only like ``adjudication_events``: the database refuses UPDATE, DELETE, TRUNCATE
    and replacing inserts (revision 0007). ``study_id`` and ``patient_key`` (the pseudonym)
    identify the record without copying identifiers into the log.
    """

    __tablename__ = "access_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTC, default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    study_id: Mapped[int | None] = mapped_column(Integer, index=True)
    patient_key: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    client: Mapped[str | None] = mapped_column(String(100))
    via: Mapped[str | None] = mapped_column(String(40))
