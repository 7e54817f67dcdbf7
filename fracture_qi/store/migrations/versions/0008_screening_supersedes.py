"""screenings supersede: a series screened again after it gained instances keeps both results

A study whose series grows after it was screened (the listener processed it during a pause
in the sending, then the rest arrived) must be screened again on the complete series, and
the result of the incomplete one must be kept, not overwritten. ``screenings`` gains
``n_instances`` (the instances the model was given) and ``supersedes_id`` (the earlier
screening of the same series and model version that this one replaces). The unique
constraint ``uq_screening_once`` (series, model id, version) becomes a partial unique index
over first screenings only (``supersedes_id IS NULL``), and ``uq_screening_supersedes_once``
lets each screening be superseded at most once: one chain, one current result.

SQLite cannot drop a constraint written inside CREATE TABLE, so there the table is rebuilt
(every row kept with its id, every column kept, whichever revision added it). The rebuild
runs inside the migration's transaction with ``PRAGMA defer_foreign_keys``: rows of
``vertebra_findings``, ``worklist_items``, ``adjudication_events`` and ``result_objects``
point at screenings by id, and the commit fails (nothing changes) if any of them would be
left without its screening.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'screenings'
OLD_UNIQUE = 'uq_screening_once'
FIRST_INDEX = 'uq_screening_once'
SUPERSEDES_UNIQUE = 'uq_screening_supersedes_once'
SUPERSEDES_FK = 'fk_screenings_supersedes'
KEY = ['series_id', 'model_id', 'model_version']


def _sqlite_rebuild(*, upgrade: bool) -> None:
    """Rebuild ``screenings`` on SQLite with the old or the new constraints (see above)."""
    bind = op.get_bind()
    old = sa.Table(TABLE, sa.MetaData(), autoload_with=bind)
    inspector = sa.inspect(bind)
    indexes = [ix for ix in inspector.get_indexes(TABLE) if ix['name'] != FIRST_INDEX]
    triggers = [sql for (sql,) in bind.execute(sa.text(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"), {'t': TABLE})]
    names = [c.name for c in old.columns]
    if not upgrade:
        names = [n for n in names if n not in ('supersedes_id', 'n_instances')]
    meta = sa.MetaData()  # holds the tables the foreign keys name, as they are
    meta.reflect(bind, only=sorted({fk.referred_table.name for fk in old.foreign_key_constraints}
                                   - {TABLE}))
    columns = [sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key)
               for c in old.columns if c.name in names]
    constraints: list[sa.Constraint] = []
    for fk in old.foreign_key_constraints:
        cols = [c.name for c in fk.columns]
        if 'supersedes_id' in cols:
            continue
        constraints.append(sa.ForeignKeyConstraint(
            cols, [e.target_fullname for e in fk.elements], name=fk.name))
    for uc in old.constraints:
        if isinstance(uc, sa.UniqueConstraint) and uc.name not in (OLD_UNIQUE, SUPERSEDES_UNIQUE):
            constraints.append(sa.UniqueConstraint(*[c.name for c in uc.columns], name=uc.name))
    if upgrade:
        columns += [sa.Column('n_instances', sa.Integer(), nullable=True),
                    sa.Column('supersedes_id', sa.Integer(), nullable=True)]
        constraints += [sa.ForeignKeyConstraint(['supersedes_id'], [f'{TABLE}.id']),
                        sa.UniqueConstraint('supersedes_id', name=SUPERSEDES_UNIQUE)]
    else:
        constraints.append(sa.UniqueConstraint(*KEY, name=OLD_UNIQUE))
    new = sa.Table(TABLE, meta, *columns, *constraints)
    kept = ', '.join(f'"{n}"' for n in names)
    op.execute("PRAGMA defer_foreign_keys = ON")
    op.execute(f'CREATE TEMP TABLE "_{TABLE}_0008" AS SELECT {kept} FROM "{TABLE}"')
    op.execute(f'DROP TABLE "{TABLE}"')
    new.create(bind)
    # inserting the rows again re-attaches the rows of other tables that point at them
    op.execute(f'INSERT INTO "{TABLE}" ({kept}) SELECT {kept} FROM "_{TABLE}_0008"')
    op.execute(f'DROP TABLE "_{TABLE}_0008"')
    for ix in indexes:
        op.create_index(ix['name'], TABLE, ix['column_names'], unique=bool(ix['unique']))
    for sql in triggers:
        op.execute(sql)
    if upgrade:
        op.create_index(FIRST_INDEX, TABLE, KEY, unique=True,
                        sqlite_where=sa.text('supersedes_id IS NULL'))


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        _sqlite_rebuild(upgrade=True)
        return
    op.drop_constraint(OLD_UNIQUE, TABLE, type_='unique')
    op.add_column(TABLE, sa.Column('n_instances', sa.Integer(), nullable=True))
    op.add_column(TABLE, sa.Column('supersedes_id', sa.Integer(), nullable=True))
    op.create_foreign_key(SUPERSEDES_FK, TABLE, TABLE, ['supersedes_id'], ['id'])
    op.create_unique_constraint(SUPERSEDES_UNIQUE, TABLE, ['supersedes_id'])
    op.create_index(FIRST_INDEX, TABLE, KEY, unique=True,
                    postgresql_where=sa.text('supersedes_id IS NULL'))


def downgrade() -> None:
    bind = op.get_bind()
    n = bind.execute(sa.text(f'SELECT count(*) FROM {TABLE} WHERE supersedes_id IS NOT NULL')
                     ).scalar()
    if n:
        raise RuntimeError(
            f"{n} screening(s) supersede an earlier one: revisions before 0008 allow one "
            "screening per series and model version, so downgrading would lose results. "
            "Fix: keep this revision (restore a backup taken before the upgrade if you must)")
    if bind.dialect.name == 'sqlite':
        _sqlite_rebuild(upgrade=False)
        return
    op.drop_index(FIRST_INDEX, table_name=TABLE)
    op.drop_constraint(SUPERSEDES_UNIQUE, TABLE, type_='unique')
    op.drop_constraint(SUPERSEDES_FK, TABLE, type_='foreignkey')
    op.drop_column(TABLE, 'supersedes_id')
    op.drop_column(TABLE, 'n_instances')
    op.create_unique_constraint(OLD_UNIQUE, TABLE, KEY)
