"""Authentication: JWTs (pure), passwords, API keys, the users service and /api/auth routes."""
