"""passthrough: devices the host uses, each host's allowlist and its libvirt URI

Revision ID: 0014_passthrough_safety
Revises: 0003_passthrough
Create Date: 2026-12-06 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0014_passthrough_safety'
down_revision: str | Sequence[str] | None = '0003_passthrough'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('passthrough_devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host_use', sa.Text(), nullable=True))
    # Existing hosts allow nothing until the operator says which devices may go.
    with op.batch_alter_table('passthrough_hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allow', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('libvirt_uri', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('passthrough_hosts', schema=None) as batch_op:
        batch_op.drop_column('libvirt_uri')
        batch_op.drop_column('allow')
    with op.batch_alter_table('passthrough_devices', schema=None) as batch_op:
        batch_op.drop_column('host_use')
