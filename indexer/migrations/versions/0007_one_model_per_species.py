"""An index may hold several models (`indexer build --models human,dog`), one per species: a
face's species names the model that embedded it and the vector store that holds it, so
models.species becomes unique. The models' order is their ids' order: the first (lowest id)
keeps the index's first vector store (vectors.faiss, the collection's own name).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.create_index("ux_models_species", ["species"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_index("ux_models_species")
