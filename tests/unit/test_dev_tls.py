"""The throw-away CA's command: the PEM files a compose federation's brokers and clients use."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.dev.tls import main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


class TestTlsCommand:
    def test_writes_ca_servers_and_clients(self, tmp_path: Path) -> None:
        """One CA, and a certificate, key and keystore per server and client name."""
        out = tmp_path / "pki"
        assert 0 == main(["--out", str(out), "--server", "kafka-1,kafka-2", "--client", "NL-POL"])
        expected = {"ca.pem"} | {
            f"{name}{suffix}"
            for name in ("kafka-1", "kafka-2", "NL-POL")
            for suffix in (".pem", ".key", ".keystore.pem")
        }
        assert expected == {p.name for p in out.iterdir()}

    def test_private_files_are_0600(self, tmp_path: Path) -> None:
        """Keys and keystores are readable by their owner only; certificates are public."""
        main(["--out", str(tmp_path), "--server", "kafka-1", "--client", "NL-POL"])
        for path in tmp_path.iterdir():
            mode = stat.S_IMODE(path.stat().st_mode)
            if path.name.endswith((".key", ".keystore.pem")):
                assert 0o600 == mode, path.name
            else:
                assert 0 == mode & stat.S_IWOTH, path.name

    def test_server_certificate_names_its_host(self, tmp_path: Path) -> None:
        """A broker's certificate is valid for its compose host name, and for client auth."""
        main(["--out", str(tmp_path), "--server", "kafka-3"])
        cert = _cert(tmp_path / "kafka-3.pem")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "kafka-3" in names.get_values_for_type(x509.DNSName)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} == set(usages)

    def test_client_certificate_is_the_principal(self, tmp_path: Path) -> None:
        """A client certificate's common name is the agency id (Kafka's User:NL-POL)."""
        main(["--out", str(tmp_path), "--client", "NL-POL"])
        cert = _cert(tmp_path / "NL-POL.pem")
        assert "CN=NL-POL" == cert.subject.rfc4514_string()
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert [ExtendedKeyUsageOID.CLIENT_AUTH] == list(usages)

    def test_chain_verifies_with_python_ssl(self, tmp_path: Path) -> None:
        """Python's ssl loads the CA and a client's key pair, as the node's TLS set-up does."""
        main(["--out", str(tmp_path), "--client", "BE-FPJ"])
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        context.load_cert_chain(tmp_path / "BE-FPJ.pem", tmp_path / "BE-FPJ.key")
        issued = _cert(tmp_path / "BE-FPJ.pem")
        ca = _cert(tmp_path / "ca.pem")
        issued.verify_directly_issued_by(ca)

    def test_needs_a_name(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --server or --client the command refuses (exit 2) and writes nothing."""
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path / "none")])
        assert 2 == exc.value.code
        assert not (tmp_path / "none").exists()
        assert "--server" in capsys.readouterr().err

    def test_refuses_a_path_as_name(self, tmp_path: Path) -> None:
        """A name with a slash would write outside --out: refused."""
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), "--client", "../evil"])
        assert [] == list(tmp_path.iterdir())
