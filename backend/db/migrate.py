"""Run the Alembic migrations (the tests build their databases this way too)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from backend.config import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    settings = get_settings()
    if (url or settings.database_url).startswith("sqlite"):
        settings.ensure_dirs()
    command.upgrade(alembic_config(url), revision)


def revision(message: str, url: str | None = None) -> None:
    command.revision(alembic_config(url), message=message, autogenerate=True)
