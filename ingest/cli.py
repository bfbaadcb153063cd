"""The `alignloop ingest` command group; heavy imports stay inside the commands."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help=__import__("ingest").__doc__, no_args_is_help=True)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the v1 feedback event (the committed ingest/schema/feedback-event-v1.json)."""
    from ingest.events import event_json_schema

    typer.echo(json.dumps(event_json_schema(), indent=2, sort_keys=True))


keys_app = typer.Typer(
    help="Per-app API keys of the gateway (stored hashed; a key is shown once).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _engine(store_url: str | None):
    from alignloop.core.db import open_store
    from alignloop.core.settings import get_settings
    from ingest.migrations import FOLDER

    return open_store(store_url or get_settings().resolved_store_url, branches=[FOLDER])


StoreOpt = typer.Option(None, "--store-url", help="SQLAlchemy URL of the store (default: core settings)")
JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON")


@keys_app.command("create")
def keys_create(
    app_id: str = typer.Argument(..., help="the app the key may send events for"),
    note: str = typer.Option("", help="who or what the key is for"),
    store_url: str | None = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create an API key for APP_ID and print it (only this once: the store keeps its SHA-256)."""
    from alignloop.core.db import session_scope
    from ingest.store import create_key

    with session_scope(_engine(store_url)) as session:
        record, key = create_key(session, app_id, note)
    if as_json:
        typer.echo(json.dumps({**record.as_dict(), "key": key}))
    else:
        typer.echo(f"key_id {record.key_id} for app {record.app_id} (shown once, keep it secret):\n{key}")


@keys_app.command("list")
def keys_list(
    app_id: str | None = typer.Option(None, "--app", help="only this app's keys"),
    store_url: str | None = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List API keys (ids, apps, notes, revocation); never the keys themselves."""
    from alignloop.core.db import session_scope
    from ingest.store import list_keys

    with session_scope(_engine(store_url)) as session:
        keys = list_keys(session, app_id)
    if as_json:
        typer.echo(json.dumps([k.as_dict() for k in keys]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key_id", "app_id", "note", "created_at", "revoked_at")
    for k in keys:
        table.add_row(
            k.key_id,
            k.app_id,
            k.note,
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="the key's id (the 12 hex digits after `alk_`)"),
    store_url: str | None = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Revoke a key; gateways refuse it within their key cache time (ALIGNLOOP_INGEST_KEY_CACHE_S, 5 s)."""
    from alignloop.core.db import session_scope
    from ingest.store import revoke_key

    with session_scope(_engine(store_url)) as session:
        record = revoke_key(session, key_id)
    typer.echo(json.dumps(record.as_dict()) if as_json else f"revoked {record.key_id} ({record.app_id})")


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, help="address to listen on (default: settings, 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default: settings, 8700)"),
    bootstrap: str | None = typer.Option(None, help="Kafka bootstrap servers (default: core settings)"),
    store_url: str | None = StoreOpt,
) -> None:
    """Run the HTTP gateway: POST /v1/events, /healthz, /metrics, /docs. Creates missing topics at start-up."""
    import uvicorn

    from ingest.gateway import build_config, create_app
    from ingest.settings import get_settings

    s = get_settings()
    gateway = create_app(build_config(bootstrap=bootstrap, store_url=store_url))
    # no access log: it would write the raw client address, which ingest promises never to store
    uvicorn.run(gateway, host=host or s.host, port=port or s.port, access_log=False, log_level="warning")


@app.command("topics")
def topics(
    partitions: int | None = typer.Option(None, help="partitions of created topics (default: settings, 6)"),
    bootstrap: str | None = typer.Option(None, help="Kafka bootstrap servers (default: core settings)"),
    as_json: bool = JsonOpt,
) -> None:
    """Create the feedback, rejected and DLQ topics when missing (idempotent) and say what was done."""
    from alignloop.core.settings import get_settings as core_settings
    from ingest.settings import get_settings
    from ingest.topics import ensure_topics

    s = get_settings()
    done = ensure_topics(bootstrap or core_settings().kafka_bootstrap, partitions or s.partitions, base=s.topic)
    typer.echo(json.dumps(done) if as_json else "\n".join(f"{name}: {what}" for name, what in done.items()))
