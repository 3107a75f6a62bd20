"""The replication core, event by event (the driver around it: ``test_driver.py``).

Log entries are opaque to the core: these tests pass placeholders.
"""

from __future__ import annotations

from typing import Any

import pytest

from crdtstore.crdt import VersionVector
from crdtstore.replica.core import Action, Apply, NeedsRepair, ReplicaCore, Send, SendLog, Trim
from crdtstore.replica.wire import Ack, Entries, Hello, RawLogEntry


def e(name: str) -> RawLogEntry:
    """A placeholder entry: the core never looks inside one."""
    return RawLogEntry(name, 1, 1, b"")


class Core(ReplicaCore):
    """The core with each event at the time of the last tick, as a host that ticks steadily feeds it.

    Time enters the core only with its events; these tests mostly care
    about the order of events, so the time is implied.
    """

    now_ms = 0

    def tick(self, now_ms: int) -> list[Action]:
        self.now_ms = now_ms
        return super().tick(now_ms)

    def connected(self, peer: str, now_ms: int | None = None) -> list[Action]:
        return super().connected(peer, self.now_ms if now_ms is None else now_ms)

    def received(self, peer: str, message: Any, now_ms: int | None = None) -> list[Action]:
        return super().received(peer, message, self.now_ms if now_ms is None else now_ms)

    def applied(self, peer: str, vector: VersionVector, now_ms: int | None = None) -> list[Action]:
        return super().applied(peer, vector, self.now_ms if now_ms is None else now_ms)

    def relay_held(self, peer: str, held_since_ms: int, wall_now_ms: int, now_ms: int | None = None) -> list[Action]:
        return super().relay_held(peer, held_since_ms, wall_now_ms, self.now_ms if now_ms is None else now_ms)

    def hint_ack(self, peer: str) -> Ack:
        """The heartbeat ``peer`` would get now."""
        (send,) = self.heartbeat(peer, self.now_ms)
        assert isinstance(send, Send) and isinstance(send.message, Ack)
        return send.message


def vv(**counters: int) -> VersionVector:
    return VersionVector(counters)


def no_acks(actions: list[Action]) -> list[Action]:
    """The actions but the acks (each anti-entropy round also tells every peer the whole vector)."""
    return [a for a in actions if not (isinstance(a, Send) and isinstance(a.message, Ack))]


def test_connect_says_hello_and_a_hello_asks_for_the_log() -> None:
    core = Core("eu", ["us", "ap"], vv(eu=3))
    assert core.connected("us") == [Send("us", Hello("eu", vv(eu=3), origin="eu"))]
    actions = core.received("us", Hello("us", vv(us=2, eu=1)))
    assert actions[0] == SendLog("us", vv(us=2, eu=1))
    assert core.behind("us") == {"eu": 2}


def test_entries_are_applied_then_acknowledged_to_every_connected_peer() -> None:
    core = Core("eu", ["us", "ap", "sa"], vv())
    core.connected("us")
    core.connected("ap")
    assert core.received("us", Entries((e("e1"),))) == [Apply("us", (e("e1"),))]
    # The sender at once; ap at the next tick, so it does not relay to us what us already has.
    assert core.applied("us", vv(us=4)) == [Send("us", Ack(vv(us=4)))]  # what moved since the hello
    assert core.vector == vv(us=4)
    core.received("us", Entries((e("e2"),)))
    core.applied("us", vv(us=6))
    # One ack for both, with the latest vector; sa is not connected.
    acks = [a for a in core.tick(1) if isinstance(a, Send) and isinstance(a.message, Ack)]
    assert acks == [Send("ap", Ack(vv(us=6)))]
    assert not [a for a in core.tick(2) if isinstance(a, Send) and isinstance(a.message, Ack)]
    core.received("us", Entries((e("e3"),)))
    # Only the origins that moved since the last ack to that peer.
    assert core.applied("us", vv(us=7, ap=1)) == [Send("us", Ack(vv(us=7, ap=1)))]
    core.received("us", Entries((e("e4"),)))
    assert core.applied("us", vv(us=8, ap=1)) == [Send("us", Ack(vv(us=8)))]


