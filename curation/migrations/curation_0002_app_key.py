"""curation: staged events and decisions keyed by (app_id, event_id); event ids are unique per app only.

Before, one app's event could pre-empt another's that happened to carry the same event_id. Existing staged
rows take their app from the stored record; a refused event's decision without an app gets "".

Revision ID: curation_0002_app_key
"""

import sqlalchemy as sa
from alembic import op

revision = "curation_0002_app_key"
down_revision = "curation_0001"
branch_labels = None
depends_on = None


def _record_app() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "CAST(record AS json) ->> 'app_id'"
    return "json_extract(record, '$.app_id')"


def _set_key(table: str, columns: list[str], *, app_nullable: bool = False) -> None:
    """Make `columns` the primary key of `table` (and set whether app_id may be null)."""
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.alter_column(table, "app_id", existing_type=sa.String(64), nullable=app_nullable)
        op.create_primary_key(f"{table}_pkey", table, columns)
        return
    # SQLite cannot alter a key: batch mode copies the table (the naming convention names the reflected key,
    # which may have been created unnamed, so that it can be dropped)
    with op.batch_alter_table(table, recreate="always", naming_convention={"pk": "%(table_name)s_pkey"}) as batch:
        batch.alter_column("app_id", existing_type=sa.String(64), nullable=app_nullable)
        batch.drop_constraint(f"{table}_pkey", type_="primary")
        batch.create_primary_key(f"{table}_pkey", columns)


def upgrade() -> None:
    op.add_column("curation_events", sa.Column("app_id", sa.String(64), nullable=False, server_default=""))
    op.execute(f"UPDATE curation_events SET app_id = COALESCE({_record_app()}, '')")
    op.execute("UPDATE curation_decisions SET app_id = '' WHERE app_id IS NULL")
    _set_key("curation_events", ["app_id", "event_id"])
    _set_key("curation_decisions", ["app_id", "event_id"])


def downgrade() -> None:
    # the old key is event_id alone: of ids two apps share, the row of the first app by name stays
    for table in ("curation_decisions", "curation_events"):
        op.execute(
            f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM {table} o WHERE o.event_id = {table}.event_id "
            f"AND o.app_id < {table}.app_id)"
        )
    _set_key("curation_events", ["event_id"])
    _set_key("curation_decisions", ["event_id"], app_nullable=True)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("curation_events", "app_id")
    else:
        with op.batch_alter_table("curation_events") as batch:
            batch.drop_column("app_id")
