"""The node's log set-up: a rate limit per logger and template, and a cap on every field."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.node.logs import (
    MAX_ITEMS,
    SUPPRESSED_EVENT,
    LimitedHandler,
    RateLimiter,
    Suppressed,
    cap_fields,
)

KEY = ("aiokafka", "Unable connect to node with id %s: %s")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRateLimiter:
    """At most a few records per (logger, template) and interval; the rest are counted."""

    def test_first_lines_pass_and_the_rest_are_counted(self) -> None:
        """Three of five records pass; the two left out are reported when the interval ends."""
        clock = _Clock()
        limiter = RateLimiter(3, 10.0, clock=clock)
        passed = [limiter.admit(KEY, logging.ERROR) for _ in range(5)]
        assert [True, True, True, False, False] == [p for p, _ in passed]
        assert all(not ended for _, ended in passed)
        clock.now += 10.0
        admitted, ended = limiter.admit(KEY, logging.ERROR)
        assert admitted
        assert [Suppressed(KEY[0], KEY[1], 2, logging.ERROR)] == ended

    def test_keys_are_limited_apart(self) -> None:
        """Another template of the same logger, and the same template elsewhere, have own limits."""
        limiter = RateLimiter(1, 10.0, clock=_Clock())
        assert limiter.admit(KEY, logging.ERROR)[0]
        assert limiter.admit((KEY[0], "other %s"), logging.ERROR)[0]
        assert limiter.admit(("aiokafka.conn", KEY[1]), logging.ERROR)[0]
        assert not limiter.admit(KEY, logging.ERROR)[0]

    def test_ended_windows_are_reported_on_any_record(self) -> None:
        """A flood that stopped is summed up when any other record comes."""
        clock = _Clock()
        limiter = RateLimiter(1, 10.0, clock=clock)
        for _ in range(4):
            limiter.admit(KEY, logging.WARNING)
        clock.now += 11.0
        _, ended = limiter.admit(("kafka", "unrelated"), logging.WARNING)
        assert [Suppressed(KEY[0], KEY[1], 3, logging.WARNING)] == ended

    def test_summary_carries_the_highest_level(self) -> None:
        """Suppressed warnings and errors are summed up at error level."""
        clock = _Clock()
        limiter = RateLimiter(1, 10.0, clock=clock)
        for level in (logging.WARNING, logging.WARNING, logging.ERROR, logging.WARNING):
            limiter.admit(KEY, level)
        assert [Suppressed(KEY[0], KEY[1], 3, logging.ERROR)] == limiter.flush()

    def test_flush_reports_and_forgets(self) -> None:
        """Flushing (at shutdown) reports each count once."""
        limiter = RateLimiter(1, 10.0, clock=_Clock())
        limiter.admit(KEY, logging.ERROR)
        limiter.admit(KEY, logging.ERROR)
        assert 1 == len(limiter.flush())
        assert [] == limiter.flush()

    def test_many_templates_share_one_limit_per_logger(self) -> None:
        """Past max_keys templates, a logger's new templates share one key (memory is bounded)."""
        limiter = RateLimiter(1, 10.0, max_keys=2, clock=_Clock())
        assert limiter.admit(("a", "t1"), logging.ERROR)[0]
        assert limiter.admit(("a", "t2"), logging.ERROR)[0]
        assert limiter.admit(("a", "t3"), logging.ERROR)[0]
        assert not limiter.admit(("a", "t4"), logging.ERROR)[0]
        (summary,) = limiter.flush()
        assert ("a", "(other messages)", 1) == (summary.logger, summary.template, summary.count)

    @pytest.mark.parametrize(("lines", "interval_s"), [(0, 10.0), (3, 0.0)])
    def test_nonsense_limits_are_refused(self, lines: int, interval_s: float) -> None:
        """A limit that would drop everything, or never reset, is a programming error."""
        with pytest.raises(ValueError):
            RateLimiter(lines, interval_s)


class TestCapFields:
    """Every field of a rendered event is bounded."""

    def test_short_values_are_kept(self) -> None:
        """Strings within the cap, numbers, booleans and None pass unchanged."""
        event = {"event": "x", "n": 3, "ok": True, "none": None, "f": 1.5, "s": "a" * 512}
        assert event == cap_fields(512)(None, "info", dict(event))

    def test_long_string_is_cut_and_says_how_long_it_was(self) -> None:
        """A 10,000-character field keeps its first 512 characters and its length."""
        capped = cap_fields(512)(None, "info", {"event": "x", "detail": "é" * 10_000})
        assert "é" * 512 + "... [cut: 10000 chars]" == capped["detail"]

    def test_exception_gets_more_room(self) -> None:
        """A traceback may be longer than other fields, up to its own cap."""
        capped = cap_fields(512, 2048)(None, "error", {"exception": "t" * 3000})
        assert capped["exception"].startswith("t" * 2048 + "... [cut: 3000 chars]")

    def test_nested_values_and_long_lists_are_bounded(self) -> None:
        """Strings inside lists and mappings are cut; lists keep MAX_ITEMS items and say so."""
        event = {"items": ["b" * 600] * (MAX_ITEMS + 5), "m": {"k": "c" * 600}}
        capped = cap_fields(512)(None, "info", event)
        assert MAX_ITEMS + 1 == len(capped["items"])
        assert f"[cut: {MAX_ITEMS + 5} items]" == capped["items"][-1]
        assert capped["items"][0].endswith("[cut: 600 chars]")
        assert capped["m"]["k"].endswith("[cut: 600 chars]")

    def test_other_objects_are_rendered_by_repr_and_cut(self) -> None:
        """Bytes and other objects become their (bounded) repr, so JSON never sees them raw."""
        capped = cap_fields(64)(None, "info", {"raw": b"\x00" * 1000})
        assert capped["raw"].startswith("b'\\x00")
        assert capped["raw"].endswith("[cut: 4003 chars]")

    def test_deep_nesting_is_flattened(self) -> None:
        """Past the depth limit a value is its repr, cut to the cap."""
        deep: object = "leaf"
        for _ in range(10):
            deep = [deep]
        capped = cap_fields(512)(None, "info", {"deep": deep})
        inner = capped["deep"]
        while isinstance(inner, list):
            inner = inner[0]
        assert isinstance(inner, str)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _handler() -> LimitedHandler:
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, LimitedHandler)]
    return handler


