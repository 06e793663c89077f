"""The node's journals: delivered message ids and received events survive a restart until they
expire, are durable only once synced, and survive a failed commit."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.effects import DeliveredEntry
from gateway.core.outbound import ReceivedEvent
from gateway.errors import StorageError
from gateway.node.journals import EXPIRE_EVERY_S, JOURNAL_FILE, Journals

T0 = 1_796_000_000_000
"""A time in ms; entries expire a day (or a minute) after it."""
DAY = 86_400_000
H2 = ReceivedEvent("BE-FPJ", "H2", "NONE")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def journals(state: Path) -> Iterator[Journals]:
    opened = Journals(state, T0)
    yield opened
    opened.close()


def _reopen(state: Path, now_ms: int) -> Journals:
    return Journals(state, now_ms)


class _FailingCommits:
    """A connection whose next ``failures`` COMMITs fail, as on a full or failing disk."""

    def __init__(self, db: sqlite3.Connection, failures: int) -> None:
        self._db = db
        self.failures = failures

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.failures:
            self.failures -= 1
            self._db.execute("ROLLBACK")  # what SQLite may do itself on an I/O error
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


class TestDeliveredJournal:
    """Remember, sync, reopen; expiry; failed commits."""

    def test_new_journals_are_empty_and_create_their_folder(
        self, state: Path, journals: Journals
    ) -> None:
        """Opening in a missing folder creates the folder and an empty database."""
        assert 0 == len(journals.delivered)
        assert "m-1" not in journals.delivered
        assert journals.delivered.newest_recorded_ms is None
        assert (state / JOURNAL_FILE).is_file()

    def test_remembered_id_is_known_at_once(self, journals: Journals) -> None:
        """An id is a member as soon as it is remembered, before any sync."""
        journals.delivered.remember("m-1", T0 + DAY, T0, b"\x01" * 32)
        assert "m-1" in journals.delivered
        assert 1 == len(journals.delivered)
        assert DeliveredEntry(T0 + DAY, T0, b"\x01" * 32) == journals.delivered.get("m-1")

    def test_ids_survive_reopening(self, state: Path) -> None:
        """remember + sync + reopen keeps every id, its entry and the newest recording time."""
        journals = Journals(state, T0)
        journals.delivered.remember("m-1", T0 + DAY, T0)
        journals.delivered.remember("m-2", T0 + DAY, T0 + 5, b"\x02" * 32)
        journals.sync()
        journals.close()
        reopened = _reopen(state, T0 + 10)
        try:
            delivered = reopened.delivered
            assert ["m-1", "m-2"] == [m for m in ("m-1", "m-2", "m-3") if m in delivered]
            assert DeliveredEntry(T0 + DAY, T0 + 5, b"\x02" * 32) == delivered.get("m-2")
            assert 2 == len(delivered)
            assert T0 + 5 == delivered.newest_recorded_ms
        finally:
            reopened.close()

    def test_nothing_is_durable_before_sync(
        self, tmp_path: Path, state: Path, journals: Journals
    ) -> None:
        """What a node remembered and did not sync is gone after a crash (the files as a crash
        leaves them: copied while the node runs)."""
        journals.delivered.remember("m-0", T0 + DAY, T0)
        journals.sync()
        journals.delivered.remember("m-1", T0 + DAY, T0)
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for file in state.iterdir():
            shutil.copyfile(file, crashed / file.name)
        after = _reopen(crashed, T0 + 1)
        try:
            assert ["m-0"] == [m for m in ("m-0", "m-1") if m in after.delivered]
        finally:
            after.close()

    def test_remembering_twice_keeps_the_first(self, journals: Journals) -> None:
        """An id already known keeps its first entry (its receipt is answered from it)."""
        journals.delivered.remember("m-1", T0 + DAY, T0, b"\x01" * 32)
        journals.sync()
        journals.delivered.remember("m-1", T0 + 2 * DAY, T0 + 1, b"\x02" * 32)
        journals.sync()
        assert DeliveredEntry(T0 + DAY, T0, b"\x01" * 32) == journals.delivered.get("m-1")
        assert 1 == len(journals.delivered)

    def test_expired_ids_are_forgotten_on_open(self, state: Path) -> None:
        """An id whose envelope has expired by the time of opening (or expires exactly then) is
        no longer a member; the newest recording time stays."""
        journals = Journals(state, T0)
        journals.delivered.remember("short", T0 + 60_000, T0 + 2)
        journals.delivered.remember("long", T0 + DAY, T0)
        journals.close()
        reopened = _reopen(state, T0 + 60_000)
        try:
            assert "short" not in reopened.delivered
            assert "long" in reopened.delivered
            assert 1 == len(reopened.delivered)
            assert T0 + 2 == reopened.delivered.newest_recorded_ms
        finally:
            reopened.close()

    def test_expired_ids_are_deleted_while_running(self, state: Path) -> None:
        """Every EXPIRE_EVERY_S a sync also deletes what has expired, so the store stays the
        size of the lifetime window."""
        now = [0.0]
        journals = Journals(state, T0, clock=lambda: now[0], wall_ms=lambda: T0 + DAY)
        try:
            journals.delivered.remember("gone", T0 + DAY, T0)  # expires just then
            journals.delivered.remember("kept", T0 + 2 * DAY, T0)
            journals.sync()
            assert 2 == len(journals.delivered)
            now[0] = EXPIRE_EVERY_S
            journals.sync()
            assert ["kept"] == [m for m in ("gone", "kept") if m in journals.delivered]
        finally:
            journals.close()

    def test_non_string_is_not_a_member(self, journals: Journals) -> None:
        """Membership of anything but a remembered id is false."""
        journals.delivered.remember("1", T0 + DAY, T0)
        assert 1 not in journals.delivered
        assert None not in journals.delivered

    def test_unopenable_journal_is_a_storage_error(self, state: Path) -> None:
        """A database path that is a folder raises StorageError naming the path."""
        (state / JOURNAL_FILE).mkdir(parents=True)
        with pytest.raises(StorageError, match="journals") as info:
            Journals(state, T0)
        assert str(state / JOURNAL_FILE) in str(info.value)


class TestFailedCommit:
    """A commit that fails is never taken as done; the next sync writes everything again."""

    def test_entries_are_written_again_after_a_failed_commit(self, state: Path) -> None:
        """Two failed syncs, then a good one: the entries are looked up all along and are
        durable afterwards, delivered ids and received events alike."""
        journals = Journals(state, T0)
        failing = _FailingCommits(journals._db, failures=2)
        journals._db = failing  # type: ignore[assignment]
        journals.delivered.remember("m-1", T0 + DAY, T0)
        journals.received.remember("ev-1", H2, T0 + DAY)
        for _ in range(2):
            with pytest.raises(StorageError, match="cannot sync"):
                journals.sync()
            assert "m-1" in journals.delivered
            assert "ev-1" in journals.received
            assert 1 == len(journals.delivered)
        journals.delivered.remember("m-2", T0 + DAY, T0 + 1)  # while broken: kept for the sync
        journals.sync()
        journals.close()
        reopened = _reopen(state, T0 + 2)
        try:
            assert {"m-1", "m-2"} == {m for m in ("m-1", "m-2") if m in reopened.delivered}
            assert "H2" == reopened.received["ev-1"].code
        finally:
            reopened.close()


class TestTextJournals:
    """Journals of earlier versions are taken over on first open."""

    def test_text_journals_are_imported_and_renamed(self, state: Path) -> None:
        """Live lines are imported (malformed lines and a torn last line skipped, expired ones
        only counted for the newest time); the files are renamed *.imported."""
        state.mkdir(parents=True)
        (state / "delivered.journal").write_text(
            "\n".join(
                [
                    f"m-1 {T0 + DAY} {T0}",
                    "only-two-fields 123",
                    f"m-2 soon {T0}",
                    f"old {T0 - 1} {T0 + 9}",
                    f"m-3 {T0 + DAY} {T0 + 1} {'ab' * 32}",
                    f"torn {T0 + DAY}",
                ]
            ),
            encoding="utf-8",
        )
        (state / "received.journal").write_text(
            f"ev-1 BE-FPJ H2 NONE {T0 + DAY}\nev-2 US-ATF H0 ALLOWED {T0 + DAY}\n",
            encoding="utf-8",
        )
        journals = Journals(state, T0)
        try:
            delivered = journals.delivered
            assert ["m-1", "m-3"] == [
                m for m in ("m-1", "m-2", "old", "m-3", "torn") if m in delivered
            ]
            assert bytes.fromhex("ab" * 32) == (delivered.get("m-3") or _NONE).digest
            assert T0 + 9 == delivered.newest_recorded_ms
            assert {"ev-1", "ev-2"} == set(journals.received)
        finally:
            journals.close()
        assert not (state / "delivered.journal").exists()
        assert (state / "delivered.journal.imported").is_file()
        assert (state / "received.journal.imported").is_file()


_NONE = DeliveredEntry(0, 0, None)


class TestReceivedEvents:
    """What came in under which handling, so that the outbound path can refuse to forward it."""

    def test_handling_survives_reopening_until_it_lapses(self, state: Path) -> None:
        """An H2 event is remembered across a restart, and forgotten after its retention."""
        journals = Journals(state, T0)
        journals.received.remember("ev-1", H2, T0 + DAY)
        journals.close()
        again = _reopen(state, T0 + 1)
        refusal = again.received["ev-1"].forward_refusal("US-ATF")
        assert refusal is not None and "H2" in refusal
        assert again.received["ev-1"].forward_refusal("BE-FPJ") is None  # back to its sender
        again.close()
        lapsed = _reopen(state, T0 + DAY + 1)
        assert "ev-1" not in lapsed.received
        assert lapsed.received.get("ev-1") is None
        lapsed.close()

    def test_same_event_id_from_two_senders_keeps_the_stricter(self, state: Path) -> None:
        """A permissive event from one sender never lifts another sender's H2 on the same id,
        before or after a sync, or after reopening."""
        journals = Journals(state, T0)
        journals.received.remember("ev-1", H2, T0 + DAY)
        journals.received.remember("ev-1", ReceivedEvent("US-ATF", "H0", "ALLOWED"), T0 + 2 * DAY)
        assert "H2" == journals.received["ev-1"].code
        journals.sync()
        journals.received.remember("ev-1", ReceivedEvent("US-ATF", "H0", "ALLOWED"), T0 + DAY)
        assert "H2" == journals.received["ev-1"].code
        journals.close()
        again = _reopen(state, T0 + DAY + 1)
        assert "H2" == again.received["ev-1"].code  # kept as long as the longer of the two
        again.close()