def test_entries_a_peer_sent_count_as_entries_it_has_so_they_never_go_back() -> None:
    core = Core("eu", ["us"], vv(eu=2), batch_window_ms=0)
    core.connected("us")
    core.received("us", Hello("us", vv(eu=2)))
    core.sent("us", vv(eu=2))
    core.received("us", Entries((e("e"),), vv(us=3, ap=1)))
    core.applied("us", vv(eu=2, us=3, ap=1))
    assert core.behind("us") == {}
    assert core.tick(5) == [], "nothing to push: us has everything it sent"


def test_a_peer_that_lost_what_it_sent_gets_it_back() -> None:
    core = Core("eu", ["us"], vv(eu=2, us=5))
    core.connected("us")
    core.received("us", Entries((e("e"),), vv(us=5)))
    # us comes back with an empty directory: its hello is believed over what we inferred.
    assert core.received("us", Hello("us", vv()))[0] == SendLog("us", vv())


def test_a_peer_needing_repair_is_not_sent_log_it_cannot_apply() -> None:
    core = Core("eu", ["us"], vv(eu=10), batch_window_ms=0, anti_entropy_ms=100, trimmed=vv(eu=4))
    core.connected("us")
    assert core.received("us", Hello("us", vv(eu=2))) == [NeedsRepair("us", vv(eu=2))]
    core.local_committed(vv(eu=11))
    assert no_acks(core.tick(50)) == [], "no log for it"
    assert no_acks(core.tick(200)) == [NeedsRepair("us", vv(eu=2))], "each anti-entropy round asks again for a repair"
    # Repaired (it says so in a new hello): back to the log.
    core.disconnected("us")
    core.connected("us")
    assert core.received("us", Hello("us", vv(eu=10)))[0] == SendLog("us", vv(eu=10))


def test_trimming_past_a_connected_peer_reports_it_once() -> None:
    core = Core("eu", ["us"], vv(eu=10))
    core.connected("us")
    core.received("us", Hello("us", vv(eu=3)))
    assert core.log_trimmed(vv(eu=5)) == [NeedsRepair("us", vv(eu=3))]
    assert core.log_trimmed(vv(eu=6)) == []


def test_the_log_is_trimmed_to_what_every_peer_acknowledged() -> None:
    core = Core("eu", ["us", "ap"], vv(eu=10), anti_entropy_ms=1000)
    assert core.received("us", Ack(vv(eu=7))) == []
    assert _trims(core.tick(5_000)) == []  # ap has acknowledged nothing
    assert core.received("ap", Ack(vv(eu=5))) == []  # trimming waits for a tick
    assert _trims(core.tick(5_100)) == [Trim(vv(eu=5))]
    assert core.received("ap", Ack(vv(eu=9))) == []
    assert _trims(core.tick(5_150)) == []  # at most one trim a tenth of the anti-entropy period
    assert _trims(core.tick(5_200)) == [Trim(vv(eu=7))]
    assert _trims(core.tick(5_400)) == []  # nothing new acknowledged


def test_regression_a_stream_of_acks_costs_one_trim_per_period_not_one_each() -> None:
    """Every ack trimmed at once: under replication the node committed a trim transaction per ack."""
    core = Core("eu", ["us"], vv(eu=1_000), anti_entropy_ms=1000)
    trims = []
    for n in range(1, 1_001):
        assert core.received("us", Ack(vv(eu=n))) == []
        if n % 10 == 0:  # a tick every 10 ms, an ack every ms
            trims += _trims(core.tick(10_000 + n))
    assert len(trims) == 10
    assert trims[-1] == Trim(vv(eu=910))  # the rest goes at the next period's tick
    assert _trims(core.tick(12_000)) == [Trim(vv(eu=1_000))]


def _trims(actions: list[Action]) -> list[Action]:
    return [action for action in actions if isinstance(action, Trim)]


def test_a_peer_behind_the_trimmed_horizon_needs_repair() -> None:
    core = Core("eu", ["us"], vv(eu=10))
    core.received("us", Ack(vv(eu=8)))
    assert _trims(core.tick(1_000)) == [Trim(vv(eu=8))]
    assert core.received("us", Hello("us", vv())) == [NeedsRepair("us", vv())]


