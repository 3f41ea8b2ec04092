"""power: per-node BMC settings (driver, address, encrypted credentials, last state)

Revision ID: 0010_power
Revises: 0001_inventory
Create Date: 2026-12-06 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010_power'
down_revision: str | Sequence[str] | None = '0001_inventory'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('power_settings',
    sa.Column('node_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('driver', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('secret', sa.Text(), nullable=True),
    sa.Column('ca_file', sa.String(length=1024), nullable=True),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=True),
    sa.Column('state_at', sa.Double(), nullable=True),
    sa.Column('last_answer', sa.Text(), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=True),
    sa.Column('action_at', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_power_settings_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('node_id', name=op.f('pk_power_settings'))
    )


def downgrade() -> None:
    op.drop_table('power_settings')
