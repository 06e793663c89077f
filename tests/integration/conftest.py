"""Fixtures for tests that run gateway nodes against the session's real Kafka."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.dev.sandbox import Federation, build_federation
from gateway.node.config import load_config
from gateway.node.runtime import Node
from gateway.node.transport import Message, Producer, read_topic

_RUNNING: list[asyncio.Task[None]] = []
"""Node tasks of the ``running`` blocks in progress; :func:`wait_until` fails fast if one dies."""


@pytest.fixture
def federation(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Federation:
    """NL-POL, BE-FPJ (spool sink) and US-ATF with keys, signed trust list and node configs."""
    return build_federation(tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix)


@asynccontextmanager
async def running(fed: Federation, *agencies: str) -> AsyncIterator[dict[str, Node]]:
    """Run the nodes of ``agencies`` in this event loop until the block ends."""
    nodes = {a: Node(load_config(fed.config(a))) for a in agencies}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(n.run(stop), name=a) for a, n in nodes.items()]
    _RUNNING.extend(tasks)
    try:
        await wait_until(lambda: all(n.ready.is_set() for n in nodes.values()), "nodes ready")
        yield nodes
    finally:
        stop.set()
        for task in tasks:
            _RUNNING.remove(task)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def wait_until(
    check: Callable[[], object | Awaitable[object]], what: str, within_s: float = 60.0
) -> None:
    """Poll ``check`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        for task in _RUNNING:
            if task.done() and task.exception() is not None:
                raise AssertionError(f"node {task.get_name()} failed") from task.exception()
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def national_send(fed: Federation, agency: str, *events: dict[str, object]) -> None:
    """Put plain events on ``agency``'s local outbound topic, as its national system would."""
    producer = Producer(fed.bootstrap, "test-national-system")
    await producer.start()
    try:
        await producer.send_many(
            [
                (fed.local_topic(agency, "outbound"), json.dumps(e).encode(), None, ())
                for e in events
            ]
        )
    finally:
        await producer.stop()


async def publish_raw(fed: Federation, topic: str, value: bytes) -> None:
    """Publish raw bytes to a topic (an attacker or a broken peer on the exchange)."""
    producer = Producer(fed.bootstrap, "test-raw")
    await producer.start()
    try:
        await producer.send(topic, value)
    finally:
        await producer.stop()


async def delivered(fed: Federation, agency: str) -> list[dict[str, object]]:
    """The delivery documents the national system of ``agency`` has been handed."""
    config = load_config(fed.config(agency))
    if config.delivery.sink == "spool":
        folder = fed.spool_in(agency)
        return [json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]
    return [
        json.loads(m.value)
        for m in await read_topic(fed.bootstrap, fed.local_topic(agency, "inbound"))
    ]


async def quarantined(fed: Federation, agency: str) -> list[Message]:
    """The records in ``agency``'s local quarantine topic."""
    return await read_topic(fed.bootstrap, fed.local_topic(agency, "quarantine"))


def leaves(value: object) -> list[str]:
    """Every string and number in a JSON value, as text."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


_OPAQUE = re.compile(
    r"[0-9a-f]{16,}"  # digests, message ids
    r"|[A-Za-z0-9+/]{40,}={0,2}"  # base64 keys and signatures
    r"|\d{4}-\d{2}-\d{2}[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?"  # timestamps
)


def leaked(values: set[str], text: str) -> list[str]:
    """The event values found in ``text`` (audit files, log entries).

    Digests, signatures and timestamps are left out of the search first: their characters are
    random and would match short values by chance. So are numbers of fewer than six digits (a
    year, a count): such a number cannot be told apart from the metadata counters a log holds.
    """
    scrubbed = _OPAQUE.sub(" ", text)
    candidates = {v for v in values if not (v.replace(".", "").isdigit() and len(v) < 6)}
    return sorted(v for v in candidates if v in scrubbed)
