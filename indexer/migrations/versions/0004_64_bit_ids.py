"""64-bit image ids (they are the vector store's ids; a gallery may hold billions), and
64-bit vector counts in builds.

SQLite changes nothing: its INTEGER PRIMARY KEY is 64-bit already, and only that exact type
is the rowid that AUTOINCREMENT needs. PostgreSQL's INTEGER (serial) is 32-bit: the column
and the sequence behind it become BIGINT.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (("images", "id"), ("builds", "vectors"))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())
    if dialect == "postgresql":
        op.execute("ALTER SEQUENCE IF EXISTS images_id_seq AS BIGINT")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return
    if dialect == "postgresql":
        op.execute("ALTER SEQUENCE IF EXISTS images_id_seq AS INTEGER")
    for table, column in reversed(COLUMNS):
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
