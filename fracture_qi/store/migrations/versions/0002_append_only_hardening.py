"""append-only hardening: refuse REPLACE and upserts on adjudication_events; run liveness

1. SQLite's ``INSERT OR REPLACE`` / ``REPLACE`` (and an ``INSERT OR REPLACE`` hidden in any
   tool) resolves a unique conflict by deleting the conflicting row, and that delete fires no
   DELETE trigger unless ``PRAGMA recursive_triggers`` is on for that connection: the 0001
   guard let a hand-written REPLACE rewrite a decision. A ``BEFORE INSERT`` trigger per unique
   key of ``adjudication_events`` (``id``, ``event_uid``, the first read of a study, the
   event a correction supersedes) aborts any insert that collides with an existing row, so
   REPLACE, ``INSERT ... ON CONFLICT DO UPDATE`` and ``INSERT OR IGNORE`` all fail before a
   row is touched. An insert that collides was always refused (by the unique index); only
   the wording of the error changes, and it names the key (``event_uid``...).

   PostgreSQL needs nothing new: ``INSERT ... ON CONFLICT DO UPDATE`` and ``MERGE`` fire the
   row-level ``BEFORE UPDATE``/``BEFORE DELETE`` trigger of 0001, which refuses them
   (tested in ``tests/test_store.py``).

2. ``screening_runs`` gains ``pid`` and ``heartbeat_at``: a run refreshes its heartbeat while
   it works, so the next run can tell a run that was killed (SIGKILL, power cut) from one that
   is still going, and mark the dead one ``interrupted`` instead of leaving it ``running``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "adjudication_events is append-only"

#: (trigger name, WHEN condition on NEW, what the message says collided)
SQLITE_INSERT_GUARDS = [
    ("adjudication_events_no_replace_id",
     "EXISTS (SELECT 1 FROM adjudication_events WHERE id = NEW.id)",
     "an event with this id exists"),
    ("adjudication_events_no_replace_uid",
     "EXISTS (SELECT 1 FROM adjudication_events WHERE event_uid = NEW.event_uid)",
     "an event with this event_uid exists"),
    ("adjudication_events_no_replace_first_read",
     "NEW.supersedes_id IS NULL AND EXISTS (SELECT 1 FROM adjudication_events "
     "WHERE study_id = NEW.study_id AND read_number = NEW.read_number "
     "AND supersedes_id IS NULL)",
     "this read of this study was already saved"),
    ("adjudication_events_no_replace_supersedes",
     "NEW.supersedes_id IS NOT NULL AND EXISTS (SELECT 1 FROM adjudication_events "
     "WHERE supersedes_id = NEW.supersedes_id)",
     "the superseded event was already corrected"),
]


def _sqlite_trigger(name: str, when: str, what: str) -> str:
    return (
        f"CREATE TRIGGER {name} BEFORE INSERT ON adjudication_events WHEN {when} "
        f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: {what}; an existing event is "
        "never replaced, record a new event that supersedes it'); END"
    )


def upgrade() -> None:
    with op.batch_alter_table('screening_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        for name, when, what in SQLITE_INSERT_GUARDS:
            op.execute(_sqlite_trigger(name, when, what))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name, _when, _what in SQLITE_INSERT_GUARDS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table('screening_runs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('pid')
