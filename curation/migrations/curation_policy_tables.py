"""curation policy: policy hash on windows and decisions, superseded decisions, retired pairs, recurations, and
the outbox of guard drops for the `.rejected` topic.

Revision ID: curation_policy
"""

import sqlalchemy as sa
from alembic import op

revision = "curation_policy"
down_revision = "curation_evidence"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("curation_decisions", "curation_windows"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("policy_hash", sa.String(64)))
    for table in ("curation_pairs", "curation_unpaired"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("retired_at", sa.DateTime))
            batch.add_column(sa.Column("retired_by", sa.String(64)))
        op.create_index(f"ix_{table}_retired_at", table, ["retired_at"])
    op.create_table(
        "curation_policies",
        sa.Column("policy_hash", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("first_used_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "curation_decision_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("policy_hash", sa.String(64)),
        sa.Column("window_start", sa.DateTime),
        sa.Column("decided_at", sa.DateTime, nullable=False),
        sa.Column("superseded_at", sa.DateTime, nullable=False),
        sa.Column("superseded_by", sa.String(32), nullable=False),
    )
    op.create_index("ix_curation_decision_history_key", "curation_decision_history", ["app_id", "event_id"])
    op.create_table(
        "curation_recurations",
        sa.Column("recuration_id", sa.String(32), primary_key=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("since", sa.DateTime, nullable=False),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_table(
        "curation_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for name in ("curation_outbox", "curation_recurations", "curation_decision_history", "curation_policies"):
        op.drop_table(name)
    for table in ("curation_unpaired", "curation_pairs"):
        op.drop_index(f"ix_{table}_retired_at", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("retired_by")
            batch.drop_column("retired_at")
    for table in ("curation_windows", "curation_decisions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("policy_hash")
