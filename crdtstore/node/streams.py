"""The gRPC side of the replication streams: channels to peers, and the settings both ends need.

Each pair of regions keeps one bidirectional ``Replication.Sync`` stream.
HTTP/2 keepalive pings find a peer that vanished without closing its
connection; the server must welcome pings that often. With TLS, a peer's
certificate must name its region, whatever address it is dialled at, and a
caller's certificate must name the region its hello claims.
"""

from __future__ import annotations

from typing import Any

import grpc
from cryptography import x509

from crdtstore.replica.settings import ReplicationSettings
from crdtstore.replica.wire import SYNC_METHOD
from crdtstore.v1 import replication_pb2 as rpb

__all__ = ["certificate_expiry", "certificate_names", "open_channel", "server_options", "sync_call"]

Tls = tuple[bytes, bytes, bytes | None]  # certificate chain, private key, CA certificates (PEM; None: the system's)


def _keepalive_options(settings: ReplicationSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.keepalive_time_ms", settings.keepalive_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _channel_options(settings: ReplicationSettings, message_bytes_max: int) -> list[tuple[str, Any]]:
    return [
        *_keepalive_options(settings),
        ("grpc.max_receive_message_length", message_bytes_max),
        ("grpc.max_send_message_length", message_bytes_max),
        ("grpc.min_reconnect_backoff_ms", settings.reconnect_backoff_max_ms),
        ("grpc.max_reconnect_backoff_ms", settings.reconnect_backoff_max_ms),
        ("grpc.enable_retries", 0),
        # Each dial gets connections of its own, closed with its channel. gRPC otherwise shares
        # connections between channels to the same address, and a connection that reached the
        # wrong server (an address that pointed elsewhere for a moment) would serve every later
        # dial too: the stream is refused again and again and never reaches the peer.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def server_options(settings: ReplicationSettings) -> list[tuple[str, Any]]:
    """Options the gRPC server needs so that peers' keepalive pings are welcome."""
    return [
        *_keepalive_options(settings),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", max(100, settings.keepalive_ms // 2)),
        ("grpc.http2.min_ping_interval_without_data_ms", max(100, settings.keepalive_ms // 2)),
    ]


def open_channel(
    address: str, peer: str, tls: Tls | None, settings: ReplicationSettings, message_bytes_max: int
) -> grpc.aio.Channel:
    options = _channel_options(settings, message_bytes_max)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    cert, key, ca = tls
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    # The peer's certificate must name its region, whatever address it is dialled at.
    return grpc.aio.secure_channel(address, credentials, options=[*options, ("grpc.ssl_target_name_override", peer)])


def sync_call(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.aio.StreamStreamCall[Any, Any]:
    """A new ``Replication.Sync`` stream on ``channel``: messages out as protobuf, in as raw bytes.

    ``metadata`` carries this node's peer token, where access control asks for one.
    """
    method: grpc.aio.StreamStreamMultiCallable[Any, Any] = channel.stream_stream(
        SYNC_METHOD, request_serializer=rpb.SyncMessage.SerializeToString, response_deserializer=None
    )
    call: grpc.aio.StreamStreamCall[Any, Any] = method(metadata=metadata or None)
    return call


def certificate_expiry(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """When the caller's verified certificate expires (seconds since the epoch), or None without one."""
    pems = list(context.auth_context().get("x509_pem_cert", []))
    if not pems:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
    return certificate.not_valid_after_utc.timestamp()


def certificate_names(context: grpc.aio.ServicerContext[Any, Any], region: str) -> bool:
    """Whether the caller's verified certificate names ``region``."""
    auth = context.auth_context()
    names = [*auth.get("x509_subject_alternative_name", []), *auth.get("x509_common_name", [])]
    return region.encode() in names
