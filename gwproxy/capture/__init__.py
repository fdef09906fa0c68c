"""Capture: every chat through the gateway becomes conversation history, off the request path.

``record`` (what a request leaves behind: a bounded tee of the response bytes and its facts),
``assembly`` (pure: SSE or JSON → the assistant message), ``threads`` (pure: message prefix
hashes that find the conversation a request continues), ``spool`` (the append-only disk file
records wait in while the database is away), ``writer`` (the batch writer that owns the queue
and the spool), ``batch`` (storing one batch: threading and the inserts), ``worker`` (the
writer's own process) and ``courier`` (the gateway's side of it), ``repository`` (the API's
queries) and the routes: ``/api/conversations``,
``/api/usage`` and ``/api/chat``.
"""
