"""Spool: an append-only file of records waiting for the database, replayed in order.

``spool.jsonl`` holds one record per line, appended and fsync'd; ``spool.offset`` holds the
byte offset of the first line not yet written to the database, updated (atomically, by rename)
only after the database committed what came before it. A crash between the commit and the
offset update replays a few records twice, which the writer ignores (idempotent on request id).
When everything is replayed both files are truncated. ``max_bytes`` caps the file: a record
that would pass it is refused (the caller counts and logs it as dropped). All methods block on
disk I/O: the writer calls them from a worker thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.jsonl"
        self.offset_path = directory / "spool.offset"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.touch(exist_ok=True)

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def pending_bytes(self) -> int:
        with self._lock:
            return max(0, self.path.stat().st_size - self._offset())

    def append(self, lines: list[bytes]) -> int:
        """Append records; returns how many fit under ``max_bytes`` (the rest are refused)."""
        with self._lock:
            size = self.path.stat().st_size
            kept = []
            for line in lines:
                if size + len(line) + 1 > self.max_bytes:
                    break
                kept.append(line)
                size += len(line) + 1
            if kept:
                with self.path.open("ab") as f:
                    f.write(b"".join(line + b"\n" for line in kept))
                    f.flush()
                    os.fsync(f.fileno())
            return len(kept)

    def read(self, max_records: int) -> tuple[list[bytes], int]:
        """Up to ``max_records`` unreplayed lines, and the offset after them (for ``commit``)."""
        with self._lock:
            start = self._offset()
            out: list[bytes] = []
            with self.path.open("rb") as f:
                f.seek(start)
                position = start
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a line still being written (or torn by a crash): not yet
                    position += len(line)
                    if line.strip():
                        out.append(line.rstrip(b"\n"))
                    if len(out) >= max_records:
                        break
            return out, position

    def commit(self, offset: int) -> None:
        """Mark everything before ``offset`` as written; truncate when all of it is."""
        with self._lock:
            if offset >= self.path.stat().st_size:
                with self.path.open("wb") as f:
                    os.fsync(f.fileno())
                self.offset_path.unlink(missing_ok=True)
                return
            tmp = self.offset_path.with_suffix(".tmp")
            tmp.write_text(str(offset))
            os.replace(tmp, self.offset_path)
