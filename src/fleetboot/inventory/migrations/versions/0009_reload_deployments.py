"""reload: the deployment history (one row per node per deployment)

Revision ID: 0009_reload
Revises: 0001_inventory
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009_reload'
down_revision: str | Sequence[str] | None = '0001_inventory'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('deployments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.String(length=16), nullable=False),
    sa.Column('image_name', sa.String(length=255), nullable=False),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('session', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('percent', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_deployments_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments'))
    )
    op.create_index(op.f('ix_deployments_node_id'), 'deployments', ['node_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_deployments_node_id'), table_name='deployments')
    op.drop_table('deployments')
