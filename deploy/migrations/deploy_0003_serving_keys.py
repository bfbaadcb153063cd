"""deploy serving keys: API keys of chat callers, only their SHA-256 kept, with optional per-key rate limits.

Revision ID: deploy_0003_serving_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "deploy_0003_serving_keys"
down_revision = "deploy_0002_admin_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deploy_serving_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("rate_per_s", sa.Float, nullable=True),
        sa.Column("burst", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_deploy_serving_keys_name", "deploy_serving_keys", ["name"])


def downgrade() -> None:
    op.drop_index("ix_deploy_serving_keys_name", "deploy_serving_keys")
    op.drop_table("deploy_serving_keys")
