"""The access log: who opened which patient's case, who decided, who exported, and from where.

A Caldicott guardian asks "who looked at this patient's record, and why?". Every opening of
a patient's case, every decision, every export, every sign-in (and every failed one) and
every change to an account is one row of ``access_events``, written before the thing it
records is shown or handed over: if the row cannot be written, the case is not shown. The
database refuses UPDATE, DELETE, TRUNCATE and replacing inserts on the table (revision
0007), as it does on nurses' decisions.

The log names records by ``study_id`` and the pseudonymous ``patient_key``, never by name or
NHS number, so the log itself can be handed to the guardian (``fracture-qi access-log``)
without becoming a second copy of the identifiers.

Examples
--------
>>> from fracture_qi.store import open_store
>>> engine = open_store("sqlite://")
>>> record_access(engine, username="nurse.a", role="nurse", action=AccessAction.CASE_OPENED,
...               study_id=7, patient_key="9f2c", client="10.0.0.8", via="team server")
>>> [(e["username"], e["action"], e["study_id"]) for e in read_access_log(engine)]
[('nurse.a', 'case_opened', 7)]
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import socket
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import DBAPIError

from fracture_qi.errors import StoreError
from fracture_qi.store.schema import AccessEvent

log = logging.getLogger(__name__)

#: longest ``detail`` text kept (characters); details are short structured notes
MAX_DETAIL = 2000
#: columns of :func:`read_access_log` and of the exported CSV, in order
LOG_COLUMNS = ["id", "at", "username", "role", "action", "study_id", "patient_key", "detail",
               "client", "via"]


class AccessAction(str, Enum):
    """What an access-log entry records."""

    SIGN_IN = "sign_in"
    """A user signed in to the team server."""
    SIGN_IN_FAILED = "sign_in_failed"
    """A sign-in was refused (wrong password, unknown or disabled account, too many tries)."""
    SIGN_OUT = "sign_out"
    """A user signed out."""
    CASE_OPENED = "case_opened"
    """A patient's case (identifiers, images) was shown to a nurse."""
    AI_SHOWN = "ai_shown"
    """On an audit-sample case, the nurse asked to see the AI's result after her blind read."""
    DECISION_SAVED = "decision_saved"
    """A decision (or a correction) was saved."""
    EXPORT = "export"
    """Data left the suite: a CSV export, the access log itself, a decision history."""
    PAGE_OPENED = "page_opened"
    """An app page without patient details was opened (the QI dashboard, the audit pages)."""
    REFUSED = "refused"
    """The server refused a request outside the user's role."""
    ACCOUNT_CHANGED = "account_changed"
    """An account was created, disabled, enabled, given a new role or a new password."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _detail_text(detail: Mapping[str, Any] | str | None) -> str | None:
    if detail is None:
        return None
    text = detail if isinstance(detail, str) else json.dumps(dict(detail), sort_keys=True,
                                                               default=str)
    return text[:MAX_DETAIL]


def command_line_user() -> str:
    """Who runs a command on this host: ``login@host`` (for exports made from a shell)."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container with an unknown uid)
        who = "unknown"
    return f"{who}@{socket.gethostname()}"[:100]


def record_access(
    engine: Engine,
    *,
    username: str,
    action: AccessAction | str,
    role: str | None = None,
    study_id: int | None = None,
    patient_key: str | None = None,
    detail: Mapping[str, Any] | str | None = None,
    client: str | None = None,
    via: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Append one entry to the access log; return once it is committed.

    Parameters
    ----------
    engine
        The suite's database.
    username
        Who (the signed-in user, the reviewer, or ``login@host`` for a command).
    action
        What (:class:`AccessAction`).
    role
        The user's role when the entry was made.
    study_id, patient_key
        Which patient record, where there is one.
    detail
        A short note or a mapping (stored as JSON), e.g. ``{"read": 1, "decision": "confirmed"}``.
    client
        From where: the browser's address as the server saw it.
    via
        Through what: ``team server``, ``adjudication app``, ``command line``.
    at
        When (UTC now by default).

    Raises
    ------
    StoreError
        When the entry cannot be written. Callers show nothing they would have logged.
    """
    row = {
        "at": at or _utcnow(),
        "username": (username or "(unknown)")[:100],
        "role": role,
        "action": AccessAction(action).value,
        "study_id": study_id,
        "patient_key": patient_key,
        "detail": _detail_text(detail),
        "client": (client or None) and str(client)[:100],
        "via": via,
    }
    try:
        with engine.begin() as conn:
            conn.execute(insert(AccessEvent).values(**row))
    except DBAPIError as e:
        from fracture_qi.store.db import database_error

        raise StoreError(f"the access log could not be written ({database_error(e)}); "
                         "nothing was shown or handed over") from e


def read_access_log(
    engine: Engine,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    username: str | None = None,
    study_id: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Access-log entries, oldest first, as dicts with :data:`LOG_COLUMNS` (times in UTC)."""
    q = select(*[getattr(AccessEvent, c) for c in LOG_COLUMNS]).order_by(AccessEvent.id)
    if since is not None:
        q = q.where(AccessEvent.at >= since)
    if until is not None:
        q = q.where(AccessEvent.at < until)
    if username:
        q = q.where(AccessEvent.username == username)
    if study_id is not None:
        q = q.where(AccessEvent.study_id == study_id)
    if limit:
        q = q.order_by(None).order_by(AccessEvent.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    if limit:
        rows.reverse()
    for r in rows:
        t = r["at"]
        if isinstance(t, dt.datetime) and t.tzinfo is None:
            r["at"] = t.replace(tzinfo=dt.timezone.utc)
    return rows


def export_access_log(
    engine: Engine,
    out: str | Path,
    *,
    by: str,
    role: str | None = None,
    client: str | None = None,
    via: str = "command line",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    username: str | None = None,
    study_id: int | None = None,
) -> int:
    """Write the access log (or a slice of it) as CSV for the Caldicott guardian.

    The export is itself logged (action ``export``, by *by*) before the file is written.

    Returns
    -------
    int
        Entries written.
    """
    import pandas as pd

    from fracture_qi.csvsafe import write_frame

    rows = read_access_log(engine, since=since, until=until, username=username,
                           study_id=study_id)
    filters = {k: str(v) for k, v in (("since", since), ("until", until),
                                      ("username", username), ("study_id", study_id))
               if v is not None}
    record_access(engine, username=by, role=role, action=AccessAction.EXPORT, client=client,
                  via=via, detail={"what": "access log", "rows": len(rows), **filters})
    df = pd.DataFrame(rows, columns=LOG_COLUMNS)
    df["study_id"] = df["study_id"].astype("Int64")  # ids stay whole numbers beside blanks
    if not df.empty:
        df["at"] = pd.to_datetime(df["at"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    write_frame(df, out, index=False)
    return len(rows)


__all__ = [
    "LOG_COLUMNS",
    "AccessAction",
    "command_line_user",
    "export_access_log",
    "read_access_log",
    "record_access",
]
