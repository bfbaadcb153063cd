"""curation evidence: the per-account, per-item, per-prompt and per-phrase records kept across windows.

Revision ID: curation_evidence
"""

import sqlalchemy as sa
from alembic import op

revision = "curation_evidence"
down_revision = "curation_0003_feedback_token"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "curation_evidence",
        sa.Column("section", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("curation_evidence")
