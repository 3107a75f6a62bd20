"""Node configuration: a TOML file, then environment variables, then flags; validated at start.

Precedence, lowest to highest: built-in defaults, the file given by
``--config`` (or ``CRDTSTORE_CONFIG``), ``CRDTSTORE_*`` environment variables,
command-line flags. Every problem is reported as ``ConfigError`` with a message
that names the setting, where it came from, and what would be accepted.

Example file::

    region = "eu-west"
    data_dir = "/var/lib/crdtstore"
    listen = "0.0.0.0:7420"
    health_listen = "0.0.0.0:7421"   # plaintext grpc.health.v1 only, for probes; off when empty
    metrics_listen = "127.0.0.1:9420"   # Prometheus text at http://HOST:PORT/metrics; off when empty

    [limits]
    key_bytes_max = 1024
    value_bytes_max = 1048576
    operations_per_batch_max = 10000

    [storage]
    map_size_bytes_max = 68719476736
    delta_log_bytes_max = 268435456
    audit = true                     # a record of every request, chained (docs/audit.md)
    audit_retention_days = 90

    [server]
    drain_grace_s = 10
    batch_requests_max = 1024

    [peers]              # the other regions: name = "host:port"
    us-east = "10.0.0.2:7420"
    ap-south = "10.0.0.3:7420"

    [replication]
    batch_window_ms = 10
    anti_entropy_ms = 1000

    [tls]                # TLS for clients and peers on the node's port; plaintext without it
    cert = "/etc/crdtstore/eu-west.pem"
    key = "/etc/crdtstore/eu-west.key"
    ca = "/etc/crdtstore/ca.pem"
    require_client_cert = true

    [auth]               # every request needs a signed token; without it, loopback only
    token_public_keys = ["/etc/crdtstore/signing.pub.pem"]
    algorithms = ["EdDSA"]
    issuer = "crdtstore"
    peer_token_file = "/etc/crdtstore/peer.token"

Peers are symmetric: every region lists every other region. Of each pair,
the region whose name sorts first opens the replication stream.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crdtstore.operations import Limits
from crdtstore.replica.settings import ReplicationSettings
from crdtstore.storage import StorageOptions

__all__ = [
    "DEFAULT_LISTEN",
    "PEER_TOKEN_ENV",
    "AuthSettings",
    "ConfigError",
    "NodeConfig",
    "ReplicationSettings",
    "ServerSettings",
    "TlsSettings",
    "is_loopback",
    "parse_listen",
    "parse_peer",
]

DEFAULT_LISTEN = "127.0.0.1:7420"
# Room above the largest batch for protobuf framing.
MESSAGE_OVERHEAD_BYTES = 1024 * 1024
_REGION = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
PEER_TOKEN_ENV = "CRDTSTORE_PEER_TOKEN"
_TOKEN_ALGORITHMS = ("EdDSA", "ES256", "RS256")
# Top-level string settings, each also CRDTSTORE_<NAME> and --<name> (with dashes).
_TOP_SETTINGS = ("region", "data_dir", "listen", "metrics_listen", "health_listen")


class ConfigError(Exception):
    pass


# Settings where 0 is a value of its own: the map starts at its maximum (storage.config).
_ZERO_MEANS_DEFAULT = frozenset({"map_size_bytes"})


@dataclass(frozen=True)
class ServerSettings:
    drain_grace_s: float = 10.0
    batch_requests_max: int = 1024
    pending_requests_max: int = 16_384
    scan_page_max: int = 1000
    scan_page_default: int = 100
    scan_page_bytes_max: int = 4 * 1024 * 1024
    # A set's members per Members page (its limit, and when it gives none).
    members_page_max: int = 10_000
    members_page_default: int = 1000
    # A Get of a set with more members than this is refused, and a Scan lists such a set without its
    # members (members_omitted): both would otherwise be unbounded. Read it with Members instead.
    get_members_max: int = 100_000
    # Clocks: a remote timestamp further ahead than this is not taken into the clock.
    max_clock_offset_ms: int = 500
    # The change feed (KV.Watch): a progress message after this long without a matching change
    # (a request may ask for another interval); a stream whose consumer reads nothing for
    # watch_stall_s is closed (RESOURCE_EXHAUSTED: it resumes from its token); at most
    # watch_streams_max streams at once.
    watch_progress_interval_ms: int = 1000
    watch_stall_s: float = 30.0
    watch_streams_max: int = 1000
    # A watch resuming from a token waits (sending progress) until this region has seen everything the
    # token covers; past this, it starts again from a snapshot (or OUT_OF_RANGE, if it asked).
    watch_catch_up_s: float = 30.0


@dataclass(frozen=True)
class TlsSettings:
    """TLS on the node's port, for clients and peers alike; off (plaintext) when ``cert`` is empty.

    With ``require_client_cert`` every caller must present a certificate
    signed by ``ca`` (mutual TLS). A peer's certificate must also name its
    region (as a DNS subject alternative name or the common name): this node
    checks it when the peer connects, and checks the same of the peer's server
    certificate when it dials, so one region cannot pass for another.
    """

    cert: str = ""  # PEM certificate chain of this node
    key: str = ""  # its PEM private key
    ca: str = ""  # PEM certificates of the authority that signs peers' and clients' certificates
    require_client_cert: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, CA certificates or None), or ``ConfigError`` naming the file."""
        return (
            _read_pem(self.cert, "tls.cert"),
            _read_pem(self.key, "tls.key"),
            (_read_pem(self.ca, "tls.ca") if self.ca else None),
        )


