"""Reading the outbound spool folder's files: a batch at a time, bounded whatever they hold."""

from __future__ import annotations

from pathlib import Path

from gateway.node.files import SPOOL_BATCH_LINES, spool_batches


class TestSpoolBatches:
    """A spool file's events, in batches, with blank lines left out and long lines cut."""

    def test_batches_of_lines(self, tmp_path: Path) -> None:
        """1,200 events with blank lines between: batches of 500, 500 and 200, in order."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"".join(b'{"n": %d}\n\n  \r\n' % n for n in range(1200)))
        batches = list(spool_batches(path, 1024))
        assert [SPOOL_BATCH_LINES, SPOOL_BATCH_LINES, 200] == [len(b) for b in batches]
        assert [b'{"n": %d}' % n for n in range(1200)] == [line for b in batches for line in b]

    def test_a_line_beyond_the_limit_is_cut_and_the_next_one_kept(self, tmp_path: Path) -> None:
        """A 5 MB line against a 1,024-byte limit comes as its first 1,025 bytes (the core
        refuses it as too large); the line after it is whole, and so is one of exactly 1,024."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"a" * 5_000_000 + b"\n" + b"b" * 1024 + b"\nlast")
        (lines,) = list(spool_batches(path, 1024))
        assert [1025, 1024, 4] == [len(line) for line in lines]
        assert [b"a", b"b", b"l"] == [line[:1] for line in lines]
