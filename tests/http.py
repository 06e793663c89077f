"""A plain HTTP GET on 127.0.0.1, for the tests of a node's metrics and health endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of ``GET http://127.0.0.1:<port><path>`` (an error status included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
