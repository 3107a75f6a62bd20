"""Signing keys, tokens and ``[auth]`` configurations for tests, benchmarks and the demo.

``AuthKit`` makes a signing key pair in a directory, issues tokens with it
(valid, expired, not yet valid, for any roles), and writes a node
configuration file that trusts it::

    kit = AuthKit.create(tmp_path / "auth")
    config = kit.write_config(tmp_path / "node.toml")
    admin = kit.token("root", ["admin"])

Tokens that a node must refuse for their form rather than their claims are
made here too: ``forged`` (signed by another key under this key's id),
``foreign`` (signed by a key no node trusts).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from crdtstore.auth.tokens import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, issue_token, key_id, keygen, load_public_key

__all__ = ["AuthKit"]


@dataclass(frozen=True)
class AuthKit:
    directory: Path

    @classmethod
    def create(cls, directory: Path) -> AuthKit:
        keygen(directory)
        return cls(Path(directory))

    @property
    def signing_key(self) -> Path:
        return self.directory / PRIVATE_KEY_FILE

    @property
    def public_key(self) -> Path:
        return self.directory / PUBLIC_KEY_FILE

    def token(
        self,
        subject: str,
        roles: Sequence[str],
        *,
        ttl_s: float = 3600.0,
        token_id: str | None = None,
        issued_at: float | None = None,
        not_before: float | None = None,
        issuer: str | None = None,
    ) -> str:
        return issue_token(
            self.signing_key,
            subject,
            roles,
            ttl_s=ttl_s,
            token_id=token_id or uuid.uuid4().hex,
            now=issued_at,
            not_before=not_before,
            issuer=issuer,
        )

    def expired(self, subject: str, roles: Sequence[str]) -> str:
        """A token that expired an hour ago (well beyond any leeway)."""
        return self.token(subject, roles, ttl_s=60, issued_at=time.time() - 3600)

    def not_yet_valid(self, subject: str, roles: Sequence[str]) -> str:
        """A token valid only from an hour from now."""
        return self.token(subject, roles, not_before=time.time() + 3600)

    def forged(self, subject: str, roles: Sequence[str]) -> str:
        """Claims signed by another key, under this key's id: the signature does not verify."""
        other = ed25519.Ed25519PrivateKey.generate()
        kid = key_id(load_public_key(self.public_key).key)
        return _sign(other, subject, roles, kid)

    @staticmethod
    def foreign(subject: str, roles: Sequence[str]) -> str:
        """A well-formed token signed by a key no node trusts."""
        other = ed25519.Ed25519PrivateKey.generate()
        return _sign(other, subject, roles, key_id(other.public_key()))

    def config_text(self, *, public_keys: Sequence[Path] | None = None, extra: str = "") -> str:
        keys = ", ".join(f'"{path}"' for path in (public_keys or [self.public_key]))
        return f"[auth]\ntoken_public_keys = [{keys}]\n{extra}"

    def write_config(self, path: Path, *, public_keys: Sequence[Path] | None = None, extra: str = "") -> Path:
        path.write_text(self.config_text(public_keys=public_keys, extra=extra), encoding="utf-8")
        return path


def _sign(key: ed25519.Ed25519PrivateKey, subject: str, roles: Sequence[str], kid: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "roles": list(roles), "jti": uuid.uuid4().hex, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})
