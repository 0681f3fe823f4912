"""asset_search on PostgreSQL: the words of a file name are searchable on their own

PostgreSQL's parser reads ``rocks.html`` as one "file" token, so searching for ``rocks`` missed it. The
generated ``tsvector`` now also holds the file name with its dots, dashes, underscores and slashes made
spaces. SQLite's FTS5 tokenizer already splits there: nothing changes on SQLite.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SPLIT = "regexp_replace(filename, '[._/\\-]+', ' ', 'g')"


def _tsv(expression: str) -> None:
    op.execute("DROP INDEX IF EXISTS ix_asset_search_tsv")
    op.execute("ALTER TABLE asset_search DROP COLUMN tsv")
    op.execute(f"ALTER TABLE asset_search ADD COLUMN tsv tsvector GENERATED ALWAYS AS ({expression}) STORED")
    op.execute("CREATE INDEX ix_asset_search_tsv ON asset_search USING gin (tsv)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _tsv(f"to_tsvector('english', filename || ' ' || {_SPLIT} || ' ' || body)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _tsv("to_tsvector('english', filename || ' ' || body)")