def test_new_local_writes_are_pushed_after_the_batching_window_and_offered_again_by_anti_entropy() -> None:
    core = Core("eu", ["us"], vv(), batch_window_ms=10, anti_entropy_ms=1000)
    core.connected("us")
    core.received("us", Hello("us", vv()))
    core.sent("us", vv())
    core.local_committed(vv(eu=1))
    assert no_acks(core.tick(1_000)) == [SendLog("us", vv(), hold_fresh_relays=True)], (
        "the first tick is an anti-entropy round"
    )
    core.sent("us", vv(eu=1))
    core.local_committed(vv(eu=2))
    assert no_acks(core.tick(1_005)) == [], "inside the batching window"
    assert no_acks(core.tick(1_010)) == [SendLog("us", vv(eu=1), hold_fresh_relays=True)], "a push, not a catch-up"
    core.sent("us", vv(eu=2))
    assert no_acks(core.tick(1_020)) == [], "nothing new"
    assert no_acks(core.tick(2_000)) == [SendLog("us", vv(), hold_fresh_relays=True)], (
        "nothing acknowledged: offered again"
    )
    core.sent("us", vv(eu=2))
    core.received("us", Ack(vv(eu=1)))
    assert no_acks(core.tick(3_000)) == [Trim(vv(eu=1)), SendLog("us", vv(eu=2), hold_fresh_relays=True)], (
        "acks progress: no resend"
    )


def test_regression_time_that_steps_back_does_not_stall_pushes_or_anti_entropy() -> None:
    # Found by review of the simulator: the node fed the core its wall clock, and
    # after a 5 s step back nothing was pushed or offered again for 5 s.
    core = Core("eu", ["us"], vv(), batch_window_ms=10, anti_entropy_ms=1000)
    core.connected("us")
    core.received("us", Hello("us", vv()))
    core.tick(10_000)
    core.local_committed(vv(eu=1))
    assert no_acks(core.tick(5_000)) == [SendLog("us", vv(), hold_fresh_relays=True)]
    core.sent("us", vv(eu=1))
    core.local_committed(vv(eu=2))
    assert no_acks(core.tick(5_010)) == [SendLog("us", vv(eu=1), hold_fresh_relays=True)], "pushes go on after the step"


def test_an_ack_lost_on_the_way_is_made_good_by_the_next_anti_entropy_round() -> None:
    core = Core("eu", ["us"], vv(), anti_entropy_ms=1000)
    core.connected("us")
    core.received("us", Entries((e("e1"),)))
    core.applied("us", vv(us=1))  # suppose this ack is dropped (a full queue)
    core.received("us", Entries((e("e2"),)))
    assert core.applied("us", vv(us=2)) == [Send("us", Ack(vv(us=2)))]
    acks = [a for a in core.tick(1_000) if isinstance(a, Send) and isinstance(a.message, Ack)]
    assert acks == [], "the peer was told everything already"
    core.received("us", Entries((e("e3"),), vv(us=3)))
    core.applied("us", vv(us=3, ap=2))
    core.peers["us"].told = vv()  # as if every ack were lost
    acks = [a for a in core.tick(2_000) if isinstance(a, Send) and isinstance(a.message, Ack)]
    assert acks == [Send("us", Ack(vv(us=3, ap=2)))], "the whole vector, once a period"


def test_a_peer_must_introduce_itself_by_its_name() -> None:
    core = Core("eu", ["us"], vv())
    with pytest.raises(ValueError, match="introduced itself"):
        core.received("us", Hello("ap", vv()))
    with pytest.raises(KeyError):
        core.connected("nobody")


