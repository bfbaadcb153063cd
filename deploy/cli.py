"""The `alignloop deploy` command group; heavy imports stay inside the commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

app = typer.Typer(help=__import__("deploy").__doc__, no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="print machine-readable JSON")
_REASON = typer.Option(..., "--reason", "-r", help="why (goes to the audit log)")
_BASE = typer.Option(None, "--base-model", help="base model whose routing to change; default: the only one routed")
T = TypeVar("T")


def _actor() -> str:
    """Who moves: the OS login running the command (the audit's actor), never an argument anyone could set."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except OSError:  # no login name in the environment or the password database (some containers)
        return f"uid:{os.getuid()}"


def _engine():
    from alignloop.core.db import open_store
    from deploy.migrations import FOLDER
    from deploy.settings import get_settings

    return open_store(get_settings().resolved_store_url(), branches=[FOLDER])


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, default=str, indent=None))


def _publish(routing) -> None:
    """Nudge the replicas; the registry change is committed either way, so a Redis outage only warns."""
    from rich.console import Console

    from deploy.control import publish_routing_change
    from deploy.settings import get_settings

    s = get_settings()
    try:
        n = publish_routing_change(
            s.resolved_redis_url(), routing.base_model, channel=s.control_channel, generation=routing.generation
        )
    except Exception as exc:
        Console(stderr=True).print(
            f"warning: control message not sent ({exc}); replicas follow within {s.reconcile_interval_s}s", markup=False
        )
        return
    Console(stderr=True).print(f"{n} replica(s) notified", markup=False)


def _in_registry(fn: Callable[[Any], T]) -> T:
    """`fn(session)` in one registry transaction, the engine disposed of after."""
    from alignloop.core.db import session_scope

    engine = _engine()
    try:
        with session_scope(engine) as session:
            return fn(session)
    finally:
        engine.dispose()


def _move(fn, as_json: bool) -> None:
    routing = _in_registry(fn)
    _publish(routing)
    if as_json:
        _echo_json(routing.model_dump(mode="json"))
    else:
        canary = f", canary {routing.canary} at {routing.canary_share:.0%}" if routing.canary else ""
        typer.echo(
            f"{routing.base_model}: active {routing.active or '(base model)'}{canary} [generation {routing.generation}]"
        )


@app.command("list")
def list_cmd(base_model: str | None = _BASE, as_json: bool = _JSON) -> None:
    """Registered adapter versions with their status, and where each base model's traffic goes."""
    from alignloop.core.db import session_scope
    from deploy import registry

    engine = _engine()
    with session_scope(engine) as session:
        versions = registry.list_versions(session, base_model)
        routings = registry.list_routings(session)
    engine.dispose()
    if as_json:
        _echo_json(
            {"versions": [v.summary() for v in versions], "routing": [r.model_dump(mode="json") for r in routings]}
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "status", "parent", "dataset", "registered", "by")
    for v in versions:
        table.add_row(
            v.version,
            str(v.status),
            v.parent_version or "-",
            v.dataset_hash[:12],
            v.registered_at.strftime("%Y-%m-%d %H:%M:%S"),
            v.registered_by,
        )
    console = Console()
    console.print(table)
    for r in routings:
        canary = f", canary {r.canary} at {r.canary_share:.0%}" if r.canary else ""
        console.print(
            f"{r.base_model}: active {r.active or '(base model)'}{canary} [generation {r.generation}]", markup=False
        )


@app.command("show")
def show_cmd(version: str, as_json: bool = _JSON) -> None:
    """One version's manifest, lineage and status."""
    from alignloop.core.db import session_scope
    from deploy import registry

    engine = _engine()
    with session_scope(engine) as session:
        v = registry.get_version(session, version)
    engine.dispose()
    typer.echo(json.dumps(v.model_dump(mode="json"), indent=None if as_json else 2))


