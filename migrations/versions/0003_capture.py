"""Conversation capture: conversations, messages (branching by parent), requests; users.capture.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("capture", sa.Boolean, nullable=False, server_default="1"))
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("title", sa.String(200), nullable=False, server_default=""),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_conversations_user_id_users", ondelete="CASCADE"),
    )
    op.create_index("ix_conversations_user_updated", "conversations", ["user_id", "updated_at", "id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=True),
        sa.Column("content_is_parts", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("reasoning_content", sa.Text, nullable=True),
        sa.Column("tool_calls", sa.Text, nullable=True),
        sa.Column("tool_call_id", sa.String(200), nullable=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("tokens", sa.Integer, nullable=True),
        sa.Column("request_id", sa.String(200), nullable=True),
        sa.Column("prefix_hash", sa.String(64), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_messages_conversation", "messages", ["conversation_id", "seq"])
    op.create_index("ix_messages_prefix_hash", "messages", ["prefix_hash"])
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("key_id", Id, nullable=True),
        sa.Column("conversation_id", sa.String(32), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_requests"),
    )
    op.create_index("ix_requests_user_created", "requests", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_table("requests")
    op.drop_table("messages")
    op.drop_table("conversations")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("capture")
