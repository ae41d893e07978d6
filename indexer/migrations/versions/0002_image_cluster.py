"""Add images.cluster: the individual `indexer cluster` assigned each face to.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("cluster", sa.Integer(), nullable=True))
        batch.create_index("ix_images_cluster", ["cluster"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_cluster")
        batch.drop_column("cluster")
