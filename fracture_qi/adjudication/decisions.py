"""Nurse decisions as append-only events: validated on the server, never updated, never lost.

Every save is one INSERT into ``adjudication_events`` with:

* an ``event_uid`` (UUID) chosen by the client before the first attempt: saving the same
  decision again (a retry after a dropped connection, a double click) returns the stored
  event instead of adding a second one;
* the reviewer, the UTC time and the app version;
* the decision itself, validated here field by field with pydantic. The browser is not
  trusted: in Voila any client can set any widget value over the comm channel, so the
  form's widget state is only a suggestion until :class:`DecisionInput` accepts it.

A correction is a new event whose ``supersedes_id`` points at the event it replaces; the
database refuses UPDATE and DELETE on the table (triggers from the store migrations). Two
nurses saving the same read of the same study: the unique index on (study, read) for events
that supersede nothing lets exactly one in; the other gets :class:`~fracture_qi.errors.ConflictError`
and nothing is overwritten. :func:`latest_decisions` gives the decision that counts for each
(study, read): the end of its correction chain.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import unicodedata
import uuid
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine, exists, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from fracture_qi import __version__
from fracture_qi.errors import ConflictError, StoreError, ValidationError
from fracture_qi.screening.types import LEVELS
from fracture_qi.store.db import session_factory
from fracture_qi.store.schema import AdjudicationEvent, Study, WorklistItem

if TYPE_CHECKING:  # pandas is imported where used: savers start faster without it
    import pandas as pd

logger = logging.getLogger(__name__)

#: the version recorded on events saved by this code
APP_VERSION = f"fracture-qi {__version__}"
#: longest free text kept in a note or a reason (characters)
MAX_TEXT = 2000
#: how many times a save is retried when the database is busy before the nurse is told
SAVE_ATTEMPTS = 6
#: levels a nurse may record: the reference screener's T1-L5
ALLOWED_LEVELS: tuple[str, ...] = LEVELS


class Decision(str, Enum):
    """The nurse's verdict on the AI finding (or on an audit-sample study)."""

    CONFIRMED = "confirmed"
    """At least one osteoporotic vertebral fracture is present (levels and grades recorded)."""
    NOT_CONFIRMED = "not_confirmed"
    """No vertebral fracture: the AI flag (if any) is a false positive."""
    INDETERMINATE = "indeterminate"
    """Images assessable but the nurse cannot decide (e.g. needs a radiologist)."""
    NOT_ASSESSABLE = "not_assessable"
    """Images cannot be assessed (artefact, spine not in view...); a reason is required."""


class PreviouslyKnown(str, Enum):
    """Whether the fracture was already known before this screen found it."""

    NONE = "none"
    """New: neither reported by radiology nor known to the FLS."""
    REPORTED = "reported"
    """Mentioned in the radiology report of this or an earlier study."""
    KNOWN_FLS = "known_fls"
    """The patient is already under the Fracture Liaison Service."""


class Action(str, Enum):
    """What the nurse does next for a confirmed fracture."""

    REFER_FLS = "refer_fls"
    """Refer to the FLS clinic for assessment."""
    ON_THERAPY = "on_therapy"
    """Already on bone-protection therapy: no referral needed."""
    NOT_APPROPRIATE = "not_appropriate"
    """Referral not appropriate (e.g. palliative care); a reason is required."""
    DECEASED = "deceased"
    """The patient has died."""


