"""The files that ship inside the package: the federation's contract, the example release
policies, the local Kafka launcher's files and the sample events.

Each entry of this folder is a symbolic link to the repository's own top-level folder, which stays
the single source of truth: ``schemas`` -> ``schemas/avro``, ``policies`` -> ``policies``,
``kafka`` -> ``deploy/kafka``, ``events`` -> ``tests/data/events``. Building a wheel copies
the files the links point to (``package-data`` in ``pyproject.toml``); an editable install reads
them through the links. :mod:`gateway.resources` says where they are.
"""