def test_a_region_applying_a_large_message_tells_the_other_peers_what_is_on_its_way() -> None:
    core = Core("eu", ["us", "ap"], vv(), anti_entropy_ms=1_000)
    core.connected("us")
    core.connected("ap")
    core.tick(1)
    # A catch-up from us arrives; applying it takes a while.
    assert core.received("us", Entries((e("backlog"),), vv(us=700))) == [Apply("us", (e("backlog"),))]
    hint = Ack(vv(), incoming=vv(us=700))
    acks = [a for a in core.tick(11) if isinstance(a, Send) and isinstance(a.message, Ack)]
    # ap, so that it does not relay the same entries; us, so that it does not take them for lost.
    assert acks == [Send("ap", hint), Send("us", hint)]
    assert not [a for a in core.tick(21) if isinstance(a, Send)], "said once while it holds"
    # Still applying half a period later: said again, so that they do not let it go stale.
    acks = [a for a in core.tick(600) if isinstance(a, Send) and isinstance(a.message, Ack)]
    assert acks == [Send("ap", hint), Send("us", hint)]
    # Applied: the sender's ack and ap's next one say so, and the hint is gone.
    assert core.applied("us", vv(us=700)) == [Send("us", Ack(vv(us=700)))]
    acks = [a for a in core.tick(610) if isinstance(a, Send) and isinstance(a.message, Ack)]
    assert acks == [Send("ap", Ack(vv(us=700)))]
    assert core.hint_ack("ap") == Ack(vv(us=700))


def test_a_hint_dies_with_the_connection_that_was_bringing_the_entries() -> None:
    core = Core("eu", ["us", "ap"], vv())
    core.connected("us")
    core.connected("ap")
    core.received("us", Entries((e("backlog"),), vv(us=700)))
    assert core.hint_ack("ap") == Ack(vv(), incoming=vv(us=700))
    core.disconnected("us")  # the entries will never be applied from this connection
    assert core.hint_ack("ap") == Ack(vv())
    acks = [a for a in core.tick(11) if isinstance(a, Send) and isinstance(a.message, Ack)]
    assert acks == [], "nothing was said to ap yet, so there is nothing to take back"


def test_pushes_hold_what_a_peer_receives_from_elsewhere_until_it_acks_or_goes_quiet() -> None:
    core = Core("eu", ["us", "ap"], vv(eu=1, us=700), batch_window_ms=10, anti_entropy_ms=1_000)
    core.connected("ap")
    core.received("ap", Hello("ap", vv()))
    core.tick(5)
    core.received("ap", Ack(vv(), incoming=vv(us=700)))  # ap is applying us's backlog, from us itself
    pushes = no_acks(core.tick(20))
    assert pushes == [SendLog("ap", vv(), True, held=vv(us=700))]
    # It stops saying so (its acks carry no hint) once applied: nothing is held any more.
    core.received("ap", Ack(vv(us=700)))
    assert no_acks(core.tick(40)) == [SendLog("ap", vv(us=700), True)]
    # A hint that is not renewed goes stale after two anti-entropy periods (it is renewed every half
    # period, and on a busy machine a renewal can come late).
    core.received("ap", Ack(vv(), incoming=vv(us=800)))
    assert no_acks(core.tick(60))[0].held == vv(us=800)  # type: ignore[union-attr]
    assert no_acks(core.tick(1_061))[-1] == SendLog("ap", vv(us=700), True, held=vv(us=800))
    assert no_acks(core.tick(2_061))[-1] == SendLog("ap", vv(us=700), True)


def test_a_peer_still_applying_what_was_sent_is_not_sent_it_again() -> None:
    core = Core("eu", ["us"], vv(eu=900), batch_window_ms=10, anti_entropy_ms=1_000)
    core.connected("us")
    core.received("us", Hello("us", vv()))
    core.tick(0)
    core.sent("us", vv(eu=900))  # one large message, on its way
    core.tick(500)
    core.received("us", Ack(vv(), incoming=vv(eu=900)))  # received; applying it takes a while
    assert no_acks(core.tick(1_000)) == [SendLog("us", vv(eu=900), True, held=vv(eu=900))]
    core.tick(1_500)
    core.received("us", Ack(vv(), incoming=vv(eu=900)))  # said again, every half period
    assert no_acks(core.tick(2_000)) == [SendLog("us", vv(eu=900), True, held=vv(eu=900))], "not resent"
    # It stops saying so without acknowledging (the apply failed, say): the next round offers it all again.
    core.tick(2_500)
    core.received("us", Ack(vv()))
    assert no_acks(core.tick(3_000)) == [SendLog("us", vv(), True)]


