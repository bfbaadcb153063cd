"""curation tables: staged events, decisions, preference pairs, unpaired examples, windows, dead letters.

Revision ID: curation_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "curation_0001"
down_revision = "core_0001"
branch_labels = ("curation",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "curation_events",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("occurred_at", sa.DateTime, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("staged_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_curation_events_occurred_at", "curation_events", ["occurred_at"])
    op.create_table(
        "curation_decisions",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16)),
        sa.Column("app_id", sa.String(64)),
        sa.Column("user_id", sa.String(128)),
        sa.Column("adapter_version", sa.String(256)),
        sa.Column("rating", sa.String(8)),
        sa.Column("occurred_at", sa.DateTime),
        sa.Column("window_start", sa.DateTime),
        sa.Column("decided_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_curation_decisions_decision", "curation_decisions", ["decision"])
    op.create_index("ix_curation_decisions_adapter_version", "curation_decisions", ["adapter_version"])
    op.create_index("ix_curation_decisions_occurred_at", "curation_decisions", ["occurred_at"])
    op.create_index("ix_curation_decisions_app_time", "curation_decisions", ["app_id", "occurred_at"])
    for name, key, cols in (
        (
            "curation_pairs",
            "pair_id",
            [sa.Column("chosen", sa.Text, nullable=False), sa.Column("rejected", sa.Text, nullable=False)],
        ),
        (
            "curation_unpaired",
            "example_id",
            [sa.Column("completion", sa.Text, nullable=False), sa.Column("label", sa.Boolean, nullable=False)],
        ),
    ):
        op.create_table(
            name,
            sa.Column(key, sa.String(32), primary_key=True),
            sa.Column("prompt", sa.Text, nullable=False),
            *cols,
            sa.Column("weight", sa.Float, nullable=False),
            sa.Column("dimension", sa.String(16), nullable=False),
            sa.Column("event_ids", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("window_start", sa.DateTime, nullable=False),
        )
        op.create_index(f"ix_{name}_created_at", name, ["created_at"])
    op.create_table(
        "curation_windows",
        sa.Column("window_start", sa.DateTime, primary_key=True),
        sa.Column("settled_at", sa.DateTime, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("kept", sa.Integer, nullable=False),
        sa.Column("signals", sa.Text, nullable=False),
    )
    op.create_table(
        "curation_dead_letters",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("stored_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for name in (
        "curation_dead_letters",
        "curation_windows",
        "curation_unpaired",
        "curation_pairs",
        "curation_decisions",
        "curation_events",
    ):
        op.drop_table(name)
