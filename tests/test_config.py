"""Configuration: file, environment and flags, in that order, with messages a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtstore.node.config import ConfigError, NodeConfig, parse_listen


def test_defaults_are_sane() -> None:
    config = NodeConfig.load(environ={})
    assert config.listen == "127.0.0.1:7420"
    assert config.region == "local"
    assert config.limits.key_bytes_max == 1024
    assert config.limits.value_bytes_max == 1024 * 1024
    assert config.limits.operations_per_batch_max == 10_000


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'region = "from-file"\nlisten = "127.0.0.1:1"\ndata_dir = "/file"\n[limits]\nkey_bytes_max = 10\n'
        "[server]\ndrain_grace_s = 3\n"
    )
    env = {"CRDTSTORE_REGION": "from-env", "CRDTSTORE_LISTEN": "127.0.0.1:2"}
    config = NodeConfig.load(config_file=str(path), environ=env, flags={"region": "from-flag", "listen": None})
    assert config.region == "from-flag"
    assert config.listen == "127.0.0.1:2"
    assert config.data_dir == Path("/file")
    assert config.limits.key_bytes_max == 10
    assert config.server.drain_grace_s == 3.0
    assert NodeConfig.load(environ={"CRDTSTORE_CONFIG": str(path)}).region == "from-file"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("region = 5", "region must be a string"),
        ('colour = "blue"', "unknown setting"),
        ("[limits]\nkey_bytes_mx = 3", r"limits\.key_bytes_mx: unknown setting \(known: "),
        ('[limits]\nkey_bytes_max = "big"', "expected int, got str"),
        ("[limits]\nkey_bytes_max = 0", "must be positive"),
        ("[storage]\nmap_size_bytes = -1", "map_size_bytes must be positive"),
        ("[storage]\nmap_size_bytes = 4096\nmap_size_bytes_max = 2048", "map_size_bytes is larger than"),
        ("[storage]\nsync = false", "storage.sync cannot be turned off"),
        ("limits = 3", r"must be a table \(\[limits\]\)"),
        ("this is not toml", "is not valid TOML"),
        ('region = "Bad Region!"', "is not a valid region name"),
        ('listen = "nowhere"', "is not HOST:PORT"),
        ("[server]\nmembers_page_default = 20000", "members_page_default is larger than server.members_page_max"),
        ("[server]\nget_members_max = 0", "get_members_max must be"),
    ],
)
def test_bad_files_are_refused_with_the_setting_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        NodeConfig.load(config_file=str(path), environ={})


def test_a_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        NodeConfig.load(config_file="/nonexistent/node.toml", environ={})


@pytest.mark.parametrize(
    ("listen", "ok"),
    [
        ("127.0.0.1:7420", ("127.0.0.1", 7420)),
        ("[::1]:0", ("[::1]", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("localhost:99999", None),
        (":7420", None),
        ("127.0.0.1", None),
        ("::1:7420", None),
        ("host:port", None),
    ],
)
def test_listen_addresses(listen: str, ok: tuple[str, int] | None) -> None:
    if ok is None:
        with pytest.raises(ConfigError):
            parse_listen(listen)
    else:
        assert parse_listen(listen) == ok


def test_peers_come_from_flags_environment_or_file(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text('region = "eu"\n[peers]\nus = "10.0.0.2:7420"\n[replication]\nbatch_window_ms = 5\n')
    config = NodeConfig.load(config_file=str(file), environ={})
    assert dict(config.peers) == {"us": "10.0.0.2:7420"}
    assert config.replication.batch_window_ms == 5
    env = {"CRDTSTORE_PEERS": "ap=10.0.0.3:7420, us=10.0.0.2:7421"}
    assert dict(NodeConfig.load(config_file=str(file), environ=env).peers) == {
        "ap": "10.0.0.3:7420",
        "us": "10.0.0.2:7421",
    }
    flags = NodeConfig.load(config_file=str(file), environ=env, peer_flags=["sa=10.0.0.4:7420"])
    assert dict(flags.peers) == {"sa": "10.0.0.4:7420"}, "flags replace, they do not add"


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        (["us"], "NAME=HOST:PORT"),
        (["us=10.0.0.2"], "HOST:PORT"),
        (["US=10.0.0.2:7420"], "not a valid region name"),
        (["us=10.0.0.2:0"], "port 0"),
        (["us=10.0.0.2:7420", "us=10.0.0.3:7420"], "twice"),
        (["local=10.0.0.2:7420"], "own region"),
    ],
)
def test_bad_peers_are_refused_with_a_message(peers: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig.load(environ={}, peer_flags=peers)


def test_rejoin_needs_no_peers() -> None:
    """--rejoin takes a new incarnation at start; it no longer waits for a peer, so a lone region may use it."""
    assert NodeConfig.load(environ={}, rejoin=True).rejoin
    assert not NodeConfig.load(environ={}).rejoin


def test_the_map_starts_at_its_maximum_unless_a_smaller_start_is_set(tmp_path: Path) -> None:
    """0 (the default) opens the LMDB map at map_size_bytes_max at once: a map that never grows never waits
    for every reader (a backup's copy) to remap. The file itself grows only as pages are written."""
    from crdtstore.storage import LmdbStore, StorageConfig, StorageOptions

    assert NodeConfig.load(environ={}).storage.map_size_bytes == 0
    store = LmdbStore(StorageConfig(tmp_path / "big", "eu", StorageOptions(map_size_bytes_max=1 << 30)))
    try:
        assert store.env.info()["map_size"] == 1 << 30
        assert (tmp_path / "big" / "data.mdb").stat().st_size < 1 << 20
    finally:
        store.close()
    store = LmdbStore(StorageConfig(tmp_path / "small", "eu", StorageOptions(map_size_bytes=1 << 20)))
    try:
        assert store.env.info()["map_size"] == 1 << 20
    finally:
        store.close()
