"""The nurses' worklist: which studies to review, in what order, and who holds which case.

:func:`build_worklist` turns screening results into ``worklist_items``:

* every AI-flagged study (stratum ``flagged``, sampling probability 1);
* a reproducible random sample of AI-negative studies at the audit's rate (stratum
  ``audit_negative``, sampling probability = the rate), so sensitivity can be estimated with
  inverse-probability weights (see :mod:`fracture_qi.adjudication.sampling`);
* of both, a share marked ``double_read``: a second nurse reads them blind to the first.

It is idempotent: running it again after more studies are screened adds only the new ones,
and never reshuffles the sample. One thing moves an item: its screening was superseded (the
study's series gained instances after it was screened and was screened again). The item
then follows the new result with the same reproducible draw (:func:`follow_superseded`);
decisions already made keep the screening the nurse saw.

Nurses take cases with :func:`claim_next`, which leases one (item, read) to one reviewer for
``lease_minutes`` (table ``claims``): others are not offered it while the lease runs; a lease
that runs out (browser closed, nurse went home) frees the case for anyone. A nurse is never
offered the second read of a study she read first. Oldest study first by default.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from fracture_qi.adjudication.sampling import AUDIT_NEGATIVE, DOUBLE_READ, check_rate, is_sampled
from fracture_qi.errors import ConfigError
from fracture_qi.screening.counting import ModelRef, counted_join, resolve_model
from fracture_qi.store.db import session_factory
from fracture_qi.store.schema import (
    AdjudicationEvent,
    Claim,
    Instance,
    Patient,
    Screening,
    Study,
    VertebraFinding,
    WorklistItem,
    screening_is_current,
)

logger = logging.getLogger(__name__)

#: stratum of AI-flagged studies
FLAGGED = "flagged"
#: default audit (worklist) name
DEFAULT_AUDIT = "default"


@dataclass(frozen=True)
class AdjudicationSettings:
    """The manifest's ``adjudication:`` section.

    Attributes
    ----------
    audit_negative_rate
        Share of AI-negative studies sampled for review (0-1).
    double_read_rate
        Share of worklist studies read a second time by another nurse (0-1).
    lease_minutes
        How long a nurse holds a case she opened before others may take it.
    seed
        Optional sampling seed: a different seed draws a different (equally reproducible)
        sample for the same audit name.
    """

    audit_negative_rate: float = 0.1
    double_read_rate: float = 0.2
    lease_minutes: float = 30.0
    seed: int | None = None

    def salt(self, audit: str) -> str:
        """The key the samples of *audit* are drawn with."""
        return audit if self.seed is None else f"{audit}#seed={self.seed}"

    def __post_init__(self) -> None:
        try:
            check_rate(self.audit_negative_rate, "adjudication.audit_negative_rate")
            check_rate(self.double_read_rate, "adjudication.double_read_rate")
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if not (0 < float(self.lease_minutes) <= 24 * 60):
            raise ConfigError(
                f"adjudication.lease_minutes = {self.lease_minutes}: use a number of minutes "
                "from 1 to 1440 (30 is usual)"
            )

    @classmethod
    def from_mapping(cls, section: Any) -> AdjudicationSettings:
        """Build from the manifest's section (a dict or a pydantic model; missing keys default).

        Examples
        --------
        >>> AdjudicationSettings.from_mapping({"audit_negative_rate": 0.05}).double_read_rate
        0.2
        """
        if section is None:
            return cls()
        if hasattr(section, "model_dump"):
            section = section.model_dump()
        if not isinstance(section, Mapping):
            section = vars(section)
        keys = ("audit_negative_rate", "double_read_rate", "lease_minutes", "seed")
        return cls(**{k: section[k] for k in keys if section.get(k) is not None})


@dataclass(frozen=True)
class WorklistSummary:
    """What :func:`build_worklist` found and added."""

    audit: str
    n_screened: int
    n_flagged: int
    n_audit_negative: int
    n_double_read: int
    n_added: int

    def table(self) -> str:
        """A small text table for the command line."""
        return "\n".join([
            f"worklist {self.audit!r}",
            f"  screened studies considered   {self.n_screened:>7}",
            f"  flagged (all reviewed)        {self.n_flagged:>7}",
            f"  AI-negative audit sample      {self.n_audit_negative:>7}",
            f"  of which double read          {self.n_double_read:>7}",
            f"  newly added this run          {self.n_added:>7}",
        ])


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; the suite stores UTC, so attach UTC."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def _counted_ok_screenings(model: ModelRef | None) -> Any:
    """SELECT (study id, study uid, screening id, flagged): each eligible study's counted
    result for *model* (:mod:`fracture_qi.screening.counting`), where it is ``ok``."""
    return (
        select(Study.id, Study.study_instance_uid, Screening.id, Screening.flagged)
        .join(Screening, counted_join(model))
        .where(Screening.status == "ok", Study.eligible.is_(True))
        .order_by(Study.id)
    )


def follow_superseded(engine: Engine, *, audit: str = DEFAULT_AUDIT,
                      settings: AdjudicationSettings | None = None) -> int:
    """Move the items whose screening was superseded onto the current screening.

    The stratum follows the new result as :func:`build_worklist` would draw it (the draw is
    reproducible, so nothing is reshuffled): flagged -> ``flagged`` with probability 1;
    AI-negative and in the audit sample -> ``audit_negative`` at the audit's rate;
    AI-negative (or not assessable) and not in the sample -> ``audit_negative`` with
    probability 1: the study is on the list already, so it is reviewed for certain. No item
    is removed, and adjudication events keep the screening they were made on.

    Returns
    -------
    int
        How many items moved.
    """
    s = settings or AdjudicationSettings()
    old = aliased(Screening)
    stmt = (
        select(WorklistItem.id, WorklistItem.stratum, Study.study_instance_uid, old.id,
               Screening.id, Screening.status, Screening.flagged)
        .join(Study, Study.id == WorklistItem.study_id)
        .join(old, old.id == WorklistItem.screening_id)
        .join(Screening, and_(Screening.series_id == old.series_id,
                              Screening.model_id == old.model_id,
                              Screening.model_version == old.model_version,
                              screening_is_current()))
        .where(WorklistItem.audit_name == audit, Screening.id != old.id)
    )
    moved = 0
    with engine.begin() as conn:
        for item_id, was, uid, old_id, new_id, status, flagged in conn.execute(stmt).all():
            if status == "ok" and flagged:
                stratum, p = FLAGGED, 1.0
            elif is_sampled(s.salt(audit), AUDIT_NEGATIVE, uid, s.audit_negative_rate):
                stratum, p = AUDIT_NEGATIVE, float(s.audit_negative_rate)
            else:
                stratum, p = AUDIT_NEGATIVE, 1.0
            conn.execute(update(WorklistItem).where(WorklistItem.id == item_id).values(
                screening_id=new_id, stratum=stratum, sampling_probability=p))
            logger.info("worklist item %d: screening %d superseded by %d (the series was "
                        "completed); %s -> %s (p=%g)", item_id, old_id, new_id, was, stratum, p)
            moved += 1
    return moved


def build_worklist(
    engine: Engine,
    *,
    audit: str = DEFAULT_AUDIT,
    settings: AdjudicationSettings | None = None,
    model_id: str | None = None,
    model_version: str | None = None,
) -> WorklistSummary:
    """Add the flagged studies and the samples of screened studies to the worklist.

    Parameters
    ----------
    engine
        The suite's database.
    audit
        Worklist name; separate audits keep separate samples.
    settings
        Sampling rates (defaults: 10% of negatives, 20% double read).
    model_id, model_version
        Whose results to use (``model_version`` alone is ignored; with only *model_id*, its
        current version); by default the default model of
        :mod:`fracture_qi.screening.counting`, so the worklist, the export, the audit and
        the dashboard count the same result for every study.

    Returns
    -------
    WorklistSummary
        Counts over the whole worklist after the run, and how many rows this run added.
        Items whose screening was superseded are moved first (:func:`follow_superseded`).
    """
    s = settings or AdjudicationSettings()
    if not audit or len(audit) > 100:
        raise ConfigError(f"audit name {audit!r}: use 1-100 characters, e.g. 'default' or '2026-q3'")
    model = (resolve_model(engine, f"{model_id}:{model_version}" if model_version else model_id)
             if model_id else resolve_model(engine))
    follow_superseded(engine, audit=audit, settings=s)
    with engine.connect() as conn:
        rows = conn.execute(_counted_ok_screenings(model)).all()
        existing = set(conn.execute(
            select(WorklistItem.study_id).where(WorklistItem.audit_name == audit)).scalars())
    new_rows: list[dict[str, Any]] = []
    for study_id, uid, screening_id, flagged in rows:
        if study_id in existing:
            continue  # never re-draw: an item keeps the stratum and probability it got
        if flagged:
            stratum, p = FLAGGED, 1.0
        elif is_sampled(s.salt(audit), AUDIT_NEGATIVE, uid, s.audit_negative_rate):
            stratum, p = AUDIT_NEGATIVE, float(s.audit_negative_rate)
        else:
            continue
        new_rows.append({
            "audit_name": audit, "study_id": study_id, "screening_id": screening_id,
            "stratum": stratum, "sampling_probability": p,
            "double_read": is_sampled(s.salt(audit), DOUBLE_READ, uid, s.double_read_rate),
            "created_at": _utcnow(),
        })
    added = 0
    if new_rows:
        # two builders racing: the unique (audit, study) constraint keeps one row each
        if engine.dialect.name == "sqlite":
            stmt = sqlite_insert(WorklistItem).on_conflict_do_nothing(
                index_elements=["audit_name", "study_id"])
        elif engine.dialect.name == "postgresql":
            stmt = pg_insert(WorklistItem).on_conflict_do_nothing(
                index_elements=["audit_name", "study_id"])
        else:
            stmt = insert(WorklistItem)
        with engine.begin() as conn:
            before = conn.scalar(select(func.count()).select_from(WorklistItem).where(
                WorklistItem.audit_name == audit))
            conn.execute(stmt, new_rows)
            after = conn.scalar(select(func.count()).select_from(WorklistItem).where(
                WorklistItem.audit_name == audit))
        added = int(after or 0) - int(before or 0)
    with engine.connect() as conn:
        counts = dict(conn.execute(
            select(WorklistItem.stratum, func.count()).where(WorklistItem.audit_name == audit)
            .group_by(WorklistItem.stratum)).all())
        n_double = conn.scalar(select(func.count()).select_from(WorklistItem).where(
            WorklistItem.audit_name == audit, WorklistItem.double_read.is_(True)))
    summary = WorklistSummary(
        audit=audit, n_screened=len(rows), n_flagged=int(counts.get(FLAGGED, 0)),
        n_audit_negative=int(counts.get(AUDIT_NEGATIVE, 0)), n_double_read=int(n_double or 0),
        n_added=added,
    )
    logger.info("worklist %s: %d added (%d flagged, %d audit negatives in all)", audit, added,
                summary.n_flagged, summary.n_audit_negative)
    return summary


def refresh_worklist(
    engine: Engine,
    settings: AdjudicationSettings | None = None,
    *,
    audit: str = DEFAULT_AUDIT,
) -> WorklistSummary | None:
    """Put newly screened studies on the worklist, as ``fracture-qi worklist`` would.

    Called after ``fracture-qi screen --manifest``, by the listener, and when the
    adjudication app opens or runs out of cases, so that nurses never see an empty worklist
    because nobody ran a separate command. Sampling probabilities are recorded exactly as by
    :func:`build_worklist` (it is that function). A failure is logged and ``None`` returned:
    the caller's own work (a screening run, the app) goes on.
    """
    try:
        return build_worklist(engine, audit=audit, settings=settings)
    except Exception:  # noqa: BLE001 - refreshing is a courtesy; never break the caller
        logger.warning("could not refresh worklist %r", audit, exc_info=True)
        return None


@dataclass(frozen=True)
class Case:
    """One read of one worklist study that a reviewer may open.

    ``held_until`` is set when the reviewer holds the lease (after :func:`claim_case`).
    """

    worklist_item_id: int
    study_id: int
    screening_id: int | None
    read_number: int
    stratum: str
    sampling_probability: float
    double_read: bool
    study_date: dt.date | None
    held_until: dt.datetime | None = None

    @property
    def key(self) -> tuple[int, int]:
        """(worklist item, read) identifies a case."""
        return (self.worklist_item_id, self.read_number)


def _case_columns() -> tuple[Any, ...]:
    return (WorklistItem.id, WorklistItem.study_id, WorklistItem.screening_id, WorklistItem.stratum,
            WorklistItem.sampling_probability, WorklistItem.double_read, Study.study_date)


def _active_claim_by_other(read_number: int, reviewer: str, now: dt.datetime) -> Any:
    return exists().where(
        Claim.worklist_item_id == WorklistItem.id,
        Claim.read_number == read_number,
        Claim.expires_at > now,
        Claim.reviewer != reviewer,
    )


def _event_exists(read_number: int, reviewer: str | None = None, other_reviewer: bool = False) -> Any:
    cond = [AdjudicationEvent.study_id == WorklistItem.study_id,
            AdjudicationEvent.read_number == read_number]
    if reviewer is not None:
        cond.append(AdjudicationEvent.reviewer != reviewer if other_reviewer
                    else AdjudicationEvent.reviewer == reviewer)
    return exists().where(*cond)


def available_cases(
    engine: Engine,
    reviewer: str,
    *,
    audit: str = DEFAULT_AUDIT,
    limit: int = 10,
    oldest_first: bool = True,
    now: dt.datetime | None = None,
) -> list[Case]:
    """Cases *reviewer* may open now, best first (her own unexpired leases, then by study date).

    Nothing is claimed; see :func:`claim_next`.

    Parameters
    ----------
    engine
        The suite's database.
    reviewer
        The nurse asking.
    audit
        Worklist name.
    limit
        At most this many cases.
    oldest_first
        Order by study date ascending (default) or descending.
    now
        The current time (tests); UTC now by default.
    """
    now = now or _utcnow()
    date_order = Study.study_date.asc() if oldest_first else Study.study_date.desc()
    base = select(*_case_columns()).join(Study, Study.id == WorklistItem.study_id).where(
        WorklistItem.audit_name == audit)
    first = base.where(
        ~_event_exists(1), ~_active_claim_by_other(1, reviewer, now),
    ).order_by(Study.study_date.is_(None), date_order, WorklistItem.id).limit(limit)
    second = base.where(
        WorklistItem.double_read.is_(True),
        _event_exists(1, reviewer, other_reviewer=True),
        ~_event_exists(1, reviewer),
        ~_event_exists(2),
        ~_active_claim_by_other(2, reviewer, now),
    ).order_by(Study.study_date.is_(None), date_order, WorklistItem.id).limit(limit)
    with engine.connect() as conn:
        held = {(r.worklist_item_id, r.read_number): as_utc(r.expires_at) for r in conn.execute(
            select(Claim.worklist_item_id, Claim.read_number, Claim.expires_at).where(
                Claim.reviewer == reviewer, Claim.expires_at > now))}
        cases = [
            Case(r[0], r[1], r[2], read, r[3], float(r[4]), bool(r[5]), r[6],
                 held.get((r[0], read)))
            for read, q in ((1, first), (2, second)) for r in conn.execute(q)
        ]
    far = dt.date.max if oldest_first else dt.date.min

    def order(c: Case) -> tuple[Any, ...]:
        d = c.study_date or far
        return (c.held_until is None, d if oldest_first else -d.toordinal(), c.worklist_item_id,
                c.read_number)

    return sorted(cases, key=order)[:limit]


def claim_case(
    engine: Engine,
    case: Case,
    reviewer: str,
    *,
    lease_minutes: float = 30.0,
    now: dt.datetime | None = None,
) -> Case | None:
    """Lease *case* to *reviewer*; return it with ``held_until`` set, or ``None`` if taken.

    Atomic: of two nurses claiming the same case at once, exactly one gets it. A claim whose
    lease has run out is taken over; the reviewer's own claim is renewed.
    """
    now = now or _utcnow()
    until = now + dt.timedelta(minutes=float(lease_minutes))
    got = False
    try:
        with engine.begin() as conn:
            conn.execute(insert(Claim).values(
                worklist_item_id=case.worklist_item_id, read_number=case.read_number,
                reviewer=reviewer, claimed_at=now, expires_at=until))
            got = True
    except IntegrityError:
        with engine.begin() as conn:
            res = conn.execute(
                update(Claim)
                .where(Claim.worklist_item_id == case.worklist_item_id,
                       Claim.read_number == case.read_number,
                       or_(Claim.expires_at <= now, Claim.reviewer == reviewer))
                .values(reviewer=reviewer, claimed_at=now, expires_at=until))
            got = res.rowcount == 1
    if not got:
        return None
    # the case may have been decided between listing and claiming: give it back
    with engine.connect() as conn:
        done = conn.scalar(select(func.count()).select_from(AdjudicationEvent).where(
            AdjudicationEvent.study_id == case.study_id,
            AdjudicationEvent.read_number == case.read_number))
        own_other = conn.scalar(select(func.count()).select_from(AdjudicationEvent).where(
            AdjudicationEvent.study_id == case.study_id,
            AdjudicationEvent.read_number != case.read_number,
            AdjudicationEvent.reviewer == reviewer))
    if done or own_other:
        release_claim(engine, case, reviewer)
        return None
    return Case(**{**case.__dict__, "held_until": until})


def claim_next(
    engine: Engine,
    reviewer: str,
    *,
    audit: str = DEFAULT_AUDIT,
    lease_minutes: float = 30.0,
    exclude: Iterable[tuple[int, int]] = (),
    prefer: Case | None = None,
    now: dt.datetime | None = None,
) -> Case | None:
    """Claim the best case for *reviewer* (see :func:`available_cases`), or ``None`` when done.

    Parameters
    ----------
    exclude
        Case keys ``(worklist_item_id, read_number)`` to pass over (e.g. one just skipped).
    prefer
        Try this case first (the one the app prefetched), if it is still available.
    """
    skip = set(exclude)
    if prefer is not None and prefer.key not in skip:
        got = claim_case(engine, prefer, reviewer, lease_minutes=lease_minutes, now=now)
        if got is not None:
            return got
        skip.add(prefer.key)
    for _ in range(5):  # a few rounds, in case others keep taking the head of the queue
        cands = [c for c in available_cases(engine, reviewer, audit=audit, limit=len(skip) + 10,
                                            now=now) if c.key not in skip]
        if not cands:
            return None
        for c in cands:
            got = claim_case(engine, c, reviewer, lease_minutes=lease_minutes, now=now)
            if got is not None:
                return got
            skip.add(c.key)
    return None


def release_claim(engine: Engine, case: Case, reviewer: str) -> None:
    """Give a case back (skip, or after saving) so the lease does not block anyone."""
    with engine.begin() as conn:
        conn.execute(delete(Claim).where(
            Claim.worklist_item_id == case.worklist_item_id,
            Claim.read_number == case.read_number, Claim.reviewer == reviewer))


@dataclass(frozen=True)
class Progress:
    """How far an audit's worklist has got."""

    n_items: int
    n_reads_needed: int
    n_reads_done: int

    @property
    def remaining(self) -> int:
        return max(self.n_reads_needed - self.n_reads_done, 0)