def _read_pem(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting}: {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class AuthSettings:
    """Access control; off when ``token_public_keys`` is empty (and then the node listens on loopback only).

    Every request must carry a bearer token signed by the private half of one
    of ``token_public_keys`` with one of ``algorithms``; ``issuer``, when set,
    must be its ``iss``. ``leeway_s`` allows for clocks that disagree a little
    on ``exp`` and ``nbf``. Verified tokens are cached until they expire, at
    most ``token_cache_entries_max`` of them. A node presents the token in
    ``peer_token_file`` (or ``CRDTSTORE_PEER_TOKEN``) to its peers: it needs the
    ``replicate`` right, unless mutual TLS names the region.
    """

    token_public_keys: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=lambda: list(_TOKEN_ALGORITHMS))
    issuer: str = ""
    leeway_s: float = 30.0
    token_cache_entries_max: int = 10_000
    peer_token_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.token_public_keys)

    def validate(self) -> None:
        for name in ("token_public_keys", "algorithms"):
            value = getattr(self, name)
            if not all(isinstance(item, str) and item for item in value):
                raise ConfigError(f"auth.{name} must be a list of non-empty strings")
        unknown = [a for a in self.algorithms if a not in _TOKEN_ALGORITHMS]
        if unknown or not self.algorithms:
            raise ConfigError(
                f"auth.algorithms: {unknown or 'an empty list'} is not accepted; choose among "
                f"{', '.join(_TOKEN_ALGORITHMS)} (none and HMAC algorithms never are)"
            )
        if not 0 <= self.leeway_s <= 300:
            raise ConfigError(f"auth.leeway_s must be from 0 to 300 seconds, got {self.leeway_s}")
        if self.token_cache_entries_max < 1:
            raise ConfigError(f"auth.token_cache_entries_max must be at least 1, got {self.token_cache_entries_max}")
        if (self.peer_token_file or self.issuer) and not self.enabled:
            raise ConfigError("auth.peer_token_file and auth.issuer need auth.token_public_keys (auth is off without)")

    def peer_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The token this node presents to its peers: the file (read afresh, so it can be replaced), or the env."""
        if self.peer_token_file:
            try:
                token = Path(self.peer_token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"auth.peer_token_file: cannot read {self.peer_token_file}: {exc}") from None
            if not token:
                raise ConfigError(f"auth.peer_token_file: {self.peer_token_file} is empty")
            return token
        env = os.environ if environ is None else environ
        return env.get(PEER_TOKEN_ENV, "").strip() or None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as ``parse_listen`` gives it) names a loopback address only."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name, which may resolve to anything


@dataclass(frozen=True)
class NodeConfig:
    region: str = "local"
    data_dir: Path = Path("crdtstore-data")
    listen: str = DEFAULT_LISTEN
    # A second, plaintext port serving only grpc.health.v1 (no data, no other service), for probes that
    # cannot speak TLS (Kubernetes' gRPC probe); "" for none.
    health_listen: str = ""
    limits: Limits = field(default_factory=Limits)
    # A node audits every request by default (``[storage] audit = false`` turns it off: docs/audit.md).
    storage: StorageOptions = field(default_factory=lambda: StorageOptions(audit=True))
    server: ServerSettings = field(default_factory=ServerSettings)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    peers: Mapping[str, str] = field(default_factory=dict)  # region -> host:port
    # The data directory may not be the copy that minted this region's newest
    # events (restored in place from a backup): mint under a new incarnation (--rejoin).
    rejoin: bool = False
    # Serve a non-loopback address without access control, on purpose (--insecure-no-auth).
    insecure_no_auth: bool = False
    # Where Prometheus scrapes ``/metrics`` (docs/observability.md); off when empty. Never behind access
    # control: the metrics carry no key, member or token, only counts (bind it where only Prometheus reaches).
    metrics_listen: str = ""

    @classmethod
    def load(
        cls,
        *,
        config_file: str | None = None,
        flags: Mapping[str, str | None] | None = None,
        peer_flags: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        rejoin: bool = False,
        insecure_no_auth: bool = False,
    ) -> NodeConfig:
        env = os.environ if environ is None else environ
        config = cls()
        path = config_file or env.get("CRDTSTORE_CONFIG")
        if path:
            config = config._merge_file(Path(path))
        for name in _TOP_SETTINGS:
            value = env.get(f"CRDTSTORE_{name.upper()}")
            if value:
                config = config._set_top(name, value, f"environment variable CRDTSTORE_{name.upper()}")
        peers_env = env.get("CRDTSTORE_PEERS")
        if peers_env:
            items = [item.strip() for item in peers_env.split(",") if item.strip()]
            config = config._with_peers(items, "environment variable CRDTSTORE_PEERS")
        for name, value in (flags or {}).items():
            if value is not None:
                config = config._set_top(name, value, f"--{name.replace('_', '-')}")
        if peer_flags:
            config = config._with_peers(list(peer_flags), "--peer")
        if rejoin:
            config = replace(config, rejoin=True)
        if insecure_no_auth:
            config = replace(config, insecure_no_auth=True)
        config.validate()
        return config

    def _set_top(self, name: str, value: Any, source: str) -> NodeConfig:
        if name == "data_dir":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: data_dir must be a path")
            return replace(self, data_dir=Path(value))
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {name} must be a string, got {type(value).__name__}")
        if name == "metrics_listen" and value:
            try:
                parse_listen(value)
            except ConfigError as exc:
                raise ConfigError(f"{source}: metrics_listen: {exc}") from None
        if name == "region":
            return replace(self, region=value)
        if name == "listen":
            return replace(self, listen=value)
        if name == "health_listen":
            return replace(self, health_listen=value)
        return replace(self, metrics_listen=value)

    @property
    def message_bytes_max(self) -> int:
        """The largest gRPC message a node accepts: a client's largest batch, or one log entry from a peer."""
        return self.limits.batch_bytes_max + MESSAGE_OVERHEAD_BYTES

    def _with_peers(self, items: Sequence[str], source: str) -> NodeConfig:
        """``NAME=HOST:PORT`` items replace the peers from lower-precedence sources."""
        peers: dict[str, str] = {}
        for item in items:
            name, address = parse_peer(item, source)
            if name in peers:
                raise ConfigError(f"{source}: peer {name!r} is given twice")
            peers[name] = address
        return replace(self, peers=peers)

    def _merge_file(self, path: Path) -> NodeConfig:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        config = self
        sections = {
            "limits": Limits,
            "storage": StorageOptions,
            "server": ServerSettings,
            "replication": ReplicationSettings,
            "tls": TlsSettings,
            "auth": AuthSettings,
        }
        for key, value in raw.items():
            where = f"{path}: {key}"
            if key in _TOP_SETTINGS:
                config = config._set_top(key, value, where)
            elif key == "peers":
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    raise ConfigError(f'{where} must be a table of name = "host:port"')
                config = config._with_peers([f"{k}={v}" for k, v in value.items()], where)
            elif key in sections:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where} must be a table ([{key}])")
                current = getattr(config, key)
                config = replace(config, **{key: _merge_section(current, value, where)})
                if key == "auth" and not config.auth.token_public_keys:
                    raise ConfigError(
                        f"{where}.token_public_keys: list at least one public key file; without [auth] the node "
                        f"serves loopback only"
                    )
            else:
                known = ", ".join([*_TOP_SETTINGS, "peers", *sections])
                raise ConfigError(f"{where}: unknown setting (known: {known})")
        return config

    def validate(self) -> None:
        if not _REGION.match(self.region):
            raise ConfigError(
                f"region {self.region!r} is not a valid region name: use 1-63 lowercase letters, digits, "
                f"'.', '_' or '-', starting with a letter or digit"
            )
        parse_listen(self.listen)
        if self.health_listen:
            try:
                parse_listen(self.health_listen)
            except ConfigError as exc:
                raise ConfigError(f"health_listen: {exc}") from None
            if self.health_listen == self.listen:
                raise ConfigError(f"health_listen {self.health_listen} is the listen address: give it another port")
        if self.metrics_listen:
            try:
                parse_listen(self.metrics_listen)
            except ConfigError as exc:
                raise ConfigError(f"metrics_listen: {exc}") from None
            if self.metrics_listen == self.listen and not self.listen.endswith(":0"):
                raise ConfigError(
                    f"metrics_listen {self.metrics_listen} is the node's own gRPC address; choose another port"
                )
        for name, address in self.peers.items():
            if name == self.region:
                raise ConfigError(f"peer {name!r} is this node's own region; list only the other regions")
            parse_peer(f"{name}={address}", "peers")
        if not self.storage.sync:
            raise ConfigError("storage.sync cannot be turned off: a write is acknowledged only once it is fsynced")
        for section in (self.limits, self.storage, self.server, self.replication):
            for f in fields(section):
                value = getattr(section, f.name)
                if isinstance(value, bool) or (f.name in _ZERO_MEANS_DEFAULT and value == 0):
                    continue
                if value <= 0:
                    raise ConfigError(f"{type(section).__name__}.{f.name} must be positive, got {value}")
        if self.storage.map_size_bytes > self.storage.map_size_bytes_max:
            raise ConfigError("storage.map_size_bytes is larger than storage.map_size_bytes_max")
        if self.storage.log_entry_bytes_max + 64 * 1024 > self.message_bytes_max:
            raise ConfigError(
                "storage.log_entry_bytes_max must leave 64 KiB of room under the largest message "
                f"({self.message_bytes_max} bytes: limits.batch_bytes_max plus 1 MiB)"
            )
        tls = self.tls
        if bool(tls.cert) != bool(tls.key):
            raise ConfigError("tls.cert and tls.key go together: give both, or neither for plaintext")
        if (tls.ca or tls.require_client_cert) and not tls.cert:
            raise ConfigError("tls.ca and tls.require_client_cert need tls.cert and tls.key")
        if tls.require_client_cert and not tls.ca:
            raise ConfigError("tls.require_client_cert needs tls.ca, the authority that signs client certificates")
        if tls.enabled:
            tls.read()
        self.auth.validate()
        host, _ = parse_listen(self.listen)
        if not self.auth.enabled and not self.insecure_no_auth and not is_loopback(host):
            raise ConfigError(
                f"refusing to listen on {self.listen} without access control: anyone who reaches it could read "
                f"and change every key. Configure [auth] with token_public_keys (see docs/auth.md: crdtstore token "
                f"keygen, then token issue), listen on a loopback address, or pass --insecure-no-auth if the "
                f"network itself is trusted"
            )
        if self.server.scan_page_default > self.server.scan_page_max:
            raise ConfigError("server.scan_page_default is larger than server.scan_page_max")
        if self.server.get_members_max < 1:
            raise ConfigError("server.get_members_max must be at least 1")
        if self.server.members_page_default > self.server.members_page_max:
            raise ConfigError("server.members_page_default is larger than server.members_page_max")


