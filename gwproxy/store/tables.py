"""Tables: the schema, in SQLAlchemy Core, shared by PostgreSQL and SQLite.

Times are timezone-aware UTC ``DateTime``s. Secrets are never stored: passwords as argon2 hashes,
API keys and refresh tokens as SHA-256 digests (they are long random strings, so a fast hash is
enough), each with a short visible prefix for lookup and display. Alembic revisions in
``migrations/`` create exactly these tables; a test checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER keys

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False, server_default="user"),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("capture", Boolean, nullable=False, server_default="1"),  # record this user's conversations
    Column("allowed_models", JSON, nullable=True),  # the models it may name; NULL: any
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(128), nullable=False, server_default=""),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("key_hash", LargeBinary(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("allowed_models", JSON, nullable=True),  # narrows its user's list; NULL: as its user
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, unique=True),
    Column("key_id", Id, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True, unique=True),
    Column("requests", Integer, nullable=True),
    Column("window", Float, nullable=True),
    Column("tokens_per_minute", Integer, nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("family", String(32), nullable=False),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("token_hash", LargeBinary(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_refresh_tokens_family", "family"),
)

# Conversation capture. Ids are 32-hex uuid4 strings (made by the writer, so a replayed record
# maps to the same rows); ``requests.request_id`` is the idempotency key of a captured request.
conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("title", String(200), nullable=False, server_default=""),
    Column("model", String(200), nullable=True),
    Column("metadata", Text, nullable=False, server_default="{}"),  # a JSON object
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_conversations_user_updated", "user_id", "updated_at", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("conversation_id", String(32), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", String(32), nullable=True),  # the message before this one on its branch
    Column("user_id", Id, nullable=False),
    Column("seq", Integer, nullable=False),  # position in the conversation's branch (0 = first)
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=True),  # text, or the JSON parts of multimodal content
    Column("content_is_parts", Boolean, nullable=False, server_default="0"),
    Column("reasoning_content", Text, nullable=True),
    Column("tool_calls", Text, nullable=True),  # JSON list, as the OpenAI API writes them
    Column("tool_call_id", String(200), nullable=True),
    Column("name", String(200), nullable=True),
    Column("model", String(200), nullable=True),
    Column("finish_reason", String(32), nullable=True),
    Column("tokens", Integer, nullable=True),
    Column("request_id", String(200), nullable=True),
    Column("prefix_hash", String(64), nullable=False),  # hash of the branch up to and with this message
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_messages_conversation", "conversation_id", "seq"),
    Index("ix_messages_prefix_user_created", "prefix_hash", "user_id", "created_at"),  # newest per history
)

requests = Table(
    "requests",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("user_id", Id, nullable=True),
    Column("key_id", Id, nullable=True),
    Column("conversation_id", String(32), nullable=True),
    Column("model", String(200), nullable=True),
    Column("route", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_requests_user_created", "user_id", "created_at"),
)

# Stored ``/v1/responses``: who asked for each response id the gateway relayed, and which upstream
# holds it (vLLM keeps a stored response in the memory of the server that made it). Recorded before
# the client sees the id, so every replica can refuse it to anyone else (see ``store.responses``).
# ``user_id`` NULL: made with auth off (the anonymous caller). A user's deletion takes their rows.
stored_responses = Table(
    "stored_responses",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("upstream", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_stored_responses_user", "user_id"),
)

# Daily usage rollups, kept by the capture writer in the transaction that stores the requests (see
# ``store.rollups``): what ``/api/usage`` reads, so a range costs its days, not its requests. A day
# is a UTC date; a request without a model counts under ``""``.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("user_id", Id, primary_key=True, autoincrement=False),
    Column("model", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Index("ix_usage_daily_user_day", "user_id", "day"),
)

usage_daily_totals = Table(  # the same, summed over users: the all-users chart reads days × models rows
    "usage_daily_totals",
    metadata,
    Column("day", Date, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
)

# Conversation title search has a text index outside this metadata (SQLAlchemy Core cannot
# describe either kind): on PostgreSQL a GIN trigram index (pg_trgm, with btree_gin for the user
# id when available), on SQLite an FTS5 table with the trigram tokenizer kept by triggers. Both are
# made by migration 0006; ``unmanaged`` tells schema comparisons to leave them out.
TITLE_SEARCH_INDEX = "ix_conversations_title_trgm"
TITLE_SEARCH_TABLE = "conversations_title_fts"


def unmanaged(name: str | None) -> bool:
    """True for the search index's objects (the FTS5 table, its shadow tables, the GIN index)."""
    return bool(name) and (name == TITLE_SEARCH_INDEX or str(name).startswith(TITLE_SEARCH_TABLE))
