"""Records parked for a topic that cannot take them now: a recipient's inbox that is missing or
that we may not write to, or a sender's receipts topic.

A failure tied to one recipient must not hold up the others, and must not lose anything: the
node writes the records durably here (one file each, fsynced before the batch's offsets are
committed) and a separate task offers them again with back-off, oldest first, until the topic
takes them or they expire. Each topic's folder is bounded in bytes; what does not fit is not
parked (the caller audits it as dropped, and the sender's status shows it overdue).

File name: ``<expires at, ms>-<message id>.rec``; content: a 4-byte length, a JSON line with the
record's key and headers, then the value.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StorageError

_SUFFIX = ".rec"


@dataclass(frozen=True, slots=True)
class ParkedRecord:
    """One parked record and where it is stored."""

    path: Path
    topic: str
    message_id: str
    expires_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class Parked:
    """The parked records of one node, one folder per topic."""

    def __init__(self, folder: Path, max_bytes_per_topic: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes_per_topic
        folder.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[str, int] = {}
        for topic_dir in self._topic_dirs():
            self._sizes[topic_dir.name] = sum(p.stat().st_size for p in _files(topic_dir))

    def _topic_dirs(self) -> Iterator[Path]:
        return (p for p in sorted(self.folder.iterdir()) if p.is_dir())

    def park(
        self,
        topic: str,
        message_id: str,
        expires_ms: int,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...],
    ) -> bool:
        """Write one record (fsynced; :meth:`sync` makes its name durable). False when the
        topic's folder is full (nothing written).

        :raises StorageError: the disk refused.
        """
        meta = json.dumps(
            {
                "key": key.hex() if key is not None else None,
                "headers": [[name, v.hex()] for name, v in headers],
            }
        ).encode()
        blob = len(meta).to_bytes(4, "big") + meta + value
        folder = self.folder / topic
        path = folder / f"{expires_ms}-{message_id}{_SUFFIX}"
        if path.exists():
            return True  # parked already (the same record again, say after a restart)
        if self._sizes.get(topic, 0) + len(blob) > self.max_bytes:
            return False
        temp = folder / f".{path.name}.tmp"
        try:
            folder.mkdir(exist_ok=True)
            with temp.open("wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except OSError as exc:
            raise StorageError(f"{folder}: cannot park a record: {exc}") from exc
        self._sizes[topic] = self._sizes.get(topic, 0) + len(blob)
        return True

    def sync(self) -> None:
        """Make the names of the parked files durable.

        :raises StorageError: the disk refused.
        """
        try:
            for folder in (self.folder, *self._topic_dirs()):
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageError(f"{self.folder}: cannot sync parked records: {exc}") from exc

    def topics(self) -> list[str]:
        """Topics with parked records."""
        return [topic for topic, size in sorted(self._sizes.items()) if size > 0]

    def counts(self) -> dict[str, int]:
        """Parked records per topic."""
        return {d.name: n for d in self._topic_dirs() if (n := len(list(_files(d))))}

    def oldest(self, topic: str, limit: int) -> list[ParkedRecord]:
        """Up to ``limit`` parked records of ``topic``, soonest to expire first (unreadable
        files are skipped: a torn write never reached its final name)."""
        records: list[ParkedRecord] = []
        for path in sorted(_files(self.folder / topic), key=_expiry)[:limit]:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                records.append(_read(path, topic))
        return records

    def remove(self, record: ParkedRecord) -> None:
        """Forget a record (sent, or expired)."""
        with contextlib.suppress(OSError):
            size = record.path.stat().st_size
            record.path.unlink()
            self._sizes[record.topic] = max(0, self._sizes.get(record.topic, 0) - size)


def _files(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return iter(())
    return (p for p in folder.iterdir() if p.suffix == _SUFFIX and not p.name.startswith("."))


def _expiry(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _read(path: Path, topic: str) -> ParkedRecord:
    blob = path.read_bytes()
    size = int.from_bytes(blob[:4], "big")
    meta = json.loads(blob[4 : 4 + size])
    expires, _, rest = path.name.partition("-")
    key = bytes.fromhex(meta["key"]) if meta["key"] is not None else None
    headers = tuple((str(name), bytes.fromhex(v)) for name, v in meta["headers"])
    return ParkedRecord(
        path, topic, rest.removesuffix(_SUFFIX), int(expires), key, blob[4 + size :], headers
    )
