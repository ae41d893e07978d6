"""Individuals: the people and pets that `indexer cluster` groups faces into, with the names
users give them; images.individual says which one each face belongs to.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As indexer.db.ImageId: 64-bit, but SQLite's rowid only as exactly INTEGER.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "individuals",
        sa.Column("id", Id, primary_key=True),
        sa.Column("species", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("cover", Id, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_individuals_species", "individuals", ["species"])
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("individual", Id, nullable=True))
        batch.create_index("ix_images_individual", ["individual"])
        batch.create_foreign_key("fk_images_individual", "individuals", ["individual"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("fk_images_individual", type_="foreignkey")
        batch.drop_index("ix_images_individual")
        batch.drop_column("individual")
    op.drop_index("ix_individuals_species", "individuals")
    op.drop_table("individuals")
