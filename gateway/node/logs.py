"""The node's logs: one JSON object per line on stderr, ours and the libraries' alike, with a
bounded volume and bounded lines.

Our events (structlog) and the records of libraries (aiokafka, kafka, asyncio: stdlib
``logging``) go through one handler and structlog's :class:`~structlog.stdlib.ProcessorFormatter`.
What no library gives, and this module adds:

- a rate limit per (logger, message template): at most ``lines`` records of one template per
  ``interval_s``, then one ``log_lines_suppressed`` line saying how many were left out. A broker
  outage made aiokafka write thousands of lines a second; this keeps a few of each kind. Our own
  records below WARNING are not limited: there is one per unit of work, not per failed attempt.
- a cap on every rendered field: a string longer than ``max_chars`` (a field may come from a
  peer) is cut and says how long it was; long lists and deep nesting are cut likewise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LINES_PER_INTERVAL = 5
INTERVAL_S = 10.0
MAX_FIELD_CHARS = 512
MAX_EXCEPTION_CHARS = 8192
"""Tracebacks get more room than other fields; they are bounded all the same."""
MAX_ITEMS = 100
MAX_DEPTH = 4
MAX_TEMPLATES = 1000
"""Templates tracked at once; beyond it a logger's other templates share one limit."""

SUPPRESSED_EVENT = "log_lines_suppressed"
_OURS = ("fxgw", "gateway")
_SUMMARY_FIELDS = ("source_logger", "template", "suppressed", "interval_s")

Key = tuple[str, str]
"""(logger name, message template)."""


@dataclass(frozen=True, slots=True)
class Suppressed:
    """How many records of one logger and template were left out in one interval."""

    logger: str
    template: str
    count: int
    level: int
    """The highest level among them."""


@dataclass(slots=True)
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0
    level: int = logging.NOTSET