def _merge_section(current: Any, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(current)}
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in known:
            raise ConfigError(f"{where}.{name}: unknown setting (known: {', '.join(sorted(known))})")
        expected = type(getattr(current, name))
        value = float(raw) if expected is float and type(raw) is int else raw
        if type(value) is not expected:
            raise ConfigError(f"{where}.{name}: expected {expected.__name__}, got {type(value).__name__}")
        changes[name] = value
    return replace(current, **changes)


def parse_peer(item: str, source: str) -> tuple[str, str]:
    """``NAME=HOST:PORT`` -> (name, address), or ``ConfigError`` naming ``source``."""
    name, sep, address = item.partition("=")
    if not sep or not name or not address:
        raise ConfigError(f"{source}: {item!r} is not NAME=HOST:PORT (for example us-east=10.0.0.2:7420)")
    if not _REGION.match(name):
        raise ConfigError(f"{source}: peer name {name!r} is not a valid region name")
    try:
        _, port = parse_listen(address)
    except ConfigError as exc:
        raise ConfigError(f"{source}: peer {name}: {exc}") from None
    if port == 0:
        raise ConfigError(f"{source}: peer {name}: port 0 is not an address to connect to")
    return name, address


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port), or ``ConfigError``."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen address {listen!r} is not HOST:PORT (for example 127.0.0.1:7420)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"listen address {listen!r}: the port must be a number from 0 to 65535")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ConfigError(f"listen address {listen!r}: write an IPv6 address in brackets, like [::1]:7420")
    return host, int(port_text)
