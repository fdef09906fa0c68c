"""Per-user and per-key rate-limit overrides.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("key_id", Id, nullable=True),
        sa.Column("requests", sa.Integer, nullable=True),
        sa.Column("window", sa.Float, nullable=True),
        sa.Column("tokens_per_minute", sa.Integer, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rate_limits"),
        sa.UniqueConstraint("user_id", name="uq_rate_limits_user_id"),
        sa.UniqueConstraint("key_id", name="uq_rate_limits_key_id"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_rate_limits_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_rate_limits_key_id_api_keys", ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
