"""Where the files shipped with the package are, as real folders on disk.

The repository keeps them at its top level (``schemas/avro/``, ``policies/``, ``deploy/kafka/``,
``tests/data/events/``); ``gateway/_data/`` links to each, and a wheel carries copies of what the
links point to (see :mod:`gateway._data`). So one lookup, :func:`importlib.resources.files` on
``gateway._data``, finds them in every way the package runs: from a wheel install, from the
editable install of a checkout, and from a checkout on ``PYTHONPATH``.

Callers get :class:`pathlib.Path` values, not ``Traversable`` ones, because the files are handed
to code that needs real paths: Maven reads the pom (``mvn -f``), the broker's JVM the log4j file
(``-Dlog4j2.configurationFile``), node configs name policy files, and the contract loader walks
folders. That holds because pip installs a wheel unpacked, so ``files()`` is a plain directory;
only an import from a zip archive would give anything else, and that is refused by name rather
than extracted to a temporary copy that would vanish while a broker still reads it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

from gateway.errors import ConfigError

__all__ = ["EVENTS", "KAFKA_LAUNCHER", "POLICIES", "SCHEMAS"]


def _shipped(name: str) -> Path:
    """Return the real path of the folder ``name`` of ``gateway._data``.

    :raises ConfigError: the package is imported from a zip archive, not from a folder.
    """
    root = files("gateway._data")
    if not isinstance(root, Path):
        raise ConfigError(
            f"the gateway package is imported from an archive ({root}); install the fxgw wheel"
            " with pip so its schemas, policies and launcher files are plain files"
        )
    # resolve(): in a checkout the link's target is named, so messages point at the file to edit
    return (root / name).resolve()


SCHEMAS: Final = _shipped("schemas")
"""The federation's contract: ``contract.yaml`` and one folder of ``.avsc`` files per version."""

POLICIES: Final = _shipped("policies")
"""The example release policies, one ``<agency>.yaml`` per sandbox agency."""

KAFKA_LAUNCHER: Final = _shipped("kafka")
"""The local Kafka launcher's files: ``pom.xml``, ``log4j2.properties``, ``kafka-local``."""

EVENTS: Final = _shipped("events")
"""Sample plain events (the benchmark's seizure template among them)."""