def worklist_progress(engine: Engine, audit: str = DEFAULT_AUDIT) -> Progress:
    """Reads needed (one per item, two per double-read item) and reads saved."""
    in_audit = and_(WorklistItem.study_id == AdjudicationEvent.study_id,
                    WorklistItem.audit_name == audit)
    with engine.connect() as conn:
        n_items = conn.scalar(select(func.count()).select_from(WorklistItem).where(
            WorklistItem.audit_name == audit)) or 0
        n_double = conn.scalar(select(func.count()).select_from(WorklistItem).where(
            WorklistItem.audit_name == audit, WorklistItem.double_read.is_(True))) or 0
        done = 0
        for read, extra in ((1, []), (2, [WorklistItem.double_read.is_(True)])):
            done += conn.scalar(
                select(func.count(func.distinct(AdjudicationEvent.study_id)))
                .select_from(AdjudicationEvent).join(WorklistItem, in_audit)
                .where(AdjudicationEvent.read_number == read, *extra)) or 0
    return Progress(int(n_items), int(n_items) + int(n_double), int(done))


@dataclass
class CaseRecord:
    """Everything the app shows for one case (patient identifiers included: nurse view only)."""

    case: Case
    patient_name: str | None
    nhs_number: str | None
    mrn: str | None
    birth_date: dt.date | None
    sex: str | None
    referral_source: str | None
    study_date: dt.date | None
    accession_number: str | None
    description: str | None
    site: str | None
    age_years: float | None
    flagged: bool
    max_grade: int
    score: float | None
    model: str | None
    l1_hu: float | None
    low_density: bool | None
    keyimage_path: str | None
    findings: list[dict[str, Any]] = field(default_factory=list)
    instance_paths: list[str] = field(default_factory=list)
    #: the pseudonymous key (for the access log; never shown)
    patient_key: str | None = None
    #: the patient's FLS records, oldest referral first (see :func:`fls_history`)
    fls_history: list[dict[str, Any]] = field(default_factory=list)


