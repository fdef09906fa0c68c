"""Capture: every chat through the gateway becomes conversation history, off the request path.

The write pipeline: ``record`` (what a request leaves behind: a bounded tee of the response bytes
and its facts, as one wire line), ``writer`` (the batch writer that owns the queue and the spool),
``batch`` (storing one batch: threading and the inserts), ``spool`` (the append-only disk file
records wait in while the database is away), ``counters`` (what it counts, read by /metrics), and
``process/`` (the writer's own process: ``courier`` on the gateway's side, ``worker`` on the
other). Pure cores: ``assembly`` (SSE or JSON → the assistant message), ``responses`` (the same
for the Responses API), ``threads`` (message prefix hashes that find the conversation a request
continues). What reads the stored history is ``gwproxy.conversations``.
"""