class TestConfiguredLogging:
    """Our events and the libraries' records, through one handler, as JSON lines."""

    def test_library_flood_is_limited_and_summed_up(self, stream: io.StringIO) -> None:
        """1,000 identical aiokafka errors: five lines, then one summary of the other 995."""
        clock = _Clock()
        _handler().limiter = RateLimiter(5, 10.0, clock=clock)
        for _ in range(1000):
            logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, "x")
        clock.now += 10.0
        logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, "x")
        lines = _lines(stream)
        assert 7 == len(lines)
        assert {"logger": "aiokafka", "level": "error"}.items() <= lines[0].items()
        assert "Unable connect to node with id 1: x" == lines[0]["event"]
        summary = lines[5]
        assert SUPPRESSED_EVENT == summary["event"]
        assert ("aiokafka", KEY[1], 995, 10.0) == (
            summary["source_logger"],
            summary["template"],
            summary["suppressed"],
            summary["interval_s"],
        )

    def test_our_warnings_are_limited_and_our_info_lines_are_not(self, stream: io.StringIO) -> None:
        """A repeated warning of ours is limited; one info line per unit of work is kept."""
        _handler().limiter = RateLimiter(2, 10.0, clock=_Clock())
        log = structlog.get_logger("fxgw.node")
        for _ in range(5):
            log.warning("retrying", what="commit inbox")
            log.info("delivered", message_id="m")
        events = [line["event"] for line in _lines(stream)]
        assert 2 == events.count("retrying")
        assert 5 == events.count("delivered")

    def test_summary_is_written_at_shutdown(self, stream: io.StringIO) -> None:
        """What is still counted when the handler closes is written then."""
        _handler().limiter = RateLimiter(1, 10.0, clock=_Clock())
        for _ in range(3):
            logging.getLogger("kafka").warning("again")
        _handler().close()
        assert [("again", None), (SUPPRESSED_EVENT, 2)] == [
            (line["event"], line.get("suppressed")) for line in _lines(stream)
        ]

    def test_huge_fields_are_capped_in_our_events_and_library_records(
        self, stream: io.StringIO
    ) -> None:
        """A 100 kB value, in our event or in a library message, gives a short line."""
        structlog.get_logger("fxgw.node").warning("event_rejected", detail="p" * 100_000)
        logging.getLogger("aiokafka").error("bad: %s", "q" * 100_000)
        lines = stream.getvalue().splitlines()
        assert all(len(line) < 1000 for line in lines)
        ours, theirs = _lines(stream)
        assert str(ours["detail"]).endswith("[cut: 100000 chars]")
        assert str(theirs["event"]).endswith("[cut: 100005 chars]")

    def test_library_tracebacks_are_rendered_in_the_json_line(self, stream: io.StringIO) -> None:
        """A library's ``logger.exception`` comes out as one JSON line, traceback in a field."""
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError:
            logging.getLogger("aiokafka.conn").exception("Unable connect to %s", "node-1")
        (line,) = _lines(stream)
        assert {"logger": "aiokafka.conn", "level": "error"}.items() <= line.items()
        assert "Unable connect to node-1" == line["event"]
        assert str(line["exception"]).startswith("Traceback (most recent call last):")
        assert str(line["exception"]).endswith("ConnectionRefusedError: refused")

    def test_ours_and_theirs_have_the_same_shape(self, stream: io.StringIO) -> None:
        """Our events name their logger as library records do."""
        structlog.get_logger("fxgw.node").warning("retrying")
        logging.getLogger("aiokafka").warning("again")
        ours, theirs = _lines(stream)
        assert {"event", "logger", "level", "timestamp"} == set(ours) == set(theirs)
        assert "fxgw.node" == ours["logger"]

    def test_our_debug_lines_follow_the_level(self, stream: io.StringIO) -> None:
        """At level info, our debug events are not written; library info records neither."""
        structlog.get_logger("fxgw.node").debug("detail")
        logging.getLogger("aiokafka").info("joined")
        assert "" == stream.getvalue()

    def test_capture_logs_still_sees_our_events(self, stream: io.StringIO) -> None:
        """Tests that assert on events with structlog.testing keep working."""
        with capture_logs() as captured:
            structlog.get_logger("fxgw.node").warning("reload_failed", files=["a"])
        assert [{"event": "reload_failed", "files": ["a"], "log_level": "warning"}] == captured
