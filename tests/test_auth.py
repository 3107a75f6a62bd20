"""Access control without a node: the decision against a reference policy, tokens, configuration, the CLI."""

from __future__ import annotations

import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from crdtstore import cli
from crdtstore.auth.policy import (
    ADMIN_ROLE,
    RIGHTS,
    Allowed,
    Denied,
    Grant,
    Need,
    PolicyError,
    Right,
    Role,
    decide,
    parse_grant,
    validate_role_name,
)
from crdtstore.auth.tokens import InvalidToken, KeyFileError, TokenVerifier, issue_token, load_public_key, parse_ttl
from crdtstore.node.access import bearer_token, decode_role, revocation_operations, role_operations
from crdtstore.node.config import ConfigError, NodeConfig, is_loopback
from crdtstore.node.service import _mutate_needs
from crdtstore.operations import AddMembers, SetRegister
from crdtstore.testing.auth import AuthKit
from crdtstore.v1 import kv_pb2

# -- the decision against a reference policy ------------------------------------------------


def reference_allows(
    caller_roles: Sequence[str], roles: Mapping[str, Sequence[tuple[str, set[Right]]]], right: str, key: str
) -> bool:
    """The issue's rule, written as plainly as it reads: some grant of one of the caller's roles matches the
    key and holds the right (admin holding audit too); the role admin holds every right on every key; an unknown
    role gives nothing."""
    for name in caller_roles:
        if name == "admin":
            return True
        for prefix, rights in roles.get(name, ()):
            if key.startswith(prefix) and (right in rights or (right == "audit" and "admin" in rights)):
                return True
    return False


# Small alphabets, so that prefixes often match keys and role names often repeat.
_text = st.text(alphabet="ab/", max_size=4)
_rights = st.sets(st.sampled_from(RIGHTS), max_size=4)
_role_names = st.sampled_from(["r1", "r2", "r3", "admin", "gone"])
_roles = st.dictionaries(
    st.sampled_from(["r1", "r2", "r3"]), st.lists(st.tuples(_text, _rights), max_size=3), max_size=3
)
_needs = st.lists(st.tuples(st.sampled_from(RIGHTS), _text), max_size=5)


@given(roles=_roles, caller=st.lists(_role_names, max_size=3), needs=_needs)
def test_the_decision_is_the_reference_policy(
    roles: dict[str, list[tuple[str, set[Right]]]], caller: list[str], needs: list[tuple[Right, str]]
) -> None:
    defined = {name: Role(name, tuple(Grant(p, frozenset(r)) for p, r in grants)) for name, grants in roles.items()}
    decision = decide(caller, defined, [Need(right, key) for right, key in needs])
    failing = [(right, key) for right, key in needs if not reference_allows(caller, roles, right, key)]
    if not failing:
        assert decision == Allowed()
    else:
        # A request with one forbidden need is refused whole, naming the first need that fails.
        assert decision == Denied(Need(*failing[0]))


def test_a_batch_with_one_forbidden_operation_is_refused_naming_it() -> None:
    roles = {"counter": Role("counter", (Grant("c/", frozenset({"incr"})),))}
    needs = [Need("incr", "c/1"), Need("decr", "c/1"), Need("incr", "c/2")]
    assert decide(["counter"], roles, needs) == Denied(Need("decr", "c/1"))
    assert decide(["counter"], roles, [Need("incr", "c/1"), Need("incr", "c/2")]) == Allowed()


def test_admin_and_replicate_need_a_grant_on_every_key() -> None:
    roles = {"ops": Role("ops", (Grant("a/", frozenset({"admin", "replicate"})),))}
    assert decide(["ops"], roles, [Need("admin", "")]) == Denied(Need("admin", ""))
    roles = {"ops": Role("ops", (Grant("", frozenset({"admin"})),))}
    assert decide(["ops"], roles, [Need("admin", "")]) == Allowed()


def test_each_operation_needs_its_own_right() -> None:
    request = kv_pb2.MutateRequest(
        operations=[
            kv_pb2.Operation(key="k1", set=kv_pb2.SetRegister(value=b"v")),
            kv_pb2.Operation(key="k2", increment=kv_pb2.Increment(amount=3)),
            kv_pb2.Operation(key="k3", increment=kv_pb2.Increment(amount=-3)),
            kv_pb2.Operation(key="k4", add=kv_pb2.AddMembers(members=["m"])),
            kv_pb2.Operation(key="k5", remove=kv_pb2.RemoveMembers(members=["m"])),
            kv_pb2.Operation(key="k6", delete=kv_pb2.DeleteKey()),
        ]
    )
    assert list(_mutate_needs(request)) == [
        Need("set", "k1"),
        Need("incr", "k2"),
        Need("decr", "k3"),
        Need("add", "k4"),
        Need("remove", "k5"),
        Need("delete", "k6"),
    ]


