"""Daily usage rollups (per user, and over all users), built here from the requests stored so far
and kept by the capture writer from now on; a text index for conversation title search.

The search index: on PostgreSQL a GIN trigram index over (user_id, title) — pg_trgm, with
btree_gin for the user id (both contrib extensions PostgreSQL trusts a database owner to create);
where btree_gin is missing, over the title alone; where pg_trgm is missing, none (search still
works, by scanning a user's conversations). On SQLite an FTS5 table with the trigram tokenizer
(SQLite 3.34+), kept by triggers on ``conversations``.

The backfill reads every stored request once: on a large ``requests`` table this revision takes a
while (about 22 s for 20 million rows on a 2-core machine), in the same transaction as the rest.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COUNTS = ["requests", "failed", "prompt_tokens", "completion_tokens"]


def _counts() -> list[sa.Column]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTS]


def upgrade() -> None:
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", id_type, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        *_counts(),
        sa.PrimaryKeyConstraint("day", "user_id", "model", name="pk_usage_daily"),
    )
    op.create_index("ix_usage_daily_user_day", "usage_daily", ["user_id", "day"])
    op.create_table(
        "usage_daily_totals",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        *_counts(),
        sa.PrimaryKeyConstraint("day", "model", name="pk_usage_daily_totals"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "INSERT INTO usage_daily (day, user_id, model, requests, failed, prompt_tokens, completion_tokens) "
            "SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, coalesce(model, ''), count(*), "
            "sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), coalesce(sum(prompt_tokens), 0), "
            "coalesce(sum(completion_tokens), 0) FROM requests WHERE user_id IS NOT NULL GROUP BY 1, 2, 3"
        )
    else:  # SQLAlchemy stores a SQLite time as 'YYYY-MM-DD HH:MM:SS…' in UTC
        op.execute(
            "INSERT INTO usage_daily (day, user_id, model, requests, failed, prompt_tokens, completion_tokens) "
            "SELECT date(created_at), user_id, coalesce(model, ''), count(*), "
            "sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), coalesce(sum(prompt_tokens), 0), "
            "coalesce(sum(completion_tokens), 0) FROM requests WHERE user_id IS NOT NULL GROUP BY 1, 2, 3"
        )
    op.execute(
        "INSERT INTO usage_daily_totals (day, model, requests, failed, prompt_tokens, completion_tokens) "
        "SELECT day, model, sum(requests), sum(failed), sum(prompt_tokens), sum(completion_tokens) "
        "FROM usage_daily GROUP BY day, model"
    )
    if bind.dialect.name == "postgresql":
        _pg_search(bind)
    elif bind.dialect.name == "sqlite":
        _sqlite_search(bind)


def _available(bind: sa.Connection, extension: str) -> bool:
    """Installed, or installable here (the contrib files exist and this role may create it)."""
    if bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = :e"), {"e": extension}).first():
        return True
    if not bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = :e"), {"e": extension}).first():
        return False
    try:
        with bind.begin_nested():  # a refusal (no privilege) must not abort the migration
            bind.execute(sa.text('CREATE EXTENSION IF NOT EXISTS "' + extension + '"'))
    except sa.exc.DBAPIError:
        return False
    return True


def _pg_search(bind: sa.Connection) -> None:
    if not _available(bind, "pg_trgm"):
        return
    if _available(bind, "btree_gin"):
        op.execute("CREATE INDEX ix_conversations_title_trgm ON conversations USING gin (user_id, title gin_trgm_ops)")
    else:
        op.execute("CREATE INDEX ix_conversations_title_trgm ON conversations USING gin (title gin_trgm_ops)")


def _sqlite_search(bind: sa.Connection) -> None:
    create = "CREATE VIRTUAL TABLE conversations_title_fts USING fts5(cid UNINDEXED, title, tokenize='trigram')"
    try:
        with bind.begin_nested():
            bind.execute(sa.text(create))
    except sa.exc.DBAPIError:  # no FTS5, or a SQLite before 3.34 (no trigram tokenizer)
        return
    # A rename or a delete finds its row by scanning the FTS table (cid is not indexed): both are
    # rare, and the embedded database is not the one that holds millions of conversations.
    op.execute("INSERT INTO conversations_title_fts (cid, title) SELECT id, title FROM conversations")
    op.execute(
        "CREATE TRIGGER conversations_title_fts_insert AFTER INSERT ON conversations BEGIN "
        "INSERT INTO conversations_title_fts (cid, title) VALUES (new.id, new.title); END"
    )
    op.execute(
        "CREATE TRIGGER conversations_title_fts_update AFTER UPDATE OF title ON conversations BEGIN "
        "UPDATE conversations_title_fts SET title = new.title WHERE cid = old.id; END"
    )
    op.execute(
        "CREATE TRIGGER conversations_title_fts_delete AFTER DELETE ON conversations BEGIN "
        "DELETE FROM conversations_title_fts WHERE cid = old.id; END"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("insert", "update", "delete"):
            op.execute(sa.text("DROP TRIGGER IF EXISTS conversations_title_fts_" + trigger))
        op.execute("DROP TABLE IF EXISTS conversations_title_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_conversations_title_trgm")
    op.drop_table("usage_daily_totals")
    op.drop_index("ix_usage_daily_user_day", table_name="usage_daily")
    op.drop_table("usage_daily")
