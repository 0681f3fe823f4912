"""connector records and state, scheduled tasks, asset search index

Revision ID: 0003
Revises: 0002

``asset_search`` is the full-text index of extracted text: an FTS5 virtual table on SQLite, a table with a
generated ``tsvector`` column and a GIN index on PostgreSQL. Both have the columns asset_id, organization_id,
filename, body.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("collection_id", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_assets_collection_id", ["collection_id"])

    op.create_table(
        "external_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=60), nullable=False),
        sa.Column("external_id", sa.String(length=300), nullable=False),
        sa.Column("resource_id", sa.String(length=200), nullable=True),
        sa.Column("title", sa.String(length=1000), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("asset_ids", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("uq_external_records_key", "external_records",
                    ["organization_id", "source", "kind", "external_id"], unique=True)
    op.create_index("ix_external_records_resource", "external_records", ["organization_id", "source", "resource_id"])

    op.create_table(
        "connector_states",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("connector", sa.String(length=40), nullable=False),
        sa.Column("resource_id", sa.String(length=200), nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("uq_connector_states_key", "connector_states", ["organization_id", "connector", "resource_id"],
                    unique=True)

    op.create_table(
        "scheduled_tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("organization_id", sa.Uuid(), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("run_type", sa.String(length=64), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("last_run_id", sa.Uuid(), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_scheduled_tasks_name", "scheduled_tasks", ["name"], unique=True)

    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE asset_search USING fts5("
                   "asset_id UNINDEXED, organization_id UNINDEXED, filename, body)")
    else:
        op.execute("CREATE TABLE asset_search (asset_id uuid PRIMARY KEY, organization_id uuid NOT NULL, "
                   "filename text NOT NULL, body text NOT NULL, tsv tsvector GENERATED ALWAYS AS "
                   "(to_tsvector('english', filename || ' ' || body)) STORED)")
        op.execute("CREATE INDEX ix_asset_search_tsv ON asset_search USING gin (tsv)")
        op.execute("CREATE INDEX ix_asset_search_org ON asset_search (organization_id)")


def downgrade() -> None:
    op.execute("DROP TABLE asset_search")
    op.drop_table("scheduled_tasks")
    op.drop_table("connector_states")
    op.drop_table("external_records")
    with op.batch_alter_table("assets") as batch:
        batch.drop_index("ix_assets_collection_id")
        batch.drop_column("deleted_at")
        batch.drop_column("external_id")
        batch.drop_column("collection_id")