@pytest.mark.parametrize(
    ("text", "grant"),
    [
        ("orders/=read,add", Grant("orders/", frozenset({"read", "add"}))),
        ("=read", Grant("", frozenset({"read"}))),
        ("a=b=set", Grant("a=b", frozenset({"set"}))),
    ],
)
def test_grants_parse(text: str, grant: Grant) -> None:
    assert parse_grant(text) == grant


@pytest.mark.parametrize(
    ("text", "says"), [("orders/", "PREFIX=RIGHT"), ("o/=write", "'write' is not a right"), ("o/=", "")]
)
def test_bad_grants_are_refused_with_the_rights_listed(text: str, says: str) -> None:
    with pytest.raises(PolicyError, match="read, set, incr") as info:
        parse_grant(text)
    assert says in str(info.value)


def test_role_names() -> None:
    validate_role_name("orders-writer")
    for bad in ("", "-x", "a b", "x" * 200):
        with pytest.raises(PolicyError, match="not valid"):
            validate_role_name(bad)
    with pytest.raises(PolicyError, match="built in"):
        validate_role_name(ADMIN_ROLE)


def test_role_records_carry_who_changed_them_and_where() -> None:
    (op,) = role_operations("w", [Grant("a/", frozenset({"read"}))], "alice", "eu#1", 1234)
    assert isinstance(op, SetRegister)
    record = decode_role("w", op.value)
    assert (record.grants, record.changed_by, record.changed_in, record.changed_at_ms) == (
        (Grant("a/", frozenset({"read"})),),
        "alice",
        "eu#1",
        1234,
    )
    (tombstone,) = role_operations("w", None, "bob", "us#2", 99)
    assert isinstance(tombstone, SetRegister)
    deleted = decode_role("w", tombstone.value)
    assert deleted.grants is None and deleted.role is None and deleted.changed_by == "bob"
    added, record_op = revocation_operations("jti-1", "carol", "eu#1", 5)
    assert isinstance(added, AddMembers) and added.members == ("jti-1",)
    assert isinstance(record_op, SetRegister)


def test_thebearer_token_token_is_read_from_the_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token(None) is None


# -- tokens -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> AuthKit:
    return AuthKit.create(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def verifier(kit: AuthKit) -> TokenVerifier:
    return TokenVerifier([load_public_key(kit.public_key)], leeway_s=5)


def test_keygen_writes_a_private_key_only_its_owner_reads(kit: AuthKit) -> None:
    assert stat.S_IMODE(kit.signing_key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in kit.signing_key.read_bytes()
    assert load_public_key(kit.public_key).algorithm == "EdDSA"


def test_keygen_never_overwrites(kit: AuthKit) -> None:
    with pytest.raises(KeyFileError, match="never overwrites"):
        AuthKit.create(kit.directory)


def test_a_token_carries_its_claims(kit: AuthKit, verifier: TokenVerifier) -> None:
    token = kit.token("alice", ["reader", "writer"], token_id="t-1")
    principal = verifier.verify(token)
    assert (principal.subject, principal.roles, principal.token_id) == ("alice", ("reader", "writer"), "t-1")
    assert verifier.verify(token) is principal  # the second time from the cache


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda kit: "not-a-token", "malformed"),
        (lambda kit: kit.expired("a", []), "expired"),
        (lambda kit: kit.not_yet_valid("a", []), "not valid yet"),
        (lambda kit: kit.forged("a", []), "signature does not verify"),
        (lambda kit: AuthKit.foreign("a", []), "not among this node's auth.token_public_keys"),
    ],
)
def test_tokens_refused_say_why_and_never_repeat_the_token(
    kit: AuthKit, verifier: TokenVerifier, make: object, says: str
) -> None:
    token = make(kit)  # type: ignore[operator]
    with pytest.raises(InvalidToken, match=says) as info:
        verifier.verify(token)
    assert token not in str(info.value)


def test_the_none_algorithm_is_never_accepted(verifier: TokenVerifier) -> None:
    claims = {"sub": "a", "jti": "x", "exp": int(time.time()) + 60, "roles": ["admin"]}
    token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]  # the unsigned form
    with pytest.raises(InvalidToken, match="'none'"):
        verifier.verify(token)


