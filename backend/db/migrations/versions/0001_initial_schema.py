"""initial schema

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('organizations',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_organizations_slug'), ['slug'], unique=True)

    op.create_table('outbox_events',
    sa.Column('seq', BIGINT_PK, nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('payload', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_events_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_events_run_id'), ['run_id'], unique=False)

    op.create_table('assets',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('filename', sa.String(length=500), nullable=False),
    sa.Column('content_type', sa.String(length=200), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('storage_key', sa.String(length=500), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=True),
    sa.Column('extracted_text', sa.Text(), nullable=True),
    sa.Column('extraction_status', sa.String(length=16), nullable=False),
    sa.Column('extraction_meta', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assets_organization_id'), ['organization_id'], unique=False)

    op.create_table('run_groups',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('parent_run_id', sa.Uuid(), nullable=False),
    sa.Column('expected', sa.Integer(), nullable=False),
    sa.Column('completed', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('cancelled', sa.Integer(), nullable=False),
    sa.Column('sealed', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('completion_hook', sa.String(length=200), nullable=True),
    sa.Column('hook_config', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finalized_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('hook_fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_groups_parent_run_id'), ['parent_run_id'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('run_type', sa.String(length=64), nullable=False),
    sa.Column('origin', sa.Enum('user', 'system', 'scheduled', 'group', 'event', 'webhook', name='runorigin', native_enum=False, length=16), nullable=False),
    sa.Column('status', sa.Enum('pending', 'submitted', 'running', 'cancelling', 'stale', 'completed', 'failed', 'timed_out', 'cancelled', name='runstatus', native_enum=False, length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('queue', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=300), nullable=True),
    sa.Column('config', JSON, nullable=False),
    sa.Column('progress', JSON, nullable=False),
    sa.Column('results_summary', JSON, nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('input_asset_ids', JSON, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=True),
    sa.Column('resource_id', sa.String(length=200), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('submitted_to_celery_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_activity_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('celery_task_id', sa.String(length=64), nullable=True),
    sa.Column('worker_hostname', sa.String(length=200), nullable=True),
    sa.Column('dispatch_attempt', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Uuid(), nullable=True),
    sa.Column('parent_run_id', sa.Uuid(), nullable=True),
    sa.Column('is_group_parent', sa.Boolean(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('retry_of', sa.Uuid(), nullable=True),
    sa.Column('trace_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['run_groups.id'], ),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['parent_run_id'], ['runs.id'], ),
    sa.ForeignKeyConstraint(['retry_of'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_created', ['created_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_group_id'), ['group_id'], unique=False)
        batch_op.create_index('ix_runs_lease', ['status', 'lease_expires_at'], unique=False)
        batch_op.create_index('ix_runs_org_created', ['organization_id', 'created_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_parent_run_id'), ['parent_run_id'], unique=False)
        batch_op.create_index('ix_runs_resource', ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_run_type'), ['run_type'], unique=False)
        batch_op.create_index('ix_runs_status_queue', ['status', 'queue', 'priority'], unique=False)

    op.create_table('run_log_events',
    sa.Column('id', BIGINT_PK, nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('level', sa.Enum('INFO', 'WARN', 'ERROR', name='loglevel', native_enum=False, length=8), nullable=False),
    sa.Column('event_type', sa.String(length=40), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('context', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run_log_events', schema=None) as batch_op:
        batch_op.create_index('ix_run_log_events_run', ['run_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('run_log_events', schema=None) as batch_op:
        batch_op.drop_index('ix_run_log_events_run')

    op.drop_table('run_log_events')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_status_queue')
        batch_op.drop_index(batch_op.f('ix_runs_run_type'))
        batch_op.drop_index('ix_runs_resource')
        batch_op.drop_index(batch_op.f('ix_runs_parent_run_id'))
        batch_op.drop_index('ix_runs_org_created')
        batch_op.drop_index('ix_runs_lease')
        batch_op.drop_index(batch_op.f('ix_runs_group_id'))
        batch_op.drop_index('ix_runs_created')

    op.drop_table('runs')
    with op.batch_alter_table('run_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_groups_parent_run_id'))

    op.drop_table('run_groups')
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_assets_organization_id'))

    op.drop_table('assets')
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_events_run_id'))
        batch_op.drop_index(batch_op.f('ix_outbox_events_organization_id'))

    op.drop_table('outbox_events')
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_organizations_slug'))

    op.drop_table('organizations')