def test_regression_pushes_wait_for_the_peers_hello_so_a_reconnect_does_not_send_twice() -> None:
    # Found by the 5-region convergence benchmark: after a partition healed, a region pushed its
    # backlog on the new connection from what the peer had acknowledged before, then the peer's
    # hello reset what was sent, and the same megabyte went again.
    core = Core("eu", ["us"], vv(eu=900), batch_window_ms=10, anti_entropy_ms=1_000)
    core.tick(100)
    core.connected("us")
    assert no_acks(core.tick(110)) == [], "nothing is known of what us has yet"
    assert no_acks(core.tick(200)) == []
    assert core.received("us", Hello("us", vv(eu=300)))[0] == SendLog("us", vv(eu=300))
    core.sent("us", vv(eu=900))
    assert no_acks(core.tick(210)) == [], "sent once"


def test_a_hello_that_never_comes_holds_pushes_for_one_period_only() -> None:
    # A driver whose connections can lose a message (unlike a TCP stream) still converges.
    core = Core("eu", ["us"], vv(eu=900), batch_window_ms=10, anti_entropy_ms=1_000)
    core.tick(100)
    core.connected("us")
    assert no_acks(core.tick(1_099)) == []
    assert no_acks(core.tick(1_100)) == [SendLog("us", vv(), True)]


def hints(actions: list[Action]) -> dict[str, VersionVector]:
    """Per peer, the hint of each ack among ``actions``."""
    return {a.peer: a.message.incoming for a in actions if isinstance(a, Send) and isinstance(a.message, Ack)}


def test_regression_a_region_tells_its_peers_what_an_origin_streams_it_so_they_do_not_relay_that_too() -> None:
    # Found by the 5-region x 100,000-key convergence benchmark (1.8x the minimum bytes): when
    # a partition healed, the origin's links came up some 0.1-0.4 s apart; the region that
    # got the backlog first relayed it to the others while the origin streamed it to them too.
    core = Core("eu", ["us", "ap", "sa"], vv(), anti_entropy_ms=1_000)
    for peer in ("us", "ap", "sa"):
        core.connected(peer)
    core.tick(1)
    core.received("us", Hello("us", vv(us=900, ap=5)))
    # ap and sa hold us's own entries; us itself is told nothing of its own (it would wait for itself),
    # nor of ap's 5 (us relays those, and ap never said it streams them).
    assert hints(core.tick(11)) == {"ap": vv(us=900), "sa": vv(us=900)}
    assert core.hint_ack("ap") == Ack(vv(), incoming=vv(us=900))
    assert core.hint_ack("us") == Ack(vv())
    # The stream makes progress: the expectation holds, and is said again before it goes stale.
    core.received("us", Entries((e("part"),), vv(us=400)))
    core.applied("us", vv(us=400))
    assert hints(core.tick(600)) == {"ap": vv(us=900), "sa": vv(us=900)}
    # Everything arrived: the hint is taken back.
    core.received("us", Entries((e("rest"),), vv(us=900)))
    core.applied("us", vv(us=900))
    assert hints(core.tick(700)) == {"ap": vv(), "sa": vv()}


def test_what_an_origin_streams_is_keyed_by_the_origin_its_hello_names() -> None:
    # us lost its disk once: its own entries are now those of us#2; us#1's are an earlier incarnation's,
    # which us relays like any other origin's (it never said it streams them).
    core = Core("eu", ["us", "ap"], vv(), anti_entropy_ms=1_000)
    core.connected("us")
    core.connected("ap")
    core.tick(1)
    core.received("us", Hello("us", VersionVector({"us#1": 70, "us#2": 900}), origin="us#2"))
    assert hints(core.tick(11)) == {"ap": VersionVector({"us#2": 900})}
    assert core.hint_ack("us") == Ack(vv()), "us is never told it streams its own entries"
    core.received("us", Entries((e("all"),), VersionVector({"us#1": 70, "us#2": 900})))
    core.applied("us", VersionVector({"us#1": 70, "us#2": 900}))
    assert hints(core.tick(20))["ap"] == vv(), "everything arrived: the hint is taken back"


