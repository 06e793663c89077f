"""The journal of delivered message ids, so that a restart never delivers a message twice.

An append-only text file in the node's state folder: one line per delivered envelope,
``<message id> <expires at, ms> <recorded at, ms>``. A line is written after the sink took the
record and fsynced before the offset is committed. An id is remembered until its envelope
expires: after that the envelope would be refused as stale anyway. A torn last line (a crash
mid-write) is skipped on load; the file is compacted on load when most of it has expired.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.errors import StorageError


class DeliveredJournal:
    """Message ids delivered and not yet expired; ``in`` tests membership."""

    def __init__(self, path: Path, now_ms: int) -> None:
        self._path = path
        self._ids: dict[str, int] = {}
        self.newest_recorded_ms: int | None = None
        lines = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                with path.open("r", encoding="utf-8", errors="replace") as f:
                    for line in f:
                        lines += 1
                        self._load_line(line, now_ms)
            if lines > 1000 and len(self._ids) < lines // 2:
                self._compact()
            self._file = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the delivered-message journal: {exc}") from exc

    def _load_line(self, line: str, now_ms: int) -> None:
        parts = line.split()
        if len(parts) != 3 or not line.endswith("\n"):
            return  # a torn write: the sink recovery scan covers that record
        try:
            expires, recorded = int(parts[1]), int(parts[2])
        except ValueError:
            return
        self.newest_recorded_ms = max(self.newest_recorded_ms or 0, recorded)
        if expires > now_ms:
            self._ids[parts[0]] = expires

    def _compact(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for message_id, expires in self._ids.items():
                f.write(f"{message_id} {expires} {self.newest_recorded_ms or 0}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def remember(self, message_id: str, expires_ms: int, now_ms: int) -> None:
        """Note a delivery (buffered; :meth:`sync` makes it durable)."""
        if message_id in self._ids:
            return
        self._ids[message_id] = expires_ms
        try:
            self._file.write(f"{message_id} {expires_ms} {now_ms}\n")
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot append: {exc}") from exc

    def sync(self) -> None:
        """Flush and fsync what :meth:`remember` wrote.

        :raises StorageError: the disk refused.
        """
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot sync: {exc}") from exc

    def close(self) -> None:
        """Sync and close."""
        self.sync()
        self._file.close()
