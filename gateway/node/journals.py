"""Journals in the node's state folder: delivered message ids and received events.

The delivered-message journal makes sure a restart never delivers a message twice.

An append-only text file in the node's state folder: one line per delivered envelope,
``<message id> <expires at, ms> <recorded at, ms> [<envelope sha-256, hex>]``. The time and the
digest let a duplicate be answered with the very receipt the first copy got. A line is written
after the sink took the record and fsynced before the offset is committed. An id is remembered
until its envelope expires: after that the envelope would be refused as stale anyway. A torn
last line (a crash mid-write) is skipped on load; the file is compacted on load when most of it
has expired.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from gateway.core.effects import DeliveredEntry
from gateway.core.outbound import ReceivedEvent
from gateway.errors import StorageError


def _line(message_id: str, entry: DeliveredEntry) -> str:
    digest = f" {entry.digest.hex()}" if entry.digest is not None else ""
    return f"{message_id} {entry.expires_ms} {entry.recorded_ms}{digest}\n"


def _open_journal(path: Path, what: str) -> tuple[list[str], TextIO, int]:
    """The complete lines of a journal, the journal opened for appending, and its size.

    A torn last line (a crash mid-write) is cut off, so that the next line starts clean.

    :raises StorageError: the file cannot be read or opened.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with path.open("r+b") as f:
                f.truncate(len(complete))
                f.flush()
                os.fsync(f.fileno())
        lines = complete.decode("utf-8", errors="replace").splitlines()
        return lines, path.open("a", encoding="utf-8"), len(complete)
    except OSError as exc:
        raise StorageError(f"{path}: cannot open the {what}: {exc}") from exc


class _Journal:
    """An append-only journal file: buffered lines, made durable by :meth:`sync`.

    Lines stay in memory until an fsync succeeds. After a failed write or fsync nothing is taken
    as durable: the next :meth:`sync` cuts the file back to its last synced size and writes the
    lines since again (what the kernel dropped after a failed fsync is not written by a second
    fsync).
    """

    _path: Path
    _file: TextIO
    _synced_size: int
    _unsynced: list[str]
    _broken: bool

    def _start(self, file: TextIO, size: int) -> None:
        self._file, self._synced_size, self._unsynced, self._broken = file, size, [], False

    def _append(self, line: str) -> None:
        self._unsynced.append(line)
        if self._broken:
            return  # written again, with the rest, by the next sync
        try:
            self._file.write(line)
        except OSError:
            self._broken = True

    def sync(self) -> None:
        """Flush and fsync what was appended.

        :raises StorageError: the disk refused (retriable: call again).
        """
        try:
            if self._broken:
                with contextlib.suppress(OSError):
                    self._file.close()
                os.truncate(self._path, self._synced_size)
                self._file = self._path.open("a", encoding="utf-8")
                self._file.write("".join(self._unsynced))
                self._broken = False
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._broken = True
            raise StorageError(f"{self._path}: cannot sync: {exc}") from exc
        self._synced_size += sum(len(line.encode("utf-8")) for line in self._unsynced)
        self._unsynced.clear()

    def close(self) -> None:
        """Sync and close."""
        self.sync()
        self._file.close()


class DeliveredJournal(_Journal):
    """Message ids delivered and not yet expired; ``in`` tests membership."""

    def __init__(self, path: Path, now_ms: int) -> None:
        self._path = path
        self._ids: dict[str, DeliveredEntry] = {}
        self.newest_recorded_ms: int | None = None
        lines, file, size = _open_journal(path, "delivered-message journal")
        self._start(file, size)
        for line in lines:
            self._load_line(line, now_ms)
        if len(lines) > 1000 and len(self._ids) < len(lines) // 2:
            self._file.close()
            try:
                self._compact()
                self._start(path.open("a", encoding="utf-8"), path.stat().st_size)
            except OSError as exc:
                raise StorageError(f"{path}: cannot compact the journal: {exc}") from exc

    def _load_line(self, line: str, now_ms: int) -> None:
        parts = line.split()
        if len(parts) not in (3, 4):
            return
        try:
            expires, recorded = int(parts[1]), int(parts[2])
            digest = bytes.fromhex(parts[3]) if len(parts) == 4 else None
        except ValueError:
            return
        self.newest_recorded_ms = max(self.newest_recorded_ms or 0, recorded)
        if expires > now_ms:
            self._ids[parts[0]] = DeliveredEntry(expires, recorded, digest)

    def _compact(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for message_id, entry in self._ids.items():
                f.write(_line(message_id, entry))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> Iterator[str]:
        """The message ids remembered."""
        return iter(self._ids)

    def get(self, message_id: str) -> DeliveredEntry | None:
        """When ``message_id`` was delivered and by which envelope, or None."""
        return self._ids.get(message_id)

    def remember(
        self, message_id: str, expires_ms: int, now_ms: int, digest: bytes | None = None
    ) -> None:
        """Note a delivery (buffered; :meth:`sync` makes it durable)."""
        if message_id in self._ids:
            return
        entry = DeliveredEntry(expires_ms, now_ms, digest)
        self._ids[message_id] = entry
        self.newest_recorded_ms = max(self.newest_recorded_ms or 0, now_ms)
        self._append(_line(message_id, entry))


def _restricted(event: ReceivedEvent) -> bool:
    return event.code == "H2" or event.onward_transfer != "ALLOWED"


class ReceivedEvents(_Journal, Mapping[str, ReceivedEvent]):
    """Events delivered from peers, by event id, with the handling they came under.

    The outbound path asks it before releasing: an event that came in under H2, or whose onward
    transfer is not ALLOWED, is not sent on to anyone but its sender. Lines are
    ``<event id> <sender> <code> <onward transfer> <forget after, ms>``; an entry is forgotten
    when the sender's retention ends (or after a year when the sender set none).
    """

    def __init__(self, path: Path, now_ms: int) -> None:
        self._path = path
        self._events: dict[str, tuple[ReceivedEvent, int]] = {}
        lines, file, size = _open_journal(path, "received-events journal")
        self._start(file, size)
        for line in lines:
            parts = line.split()
            if len(parts) == 5 and parts[4].isdigit():
                self._merge(parts[0], ReceivedEvent(parts[1], parts[2], parts[3]), int(parts[4]))
        # merged first, then aged: a lapsed strict entry must not leave a permissive one behind
        self._events = {k: v for k, v in self._events.items() if v[1] > now_ms}

    def __getitem__(self, event_id: str) -> ReceivedEvent:
        return self._events[event_id][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def _merge(self, event_id: str, event: ReceivedEvent, until_ms: int) -> None:
        held = self._events.get(event_id)
        if held is not None:
            if _restricted(held[0]) and not _restricted(event):
                event = held[0]
            until_ms = max(until_ms, held[1])
        self._events[event_id] = (event, until_ms)

    def remember(self, event_id: str, event: ReceivedEvent, until_ms: int) -> None:
        """Note a received event (buffered; :meth:`sync` makes it durable). Two senders may use
        the same event id: the more restrictive handling of the two is kept."""
        self._merge(event_id, event, until_ms)
        self._append(f"{event_id} {event.sender} {event.code} {event.onward_transfer} {until_ms}\n")
