"""pacs service: what the listener received (studies, instances), its durable state, and the
DICOM result objects (SR, key image, SEG) sent back to the PACS

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'received_studies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('origin', sa.String(length=16), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('n_instances', sa.Integer(), nullable=False),
        sa.Column('n_processed', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('study_instance_uid'),
    )
    op.create_index(op.f('ix_received_studies_state'), 'received_studies', ['state'],
                    unique=False)
    op.create_table(
        'received_instances',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('sop_class_uid', sa.String(length=64), nullable=True),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('calling_aet', sa.String(length=16), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('sop_instance_uid'),
    )
    op.create_index(op.f('ix_received_instances_study_instance_uid'), 'received_instances',
                    ['study_instance_uid'], unique=False)
    op.create_table(
        'service_state',
        sa.Column('key', sa.String(length=100), nullable=False),
        sa.Column('value', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_table(
        'result_objects',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('screening_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('destination', sa.String(length=100), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['screening_id'], ['screenings.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('screening_id', 'kind', 'destination',
                            name='uq_result_object_once'),
    )
    op.create_index(op.f('ix_result_objects_screening_id'), 'result_objects',
                    ['screening_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_result_objects_screening_id'), table_name='result_objects')
    op.drop_table('result_objects')
    op.drop_table('service_state')
    op.drop_index(op.f('ix_received_instances_study_instance_uid'),
                  table_name='received_instances')
    op.drop_table('received_instances')
    op.drop_index(op.f('ix_received_studies_state'), table_name='received_studies')
    op.drop_table('received_studies')