@app.command("register")
def register_cmd(
    artifact_dir: Path = typer.Argument(..., help="adapter directory written by retrain"),
    reason: str = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Verify an adapter directory (sha256 of every file, safetensors only) and copy it in as a candidate."""
    from alignloop.core.db import session_scope
    from deploy import registry

    engine = _engine()
    with session_scope(engine) as session:
        v = registry.register_adapter(session, artifact_dir, actor=_actor(), reason=reason)
    engine.dispose()
    if as_json:
        _echo_json(v.summary())
    else:
        typer.echo(f"registered {v.version} ({v.status}) for {v.base_model}")


@app.command("canary")
def canary_cmd(
    version: str,
    share: float = typer.Option(..., "--share", help="fraction of users, in (0, 1]"),
    reason: str = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Send a sticky share of users (by user id) to a candidate version."""
    from deploy import registry

    _move(lambda s: registry.start_canary(s, version, share, actor=_actor(), reason=reason), as_json)


@app.command("promote")
def promote_cmd(
    version: str | None = typer.Argument(None, help="version to make active; default: the canary"),
    reason: str = _REASON,
    base_model: str | None = _BASE,
    as_json: bool = _JSON,
) -> None:
    """Make a version (default: the running canary) the active adapter; every replica follows within a second."""
    from deploy import registry

    _move(lambda s: registry.promote(s, version, actor=_actor(), reason=reason, base_model=base_model), as_json)


@app.command("rollback")
def rollback_cmd(
    to: str | None = typer.Option(
        None,
        "--to",
        help="a previously active version to restore, or "
        "`base`: the base model, which loads no adapter and so always works",
    ),
    reason: str = _REASON,
    base_model: str | None = _BASE,
    as_json: bool = _JSON,
) -> None:
    """Stop the canary if one runs; else go back to the previous active version (or the one given by --to).

    `--to base` stops the canary and the active adapter at once and serves the base model: it reads no
    adapter file, so it works even when the adapters' files are damaged or gone."""
    from deploy import registry

    _move(lambda s: registry.rollback(s, to=to, actor=_actor(), reason=reason, base_model=base_model), as_json)


@app.command("audit")
def audit_cmd(limit: int = typer.Option(50, "--limit", help="newest N entries"), as_json: bool = _JSON) -> None:
    """The append-only audit log: who moved what, when and why."""
    from alignloop.core.db import session_scope
    from deploy import registry

    engine = _engine()
    with session_scope(engine) as session:
        entries = registry.audit_log(session, limit)
    engine.dispose()
    if as_json:
        _echo_json([e.model_dump(mode="json") for e in entries])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("at", "actor", "action", "version", "from", "reason")
    for e in entries:
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.actor,
            e.action,
            e.version or "(base)",
            e.from_version or "-",
            e.reason,
        )
    Console().print(table)


tokens_app = typer.Typer(
    help="Admin API tokens: named (the name is the audit's actor), several at once, stored hashed.",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")


def _when(t) -> str:
    """A secret's maker and state, as `list` prints them."""
    state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M:%S}" if t.revoked_at else "active"
    return f"made by {t.created_by} {t.created_at:%Y-%m-%d %H:%M:%S}  {state}"


def _echo_revoked(revoked: list, id_attr: str, as_json: bool) -> None:
    if as_json:
        _echo_json([r.model_dump(mode="json") for r in revoked])
    else:
        typer.echo(f"revoked {', '.join(f'{getattr(r, id_attr)} ({r.name})' for r in revoked)}")


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Argument(..., help="who uses it (goes to the audit log as the actor)"), as_json: bool = _JSON
) -> None:
    """Make an admin token for NAME and print it once (the registry keeps its SHA-256 only)."""
    from deploy.tokens import create_admin_token

    record, token = _in_registry(lambda session: create_admin_token(session, name, created_by=_actor()))
    if as_json:
        _echo_json({**record.model_dump(mode="json"), "token": token})
    else:
        typer.echo(
            f"{token}\n(admin token {record.token_id} for {name!r}: shown once; send it as `Authorization: Bearer ...`)"
        )


@tokens_app.command("list")
def tokens_list(as_json: bool = _JSON) -> None:
    """Admin tokens without their secrets: id, name, who made it and when, revoked or not."""
    from deploy.tokens import list_admin_tokens

    tokens = _in_registry(list_admin_tokens)
    if as_json:
        _echo_json([t.model_dump(mode="json") for t in tokens])
        return
    for t in tokens:
        typer.echo(f"{t.token_id}  {t.name}  {_when(t)}")


@tokens_app.command("revoke")
def tokens_revoke(
    name_or_id: str = typer.Argument(..., help="a token id, or a name: all its active tokens"), as_json: bool = _JSON
) -> None:
    """Revoke admin tokens; replicas refuse them within `ADMIN_TOKEN_CACHE_S` seconds."""
    from deploy.tokens import revoke_admin_token

    revoked = _in_registry(lambda session: revoke_admin_token(session, name_or_id, revoked_by=_actor()))
    _echo_revoked(revoked, "token_id", as_json)


