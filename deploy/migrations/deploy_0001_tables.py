"""deploy tables: immutable adapter versions, one routing row per base model, the append-only audit log.

Revision ID: deploy_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "deploy_0001"
down_revision = "core_0001"
branch_labels = ("deploy",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deploy_adapter_versions",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("base_model_hash", sa.String(128), nullable=False),
        sa.Column("parent_version", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config_hash", sa.String(128), nullable=False),
        sa.Column("dataset_hash", sa.String(128), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("manifest_json", sa.Text, nullable=False),
        sa.Column("lineage_json", sa.Text, nullable=False),
        sa.Column("location", sa.String(256), nullable=False),
        sa.Column("created_at", sa.String(64), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_by", sa.String(128), nullable=False),
        sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_deploy_adapter_versions_base_model", "deploy_adapter_versions", ["base_model"])
    op.create_index("ix_deploy_adapter_versions_status", "deploy_adapter_versions", ["status"])
    op.create_table(
        "deploy_routing",
        sa.Column("base_model", sa.String(512), primary_key=True),
        sa.Column("active_version", sa.String(64), sa.ForeignKey("deploy_adapter_versions.version"), nullable=True),
        sa.Column("canary_version", sa.String(64), sa.ForeignKey("deploy_adapter_versions.version"), nullable=True),
        sa.Column("canary_share", sa.Float, nullable=False, server_default="0"),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "deploy_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("from_version", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail_json", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_deploy_audit_at", "deploy_audit", ["at"])


def downgrade() -> None:
    op.drop_table("deploy_audit")
    op.drop_table("deploy_routing")
    op.drop_index("ix_deploy_adapter_versions_status", "deploy_adapter_versions")
    op.drop_index("ix_deploy_adapter_versions_base_model", "deploy_adapter_versions")
    op.drop_table("deploy_adapter_versions")
