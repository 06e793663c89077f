"""Where deliveries go: the agency's local inbound topic, or a spool directory.

Both write the same JSON document per delivery, so any tool of the national system can read it:
``{"event_type", "provenance", "record"}``, the record in its JSON form (dates ISO-8601, bytes
base64), the provenance as :meth:`gateway.core.inbound.Delivery.provenance`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Protocol

from gateway.contract.schemas import SchemaRegistry
from gateway.core.inbound import Delivery
from gateway.errors import StorageError
from gateway.node.transport import Producer


def delivery_document(delivery: Delivery, registry: SchemaRegistry) -> bytes:
    """The JSON document of one delivery."""
    document = {
        "event_type": delivery.header.event_type,
        "provenance": delivery.provenance(),
        "record": registry.to_json(delivery.header.event_type, delivery.record),
    }
    return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")


class Sink(Protocol):
    """Takes a delivery and returns only when it is durably stored."""

    async def deliver(self, delivery: Delivery, document: bytes) -> None: ...

    def delivered_ids(self) -> set[str]: ...


class KafkaSink:
    """Delivers to the local inbound topic, keyed by event id, with the message id in a header."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def deliver(self, delivery: Delivery, document: bytes) -> None:
        """Publish and wait for the acknowledgement of every in-sync replica.

        :raises TransportError: not acknowledged.
        """
        h = delivery.header
        await self._producer.send(
            self.topic,
            document,
            key=h.event_id.encode("utf-8"),
            headers=(
                ("fxgw-message-id", h.message_id.encode("utf-8")),
                ("fxgw-event-type", h.event_type.encode("utf-8")),
                ("fxgw-sender", h.sender.encode("utf-8")),
                ("fxgw-handling", h.handling.code.encode("utf-8")),
            ),
        )

    def delivered_ids(self) -> set[str]:
        """Not known locally; the node scans the topic (see ``Node``)."""
        return set()


class SpoolSink:
    """Writes each delivery as ``<message id>.json`` into a directory, atomically.

    The file appears complete or not at all (temp file, fsync, rename, fsync of the folder), so a
    reader polling the folder never sees half a record.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def deliver(self, delivery: Delivery, document: bytes) -> None:
        """Write the file (an existing file of the same message id is left as it is).

        :raises StorageError: the file could not be written.
        """
        write_atomically(self.directory / f"{delivery.header.message_id}.json", document)

    def delivered_ids(self) -> set[str]:
        """Message ids of the files present in the folder."""
        return {p.stem for p in self.directory.glob("*.json")}

    def purge_expired(self, now: datetime) -> list[str]:
        """Delete the delivered files whose sender-set retention has ended; their message ids.

        The national system is expected to take files promptly; what it leaves here past the
        retention the sender set is removed, as the handling conditions require.
        """
        purged: list[str] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                until = json.loads(path.read_bytes())["provenance"].get("retain_until")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not ours, or being taken by the national system right now
            if isinstance(until, str) and datetime.fromisoformat(until) <= now:
                path.unlink(missing_ok=True)
                purged.append(path.stem)
        return purged


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename, with fsyncs; keep an existing file.

    :raises StorageError: the disk refused.
    """
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write: {exc}") from exc
