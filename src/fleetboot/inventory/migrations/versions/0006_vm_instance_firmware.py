"""vm: instance firmware (bios|uefi) and the UEFI variable store path

Revision ID: 0006_vm_firmware
Revises: 0002_vm
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006_vm_firmware'
down_revision: str | Sequence[str] | None = '0002_vm'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default makes every existing VM a SeaBIOS one, which it is.
    with op.batch_alter_table('vm_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('firmware', sa.String(length=8), server_default='bios',
                                      nullable=False))
        batch_op.add_column(sa.Column('uefi_vars', sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('vm_instances', schema=None) as batch_op:
        batch_op.drop_column('uefi_vars')
        batch_op.drop_column('firmware')
