"""Messages looked up by (prefix hash, user), newest first: the writer asks for the newest stored
message of a user whose history hash matches, which with the hash alone meant reading every
conversation that ever began the same way.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_prefix_user_created", "messages", ["prefix_hash", "user_id", "created_at"])
    op.drop_index("ix_messages_prefix_hash", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_prefix_hash", "messages", ["prefix_hash"])
    op.drop_index("ix_messages_prefix_user_created", table_name="messages")
