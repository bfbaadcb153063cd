"""curation decisions: the feedback token's status and what it signed (version, base model, serving time, response).

Revision ID: curation_0003_feedback_token
"""

import sqlalchemy as sa
from alembic import op

revision = "curation_0003_feedback_token"
down_revision = "curation_0002_app_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("curation_decisions") as batch:
        batch.add_column(sa.Column("token_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("verified_version", sa.String(256), nullable=True))
        batch.add_column(sa.Column("verified_base_model", sa.String(512), nullable=True))
        batch.add_column(sa.Column("served_at", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("response_id", sa.String(256), nullable=True))
    # canary-watch reads verified feedback of one version served in a period
    op.create_index("ix_curation_decisions_verified", "curation_decisions", ["verified_version", "served_at"])


def downgrade() -> None:
    op.drop_index("ix_curation_decisions_verified", table_name="curation_decisions")
    with op.batch_alter_table("curation_decisions") as batch:
        for name in ("response_id", "served_at", "verified_base_model", "verified_version", "token_status"):
            batch.drop_column(name)
