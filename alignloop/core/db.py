"""The store foundation: SQLAlchemy engines, sessions opened at the edge, and Alembic migrations.

Each package keeps its own tables and its own Alembic branch in `<package>/migrations/`; the core
branch holds the base revision they all hang from. Package branches are registered explicitly
(`alignloop.core.migrations.register`, or `open_store(..., branches=...)`), so `upgrade heads`
brings every registered package's tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from alignloop.core import migrations
from alignloop.core.errors import StoreError


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """An engine for `url`; SQLite gets WAL and foreign keys, PostgreSQL an optional search_path."""
    kwargs: dict = {"future": True, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif schema:
        kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI objects
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, future=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction owned by the caller's edge: commit on success, roll back on error."""
    session = make_session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations.FOLDER))
    cfg.set_main_option("version_locations", " ".join(str(p) for p in migrations.version_locations()))
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["engine"] = engine
    return cfg


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time: workers and replicas starting together on a new store would race."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        import fcntl

        lock_path = Path(engine.url.database).with_suffix(".migrate.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    elif engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7424971)"))  # a fixed key: "alignloop migrations"
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7424971)"))
                conn.commit()
    else:
        yield


def _registered_heads_applied(engine: Engine, cfg) -> bool:  # noqa: ANN001 - alembic's Config
    """Whether every registered branch is at its head already; the store may hold other packages' heads too."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(cfg).get_heads()) <= current_heads(engine)


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the store to `revision` (default: every registered branch's newest); concurrent callers take turns.

    A stage run alone (`python -m curation.worker`) knows only its own branch; on a shared store whose
    branches are all current it has nothing to do, so the other packages' heads it cannot read are left alone.
    """
    from alembic import command

    try:
        with _migration_lock(engine):
            cfg = alembic_config(engine)
            if revision == "heads" and _registered_heads_applied(engine, cfg):
                return
            command.upgrade(cfg, revision)
    except Exception as exc:  # alembic raises many kinds; the CLI needs one line
        hint = ""
        if "Can't locate revision" in str(exc):  # a head of a package branch that this process did not register
            known = " ".join(str(p) for p in migrations.version_locations())
            hint = f" (registered branches: {known}; a shared store needs every package's: flows.store)"
        raise StoreError(f"migration to {revision!r} failed on {engine.url.render_as_string()}: {exc}{hint}") from exc


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


def current_heads(engine: Engine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def open_store(url: str, *, schema: str | None = None, migrate: bool = True, branches: Iterable[Path] = ()) -> Engine:
    """The engine for the configured store, migrated to the newest schema of every registered branch.

    `branches`: the migrations folders of the caller's own package, registered first (they stay registered).
    """
    migrations.register(*branches)
    engine = make_engine(url, schema=schema)
    if migrate:
        upgrade(engine)
    return engine
