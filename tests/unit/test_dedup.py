"""The delivered-message journal: ids survive a restart until their envelopes expire."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.outbound import ReceivedEvent
from gateway.errors import StorageError
from gateway.node.journals import DeliveredJournal, ReceivedEvents

T0 = 1_796_000_000_000
"""A time in ms; entries expire a day (or a minute) after it."""
DAY = 86_400_000


def _journal_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "delivered.journal"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


class TestDeliveredJournal:
    """Remember, sync, reopen; expiry, torn writes and compaction on load."""

    def test_new_journal_is_empty_and_creates_its_folder(self, tmp_path: Path) -> None:
        """Opening a journal in a missing folder creates the folder and an empty journal."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        try:
            assert 0 == len(journal)
            assert "m-1" not in journal
            assert journal.newest_recorded_ms is None
            assert path.parent.is_dir()
        finally:
            journal.close()

    def test_remembered_id_is_known_at_once(self, tmp_path: Path) -> None:
        """An id is a member as soon as it is remembered, before any sync."""
        journal = DeliveredJournal(_journal_file(tmp_path), T0)
        try:
            journal.remember("m-1", T0 + DAY, T0)
            assert "m-1" in journal
            assert 1 == len(journal)
        finally:
            journal.close()

    def test_ids_survive_reopening(self, tmp_path: Path) -> None:
        """remember + sync + reopen keeps every id and the newest recording time."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        journal.remember("m-1", T0 + DAY, T0)
        journal.remember("m-2", T0 + DAY, T0 + 5)
        journal.sync()
        journal.close()
        reopened = DeliveredJournal(path, T0 + 10)
        try:
            assert {"m-1", "m-2"} == {m for m in ("m-1", "m-2", "m-3") if m in reopened}
            assert 2 == len(reopened)
            assert T0 + 5 == reopened.newest_recorded_ms
        finally:
            reopened.close()

    def test_sync_makes_lines_durable_before_close(self, tmp_path: Path) -> None:
        """After sync the file holds one line per remembered id, while the journal is open."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        try:
            journal.remember("m-1", T0 + DAY, T0)
            journal.sync()
            assert [f"m-1 {T0 + DAY} {T0}"] == _lines(path)
        finally:
            journal.close()

    def test_remembering_twice_writes_once(self, tmp_path: Path) -> None:
        """An id already known is not appended again."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        journal.remember("m-1", T0 + DAY, T0)
        journal.remember("m-1", T0 + 2 * DAY, T0 + 1)
        journal.close()
        assert 1 == len(_lines(path))

    def test_known_id_is_not_appended_after_reopening(self, tmp_path: Path) -> None:
        """An id loaded from the file is not written again when remembered again."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        journal.remember("m-1", T0 + DAY, T0)
        journal.close()
        reopened = DeliveredJournal(path, T0 + 1)
        reopened.remember("m-1", T0 + DAY, T0 + 1)
        reopened.close()
        assert 1 == len(_lines(path))

    def test_expired_ids_are_forgotten_on_load(self, tmp_path: Path) -> None:
        """An id whose envelope has expired by the time of loading is no longer a member."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        journal.remember("short", T0 + 60_000, T0)
        journal.remember("long", T0 + DAY, T0)
        journal.close()
        reopened = DeliveredJournal(path, T0 + 120_000)
        try:
            assert "short" not in reopened
            assert "long" in reopened
            assert 1 == len(reopened)
        finally:
            reopened.close()

    def test_id_expiring_exactly_now_is_forgotten(self, tmp_path: Path) -> None:
        """An envelope expiring at the load time is expired (it would be refused as stale)."""
        path = _journal_file(tmp_path)
        journal = DeliveredJournal(path, T0)
        journal.remember("m-1", T0 + 1000, T0)
        journal.close()
        reopened = DeliveredJournal(path, T0 + 1000)
        try:
            assert "m-1" not in reopened
            assert T0 == reopened.newest_recorded_ms
        finally:
            reopened.close()

    def test_torn_last_line_is_ignored(self, tmp_path: Path) -> None:
        """A last line without its newline (a crash mid-write) is cut off; the rest loads."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(
            f"m-1 {T0 + DAY} {T0}\nm-2 {T0 + DAY} {T0 + 1}\nm-3 {T0 + DAY} {T0 + 2}",
            encoding="utf-8",
        )
        journal = DeliveredJournal(path, T0 + 3)
        try:
            assert "m-1" in journal and "m-2" in journal
            assert "m-3" not in journal
            assert 2 == len(journal)
            assert T0 + 1 == journal.newest_recorded_ms
        finally:
            journal.close()
        assert [f"m-1 {T0 + DAY} {T0}", f"m-2 {T0 + DAY} {T0 + 1}"] == _lines(path)

    def test_id_remembered_after_a_torn_line_survives_reopening(self, tmp_path: Path) -> None:
        """After loading a torn last line, the next id remembered and synced is kept."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(f"m-1 {T0 + DAY} {T0}\nm-2 {T0 + DAY}", encoding="utf-8")
        journal = DeliveredJournal(path, T0 + 1)
        journal.remember("m-3", T0 + DAY, T0 + 1)
        journal.sync()
        journal.close()
        reopened = DeliveredJournal(path, T0 + 2)
        try:
            assert "m-1" in reopened
            assert "m-3" in reopened
        finally:
            reopened.close()

    def test_malformed_lines_are_skipped(self, tmp_path: Path) -> None:
        """Lines with the wrong number of fields or non-numeric times are skipped."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(
            "\n".join(
                [
                    f"m-1 {T0 + DAY} {T0}",
                    "only-two-fields 123",
                    f"m-2 soon {T0}",
                    f"m-3 {T0 + DAY} {T0} extra",
                    "",
                    f"m-4 {T0 + DAY} {T0}",
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        journal = DeliveredJournal(path, T0)
        try:
            assert ["m-1", "m-4"] == [m for m in ("m-1", "m-2", "m-3", "m-4") if m in journal]
        finally:
            journal.close()

    def test_compaction_on_load_keeps_the_live_ids(self, tmp_path: Path) -> None:
        """When most entries have expired, loading rewrites the file with the live ones only."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        expired = [f"old-{i} {T0 + 1000} {T0 + i}" for i in range(1100)]
        live = [f"new-{i} {T0 + DAY} {T0 + 2000 + i}" for i in range(50)]
        path.write_text("\n".join(expired + live) + "\n", encoding="utf-8")
        journal = DeliveredJournal(path, T0 + 10_000)
        try:
            assert 50 == len(journal)
            assert all(f"new-{i}" in journal for i in range(50))
            assert "old-0" not in journal
            assert T0 + 2049 == journal.newest_recorded_ms
        finally:
            journal.close()
        lines = _lines(path)
        assert 50 == len(lines)
        assert {f"new-{i}" for i in range(50)} == {line.split()[0] for line in lines}
        assert not path.with_name(path.name + ".tmp").exists()

    def test_compacted_journal_reopens_and_appends(self, tmp_path: Path) -> None:
        """After compaction, new ids append and everything live survives another reopen."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        expired = [f"old-{i} {T0 + 1000} {T0}" for i in range(1100)]
        path.write_text("\n".join([*expired, f"keep {T0 + DAY} {T0 + 7}"]) + "\n")
        journal = DeliveredJournal(path, T0 + 10_000)
        journal.remember("added", T0 + DAY, T0 + 10_000)
        journal.close()
        reopened = DeliveredJournal(path, T0 + 20_000)
        try:
            assert "keep" in reopened and "added" in reopened
            assert 2 == len(reopened)
            assert T0 + 10_000 == reopened.newest_recorded_ms
        finally:
            reopened.close()

    def test_no_compaction_while_most_entries_live(self, tmp_path: Path) -> None:
        """A large file whose entries are mostly live is left as it is."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        expired = [f"old-{i} {T0 + 1000} {T0}" for i in range(400)]
        live = [f"new-{i} {T0 + DAY} {T0}" for i in range(700)]
        content = "\n".join(expired + live) + "\n"
        path.write_text(content, encoding="utf-8")
        journal = DeliveredJournal(path, T0 + 10_000)
        journal.close()
        assert 700 == len(journal)
        assert content == path.read_text(encoding="utf-8")

    def test_small_file_is_not_compacted(self, tmp_path: Path) -> None:
        """A small file is never rewritten, even when every entry has expired."""
        path = _journal_file(tmp_path)
        path.parent.mkdir(parents=True)
        content = "".join(f"old-{i} {T0 + 1000} {T0}\n" for i in range(10))
        path.write_text(content, encoding="utf-8")
        journal = DeliveredJournal(path, T0 + 10_000)
        journal.close()
        assert 0 == len(journal)
        assert content == path.read_text(encoding="utf-8")

    def test_non_string_is_not_a_member(self, tmp_path: Path) -> None:
        """Membership of anything but a remembered id is false."""
        journal = DeliveredJournal(_journal_file(tmp_path), T0)
        try:
            journal.remember("1", T0 + DAY, T0)
            assert 1 not in journal
            assert None not in journal
        finally:
            journal.close()

    def test_unopenable_journal_is_a_storage_error(self, tmp_path: Path) -> None:
        """A journal path that is a folder raises StorageError naming the path."""
        path = _journal_file(tmp_path)
        path.mkdir(parents=True)
        with pytest.raises(StorageError, match="delivered-message journal") as info:
            DeliveredJournal(path, T0)
        assert str(path) in str(info.value)


class TestReceivedEvents:
    """What came in under which handling, so that the outbound path can refuse to forward it."""

    def test_handling_survives_reopening_until_it_lapses(self, tmp_path: Path) -> None:
        """An H2 event is remembered across a restart, and forgotten after its retention."""
        path = tmp_path / "received.journal"
        events = ReceivedEvents(path, T0)
        events.remember("ev-1", ReceivedEvent("BE-FPJ", "H2", "NONE"), T0 + DAY)
        events.close()
        again = ReceivedEvents(path, T0 + 1)
        refusal = again["ev-1"].forward_refusal("US-ATF")
        assert refusal is not None and "H2" in refusal
        assert again["ev-1"].forward_refusal("BE-FPJ") is None  # back to its sender is allowed
        again.close()
        lapsed = ReceivedEvents(path, T0 + DAY + 1)
        assert "ev-1" not in lapsed
        lapsed.close()

    def test_same_event_id_from_two_senders_keeps_the_stricter(self, tmp_path: Path) -> None:
        """A permissive event from one sender never lifts another sender's H2 on the same id,
        in memory or after reopening."""
        path = tmp_path / "received.journal"
        events = ReceivedEvents(path, T0)
        events.remember("ev-1", ReceivedEvent("BE-FPJ", "H2", "NONE"), T0 + DAY)
        events.remember("ev-1", ReceivedEvent("US-ATF", "H0", "ALLOWED"), T0 + 2 * DAY)
        assert "H2" == events["ev-1"].code
        events.close()
        again = ReceivedEvents(path, T0 + DAY + 1)
        assert "H2" == again["ev-1"].code  # kept as long as the longer of the two
        again.close()
