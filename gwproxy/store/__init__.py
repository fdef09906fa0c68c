"""The gateway's database: engine (PostgreSQL or SQLite) and SQLAlchemy Core tables."""
