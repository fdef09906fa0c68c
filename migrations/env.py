"""Alembic environment for gwproxy: run through ``gwproxy migrate`` (``gwproxy.store.migrator``),
which passes an open connection (PostgreSQL or SQLite) in ``config.attributes["connection"]``."""

from alembic import context

from gwproxy.store.tables import metadata, unmanaged

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `gwproxy migrate`, which supplies the connection")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
    include_name=lambda name, kind, parent: not unmanaged(name),  # the title search index (migration 0006)
)
with context.begin_transaction():
    context.run_migrations()
