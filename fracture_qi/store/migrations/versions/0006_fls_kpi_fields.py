"""FLS-DB KPI fields on fls_episodes; the provenance hash of each audit run

``fls_episodes`` gains what the full FLS-DB KPI set needs: the index fracture site (KPI 3,
spinal fracture identification; KPI 8 counts non-hip fractures), the falls assessment date
(KPI 6), the start of strength and balance training (KPI 8) and the first follow-up contact
(KPIs 9 and 10). ``audit_runs.provenance_sha256`` keeps the SHA-256 of the run's
``provenance.json`` so that ``fracture-qi audit --verify`` notices an edited file.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('fls_episodes') as batch:
        batch.add_column(sa.Column('index_fracture_site', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('falls_assessment_date', sa.Date(), nullable=True))
        batch.add_column(sa.Column('strength_balance_date', sa.Date(), nullable=True))
        batch.add_column(sa.Column('followup_date', sa.Date(), nullable=True))
    with op.batch_alter_table('audit_runs') as batch:
        batch.add_column(sa.Column('provenance_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_runs') as batch:
        batch.drop_column('provenance_sha256')
    with op.batch_alter_table('fls_episodes') as batch:
        batch.drop_column('followup_date')
        batch.drop_column('strength_balance_date')
        batch.drop_column('falls_assessment_date')
        batch.drop_column('index_fracture_site')
