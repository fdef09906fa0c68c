"""Stored responses: the owner and the upstream of each ``/v1/responses`` id the gateway relayed,
so that a response is retrieved, continued or cancelled by the user who made it only.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("user_id", id_type, nullable=True),
        sa.Column("upstream", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_stored_responses_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_stored_responses"),
    )
    op.create_index("ix_stored_responses_user", "stored_responses", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_user", table_name="stored_responses")
    op.drop_table("stored_responses")