def _clean_text(value: str | None, field: str) -> str | None:
    """Strip, normalise (NFC) and refuse control characters in free text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text")
    text = unicodedata.normalize("NFC", value).strip()
    bad = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"]
    if bad:
        raise ValueError(
            f"{field} contains control characters ({bad[0]!r}); remove them and type the text again"
        )
    if len(text) > MAX_TEXT:
        raise ValueError(f"{field} is {len(text)} characters; shorten it to {MAX_TEXT} or fewer")
    return text or None


class LevelGrade(BaseModel):
    """One fractured vertebra: its level and Genant grade (1 mild, 2 moderate, 3 severe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str
    grade: Annotated[int, Field(strict=True, ge=1, le=3)]

    @field_validator("level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        v = str(v).strip().upper()
        if v not in ALLOWED_LEVELS:
            raise ValueError(f"level {v!r} is not one of {', '.join(ALLOWED_LEVELS)}")
        return v


class DecisionInput(BaseModel):
    """A decision as submitted by a form, validated before anything touches the database.

    Parameters
    ----------
    study_id
        ``studies.id`` of the study decided on.
    read_number
        1 for the first read, 2 for the blind second read of a double-read case.
    decision
        See :class:`Decision`.
    levels
        The fractured vertebrae (required and non-empty when confirmed, empty otherwise).
    previously_known, action
        Required when confirmed.
    not_assessable_reason, action_reason
        Required with ``not_assessable`` and ``not_appropriate`` respectively.
    note
        Free text.
    worklist_item_id, screening_id
        The worklist row and the AI result the nurse was shown, where there is one.
    event_uid
        Idempotency key; a fresh UUID4 by default. Keep it for retries of the same save.

    Examples
    --------
    >>> d = DecisionInput(study_id=1, decision="confirmed", levels=[{"level": "l1", "grade": 2}],
    ...                   previously_known="none", action="refer_fls")
    >>> d.levels[0].level, d.decision.value
    ('L1', 'confirmed')
    >>> DecisionInput(study_id=1, decision="confirmed")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for DecisionInput
    ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_TEXT)

    study_id: Annotated[int, Field(strict=True, gt=0)]
    read_number: Annotated[int, Field(strict=True, ge=1, le=2)] = 1
    decision: Decision
    levels: list[LevelGrade] = Field(default_factory=list, max_length=len(ALLOWED_LEVELS))
    previously_known: PreviouslyKnown | None = None
    action: Action | None = None
    not_assessable_reason: str | None = None
    action_reason: str | None = None
    note: str | None = None
    worklist_item_id: Annotated[int, Field(strict=True, gt=0)] | None = None
    screening_id: Annotated[int, Field(strict=True, gt=0)] | None = None
    event_uid: str = Field(default_factory=lambda: str(uuid.uuid4()))

    @field_validator("not_assessable_reason", "action_reason", "note", mode="before")
    @classmethod
    def _text(cls, v: Any, info: pydantic.ValidationInfo) -> str | None:
        return _clean_text(v, info.field_name or "text")

    @field_validator("event_uid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        try:
            return str(uuid.UUID(str(v)))
        except ValueError as e:
            raise ValueError(f"event_uid {v!r} is not a UUID") from e

    @model_validator(mode="after")
    def _consistent(self) -> DecisionInput:
        problems = _cross_field_problems(
            self.decision.value, [lg.level for lg in self.levels],
            self.previously_known, self.action.value if self.action else None,
            self.not_assessable_reason, self.action_reason)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _cross_field_problems(decision: str | None, levels: list[str], previously_known: Any,
                          action: str | None, not_assessable_reason: Any,
                          action_reason: Any) -> list[str]:
    """Rules between fields, one line per problem naming the field and the fix."""
    problems: list[str] = []
    if len(set(levels)) != len(levels):
        dup = sorted({lv for lv in levels if levels.count(lv) > 1})
        problems.append(f"levels: {', '.join(dup)} listed twice (keep one row per vertebra)")
    if decision == Decision.CONFIRMED.value:
        if not levels:
            problems.append("levels: a confirmed fracture needs at least one level and grade")
        if not previously_known:
            problems.append("previously_known: choose none, reported or known_fls")
        if not action:
            problems.append("action: choose what happens next for a confirmed fracture")
    elif levels:
        problems.append(
            f"levels: only a confirmed fracture has levels; remove them or choose confirmed "
            f"(decision is {decision})"
        )
    if decision == Decision.NOT_ASSESSABLE.value and not not_assessable_reason:
        problems.append("not_assessable_reason: say why the images cannot be assessed")
    if decision != Decision.NOT_ASSESSABLE.value and not_assessable_reason:
        problems.append("not_assessable_reason: only for not_assessable; clear it")
    if action == Action.NOT_APPROPRIATE.value and not action_reason:
        problems.append("action_reason: say why a referral is not appropriate")
    return problems


def validate_decision(data: dict[str, Any] | DecisionInput) -> DecisionInput:
    """Validate raw form data into a :class:`DecisionInput`.

    Raises
    ------
    ValidationError
        One line per problem, each naming the field and the fix.

    Examples
    --------
    >>> validate_decision({"study_id": 3, "decision": "not_confirmed"}).decision.value
    'not_confirmed'
    >>> validate_decision({"study_id": 3, "decision": "maybe"})
    Traceback (most recent call last):
    ...
    fracture_qi.errors.ValidationError: decision form: 1 problem(s): decision: ...
    """
    if isinstance(data, DecisionInput):
        return data
    try:
        return DecisionInput.model_validate(data)
    except pydantic.ValidationError as e:
        problems: list[str] = []
        for err in e.errors(include_url=False):
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]:
                problems.append(f"{'.'.join(str(p) for p in err['loc'])}: {msg}")
            else:  # cross-field checks already name their fields, one per "; "
                problems.extend(msg.split("; "))
        if isinstance(data, dict) and all(err["loc"] for err in e.errors()):
            # field errors stop pydantic before the cross-field rules; run them on the raw
            # values too so the nurse sees every problem at once
            raw_levels = data.get("levels") if isinstance(data.get("levels"), list) else []
            levels = [str(lv.get("level", "")).strip().upper() if isinstance(lv, dict) else ""
                      for lv in raw_levels]
            seen = {p.split(":", 1)[0].split(".", 1)[0] for p in problems}
            extra = _cross_field_problems(
                str(data.get("decision")), levels, data.get("previously_known"),
                data.get("action"), data.get("not_assessable_reason"), data.get("action_reason"))
            problems.extend(p for p in extra if p.split(":", 1)[0] not in seen)
        raise ValidationError(problems, source="decision form") from e


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _check_reviewer(reviewer: str) -> str:
    r = _clean_text(reviewer, "reviewer")
    if not r or len(r) > 100 or "\n" in r:
        raise ValidationError(
            [f"reviewer: {reviewer!r} is not a usable reviewer ID; give 1-100 characters "
             "on one line (e.g. the nurse's login)"],
            source="decision",
        )
    return r


def _same_content(ev: AdjudicationEvent, d: DecisionInput, reviewer: str,
                  supersedes: int | None) -> bool:
    """Whether a stored event is the same save as *d* (an idempotent retry)."""
    return (
        ev.study_id == d.study_id
        and ev.read_number == d.read_number
        and ev.reviewer == reviewer
        and ev.decision == d.decision.value
        and ev.supersedes_id == supersedes
        and list(ev.levels or []) == [lg.model_dump() for lg in d.levels]
        and ev.note == d.note
    )


def _insert(session: Session, d: DecisionInput, reviewer: str, app_version: str,
            supersedes: int | None, simulated: bool,
            recorded_at: dt.datetime | None = None,
            blind: bool | None = None) -> AdjudicationEvent:
    """Checks that need the database, then the INSERT; runs inside one transaction."""
    prior = session.scalar(select(AdjudicationEvent).where(AdjudicationEvent.event_uid == d.event_uid))
    if prior is not None:
        if _same_content(prior, d, reviewer, supersedes):
            return prior
        raise ConflictError(
            f"event_uid {d.event_uid} was already used for a different decision (event "
            f"{prior.id}). Fix: give each new decision a new event_uid", prior.id,
        )
    if session.get(Study, d.study_id) is None:
        raise ValidationError([f"study_id: no study with id {d.study_id}; reload the worklist"],
                              source="decision")
    if d.worklist_item_id is not None:
        item = session.get(WorklistItem, d.worklist_item_id)
        if item is None or item.study_id != d.study_id:
            raise ValidationError(
                [f"worklist_item_id: item {d.worklist_item_id} is not on the worklist for "
                 f"study {d.study_id}; reload the worklist"], source="decision")
        if d.read_number == 2 and not item.double_read:
            raise ValidationError(
                [f"read_number: study {d.study_id} is not in the double-read sample; save it "
                 "as read 1"], source="decision")
    # a second read is blind and by someone else: the same nurse never reads a case twice
    other_read = 2 if d.read_number == 1 else 1
    own_other = session.scalar(
        select(AdjudicationEvent.id).where(
            AdjudicationEvent.study_id == d.study_id,
            AdjudicationEvent.read_number == other_read,
            AdjudicationEvent.reviewer == reviewer,
        ).limit(1)
    )
    if own_other is not None:
        raise ValidationError(
            [f"read_number: {reviewer} already made read {other_read} of study {d.study_id}; "
             "a double read needs a second nurse"], source="decision")
    if supersedes is not None:
        target = session.get(AdjudicationEvent, supersedes)
        if target is None or target.study_id != d.study_id or target.read_number != d.read_number:
            raise ValidationError(
                [f"supersedes: event {supersedes} is not a decision on read {d.read_number} of "
                 f"study {d.study_id}"], source="decision")
        newer = session.scalar(
            select(AdjudicationEvent.id).where(AdjudicationEvent.supersedes_id == supersedes)
        )
        if newer is not None:
            raise ConflictError(
                f"event {supersedes} was already corrected by event {newer}; reload the case "
                "and correct the latest decision", newer)
    ev = AdjudicationEvent(
        event_uid=d.event_uid,
        worklist_item_id=d.worklist_item_id,
        study_id=d.study_id,
        screening_id=d.screening_id,
        read_number=d.read_number,
        reviewer=reviewer,
        recorded_at=recorded_at.astimezone(dt.timezone.utc) if recorded_at else _utcnow(),
        app_version=app_version,
        decision=d.decision.value,
        not_assessable_reason=d.not_assessable_reason,
        levels=[lg.model_dump() for lg in d.levels],
        previously_known=d.previously_known.value if d.previously_known else None,
        action=d.action.value if d.action else None,
        action_reason=d.action_reason,
        note=d.note,
        supersedes_id=supersedes,
        simulated=simulated,
        blind=blind,
    )
    session.add(ev)
    session.flush()
    return ev


def _first_read_holder(engine: Engine, study_id: int, read_number: int) -> AdjudicationEvent | None:
    with session_factory(engine)() as s:
        return s.scalar(
            select(AdjudicationEvent).where(
                AdjudicationEvent.study_id == study_id,
                AdjudicationEvent.read_number == read_number,
                AdjudicationEvent.supersedes_id.is_(None),
            )
        )


def _is_busy(e: OperationalError) -> bool:
    text = str(e.orig).lower() if e.orig is not None else str(e).lower()
    return any(k in text for k in ("database is locked", "database is busy", "deadlock detected",
                                    "could not serialize", "server closed the connection"))


def record_decision(
    engine: Engine,
    decision: DecisionInput | dict[str, Any],
    reviewer: str,
    app_version: str = APP_VERSION,
    *,
    supersedes: int | None = None,
    simulated: bool = False,
    recorded_at: dt.datetime | None = None,
    blind: bool | None = None,
) -> AdjudicationEvent:
    """Validate and append one decision event; return it once it is durably committed.

    Parameters
    ----------
    engine
        The suite's database (``fracture_qi.store.db.connect``).
    decision
        A :class:`DecisionInput` or the raw form dict (validated here either way).
    reviewer
        Who decided (the nurse's ID). Taken from the server's session, never from the form.
    app_version
        Recorded on the event.
    supersedes
        ``id`` of the event this one corrects (same study and read), or ``None``.
    simulated
        Mark events made by :mod:`fracture_qi.adjudication.simulate`.
    recorded_at
        Only for simulated events (a plausible review time for the demo); real events are
        always stamped with the server's UTC clock.
    blind
        ``True`` when the nurse decided without the AI's result on screen (an audit-sample
        case); ``False`` for a change made after she asked to see it, which is kept but not
        counted (:func:`latest_decisions`): the blind read is the one the sensitivity
        estimate rests on; ``None`` where the AI's result is part of the task.

    Returns
    -------
    AdjudicationEvent
        The stored row (detached). A retry with the same ``event_uid`` and content returns the
        row stored the first time.

    Raises
    ------
    ValidationError
        A field is invalid, the study or worklist item does not exist, the reviewer already
        made the other read of this study, or *supersedes* is not on this study and read.
    ConflictError
        Another save of the same read got there first (``existing_event_id`` names it), the
        superseded event was already corrected, or the ``event_uid`` was used for other content.
    StoreError
        The database stayed busy or unreachable through every retry.
    """
    d = validate_decision(decision)
    who = _check_reviewer(reviewer)
    if recorded_at is not None and not simulated:
        raise ValidationError(["recorded_at: only simulated events may carry their own time"],
                              source="decision")
    if recorded_at is not None and recorded_at.tzinfo is None:
        raise ValidationError(["recorded_at: give a timezone-aware UTC time"], source="decision")
    delay = 0.05
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        session = session_factory(engine)()
        try:
            ev = _insert(session, d, who, app_version, supersedes, simulated, recorded_at,
                         blind)
            session.commit()
            return ev
        except IntegrityError as e:
            session.rollback()
            text = str(e.orig).lower()
            if "event_uid" in text or "adjudication_events_event_uid" in text:
                continue  # the same save raced itself (double click): next pass returns it
            if supersedes is None:
                holder = _first_read_holder(engine, d.study_id, d.read_number)
                if holder is not None:
                    raise ConflictError(
                        f"read {d.read_number} of study {d.study_id} was already saved by "
                        f"{holder.reviewer} at {holder.recorded_at:%Y-%m-%d %H:%M} UTC (event "
                        f"{holder.id}); your decision was not saved and nothing was overwritten. "
                        "Fix: open the case again to see it, and save a correction if needed",
                        holder.id,
                    ) from e
            newer = None
            if supersedes is not None:
                with session_factory(engine)() as s2:
                    newer = s2.scalar(select(AdjudicationEvent.id).where(
                        AdjudicationEvent.supersedes_id == supersedes))
            if newer is not None:
                raise ConflictError(
                    f"event {supersedes} was corrected by event {newer} at the same moment; "
                    "reload the case and correct the latest decision", newer) from e
            raise StoreError(
                f"the database refused the decision on study {d.study_id}: {e.orig}. "
                "Fix: check the database was migrated (fracture-qi index runs the migrations)"
            ) from e
        except OperationalError as e:
            session.rollback()
            if _is_busy(e) and attempt < SAVE_ATTEMPTS:
                # another writer holds the lock past the busy timeout: back off and retry; the
                # event_uid makes the retry safe even if the first attempt did commit
                logger.warning("database busy saving study %s (attempt %d): retrying",
                               d.study_id, attempt)
                time.sleep(delay * (1 + random.random()))
                delay *= 2
                continue
            raise StoreError(
                f"could not save the decision on study {d.study_id}: the database is "
                f"unavailable ({type(e.orig).__name__ if e.orig else 'error'}). Nothing was "
                "saved. Fix: try again; if it persists tell IT the database is down"
            ) from e
        finally:
            session.close()
    raise StoreError(
        f"could not save the decision on study {d.study_id} after {SAVE_ATTEMPTS} tries. "
        "Nothing was saved. Fix: try again in a minute"
    )


def decision_history(engine: Engine, study_id: int) -> list[AdjudicationEvent]:
    """Every event on one study, oldest first (for the correction view and audits)."""
    with session_factory(engine)() as s:
        return list(s.scalars(
            select(AdjudicationEvent)
            .where(AdjudicationEvent.study_id == study_id)
            .order_by(AdjudicationEvent.recorded_at, AdjudicationEvent.id)
        ))


def current_decision(engine: Engine, study_id: int, read_number: int) -> AdjudicationEvent | None:
    """The latest (not superseded) event of one read of one study, or ``None``."""
    newer = aliased(AdjudicationEvent)
    with session_factory(engine)() as s:
        return s.scalar(
            select(AdjudicationEvent)
            .where(
                AdjudicationEvent.study_id == study_id,
                AdjudicationEvent.read_number == read_number,
                ~exists().where(newer.supersedes_id == AdjudicationEvent.id),
            )
            .order_by(AdjudicationEvent.id.desc())
            .limit(1)
        )


#: columns of :func:`latest_decisions`, in order
LATEST_COLUMNS = [
    "event_id", "event_uid", "study_id", "worklist_item_id", "screening_id", "read_number",
    "reviewer", "recorded_at", "first_recorded_at", "n_corrections", "app_version", "decision",
    "not_assessable_reason", "levels", "max_grade", "previously_known", "action",
    "action_reason", "note", "simulated", "blind",
]


def latest_decisions(engine: Engine, *, include_simulated: bool = True) -> pd.DataFrame:
    """The decision that counts for each (study, read): the end of its correction chain.

    A change made after the nurse asked to see the AI's result on an audit-sample case
    (``blind`` False) is kept in the history but never counts: the blind read does.

    Parameters
    ----------
    engine
        The suite's database.
    include_simulated
        Keep events written by the simulator (the demo); ``False`` for real audits.

    Returns
    -------
    pandas.DataFrame
        One row per (study_id, read_number) with the columns in :data:`LATEST_COLUMNS`:
        ``recorded_at`` is when the counting event was saved, ``first_recorded_at`` when the
        read was first saved (for time-to-adjudication), ``n_corrections`` how many events
        it supersedes, ``max_grade`` the highest grade among its ``levels`` (0 if none).
        Times are timezone-aware UTC.
    """
    import pandas as pd

    cols = [c for c in AdjudicationEvent.__table__.columns]
    with engine.connect() as conn:
        rows = conn.execute(select(*cols).order_by(AdjudicationEvent.id)).mappings().all()
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in LATEST_COLUMNS})
    df = pd.DataFrame([dict(r) for r in rows])
    df = df.rename(columns={"id": "event_id"})
    # changes seen with the AI's result never replace a blind read: leave them out of the
    # chains (their superseded blind event then has no successor and counts)
    df = df[df["blind"].map(lambda b: b is None or bool(b) or pd.isna(b))].copy()
    df["recorded_at"] = pd.to_datetime(df["recorded_at"], utc=True)
    superseded = set(df["supersedes_id"].dropna().astype(int))
    by_id = df.set_index("event_id")
    # walk each chain back to its root for the first save time and the number of corrections
    parent = {int(k): (None if pd.isna(v) else int(v)) for k, v in by_id["supersedes_id"].items()}
    first_at, n_corr = [], []
    latest = df[~df["event_id"].isin(superseded)].copy()
    for eid in latest["event_id"]:
        n, cur = 0, int(eid)
        while parent.get(cur) is not None:
            cur = parent[cur]  # type: ignore[assignment]
            n += 1
        first_at.append(by_id.at[cur, "recorded_at"])
        n_corr.append(n)
    latest["first_recorded_at"] = pd.to_datetime(pd.Series(first_at, index=latest.index), utc=True)
    latest["n_corrections"] = n_corr
    latest["levels"] = latest["levels"].map(lambda v: list(v) if isinstance(v, list) else [])
    latest["max_grade"] = latest["levels"].map(
        lambda lv: max((int(x.get("grade", 0)) for x in lv), default=0))
    latest["simulated"] = latest["simulated"].astype(bool)
    if not include_simulated:
        latest = latest[~latest["simulated"]]
    # a chain has one end unless the store was tampered with; keep the newest to be safe
    latest = latest.sort_values("event_id").drop_duplicates(["study_id", "read_number"], keep="last")
    return latest[LATEST_COLUMNS].reset_index(drop=True)
