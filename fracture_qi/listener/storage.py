"""The listener's storage area and its durable record of what has arrived.

Every instance is written as ``<area>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``
(UIDs are checked to be UIDs first: nothing a sender puts in a header can name another
path). The order of the three steps makes a crash at any point lose nothing and duplicate
nothing:

1. the bytes go to a hidden ``.<SOP>.dcm.part`` file, flushed to disk (``fsync``);
2. the ``received_instances`` row is committed with the study's ``last_received_at``
   (one transaction: the instance is now known);
3. the part file is renamed to its final name; only then is the sender told "stored".

After a kill between 1 and 2 a hidden part file is left (never indexed: hidden files are
skipped) and the sender, not told "stored", sends the instance again. After a kill between 2
and 3, :func:`recover` finds the row without its file and finishes the rename from the part
file (or, if there is none, forgets the row, so the resend is taken as new). A resent instance
whose row exists is written again in place and changes nothing else.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from fracture_qi.errors import FractureQIError
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import ReceivedInstance, ReceivedStudy, utcnow

log = logging.getLogger(__name__)

#: a DICOM UID: digits in dot-separated components, at most 64 characters (PS3.5 9.1)
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: suffix of a file being written (hidden by a leading dot as well)
PART = ".part"


class StorageError(FractureQIError):
    """Raised when a received instance cannot be stored (bad UIDs, disk full...)."""


def is_uid(value: str) -> bool:
    """Whether *value* is a syntactically valid UID (and so safe as a file name).

    >>> is_uid("1.2.840.10008.5.1.4.1.1.2"), is_uid("../etc"), is_uid("1..2"), is_uid("")
    (True, False, False, False)
    """
    return bool(value) and len(value) <= 64 and bool(UID_PATTERN.match(value))


@dataclass(frozen=True)
class Received:
    """What :func:`store_instance` did with one instance."""

    path: Path
    study_instance_uid: str
    new: bool  # False: a copy of an instance already received


def instance_path(area: Path, study: str, series: str, sop: str) -> Path:
    """Where an instance lives in the storage area.

    Raises
    ------
    StorageError
        When a UID is not a UID (it would otherwise name a path).
    """
    for what, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                      ("SOPInstanceUID", sop)):
        if not is_uid(uid):
            raise StorageError(f"{what} {uid[:80]!r} is not a valid UID: instance refused. "
                               "Fix: the sending system must send valid UIDs")
    return area / study / series / f"{sop}.dcm"


#: Manufacturer of the suite's own result objects (fracture_qi.results_dicom.sr.MANUFACTURER)
OWN_MANUFACTURER = "fracture-qi"


def is_own_result(ds: Any) -> bool:
    """Whether a dataset is one of the suite's own result objects coming back (a PACS
    routing the whole study, SR included, to the listener): not stored again."""
    return (str(ds.get("Manufacturer", "")) == OWN_MANUFACTURER
            and str(ds.get("SeriesDescription", "")).startswith("AI RESULT fracture-qi"))


def known_instances(engine: Any, sop_uids: list[str]) -> set[str]:
    """Which of *sop_uids* were received already."""
    out: set[str] = set()
    with session_scope(engine) as s:
        for i in range(0, len(sop_uids), 500):
            out.update(s.scalars(select(ReceivedInstance.sop_instance_uid).where(
                ReceivedInstance.sop_instance_uid.in_(sop_uids[i:i + 500]))))
    return out


def _part_of(path: Path) -> Path:
    return path.with_name(f".{path.name}{PART}")


def store_instance(area: Path, engine: Any, data: bytes, *, study: str, series: str, sop: str,
                   sop_class: str | None = None, calling_aet: str | None = None,
                   origin: str = "dimse", fsync: bool = True) -> Received:
    """Store one received instance durably (see the module docstring for the order).

    Parameters
    ----------
    area
        The storage area.
    engine
        The suite's database.
    data
        The instance as a DICOM Part 10 file (preamble, file meta, dataset).
    study, series, sop, sop_class
        Its UIDs.
    calling_aet
        Who sent it (logged and recorded).
    origin
        ``dimse`` (C-STORE) or ``orthanc`` (the changes feed).
    fsync
        Flush the file to disk before recording it (on by default: a power cut then loses
        nothing the sender was told was stored).

    Returns
    -------
    Received

    Raises
    ------
    StorageError
        Bad UIDs, or the file or row cannot be written.
    """
    path = instance_path(area, study, series, sop)
    part = _part_of(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise StorageError(f"cannot write {part}: {e.strerror or e}. Fix: check free space "
                           f"and permissions of the storage area {area}") from e
    now = utcnow()
    with session_scope(engine) as s:
        known = s.scalars(select(ReceivedInstance.id).where(
            ReceivedInstance.sop_instance_uid == sop)).first()
        study_row = s.scalars(select(ReceivedStudy).where(
            ReceivedStudy.study_instance_uid == study)).first()
        if study_row is None:
            study_row = ReceivedStudy(study_instance_uid=study, origin=origin, state="receiving",
                                      first_received_at=now, last_received_at=now,
                                      n_instances=0, n_processed=0, attempts=0)
            s.add(study_row)
        if known is None:
            s.add(ReceivedInstance(sop_instance_uid=sop, study_instance_uid=study,
                                   series_instance_uid=series, sop_class_uid=sop_class,
                                   path=str(path), calling_aet=calling_aet, received_at=now))
            study_row.n_instances = (study_row.n_instances or 0) + 1
            study_row.last_received_at = now
            if study_row.state != "receiving":
                log.info("study ...%s receives new instances after it was %s: it will be "
                         "processed again when complete", study[-12:], study_row.state)
                study_row.state = "receiving"
                study_row.attempts = 0
        elif study_row.state == "receiving":
            study_row.last_received_at = now  # a resend keeps an unfinished study open
    try:
        os.replace(part, path)
    except OSError as e:
        raise StorageError(f"cannot rename {part}: {e.strerror or e}") from e
    return Received(path=path, study_instance_uid=study, new=known is None)


def recover(area: Path, engine: Any) -> dict[str, int]:
    """Make the record and the storage area agree after a crash; open studies get a new
    quiet period from now (their sender may be resending).

    Returns
    -------
    dict
        Counts: ``renamed`` (part files finished), ``forgotten`` (rows without a file),
        ``stale_parts`` (part files removed), ``reopened`` (studies still receiving).
    """
    counts = {"renamed": 0, "forgotten": 0, "stale_parts": 0, "reopened": 0}
    now = utcnow()
    with session_scope(engine) as s:
        open_studies = list(s.scalars(select(ReceivedStudy).where(
            ReceivedStudy.state.in_(("receiving", "complete")))))
        uids = [st.study_instance_uid for st in open_studies]
        rows = list(s.scalars(select(ReceivedInstance).where(
            ReceivedInstance.study_instance_uid.in_(uids)))) if uids else []
        recorded = set()
        for row in rows:
            path = Path(row.path)
            recorded.add(path)
            if path.exists():
                continue
            part = _part_of(path)
            if part.exists():
                os.replace(part, path)
                counts["renamed"] += 1
                continue
            s.delete(row)
            counts["forgotten"] += 1
            st = next(x for x in open_studies if x.study_instance_uid == row.study_instance_uid)
            st.n_instances = max(0, (st.n_instances or 0) - 1)
        for st in open_studies:
            folder = area / st.study_instance_uid
            if folder.is_dir():
                for part in folder.glob(f"*/.*{PART}"):
                    part.unlink(missing_ok=True)
                    counts["stale_parts"] += 1
            if st.state == "receiving":
                st.last_received_at = now
                counts["reopened"] += 1
    if any(counts.values()):
        log.info("recovered the storage area: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def complete_studies(engine: Any, quiet_seconds: float, now: dt.datetime | None = None) -> list[str]:
    """Mark studies quiet for *quiet_seconds* as ``complete``; return every complete study
    not yet processed (oldest first), including those left complete by an earlier run."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=quiet_seconds)
    with session_scope(engine) as s:
        s.execute(update(ReceivedStudy).where(
            ReceivedStudy.state == "receiving",
            ReceivedStudy.last_received_at <= _naive_if_sqlite(engine, cutoff),
        ).values(state="complete"))
        return list(s.scalars(select(ReceivedStudy.study_instance_uid).where(
            ReceivedStudy.state == "complete").order_by(ReceivedStudy.last_received_at)))


def _naive_if_sqlite(engine: Any, t: dt.datetime) -> dt.datetime:
    # SQLite stores the suite's UTC datetimes without zone: compare like with like
    return t.replace(tzinfo=None) if engine.dialect.name == "sqlite" else t


__all__ = ["OWN_MANUFACTURER", "PART", "Received", "StorageError", "complete_studies",
           "instance_path", "is_own_result", "is_uid", "known_instances", "recover",
           "store_instance"]
