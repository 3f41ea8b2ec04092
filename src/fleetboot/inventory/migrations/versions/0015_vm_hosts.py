"""vm: hosts that run QEMU (live migration between them) and each instance's host

Revision ID: 0015_vm_hosts
Revises: 0006_vm_firmware
Create Date: 2026-12-06 04:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0015_vm_hosts'
down_revision: str | Sequence[str] | None = '0006_vm_firmware'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'vm_hosts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=63), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('netns', sa.String(length=63), nullable=True),
        sa.Column('run_dir', sa.String(length=255), nullable=False),
        sa.Column('image_dir', sa.String(length=1024), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    with op.batch_alter_table('vm_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=63), nullable=True))
        batch_op.create_foreign_key('fk_vm_instances_host', 'vm_hosts', ['host'], ['name'],
                                    ondelete='RESTRICT')


def downgrade() -> None:
    with op.batch_alter_table('vm_instances', schema=None) as batch_op:
        batch_op.drop_constraint('fk_vm_instances_host', type_='foreignkey')
        batch_op.drop_column('host')
    op.drop_table('vm_hosts')
