"""Journals in the node's state folder: delivered message ids and received events.

The delivered-message journal makes sure a restart never delivers a message twice: a message id
is remembered with when it was delivered and the digest of the envelope that delivered it (so
that a duplicate is answered with the very receipt the first copy got), until its envelope
expires (after that the envelope would be refused as stale anyway). The received-events journal
remembers under which handling each event came in, so that the outbound path refuses to forward
what it must not.

Both live in one SQLite database, ``<state>/journal.sqlite`` (write-ahead log, ``synchronous =
FULL``). Entries are written as a batch is executed and made durable together by :meth:`sync`,
one commit (one fsync) for both, before the batch's offsets are committed.

Why SQLite (the standard library's): what must be remembered grows with the traffic and the
envelope lifetime (30 days by default: far more ids than a node should hold in memory), and is
looked up for every envelope. SQLite gives an indexed store on disk with atomic, durable
commits; the node's memory holds only SQLite's page cache and the entries not yet committed.

After a failed commit nothing is taken as durable: the transaction is rolled back and the
entries since the last good commit, which the journal keeps until then, are written again by the
next :meth:`sync` (what the kernel dropped after a failed fsync is not written by a second one).
Until then lookups see them from memory.

Journals of earlier versions (``delivered.journal``, ``received.journal``: text, one entry a
line) are taken over on first open and renamed ``*.imported``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from gateway.core.effects import DeliveredEntry
from gateway.core.outbound import ReceivedEvent
from gateway.errors import StorageError

JOURNAL_FILE = "journal.sqlite"
CACHE_KIB = 8 * 1024
"""SQLite's page cache per node: the bound on what the journals hold in memory."""
EXPIRE_EVERY_S = 600.0
"""How often expired entries are deleted while the node runs (and at every open)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivered (
    message_id TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    digest BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_expiry ON delivered (expires_ms);
CREATE TABLE IF NOT EXISTS received (
    event_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    code TEXT NOT NULL,
    onward_transfer TEXT NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS received_expiry ON received (until_ms);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_PUT_DELIVERED = "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)"
_PUT_RECEIVED = "INSERT OR REPLACE INTO received VALUES (?, ?, ?, ?, ?)"
_PUT_NEWEST = "INSERT OR REPLACE INTO meta VALUES ('newest_recorded_ms', ?)"

_Held = tuple[ReceivedEvent, int]


def _restricted(event: ReceivedEvent) -> bool:
    return event.code == "H2" or event.onward_transfer != "ALLOWED"


def _merged(held: _Held | None, event: ReceivedEvent, until_ms: int) -> _Held:
    """Two senders may use the same event id: the more restrictive handling is kept, as long as
    the longer of the two retentions."""
    if held is None:
        return event, until_ms
    if _restricted(held[0]) and not _restricted(event):
        event = held[0]
    return event, max(until_ms, held[1])


class Journals:
    """The node's journals in one database; :attr:`delivered` and :attr:`received` are views."""

    def __init__(
        self,
        state_dir: Path,
        now_ms: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        """Open (or create) the journals and forget what has expired by ``now_ms``; while
        open, what expires is deleted every :data:`EXPIRE_EVERY_S` of ``clock`` (as of
        ``wall_ms``).

        :raises StorageError: the database cannot be opened, read or written.
        """
        self._path = state_dir / JOURNAL_FILE
        self._clock = clock
        self._wall_ms = wall_ms
        self._expired_at = clock()
        self._pending_delivered: dict[str, DeliveredEntry] = {}
        self._pending_received: dict[str, _Held] = {}
        self._broken = False
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self._path}: cannot open the journals: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._db.executescript(_SCHEMA)
            row = self._db.execute(
                "SELECT value FROM meta WHERE name = 'newest_recorded_ms'"
            ).fetchone()
            self.newest_recorded_ms: int | None = None if row is None else int(row[0])
            self.delivered = DeliveredJournal(self)
            self.received = ReceivedEvents(self)
            self._import_text_journals(state_dir, now_ms)
            self._expire(now_ms)
        except (OSError, sqlite3.Error) as exc:
            self._db.close()
            raise StorageError(f"{self._path}: cannot read the journals: {exc}") from exc

    # --- writing ---------------------------------------------------------------------------------

    def remember_delivered(self, message_id: str, entry: DeliveredEntry) -> None:
        if self.get_delivered(message_id) is not None:
            return
        self._pending_delivered[message_id] = entry
        self.newest_recorded_ms = max(self.newest_recorded_ms or 0, entry.recorded_ms)
        self._write(_PUT_DELIVERED, (message_id, entry.expires_ms, entry.recorded_ms, entry.digest))

    def remember_received(self, event_id: str, event: ReceivedEvent, until_ms: int) -> None:
        held = _merged(self.get_received(event_id), event, until_ms)
        self._pending_received[event_id] = held
        e, until = held
        self._write(_PUT_RECEIVED, (event_id, e.sender, e.code, e.onward_transfer, until))

    def _write(self, statement: str, values: tuple[object, ...]) -> None:
        if self._broken:
            return  # written again, with the rest, by the next sync
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN")
            self._db.execute(statement, values)
        except sqlite3.Error:
            self._broken = True

    def sync(self) -> None:
        """Make every entry remembered so far durable (one commit).

        :raises StorageError: the disk refused (retriable: call again).
        """
        try:
            if self._broken:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("BEGIN")
                self._db.executemany(
                    _PUT_DELIVERED,
                    [
                        (m, e.expires_ms, e.recorded_ms, e.digest)
                        for m, e in self._pending_delivered.items()
                    ],
                )
                self._db.executemany(
                    _PUT_RECEIVED,
                    [
                        (i, e.sender, e.code, e.onward_transfer, until)
                        for i, (e, until) in self._pending_received.items()
                    ],
                )
                self._broken = False
            if self._db.in_transaction:
                if self._pending_delivered:
                    self._db.execute(_PUT_NEWEST, (self.newest_recorded_ms,))
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._broken = True
            raise StorageError(f"{self._path}: cannot sync the journals: {exc}") from exc
        self._pending_delivered.clear()
        self._pending_received.clear()
        if self._clock() - self._expired_at >= EXPIRE_EVERY_S:
            with contextlib.suppress(sqlite3.Error):  # tried again at the next interval
                self._expire(self._wall_ms())

    def close(self) -> None:
        """Sync and close.

        :raises StorageError: the last entries could not be made durable.
        """
        try:
            self.sync()
        finally:
            self._db.close()

    def _expire(self, now_ms: int) -> None:
        """Delete what has expired (in a transaction of its own: nothing is pending here)."""
        self._expired_at = self._clock()
        with self._db:
            self._db.execute("DELETE FROM delivered WHERE expires_ms <= ?", (now_ms,))
            self._db.execute("DELETE FROM received WHERE until_ms <= ?", (now_ms,))

    # --- reading ---------------------------------------------------------------------------------

    def get_delivered(self, message_id: str) -> DeliveredEntry | None:
        pending = self._pending_delivered.get(message_id)
        if pending is not None:
            return pending
        row = self._db.execute(
            "SELECT expires_ms, recorded_ms, digest FROM delivered WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        return None if row is None else DeliveredEntry(int(row[0]), int(row[1]), row[2])

    def get_received(self, event_id: str) -> _Held | None:
        pending = self._pending_received.get(event_id)
        if pending is not None:
            return pending
        row = self._db.execute(
            "SELECT sender, code, onward_transfer, until_ms FROM received WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        return None if row is None else (ReceivedEvent(row[0], row[1], row[2]), int(row[3]))

    def count(self, table: str) -> int:
        """Rows of ``delivered`` or ``received``, pending ones included."""
        assert table in ("delivered", "received")
        (rows,) = self._db.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        if not self._broken:  # the pending entries are in the transaction under way
            return int(rows)
        key = "message_id" if table == "delivered" else "event_id"
        pending = self._pending_delivered if table == "delivered" else self._pending_received
        query = f"SELECT 1 FROM {table} WHERE {key} = ?"  # noqa: S608
        return int(rows) + sum(self._db.execute(query, (k,)).fetchone() is None for k in pending)

    def received_ids(self) -> Iterator[str]:
        stored = [str(i) for (i,) in self._db.execute("SELECT event_id FROM received")]
        return iter(dict.fromkeys([*stored, *self._pending_received]))

    # --- journals of earlier versions ------------------------------------------------------------

    def _import_text_journals(self, state_dir: Path, now_ms: int) -> None:
        delivered = state_dir / "delivered.journal"
        for line in _text_lines(delivered):
            parts = line.split()
            if len(parts) not in (3, 4):
                continue
            try:
                expires, recorded = int(parts[1]), int(parts[2])
                digest = bytes.fromhex(parts[3]) if len(parts) == 4 else None
            except ValueError:
                continue
            self.newest_recorded_ms = max(self.newest_recorded_ms or 0, recorded)
            if expires > now_ms:
                self.remember_delivered(parts[0], DeliveredEntry(expires, recorded, digest))
        received = state_dir / "received.journal"
        for line in _text_lines(received):
            parts = line.split()
            if len(parts) == 5 and parts[4].isdigit():
                event = ReceivedEvent(parts[1], parts[2], parts[3])
                self.remember_received(parts[0], event, int(parts[4]))
        if self.newest_recorded_ms is not None:
            self._write(_PUT_NEWEST, (self.newest_recorded_ms,))
        self.sync()
        for old in (delivered, received):
            if old.exists():
                os.replace(old, old.with_name(old.name + ".imported"))


def _text_lines(path: Path) -> list[str]:
    """The complete lines of a text journal (a torn last line is left out); none if missing."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines()


class DeliveredJournal:
    """Message ids delivered and not yet expired; ``in`` tests membership."""

    def __init__(self, journals: Journals) -> None:
        self._journals = journals

    @property
    def newest_recorded_ms(self) -> int | None:
        """When the newest delivery was recorded (None before the first)."""
        return self._journals.newest_recorded_ms

    def __contains__(self, message_id: object) -> bool:
        return isinstance(message_id, str) and self.get(message_id) is not None

    def __len__(self) -> int:
        return self._journals.count("delivered")

    def get(self, message_id: str) -> DeliveredEntry | None:
        """When ``message_id`` was delivered and by which envelope, or None."""
        return self._journals.get_delivered(message_id)

    def remember(
        self, message_id: str, expires_ms: int, now_ms: int, digest: bytes | None = None
    ) -> None:
        """Note a delivery (:meth:`sync` makes it durable); an id already known is kept as it
        was."""
        self._journals.remember_delivered(message_id, DeliveredEntry(expires_ms, now_ms, digest))

    def sync(self) -> None:
        """Make every journal entry so far durable (see :meth:`Journals.sync`).

        :raises StorageError: the disk refused (retriable: call again).
        """
        self._journals.sync()


class ReceivedEvents(Mapping[str, ReceivedEvent]):
    """Events delivered from peers, by event id, with the handling they came under.

    The outbound path asks it before releasing: an event that came in under H2, or whose onward
    transfer is not ALLOWED, is not sent on to anyone but its sender. An entry is forgotten
    when the sender's retention ends (or after a year when the sender set none).
    """

    def __init__(self, journals: Journals) -> None:
        self._journals = journals

    def __getitem__(self, event_id: str) -> ReceivedEvent:
        held = self._journals.get_received(event_id)
        if held is None:
            raise KeyError(event_id)
        return held[0]

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self._journals.get_received(event_id) is not None

    def __iter__(self) -> Iterator[str]:
        return self._journals.received_ids()

    def __len__(self) -> int:
        return self._journals.count("received")

    def remember(self, event_id: str, event: ReceivedEvent, until_ms: int) -> None:
        """Note a received event (:meth:`sync` makes it durable). Two senders may use the same
        event id: the more restrictive handling of the two is kept."""
        self._journals.remember_received(event_id, event, until_ms)

    def sync(self) -> None:
        """Make every journal entry so far durable (see :meth:`Journals.sync`).

        :raises StorageError: the disk refused (retriable: call again).
        """
        self._journals.sync()