keys_app = typer.Typer(
    help="Serving API keys of chat callers (an app's backend each): named, with an optional own rate, stored hashed.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="the caller (an app or service); shown in refusals"),
    rate: float | None = typer.Option(None, "--rate", help="requests/s; default ALIGNLOOP_DEPLOY_KEY_RATE_PER_S"),
    burst: int | None = typer.Option(None, "--burst", help="requests at once; default ALIGNLOOP_DEPLOY_KEY_BURST"),
    as_json: bool = _JSON,
) -> None:
    """Make a serving key for NAME and print it once (the registry keeps its SHA-256 only)."""
    from deploy.keys import create_serving_key

    record, key = _in_registry(
        lambda session: create_serving_key(session, name, created_by=_actor(), rate_per_s=rate, burst=burst)
    )
    if as_json:
        _echo_json({**record.model_dump(mode="json"), "key": key})
    else:
        typer.echo(
            f"{key}\n(serving key {record.key_id} for {name!r}: shown once; "
            "send it as `Authorization: Bearer ...` to /v1/chat/completions)"
        )


@keys_app.command("list")
def keys_list(as_json: bool = _JSON) -> None:
    """Serving keys without their secrets: id, name, own rate, who made it and when, revoked or not."""
    from deploy.keys import list_serving_keys

    keys = _in_registry(list_serving_keys)
    if as_json:
        _echo_json([k.model_dump(mode="json") for k in keys])
        return
    for k in keys:
        rate = f"{k.rate_per_s:g}/s" if k.rate_per_s else "default rate"
        typer.echo(f"{k.key_id}  {k.name}  {rate}  {_when(k)}")


@keys_app.command("revoke")
def keys_revoke(
    name_or_id: str = typer.Argument(..., help="a key id, or a name: all its active keys"), as_json: bool = _JSON
) -> None:
    """Revoke serving keys; replicas refuse them within `KEY_CACHE_S` seconds."""
    from deploy.keys import revoke_serving_key

    revoked = _in_registry(lambda session: revoke_serving_key(session, name_or_id, revoked_by=_actor()))
    _echo_revoked(revoked, "key_id", as_json)


@app.command("serve")
def serve_cmd(
    base_model: str | None = typer.Option(None, "--base-model", help="HF model dir; or ALIGNLOOP_DEPLOY_BASE_MODEL"),
    host: str | None = typer.Option(None, "--host"),
    port: int | None = typer.Option(None, "--port"),
    backend: str | None = typer.Option(
        None, "--backend", help="embedded (default) or vllm; or ALIGNLOOP_DEPLOY_BACKEND"
    ),
    vllm_url: list[str] = typer.Option(
        [], "--vllm-url", help="attach to this vLLM server (repeat); none: start ALIGNLOOP_DEPLOY_VLLM_REPLICAS of them"
    ),
) -> None:
    """Run the router over one backend: OpenAI-compatible /v1/chat/completions and /v1/models (serving key),
    /healthz, /metrics, /admin (token)."""
    from deploy.serving import serve
    from deploy.settings import DeploySettings, get_settings

    overrides = {
        k: v
        for k, v in {
            "base_model": base_model,
            "host": host,
            "port": port,
            "backend": backend,
            "vllm_urls": vllm_url or None,
        }.items()
        if v is not None
    }
    from pydantic import ValidationError

    from deploy.errors import ServingError

    try:  # validated, so `--backend nonsense` is one line naming the field, not a traceback later
        settings = DeploySettings.model_validate({**get_settings().model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ServingError(f"`{'.'.join(map(str, first['loc']))}`: {first['msg']}; got {first['input']!r}") from None
    serve(settings)


@app.command("vllm-setup")
def vllm_setup_cmd(
    python: Path | None = typer.Option(
        None, "--python", help="the venv's python to make; default ALIGNLOOP_DEPLOY_VLLM_PYTHON or <cache>/vllm-venv"
    ),
    as_json: bool = _JSON,
) -> None:
    """Install vLLM for CPU into its own venv (a few minutes, 3.4 GB, once); nothing to do when it is there."""
    from deploy.settings import get_settings
    from deploy.vllm_env import install_vllm_env

    target = python or get_settings().resolved_vllm_python()
    installed = install_vllm_env(target)
    if as_json:
        _echo_json({"python": str(target), "installed_now": installed})
    else:
        typer.echo(f"{target}: {'installed' if installed else 'already set up'}")
