"""A certificate authority and the certificates of regions and clients, for mutual TLS (``crdtstore cert``).

A mesh of regions that requires mutual TLS (``[tls] require_client_cert``)
needs one authority that every node trusts, and a certificate per region that
*names the region*: a node dials a peer expecting the peer's region name in
its certificate (``grpc.ssl_target_name_override``), and a peer that connects
must present a certificate naming the region it says it is
(``crdtstore/node/streams.py``). A client (an operator, an application) gets a
certificate from the same authority under its own name.

Every certificate here carries its name as the common name and as a DNS
subject alternative name, plus any further host names or IP addresses it is
reached by, and may serve and authenticate (server and client usage): one
certificate serves a region both as a server and as the client that dials its
peers. Keys are ECDSA P-256; private keys are written with mode 0600 from the
start, and nothing is ever overwritten.

The files follow the names Kubernetes and most tools expect of a TLS secret:
an authority is ``ca.crt`` and ``ca.key``; an issued certificate is
``tls.crt``, ``tls.key`` and a copy of ``ca.crt`` in a directory of its own,
so one directory is everything one node (or client) mounts.

This is a small authority for a cluster's own use. An organisation that runs
its own PKI issues the same certificates there: what matters is the region's
name in the certificate and one authority for the mesh.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "Authority",
    "CertificateError",
    "Issued",
    "issue_files",
    "make_authority_files",
]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
AUTHORITY_DAYS_DEFAULT = 3650
CERTIFICATE_DAYS_DEFAULT = 365
# Certificates are valid from a little before now: clocks of the hosts that check them may be behind.
_BACKDATE = datetime.timedelta(minutes=5)


class CertificateError(Exception):
    """A file that cannot be read or written, or a name that cannot go in a certificate."""


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise CertificateError(f"a certificate must be valid for at least 1 day, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    return now - _BACKDATE, now + datetime.timedelta(days=days)


def _alternative_name(host: str) -> x509.GeneralName:
    """An IP address as an IP address entry, anything else as a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise CertificateError(f"{host!r} is neither a host name nor an IP address")
    return x509.DNSName(host)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its self-signed certificate and the key that signs what it issues."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "crdtstore-ca", *, days: int = AUTHORITY_DAYS_DEFAULT) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = _validity(days)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
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
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, directory: str | Path) -> Authority:
        """The authority in ``directory`` (``ca.crt`` and ``ca.key``), or ``CertificateError`` naming the file."""
        cert_path, key_path = Path(directory) / CA_CERT_FILE, Path(directory) / CA_KEY_FILE
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CertificateError(f"cannot read the authority's certificate {cert_path}: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise CertificateError(f"cannot read the authority's key {key_path}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{key_path} is not an ECDSA key (crdtstore cert ca makes one)")
        pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(pem, spki) != certificate.public_key().public_bytes(pem, spki):
            raise CertificateError(f"{key_path} is not the key of {cert_path}")
        return cls(certificate, key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, hosts: Sequence[str] = (), *, days: int = CERTIFICATE_DAYS_DEFAULT) -> Issued:
        """A certificate for ``name`` (a region's name, or a client's), also valid for ``hosts``."""
        names = [_alternative_name(name)]
        for host in hosts:
            entry = _alternative_name(host)
            if entry not in names:
                names.append(entry)
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = _validity(days)
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(min(not_after, self.certificate.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(usage, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(certificate, key)


def _write_new(path: Path, data: bytes, *, secret: bool) -> None:
    """Write a file that must not exist yet; a secret one is mode 0600 from the start."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    except FileExistsError:
        raise CertificateError(f"{path} exists already; nothing is ever overwritten (choose another --out)") from None
    except OSError as exc:
        raise CertificateError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _check_free(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists():
            raise CertificateError(f"{path} exists already; nothing is ever overwritten (choose another --out)")


def make_authority_files(
    out: str | Path, name: str = "crdtstore-ca", *, days: int = AUTHORITY_DAYS_DEFAULT
) -> tuple[Path, Path]:
    """A new authority in ``out``: (``ca.crt``, ``ca.key`` with mode 0600)."""
    directory = Path(out)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    _check_free([cert_path, key_path])
    authority = Authority.create(name, days=days)
    directory.mkdir(parents=True, exist_ok=True)
    _write_new(key_path, _key_pem(authority.key), secret=True)
    _write_new(cert_path, authority.cert_pem, secret=False)
    return cert_path, key_path


def issue_files(
    ca_dir: str | Path, out: str | Path, name: str, hosts: Sequence[str] = (), *, days: int = CERTIFICATE_DAYS_DEFAULT
) -> tuple[Path, Path, Path]:
    """A certificate for ``name`` signed by the authority in ``ca_dir``: (``tls.crt``, ``tls.key``, ``ca.crt``)."""
    authority = Authority.load(ca_dir)
    issued = authority.issue(name, hosts, days=days)
    directory = Path(out)
    cert_path, key_path, ca_path = directory / CERT_FILE, directory / KEY_FILE, directory / CA_CERT_FILE
    _check_free([cert_path, key_path, ca_path])
    directory.mkdir(parents=True, exist_ok=True)
    _write_new(key_path, issued.key_pem, secret=True)
    _write_new(cert_path, issued.cert_pem, secret=False)
    _write_new(ca_path, authority.cert_pem, secret=False)
    return cert_path, key_path, ca_path