def test_a_public_key_is_never_an_hmac_secret(kit: AuthKit, verifier: TokenVerifier) -> None:
    """The classic confusion: HS256 'signed' with the public key's PEM as the secret."""
    claims = {"sub": "a", "jti": "x", "exp": int(time.time()) + 60, "roles": ["admin"]}
    token = jwt.encode(claims, "not-a-key-at-all-but-long-enough-for-hmac-32b", algorithm="HS256")
    with pytest.raises(InvalidToken, match="HS256"):
        verifier.verify(token)


def test_a_key_verifies_only_its_own_algorithm(tmp_path: Path, kit: AuthKit) -> None:
    """A token whose header claims ES256 is not checked against an Ed25519 key, whatever its kid."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    claims = {"sub": "a", "jti": "x", "exp": int(time.time()) + 60}
    kid = load_public_key(kit.public_key).kid
    token = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": kid})
    verifier = TokenVerifier([load_public_key(kit.public_key)])
    with pytest.raises(InvalidToken, match="not among"):
        verifier.verify(token)


def test_pinned_algorithms(tmp_path: Path, kit: AuthKit) -> None:
    with pytest.raises(KeyFileError, match="accepts only ES256"):
        TokenVerifier([load_public_key(kit.public_key)], algorithms=["ES256"])
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = tmp_path / "rsa.pub.pem"
    pub.write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = issue_token(path, "r", ["admin"])
    both = TokenVerifier([load_public_key(kit.public_key), load_public_key(pub)], algorithms=["EdDSA", "RS256"])
    assert both.verify(token).subject == "r"
    eddsa_only = TokenVerifier([load_public_key(kit.public_key)], algorithms=["EdDSA"])
    with pytest.raises(InvalidToken, match="RS256"):
        eddsa_only.verify(token)


def test_issuer_is_checked_when_configured(kit: AuthKit) -> None:
    verifier = TokenVerifier([load_public_key(kit.public_key)], issuer="crdtstore")
    assert verifier.verify(kit.token("a", [], issuer="crdtstore")).subject == "a"
    with pytest.raises(InvalidToken, match="issuer"):
        verifier.verify(kit.token("a", [], issuer="elsewhere"))


def test_the_leeway_allows_for_clock_offsets(kit: AuthKit) -> None:
    token = kit.token("a", [], ttl_s=60, issued_at=time.time() - 70)  # expired 10 s ago
    assert TokenVerifier([load_public_key(kit.public_key)], leeway_s=30).verify(token).subject == "a"
    with pytest.raises(InvalidToken, match="expired"):
        TokenVerifier([load_public_key(kit.public_key)], leeway_s=0).verify(token)


def test_a_cached_token_still_expires(kit: AuthKit) -> None:
    verifier = TokenVerifier([load_public_key(kit.public_key)], leeway_s=0)
    token = kit.token("a", [], ttl_s=60)
    now = time.time()
    verifier.verify(token, now)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token, now + 3600)


def test_the_cache_is_bounded(kit: AuthKit) -> None:
    verifier = TokenVerifier([load_public_key(kit.public_key)], cache_entries_max=3)
    for i in range(10):
        verifier.verify(kit.token(f"s{i}", []))
    assert len(verifier._cache) == 3


def test_unsupported_keys_are_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "p384.pub.pem"
    path.write_bytes(
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="P-256"):
        load_public_key(path)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")


def test_ttls() -> None:
    assert parse_ttl("90s") == 90
    assert parse_ttl("15m") == 900
    assert parse_ttl("1h") == 3600
    assert parse_ttl("2d") == 172800
    assert parse_ttl("30") == 30
    for bad in ("", "h", "-1h", "0", "1w"):
        with pytest.raises(ValueError, match="ttl"):
            parse_ttl(bad)


# -- configuration and the protected default ------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "[::]", "example.com", "256.0.0.1"])
def test_other_addresses(host: str) -> None:
    assert not is_loopback(host)


def test_a_non_loopback_listen_without_auth_is_refused() -> None:
    with pytest.raises(ConfigError, match="without access control") as info:
        NodeConfig.load(flags={"listen": "0.0.0.0:7420"}, environ={})
    assert "--insecure-no-auth" in str(info.value)
    assert "[auth]" in str(info.value)
    assert NodeConfig.load(flags={"listen": "0.0.0.0:7420"}, environ={}, insecure_no_auth=True).insecure_no_auth


def test_a_non_loopback_listen_with_auth_is_accepted(tmp_path: Path, kit: AuthKit) -> None:
    config_file = kit.write_config(tmp_path / "node.toml", extra='algorithms = ["EdDSA"]\nleeway_s = 10\n')
    config = NodeConfig.load(config_file=str(config_file), flags={"listen": "0.0.0.0:7420"}, environ={})
    assert config.auth.enabled
    assert config.auth.algorithms == ["EdDSA"]
    assert config.auth.leeway_s == 10.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[auth]\n", "list at least one public key"),
        ('[auth]\ntoken_public_keys = ["k"]\nalgorithms = ["none"]\n', "auth.algorithms"),
        ('[auth]\ntoken_public_keys = ["k"]\nalgorithms = ["HS256"]\n', "auth.algorithms"),
        ('[auth]\ntoken_public_keys = ["k"]\nleeway_s = 3600\n', "auth.leeway_s"),
        ("[auth]\ntoken_public_keys = [1]\n", "auth.token_public_keys"),
        ('[auth]\ntoken_public_keys = "k"\n', "auth.token_public_keys"),
        ('[auth]\ntoken_public_keys = ["k"]\nsecret = "x"\n', "unknown setting"),
    ],
)
def test_bad_auth_settings_are_named(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=says):
        NodeConfig.load(config_file=str(path), environ={})


def test_the_peer_token_comes_from_its_file_then_the_environment(tmp_path: Path, kit: AuthKit) -> None:
    config = NodeConfig.load(config_file=str(kit.write_config(tmp_path / "a.toml")), environ={})
    assert config.auth.peer_token({"CRDTSTORE_PEER_TOKEN": " tok "}) == "tok"
    assert config.auth.peer_token({}) is None
    (tmp_path / "peer.token").write_text("from-file\n")
    extra = f'peer_token_file = "{tmp_path / "peer.token"}"\n'
    config = NodeConfig.load(config_file=str(kit.write_config(tmp_path / "b.toml", extra=extra)), environ={})
    assert config.auth.peer_token({"CRDTSTORE_PEER_TOKEN": "env"}) == "from-file"


# -- the command line ------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_keygen_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "token", "keygen", "--out", str(tmp_path / "k"))
    assert code == 0
    assert "signing.pem" in out and "signing.pub.pem" in out
    assert stat.S_IMODE((tmp_path / "k" / "signing.pem").stat().st_mode) == 0o600
    code, out, _ = run(capsys, "token", "keygen", "--out", str(tmp_path / "k"))
    assert code == 1

    code, out, _ = run(
        capsys,
        "token",
        "issue",
        "--signing-key",
        str(tmp_path / "k" / "signing.pem"),
        "--subject",
        "svc",
        "--role",
        "writer",
        "--role",
        "reader",
        "--ttl",
        "15m",
    )
    assert code == 0
    verifier = TokenVerifier([load_public_key(tmp_path / "k" / "signing.pub.pem")])
    principal = verifier.verify(out.strip())
    assert (principal.subject, principal.roles) == ("svc", ("writer", "reader"))
    assert 14 * 60 < principal.expires_at - time.time() <= 15 * 60

    code, _, err = run(capsys, "token", "issue", "--signing-key", str(tmp_path / "nope.pem"), "--subject", "s")
    assert code == 1 and "cannot read" in err


def test_cli_issue_names_the_jti_and_revoke_takes_the_token_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a newcomer: `token revoke TOKEN` (the whole token) said nothing, revoked nothing, and the
    token went on working; the jti, which revoke wants, was printed nowhere."""
    from crdtstore import cli

    assert run(capsys, "token", "keygen", "--out", str(tmp_path / "k"))[0] == 0
    key = str(tmp_path / "k" / "signing.pem")
    code, out, err = run(capsys, "token", "issue", "--signing-key", key, "--subject", "carol", "--id", "carol-1")
    assert code == 0 and "its jti is carol-1" in err
    token = out.strip()
    parser = cli.build_parser()
    assert parser.parse_args(["token", "revoke", token]).jti == "carol-1"  # the token stands for its jti
    assert parser.parse_args(["token", "revoke", "carol-1"]).jti == "carol-1"
    assert parser.parse_args(["token", "revoke", "an.other.jti"]).jti == "an.other.jti"  # not a token: a jti
    code, _, err = run(
        capsys, "token", "issue", "--signing-key", str(tmp_path / "k" / "signing.pem"), "--subject", "s", "--ttl", "x"
    )
    assert code == 2 and "ttl" in err


def test_cli_role_put_refuses_a_bad_grant(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["role", "put", "w", "--grant", "a/=write"])
    assert info.value.code == 2
    assert "'write' is not a right" in capsys.readouterr().err


def test_es256_tokens_are_accepted_from_a_p256_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "ec.pem", tmp_path / "ec.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = issue_token(private, "ec-user", ["reader"])
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    principal = TokenVerifier([load_public_key(public)], algorithms=["ES256"]).verify(token)
    assert (principal.subject, principal.roles) == ("ec-user", ("reader",))
