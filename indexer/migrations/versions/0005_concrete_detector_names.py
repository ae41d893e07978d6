"""models.detector holds the detector's concrete name: 'auto' (dlib's HOG for a human model,
the dog detector for a dog model, when such indexes were built) becomes 'hog' or 'dog', so a
query uses the very detector the gallery was built with even after 'auto' changes meaning.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE models SET detector = 'hog' WHERE detector = 'auto' AND species = 'human'")
    op.execute("UPDATE models SET detector = 'dog' WHERE detector = 'auto' AND species = 'dog'")


def downgrade() -> None:
    op.execute("UPDATE models SET detector = 'auto' WHERE detector = 'hog'")
