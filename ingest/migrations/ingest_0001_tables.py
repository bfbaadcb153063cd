"""ingest tables: per-app API keys for the gateway, stored as SHA-256 digests (the key itself is shown once).

Revision ID: ingest_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "ingest_0001"
down_revision = "core_0001"
branch_labels = ("ingest",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("app_id", sa.String(64), nullable=False, index=True),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("note", sa.String(256), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ingest_api_keys")
