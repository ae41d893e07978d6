"""Store file names as the bytes the file system gave: images.path, images.identity and
builds.gallery_root become BLOBs.

A POSIX file name is bytes; one that is not valid UTF-8 (e.g. b"caf\\xe9.jpg") reaches Python
as text with surrogate escapes, which SQLite's TEXT cannot hold, so such a file aborted a
build. As BLOBs (os.fsencode) every name is kept exactly; indexer.db.FileName turns them back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = {"images": ("path", "identity"), "builds": ("gallery_root",)}


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        # PostgreSQL casts text to bytea only when told how (USING); its names are UTF-8.
        for table, columns in COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.LargeBinary(), existing_type=sa.String(),
                                postgresql_using=f"convert_to({column}, 'UTF8')")
        return
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.LargeBinary(), existing_type=sa.String())
        # The copy kept the values TEXT; UTF-8 text cast to BLOB is the same bytes.
        op.execute(f"UPDATE {table} SET " + ", ".join(f"{c} = CAST({c} AS BLOB)" for c in columns))


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        # (A name that is not UTF-8 makes convert_from fail: the downgrade stops, nothing lost.)
        for table, columns in COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.String(), existing_type=sa.LargeBinary(),
                                postgresql_using=f"convert_from({column}, 'UTF8')")
        return
    # Names that are not UTF-8 cannot be TEXT: their rows are dropped (files to index again).
    for row_id, path, identity in connection.execute(sa.text("SELECT id, path, identity FROM images")).all():
        try:
            path.decode("utf-8"), identity.decode("utf-8") if identity is not None else None
        except UnicodeDecodeError:
            connection.execute(sa.text("DELETE FROM images WHERE id = :id"), {"id": row_id})
    for table, columns in COLUMNS.items():
        op.execute(f"UPDATE {table} SET " + ", ".join(f"{c} = CAST({c} AS TEXT)" for c in columns))
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.String(), existing_type=sa.LargeBinary())
