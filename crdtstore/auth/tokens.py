"""Bearer tokens: JWTs (RFC 7519) signed with Ed25519, ECDSA P-256 or RSA, verified with PyJWT.

A node lists the public keys it trusts (several, so a signing key can be
rotated without downtime) and the algorithms it accepts. Each key verifies
only the algorithm its type was made for (Ed25519: EdDSA, P-256: ES256, RSA:
RS256), whatever a token's header claims, and ``none`` is never accepted: a
token can neither pick a weaker algorithm nor use a public key as an HMAC
secret. A token names the key that signed it in its ``kid`` header (the
SHA-256 of the key, as ``key_id`` computes it), so a node tries only that key;
a token without ``kid`` is tried against every key of its algorithm.

Claims: ``sub`` (the principal), ``roles`` (role names), ``jti`` (the token's
id, what a revocation names), ``exp`` (required), ``nbf`` and ``iat``, and
``iss`` when the node is configured with an issuer. Verified tokens are kept
until they expire, in a bounded cache, so a request with a token seen before
costs a dictionary lookup.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "InvalidToken",
    "KeyFileError",
    "Principal",
    "PublicKey",
    "TokenVerifier",
    "issue_token",
    "key_id",
    "keygen",
    "load_public_key",
    "parse_ttl",
]

ALGORITHMS = ("EdDSA", "ES256", "RS256")
PRIVATE_KEY_FILE = "signing.pem"
PUBLIC_KEY_FILE = "signing.pub.pem"
# A token over this many bytes is refused before parsing: a bound on what a request can make the node decode.
TOKEN_BYTES_MAX = 16 * 1024

PublicKeyType = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKeyType = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyFileError(ValueError):
    """A key file that cannot be read or used; the message names the file."""


class InvalidToken(Exception):
    """A token this node does not accept; the message says why and never repeats the token."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    roles: tuple[str, ...]
    token_id: str
    expires_at: float  # seconds since the epoch

    def __str__(self) -> str:
        return self.subject


@dataclass(frozen=True, slots=True)
class PublicKey:
    key: PublicKeyType
    algorithm: str
    kid: str
    source: str  # the file it came from, for messages


def _algorithm_of(key: PublicKeyType | PrivateKeyType, source: str) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"{source}: an EC key on {key.curve.name}; only P-256 (ES256) is accepted")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyFileError(f"{source}: an RSA key of {key.key_size} bits; at least 2048 are needed")
        return "RS256"
    raise KeyFileError(f"{source}: not an Ed25519, P-256 or RSA key")


def key_id(key: PublicKeyType) -> str:
    """A key's id: the first 16 bytes of the SHA-256 of its SubjectPublicKeyInfo, base64url."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:16]).rstrip(b"=").decode("ascii")


def _read_key_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read it: {exc.strerror}") from None


def load_public_key(path: str | Path) -> PublicKey:
    source = str(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{source}: not a PEM public key (crdtstore token keygen writes one)") from None
    if not isinstance(key, PublicKeyType):
        raise KeyFileError(f"{source}: not an Ed25519, P-256 or RSA public key")
    return PublicKey(key, _algorithm_of(key, source), key_id(key), source)


def _load_private_key(path: str | Path) -> PrivateKeyType:
    source = str(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(
            f"{source}: not an unencrypted PEM private key (crdtstore token keygen writes one)"
        ) from None
    if not isinstance(key, PrivateKeyType):
        raise KeyFileError(f"{source}: not an Ed25519, P-256 or RSA private key")
    _algorithm_of(key, source)
    return key


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 signing key pair into ``out``: (private key, mode 0600; public key)."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} exists already; keygen never overwrites a key (choose another --out)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with mode 0600 from the start: the key is never readable by others, not even for a moment.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def parse_ttl(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``30d`` or a number of seconds -> seconds; ``ValueError`` otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"ttl {text!r} is not a duration like 90s, 15m, 1h or 30d") from None
    if not seconds > 0:
        raise ValueError(f"ttl {text!r} must be positive")
    return seconds


def issue_token(
    signing_key: str | Path,
    subject: str,
    roles: Sequence[str],
    *,
    ttl_s: float = 3600.0,
    issuer: str | None = None,
    token_id: str | None = None,
    not_before: float | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``subject`` holding ``roles``, valid for ``ttl_s`` seconds from ``now``."""
    if not subject:
        raise ValueError("a token needs a subject (who it speaks for)")
    key = _load_private_key(signing_key)
    algorithm = _algorithm_of(key, str(signing_key))
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": list(roles),
        "jti": token_id or uuid.uuid4().hex,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    if not_before is not None:
        claims["nbf"] = int(not_before)
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": key_id(key.public_key())})


