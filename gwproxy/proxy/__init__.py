"""The /v1 hot path: upstream registry and pool, byte relay, request schema, usage tap."""
