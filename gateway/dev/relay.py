"""A bare aiokafka relay: the baseline ``fxgw bench`` holds the gateway against.

It consumes one topic and produces every record, unchanged (key, value, headers), to another,
with the same delivery guarantees the gateway gives: an idempotent producer with ``acks=all``,
and offsets committed only after every record of the batch is acknowledged. It batches the way
a careful engineer writes such a relay: take what ``getmany`` has, send it all, await it all,
commit. It does nothing else (no parsing, no crypto, no audit), so the difference between the
two is the price of what the gateway does for each event.

We keep this code rather than use a ready tool (MirrorMaker, Kafka Connect) because the
baseline must be the same Python client, in the same interpreter, with the same producer and
consumer settings as the node, or the comparison measures the JVM instead of the gateway. For
the same reason it talks to aiokafka directly and not through :mod:`gateway.node.transport`.

A development tool: the runtime never imports it. It runs as its own process::

    python -m gateway.dev.relay --bootstrap 127.0.0.1:9092 --source A --target B --group g

SIGTERM or SIGINT stops it after the batch in hand; it then prints one JSON line on stdout with
the count of records it relayed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

import aiokafka

POLL_TIMEOUT_MS = 300
MAX_BATCH = 500
"""Records taken per ``getmany``; the node takes 200 per poll, a relay can afford more."""


async def relay(bootstrap: str, source: str, target: str, group: str, stop: asyncio.Event) -> int:
    """Relay ``source`` to ``target`` until ``stop`` is set; return how many records it relayed.

    :raises aiokafka.errors.KafkaError: the cluster failed (the process exits; uncommitted
        records are relayed again by the next run).
    """
    consumer = aiokafka.AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"{group}-in",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=MAX_BATCH,
    )
    # the node's producer settings (gateway.node.transport.Producer), so only the work differs
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"{group}-out",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )
    relayed = 0
    await producer.start()
    try:
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_BATCH)
                if not batches:
                    continue
                pending = [
                    await producer.send(target, value=r.value, key=r.key, headers=r.headers)
                    for records in batches.values()
                    for r in records
                ]
                await asyncio.gather(*pending)
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
                relayed += len(pending)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return relayed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay until SIGTERM or SIGINT; print ``{"relayed": N}`` on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.dev.relay", description="Relay one Kafka topic to another."
    )
    parser.add_argument("--bootstrap", required=True, help="host:port of the Kafka cluster")
    parser.add_argument("--source", required=True, help="topic to consume")
    parser.add_argument("--target", required=True, help="topic to produce to")
    parser.add_argument("--group", required=True, help="consumer group id")
    args = parser.parse_args(argv)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await relay(args.bootstrap, args.source, args.target, args.group, stop)

    relayed = asyncio.run(run())
    sys.stdout.write(json.dumps({"relayed": relayed}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