#: FLS record fields the form shows beside "was it already known?"
FLS_HISTORY_FIELDS = ("record_id", "known_to_fls", "on_therapy_before", "reported_by_radiology",
                      "referral_date", "assessment_date", "dxa_date", "dxa_t_score",
                      "therapy_recommended", "drug", "therapy_start_date", "adherent_52w",
                      "death_date", "index_fracture_site", "study_id")


def fls_history(session: Any, patient_key: str | None) -> list[dict[str, Any]]:
    """The patient's FLS records (imported with ``fracture-qi import-fls``), oldest first."""
    from fracture_qi.store.schema import FlsEpisode

    if not patient_key:
        return []
    rows = session.scalars(select(FlsEpisode).where(FlsEpisode.patient_key == patient_key)
                           .order_by(FlsEpisode.referral_date.is_(None),
                                     FlsEpisode.referral_date, FlsEpisode.id))
    return [{k: getattr(r, k) for k in FLS_HISTORY_FIELDS} for r in rows]


def load_case_record(engine: Engine, case: Case) -> CaseRecord:
    """Read the study, patient, AI result, findings and image paths of *case*."""
    with session_factory(engine)() as s:
        study = s.get(Study, case.study_id)
        if study is None:
            raise ConfigError(f"study {case.study_id} is on the worklist but not in the database")
        patient = s.get(Patient, study.patient_id) if study.patient_id else None
        scr = s.get(Screening, case.screening_id) if case.screening_id else None
        findings = []
        series_id = scr.series_id if scr else study.chosen_series_id
        if scr is not None:
            for f in s.scalars(select(VertebraFinding).where(
                    VertebraFinding.screening_id == scr.id).order_by(VertebraFinding.id)):
                findings.append({
                    "level": f.level, "genant_grade": f.genant_grade, "morph_type": f.morph_type,
                    "ha_mm": f.ha_mm, "hm_mm": f.hm_mm, "hp_mm": f.hp_mm, "score": f.score,
                    "geometry": f.geometry or {},
                })
        paths: list[str] = []
        if series_id is not None:
            paths = list(s.scalars(select(Instance.path).where(Instance.series_id == series_id)
                                   .order_by(Instance.z, Instance.instance_number, Instance.id)))
        return CaseRecord(
            case=case,
            patient_name=patient.name if patient else None,
            nhs_number=patient.nhs_number if patient else None,
            mrn=patient.mrn if patient else None,
            birth_date=patient.birth_date if patient else None,
            sex=patient.sex if patient else None,
            referral_source=study.referral_source,
            study_date=study.study_date,
            accession_number=study.accession_number,
            description=study.description,
            site=study.site,
            age_years=study.age_years,
            flagged=bool(scr.flagged) if scr else False,
            max_grade=int(scr.max_grade) if scr else 0,
            score=scr.score if scr else None,
            model=f"{scr.model_id} {scr.model_version}" if scr else None,
            l1_hu=scr.l1_hu if scr else None,
            low_density=scr.low_density if scr else None,
            keyimage_path=scr.keyimage_path if scr else None,
            findings=findings,
            instance_paths=paths,
            patient_key=patient.patient_key if patient else None,
            fls_history=fls_history(s, patient.patient_key if patient else None),
        )
