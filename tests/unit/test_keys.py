"""Key files: 0600, never overwritten, refused when others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.crypto.keys import (
    generate_encryption_key,
    generate_signing_key,
    load_encryption_key,
    load_signing_key,
    write_key_file,
)
from gateway.errors import KeyFileError
from gateway.types import KeyId


class TestKeyFiles:
    """Writing and loading private key files."""

    def test_round_trip_and_mode(self, tmp_path: Path) -> None:
        """A written signing key loads back identical, from a file of mode 0600."""
        key = generate_signing_key(KeyId("NL-POL/sign/1"))
        path = tmp_path / "k" / "sign.key"
        write_key_file(path, key, owner="NL-POL")
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        loaded = load_signing_key(path)
        assert key.public == loaded.public
        assert key.key_id == loaded.key_id

    def test_encryption_key_round_trip(self, tmp_path: Path) -> None:
        """An X25519 key loads back with the same public half."""
        key = generate_encryption_key(KeyId("NL-POL/encrypt/1"))
        write_key_file(tmp_path / "enc.key", key, owner="NL-POL")
        assert key.public == load_encryption_key(tmp_path / "enc.key").public

    def test_existing_file_is_never_overwritten(self, tmp_path: Path) -> None:
        """A second write to the same path fails and keeps the first key."""
        first = generate_signing_key(KeyId("a"))
        write_key_file(tmp_path / "k.key", first, owner="X")
        with pytest.raises(KeyFileError, match="exists already"):
            write_key_file(tmp_path / "k.key", generate_signing_key(KeyId("b")), owner="X")
        assert first.public == load_signing_key(tmp_path / "k.key").public

    def test_group_readable_file_is_refused(self, tmp_path: Path) -> None:
        """A key file others can read is refused with the chmod fix in the message."""
        write_key_file(tmp_path / "k.key", generate_signing_key(KeyId("a")), owner="X")
        os.chmod(tmp_path / "k.key", 0o640)
        with pytest.raises(KeyFileError, match="chmod 600"):
            load_signing_key(tmp_path / "k.key")

    def test_wrong_kind_is_refused(self, tmp_path: Path) -> None:
        """An encryption key file is not accepted where a signing key is expected."""
        write_key_file(tmp_path / "e.key", generate_encryption_key(KeyId("e")), owner="X")
        with pytest.raises(KeyFileError, match="ed25519"):
            load_signing_key(tmp_path / "e.key")

    def test_missing_file_names_keygen(self, tmp_path: Path) -> None:
        """A missing key file says how to make one."""
        with pytest.raises(KeyFileError, match="fxgw keygen"):
            load_signing_key(tmp_path / "none.key")

    def test_truncated_key_is_refused(self, tmp_path: Path) -> None:
        """A key of the wrong length is refused, naming the field."""
        path = tmp_path / "bad.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(
            fd,
            b'{"format": "fxgw-key-1", "owner": "X", "key_id": "k", "algorithm": "ed25519",'
            b' "private": "AAAA"}',
        )
        os.close(fd)
        with pytest.raises(KeyFileError, match="'private' holds 3 bytes"):
            load_signing_key(path)
