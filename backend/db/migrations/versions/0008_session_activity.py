"""browser sessions: last activity (idle expiry); secrets looked up by HMAC with the secret key

Revision ID: 0008
Revises: 0007

Sessions were stored as SHA-256 of their secret; they are now HMAC-SHA256(CURATORE_SECRET_KEY, secret), so
the sessions of before cannot be found any more: they are ended here (everyone signs in again once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_sessions") as batch:
        batch.add_column(sa.Column("last_seen_at", TS, nullable=True))
    op.execute(sa.text("UPDATE login_sessions SET revoked_at = CURRENT_TIMESTAMP WHERE revoked_at IS NULL"))


def downgrade() -> None:
    with op.batch_alter_table("login_sessions") as batch:
        batch.drop_column("last_seen_at")