class TokenVerifier:
    """Verifies tokens against the configured public keys; keeps what it verified until it expires."""

    def __init__(
        self,
        keys: Sequence[PublicKey],
        *,
        algorithms: Sequence[str] = ALGORITHMS,
        issuer: str = "",
        leeway_s: float = 30.0,
        cache_entries_max: int = 10_000,
    ) -> None:
        for key in keys:
            if key.algorithm not in algorithms:
                raise KeyFileError(
                    f"{key.source}: a {key.algorithm} key, but auth.algorithms accepts only {', '.join(algorithms)}"
                )
        self.keys = tuple(keys)
        self.algorithms = tuple(algorithms)
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.cache_entries_max = cache_entries_max
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The token's principal, or ``InvalidToken`` saying why it is refused."""
        moment = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None:
            if moment <= cached.expires_at + self.leeway_s:
                return cached
            del self._cache[token]
            raise InvalidToken("the token has expired: ask for a new one")
        principal = self._verify(token, moment)
        self._cache[token] = principal
        if len(self._cache) > self.cache_entries_max:
            self._cache.popitem(last=False)  # the oldest first: entries are not refreshed, so this is FIFO
        return principal

    def _verify(self, token: str, now: float) -> Principal:
        if len(token) > TOKEN_BYTES_MAX:
            raise InvalidToken(f"the token is malformed: longer than {TOKEN_BYTES_MAX} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidToken("the token is malformed: not a JWT (header.payload.signature, base64url)") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken(
                f"the token is signed with {algorithm!r}, which this node does not accept "
                f"(auth.algorithms: {', '.join(self.algorithms)})"
            )
        kid = header.get("kid")
        candidates = [k for k in self.keys if k.algorithm == algorithm and (kid is None or k.kid == kid)]
        if not candidates:
            which = f"key {kid!r}" if isinstance(kid, str) else f"a {algorithm} key"
            raise InvalidToken(
                f"the token was signed with {which}, which is not among this node's auth.token_public_keys"
            )
        failure: InvalidToken | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],  # this key's own algorithm, never the header's choice
                    issuer=self.issuer or None,
                    leeway=self.leeway_s,
                    options={"require": ["exp", "sub", "jti"], "verify_aud": False},
                )
            except jwt.InvalidSignatureError:
                failure = InvalidToken("the token's signature does not verify with any configured key")
                continue
            except jwt.ExpiredSignatureError:
                raise InvalidToken("the token has expired: ask for a new one") from None
            except jwt.ImmatureSignatureError:
                raise InvalidToken("the token is not valid yet (its nbf or iat lies in the future)") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken(f"the token's issuer is not {self.issuer!r} (auth.issuer)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidToken(f"the token is malformed: it has no {exc.claim!r} claim") from None
            except jwt.InvalidTokenError as exc:
                raise InvalidToken(f"the token is malformed: {type(exc).__name__}") from None
            return _principal(claims, now)
        assert failure is not None
        raise failure


def _principal(claims: dict[str, Any], now: float) -> Principal:
    subject, roles, token_id, expires = claims.get("sub"), claims.get("roles", []), claims.get("jti"), claims["exp"]
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("the token is malformed: its sub claim is not a name")
    if not isinstance(token_id, str) or not token_id:
        raise InvalidToken("the token is malformed: its jti claim is not a string")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidToken("the token is malformed: its roles claim is not a list of role names")
    if not isinstance(expires, int | float):
        raise InvalidToken("the token is malformed: its exp claim is not a time")
    return Principal(subject, tuple(roles), token_id, float(expires))
