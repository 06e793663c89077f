"""Certificates for a secured local Kafka: a throw-away CA, a broker certificate, client
certificates. For tests and local runs only; a federation's real certificates come from its PKI.

The X.509 work is the ``cryptography`` package's (a development dependency); what is ours is the
choice of names and extensions a Kafka broker on 127.0.0.1 and its clients need. Everything is
written as PEM, the format both Kafka (``ssl.keystore.type=PEM``) and Python's ``ssl`` read;
private keys are unencrypted PKCS#8 files with mode 0600.

As a command, it writes a CA and the certificates of a compose federation's brokers and clients::

    python -m gateway.dev.tls --out DIR --server kafka-1,kafka-2 --client NL-POL,BE-FPJ
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert_file: Path
    key_file: Path

    @property
    def keystore(self) -> Path:
        """Key and certificate in one file, as Kafka's PEM keystore wants them."""
        return self.cert_file.with_suffix(".keystore.pem")


class LocalCA:
    """A certificate authority that lives in one folder."""

    def __init__(self, folder: Path, name: str = "fxgw local test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, common_name: str, *, server: bool = False, dns_names: Sequence[str] = ()
    ) -> Issued:
        """A certificate for ``common_name`` (a broker's for ``server``, valid for 127.0.0.1,
        localhost and ``dns_names``, and also for client authentication, as a broker is a client
        of the other brokers and of the controllers; else a client's, whose common name Kafka
        maps to its principal)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        *(x509.DNSName(name) for name in dns_names),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.folder / common_name.replace("/", "_")
        issued = Issued(stem.with_suffix(".pem"), stem.with_suffix(".key"))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        issued.cert_file.write_bytes(cert_pem)
        _write_private(issued.key_file, key_pem)
        _write_private(issued.keystore, key_pem + cert_pem)
        return issued


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if "/" in name or name.startswith("."):
            raise argparse.ArgumentTypeError(f"{name!r} is not a host or agency name")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``ca.pem`` and, for each name, ``NAME.pem``, ``NAME.key`` and ``NAME.keystore.pem``
    (keys 0600) into ``--out``; print the files written."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.dev.tls",
        description="A throw-away CA and broker/client certificates, as PEM (for tests and"
        " compose; never for production).",
    )
    parser.add_argument("--out", required=True, help="folder to write into (created)")
    parser.add_argument(
        "--server",
        type=_names,
        default=[],
        help="broker host names, comma-separated: each certificate is valid for its name",
    )
    parser.add_argument(
        "--client",
        type=_names,
        default=[],
        help="client common names (Kafka principals), comma-separated, e.g. NL-POL,BE-FPJ",
    )
    parser.add_argument("--ca-name", default="fxgw local test CA", help="the CA's common name")
    args = parser.parse_args(argv)
    if not args.server and not args.client:
        parser.error("give --server and/or --client")
    ca = LocalCA(Path(args.out), args.ca_name)
    written = [ca.ca_file]
    for name in args.server:
        issued = ca.issue(name, server=True, dns_names=[name])
        written += [issued.cert_file, issued.key_file, issued.keystore]
    for name in args.client:
        issued = ca.issue(name)
        written += [issued.cert_file, issued.key_file, issued.keystore]
    sys.stdout.write("".join(f"{path}\n" for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
