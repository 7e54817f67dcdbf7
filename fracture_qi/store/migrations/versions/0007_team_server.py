"""team server: user accounts, the access log (append-only), blind reads

1. ``users``: the local accounts of ``fracture-qi serve`` (``fracture-qi users add``): a
   unique user name, one role (nurse, qi_lead, auditor, admin), an argon2id password hash
   (empty for accounts signed in by the hospital's sign-on), whether the account is active,
   and ``sessions_valid_after``: sessions signed in before it (a disabled account, a new
   password) are refused.
2. ``access_events``: who opened which patient's case, who decided, who exported, who signed
   in (or failed to), when and from where: the access log a Caldicott guardian asks for. It
   is append-only in the database, as ``adjudication_events`` is (revisions 0001 and 0002):
   UPDATE, DELETE, TRUNCATE and an insert that would replace a row (SQLite ``REPLACE``,
   upserts, which on PostgreSQL fire the UPDATE trigger) are refused by triggers.
3. ``adjudication_events.blind``: whether the read was made without the AI's result on
   screen. True for the first answer on an audit-sample case (the blind read the sensitivity
   estimate rests on), False for a change made after the nurse asked to see the AI's result,
   NULL where the AI's result is part of the task (flagged studies) and for older events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "access_events is append-only"

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER access_events_no_update BEFORE UPDATE ON access_events
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: the access log is never changed'); END""",
    f"""CREATE TRIGGER access_events_no_delete BEFORE DELETE ON access_events
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: the access log is never deleted'); END""",
    # REPLACE resolves a primary-key conflict by deleting the old row without firing the
    # DELETE trigger (recursive_triggers is off): refuse the colliding insert itself
    f"""CREATE TRIGGER access_events_no_replace_id BEFORE INSERT ON access_events
    WHEN EXISTS (SELECT 1 FROM access_events WHERE id = NEW.id)
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: an entry with this id exists and is
    never replaced'); END""",
]

POSTGRES_GUARD = [
    f"""CREATE FUNCTION fqi_access_events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END
    $$""",
    """CREATE TRIGGER access_events_append_only BEFORE UPDATE OR DELETE ON access_events
    FOR EACH ROW EXECUTE FUNCTION fqi_access_events_append_only()""",
    """CREATE TRIGGER access_events_no_truncate BEFORE TRUNCATE ON access_events
    FOR EACH STATEMENT EXECUTE FUNCTION fqi_access_events_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=False),
        sa.Column('display_name', sa.String(length=200), nullable=True),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.String(length=200), nullable=True),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=100), nullable=True),
        sa.Column('password_changed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('sessions_valid_after', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_users_username'), ['username'], unique=True)

    op.create_table(
        'access_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=True),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('study_id', sa.Integer(), nullable=True),
        sa.Column('patient_key', sa.String(length=64), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('client', sa.String(length=100), nullable=True),
        sa.Column('via', sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('access_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_access_events_study_id'), ['study_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_access_events_username'), ['username'],
                              unique=False)

    # adjudication_events refuses UPDATE: adding a column is DDL, not an UPDATE of a row;
    # batch mode on SQLite would copy the table (INSERT ... SELECT into a new table, then
    # DROP) and its triggers would be lost, so the column is added in place
    op.add_column('adjudication_events', sa.Column('blind', sa.Boolean(), nullable=True))

    if op.get_bind().dialect.name == "postgresql":
        for stmt in POSTGRES_GUARD:
            op.execute(stmt)
    else:
        for stmt in SQLITE_TRIGGERS:
            op.execute(stmt)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_events_no_truncate ON access_events")
        op.execute("DROP TRIGGER IF EXISTS access_events_append_only ON access_events")
        op.execute("DROP FUNCTION IF EXISTS fqi_access_events_append_only()")
    else:
        for name in ("access_events_no_update", "access_events_no_delete",
                     "access_events_no_replace_id"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    # in place, not batch (see upgrade); SQLite has had DROP COLUMN since 3.35
    op.drop_column('adjudication_events', 'blind')
    with op.batch_alter_table('access_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_events_username'))
        batch_op.drop_index(batch_op.f('ix_access_events_study_id'))
        batch_op.drop_index(batch_op.f('ix_access_events_at'))
    op.drop_table('access_events')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_username'))
    op.drop_table('users')
