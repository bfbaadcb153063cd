"""deploy admin tokens: named bearer tokens of the admin API, only their SHA-256 kept.

Revision ID: deploy_0002_admin_tokens
"""

import sqlalchemy as sa
from alembic import op

revision = "deploy_0002_admin_tokens"
down_revision = "deploy_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deploy_admin_tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_deploy_admin_tokens_name", "deploy_admin_tokens", ["name"])


def downgrade() -> None:
    op.drop_index("ix_deploy_admin_tokens_name", "deploy_admin_tokens")
    op.drop_table("deploy_admin_tokens")