class RateLimiter:
    """At most ``lines`` records per key in each ``interval_s`` window (a window starts with the
    first record of its key); counts the rest and reports them when the window has ended.

    Not thread-safe by itself; :class:`LimitedHandler` calls it under the handler's lock.
    """

    def __init__(
        self,
        lines: int = LINES_PER_INTERVAL,
        interval_s: float = INTERVAL_S,
        *,
        max_keys: int = MAX_TEMPLATES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lines < 1 or interval_s <= 0:
            raise ValueError("a rate limit needs lines >= 1 and interval_s > 0")
        self.lines = lines
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[Key, _Window] = {}
        self._next_sweep = 0.0

    def admit(self, key: Key, level: int) -> tuple[bool, list[Suppressed]]:
        """Whether a record under ``key`` is to be written now, and the summaries of windows
        that have ended since the last call (to be written first)."""
        now = self._clock()
        ended = self._sweep(now)
        if key not in self._windows and len(self._windows) >= self._max_keys:
            key = (key[0], "(other messages)")
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.interval_s:
            ended.extend(self._close(key, window))
            window = None
        if window is None:
            window = self._windows[key] = _Window(now)
        if window.passed < self.lines:
            window.passed += 1
            return True, ended
        window.suppressed += 1
        window.level = max(window.level, level)
        return False, ended

    def flush(self) -> list[Suppressed]:
        """Every count not reported yet (at shutdown)."""
        ended = [s for key, w in self._windows.items() for s in self._close(key, w)]
        self._windows.clear()
        return ended

    def _sweep(self, now: float) -> list[Suppressed]:
        # at most once a second: a flood calls this thousands of times a second
        if now < self._next_sweep:
            return []
        self._next_sweep = now + min(1.0, self.interval_s)
        done = [k for k, w in self._windows.items() if now - w.start >= self.interval_s]
        return [s for key in done for s in self._close(key, self._windows.pop(key))]

    def _close(self, key: Key, window: _Window) -> list[Suppressed]:
        if not window.suppressed:
            return []
        return [Suppressed(key[0], key[1], window.suppressed, window.level)]


class LimitedHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that rate-limits records per (logger, template), see :class:`RateLimiter`,
    and writes a ``log_lines_suppressed`` record for each window that left records out."""

    def __init__(self, stream: IO[str], limiter: RateLimiter) -> None:
        super().__init__(stream)
        self.limiter = limiter

    def emit(self, record: logging.LogRecord) -> None:
        if _exempt(record):
            super().emit(record)
            return
        admitted, ended = self.limiter.admit((record.name, _template(record)), record.levelno)
        for summary in ended:
            super().emit(self._summary_record(summary))
        if admitted:
            super().emit(record)

    def close(self) -> None:
        self.acquire()
        try:
            for summary in self.limiter.flush():
                super().emit(self._summary_record(summary))
        finally:
            self.release()
        super().close()

    def _summary_record(self, summary: Suppressed) -> logging.LogRecord:
        record = logging.LogRecord(
            "fxgw.logs",
            max(summary.level, logging.WARNING),
            __file__,
            0,
            SUPPRESSED_EVENT,
            (),
            None,
        )
        record.__dict__.update(
            source_logger=summary.logger,
            template=summary.template,
            suppressed=summary.count,
            interval_s=self.limiter.interval_s,
        )
        return record


def _exempt(record: logging.LogRecord) -> bool:
    """Our own records below WARNING: one per unit of work, not per failed attempt."""
    return record.levelno < logging.WARNING and record.name.split(".", 1)[0] in _OURS


def _template(record: logging.LogRecord) -> str:
    """A record's message before its arguments are filled in (structlog's: the event name)."""
    if isinstance(record.msg, Mapping):
        return str(record.msg.get("event", ""))
    return str(record.msg)


def cap_fields(
    max_chars: int = MAX_FIELD_CHARS, exception_chars: int = MAX_EXCEPTION_CHARS
) -> Processor:
    """A structlog processor that bounds every field of an event: strings (and what is not JSON,
    by its ``repr``) to ``max_chars`` characters (``exception`` to ``exception_chars``), lists to
    :data:`MAX_ITEMS` items, nesting to :data:`MAX_DEPTH` levels. What was cut says so."""

    def processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {
            _cap(str(k), 128, 0): _cap(v, exception_chars if k == "exception" else max_chars, 0)
            for k, v in event_dict.items()
        }

    return processor


def _cap(value: Any, max_chars: int, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) <= max_chars:
            return value
        return f"{value[:max_chars]}... [cut: {len(value)} chars]"
    if depth >= MAX_DEPTH:
        return _cap(repr(value), max_chars, depth)
    if isinstance(value, Mapping):
        items = list(value.items())
        capped = {
            _cap(str(k), 128, depth + 1): _cap(v, max_chars, depth + 1)
            for k, v in items[:MAX_ITEMS]
        }
        if len(items) > MAX_ITEMS:
            capped["..."] = f"[cut: {len(items)} items]"
        return capped
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        capped_list = [_cap(v, max_chars, depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            capped_list.append(f"[cut: {len(items)} items]")
        return capped_list
    return _cap(repr(value), max_chars, depth)


def configure(
    level: str,
    stream: IO[str],
    *,
    json_logs: bool = True,
    lines: int = LINES_PER_INTERVAL,
    interval_s: float = INTERVAL_S,
    max_chars: int = MAX_FIELD_CHARS,
) -> LimitedHandler:
    """Send our structlog events (at ``level`` and above) and the libraries' records (WARNING and
    above) to ``stream`` through one :class:`LimitedHandler`; returns it."""
    threshold = logging.getLevelNamesMapping()[level.upper()]
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,  # as the libraries' records have it
            structlog.processors.add_log_level,
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            timestamper,
            structlog.stdlib.ExtraAdder(allow=_SUMMARY_FIELDS),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            cap_fields(max_chars),
            renderer,
        ],
    )
    handler = LimitedHandler(stream, RateLimiter(lines, interval_s))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if isinstance(old, LimitedHandler):
            old.close()  # writes what it still counts as suppressed
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # the libraries' records
    for name in _OURS:
        logging.getLogger(name).setLevel(threshold)  # ours: structlog has filtered already
    return handler
