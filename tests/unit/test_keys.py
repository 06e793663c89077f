"""Key files: 0600, never overwritten, refused when others can read them."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import main
from gateway.crypto.keys import (
    generate_encryption_key,
    generate_signing_key,
    load_encryption_key,
    load_pseudonym_key,
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


class TestKeygenOnly:
    """``fxgw keygen --only KIND``: one new key for a rotation, the others left alone."""

    def _existing(self, tmp_path: Path) -> dict[str, bytes]:
        assert 0 == main(
            ["keygen", "--agency", "NL-POL", "--country", "NL", "--out", str(tmp_path)]
        )
        return {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    @pytest.mark.parametrize(
        ("kind", "part", "use", "load"),
        [
            ("signing", "sign", "sign", load_signing_key),
            ("encryption", "enc", "encrypt", load_encryption_key),
            ("pseudonym", "pseudonym", "pseudonym", load_pseudonym_key),
        ],
    )
    def test_one_new_key_file_and_nothing_else_touched(
        self, tmp_path: Path, kind: str, part: str, use: str, load: object
    ) -> None:
        """Exactly one file is added (0600, a key id of its kind not used before); the agency's
        existing key files keep their bytes."""
        before = self._existing(tmp_path)
        assert 0 == main(["keygen", "--agency", "NL-POL", "--only", kind, "--out", str(tmp_path)])
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        added = sorted(set(after) - set(before))
        assert 1 == len(added)
        assert added[0].startswith(f"NL-POL.{part}.") and added[0].endswith(".key")
        assert before == {name: after[name] for name in before}
        path = tmp_path / added[0]
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        key = load(path)  # type: ignore[operator]
        (old,) = (load(tmp_path / n) for n in before if n == f"NL-POL.{part}.key")  # type: ignore[operator]
        assert key.key_id.startswith(f"NL-POL/{use}/")
        assert old.key_id != key.key_id

    @pytest.mark.parametrize(("kind", "use"), [("signing", "sign"), ("encryption", "encrypt")])
    def test_prints_the_public_entry_of_the_new_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, use: str
    ) -> None:
        """The printed YAML is one trust-list key entry whose public key is the file's."""
        assert 0 == main(
            [
                "keygen",
                "--agency",
                "BE-FPJ",
                "--only",
                kind,
                "--out",
                str(tmp_path),
                "--valid-from",
                "2026-12-04T12:00:00+00:00",
                "--valid-days",
                "30",
            ]
        )
        entries = yaml.safe_load(capsys.readouterr().out)
        assert 1 == len(entries)
        (path,) = tmp_path.iterdir()
        key = (load_signing_key if kind == "signing" else load_encryption_key)(path)
        entry = entries[0]
        assert (key.key_id, use) == (entry["id"], entry["use"])
        assert key.public == base64.b64decode(entry["public"])
        assert "2026-12-04T12:00:00Z" == entry["valid_from"]
        assert "2027-01-03T12:00:00Z" == entry["valid_until"]

    def test_pseudonym_secret_prints_nothing_to_publish(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A pseudonym secret has no public half: no entry is printed, no secret either."""
        assert 0 == main(
            ["keygen", "--agency", "NL-POL", "--only", "pseudonym", "--out", str(tmp_path)]
        )
        out = capsys.readouterr().out
        (path,) = tmp_path.iterdir()
        secret = base64.b64encode(load_pseudonym_key(path).secret).decode()
        assert "nothing to publish" in out
        assert secret not in out

    def test_valid_from_without_zone_is_refused(self, tmp_path: Path) -> None:
        """A time without a zone is ambiguous: refused, and no file is written."""
        code = main(
            [
                "keygen",
                "--agency",
                "NL-POL",
                "--only",
                "signing",
                "--out",
                str(tmp_path),
                "--valid-from",
                "2026-12-04T12:00:00",
            ]
        )
        assert 0 != code
        assert [] == list(tmp_path.iterdir())