def greeted_by_an_origin_with_900() -> Core:
    """eu, connected to us and ap; us's hello says it has 900 of its own entries."""
    core = Core("eu", ["us", "ap"], vv(), anti_entropy_ms=1_000)
    core.connected("us")
    core.connected("ap")
    core.tick(0)
    core.received("us", Hello("us", vv(us=900)))
    return core


def test_an_origin_whose_stream_brings_nothing_for_a_period_is_no_longer_counted_on() -> None:
    core = greeted_by_an_origin_with_900()
    assert hints(core.tick(10)) == {"ap": vv(us=900)}
    # us sends nothing (stuck, or repairing eu by a state transfer): after a period ap relays instead.
    assert hints(core.tick(999)) == {"ap": vv(us=900)}
    assert hints(core.tick(1_010))["ap"] == vv()
    # And a connection that drops takes the expectation with it.
    core.received("us", Hello("us", vv(us=950)))
    assert hints(core.tick(1_020)) == {"ap": vv(us=950)}
    core.disconnected("us")
    assert hints(core.tick(1_030)) == {"ap": vv()}


def test_an_origin_whose_message_takes_longer_than_a_period_to_apply_is_still_counted_on() -> None:
    # A catch-up message of 1 MiB can take over a second to apply on a busy machine.
    core = greeted_by_an_origin_with_900()
    core.received("us", Entries((e("part"),), vv(us=400)))
    assert hints(core.tick(10)) == {"ap": vv(us=900), "us": vv(us=400)}
    assert hints(core.tick(1_500))["ap"] == vv(us=900), "still applying: still coming"
    core.applied("us", vv(us=400))  # done at 1,500: the stream's next message is read from here
    assert hints(core.tick(2_490)) == {"ap": vv(us=900)}
    assert hints(core.tick(2_510)) == {"ap": vv()}


def test_regression_an_expectation_does_not_outlive_its_period_when_time_steps_back() -> None:
    # Found reading the change: every other timestamp was clamped when time steps back, this one was not,
    # so an origin that stalled would have been counted on until the clock came back.
    core = Core("eu", ["us", "ap"], vv(), anti_entropy_ms=1_000)
    core.connected("us")
    core.connected("ap")
    core.tick(5_000)
    core.received("us", Hello("us", vv(us=900)))
    assert hints(core.tick(5_010)) == {"ap": vv(us=900)}
    core.tick(100)  # time steps back
    assert hints(core.tick(1_110)) == {"ap": vv()}


def test_a_push_that_found_only_a_fresh_relay_waits_until_it_matures() -> None:
    # The core, not each host, keeps the hold: every host (node, simulator, benchmark) runs the same rule.
    core = Core("eu", ["us"], vv(eu=1, ap=3), batch_window_ms=10, anti_entropy_ms=1_000, relay_delay_ms=50)
    core.connected("us")
    core.tick(0)
    core.received("us", Hello("us", vv(eu=1)))
    assert no_acks(core.tick(20)) == [SendLog("us", vv(eu=1), True)]
    # The log held ap's entries: they arrived at wall 5,000, and it is wall 5,010 now: 40 ms to go.
    assert core.relay_held("us", held_since_ms=5_000, wall_now_ms=5_010) == []
    assert no_acks(core.tick(40)) == [], "reading the log again would find the same relay"
    assert no_acks(core.tick(55)) == []
    assert no_acks(core.tick(65)) == [SendLog("us", vv(eu=1), True)]
    # A relay that arrived long ago waits no more; one stamped in the future (a clock step) at most the delay.
    core.relay_held("us", held_since_ms=0, wall_now_ms=5_010)
    assert no_acks(core.tick(75)) == [SendLog("us", vv(eu=1), True)]
    core.relay_held("us", held_since_ms=9_000, wall_now_ms=5_010)
    assert no_acks(core.tick(100)) == []
    assert no_acks(core.tick(120)) == []
    assert no_acks(core.tick(130)) == [SendLog("us", vv(eu=1), True)]
