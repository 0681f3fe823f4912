"""Alembic environment: the URL comes from the caller (``backend.db.migrate``) or the settings."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import backend.db.models  # noqa: F401  (registers the tables)
from backend.db.engine import make_engine
from backend.config import get_settings

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `curatore migrate`")
run_migrations_online()
