"""Support for the tests: processes, throwaway servers (PostgreSQL, Redis, Podman), switching helpers."""
