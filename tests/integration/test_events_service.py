"""The events service as a real process: journal, dedup, replay/follow seam, restarts, outbox delivery."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import zmq

from common import codec, endpoints
from common.events import LOG_NAME, EventPublisher, read_log
from common.rpc.aio import AsyncClient
from tests.harness import Instance


def _pub(c, event_id: str, topic: str = "/tasks/start", **event: object) -> dict:  # type: ignore[no-untyped-def]
    return c.call("events.publish", {"id": event_id, "topic": topic, "event": dict(event)})


def test_publish_is_journaled_once_and_replayed_in_order(instance: Instance) -> None:
    instance.start("events")
    c = instance.client("events")
    assert _pub(c, "a", container_id="c1") == {"seq": 1, "duplicate": False}
    assert _pub(c, "a", container_id="c1") == {"seq": 1, "duplicate": True}
    for i in range(5):
        _pub(c, f"b{i}", "/tasks/exit", container_id=f"c{i}", exit_status=i)
    seqs = [e["seq"] for e in c.stream("events.replay", {"since": 0})]
    assert seqs == [1, 2, 3, 4, 5, 6]
    only = list(c.stream("events.replay", {"since": 0, "filters": {"topic": ["/tasks/exit"], "container": ["c3"]}}))
    assert [(e["topic"], e["event"]["exit_status"]) for e in only] == [("/tasks/exit", 3)]
    assert c.call("events.head", {}) == {"seq": 6}


def test_follow_has_no_gap_and_no_duplicate_at_the_seam(instance: Instance) -> None:
    instance.start("events")
    c = instance.client("events")
    for i in range(50):
        _pub(c, f"pre{i}")
    got: list[int] = []
    ready = threading.Event()

    def follow() -> None:
        c2 = instance.client("events")
        for e in c2.stream("events.replay", {"since": 10, "follow": True}):
            got.append(e["seq"])
            if e["seq"] == 40:
                ready.set()
            if e["seq"] >= 250:
                return

    t = threading.Thread(target=follow)
    t.start()
    for i in range(200):  # published while the follower replays the journal and then goes live
        _pub(c, f"live{i}")
    t.join(20)
    assert ready.is_set()
    assert got == list(range(11, 251))


def test_journal_survives_sigkill_and_sequence_continues(instance: Instance) -> None:
    instance.start("events")
    c = instance.client("events")
    for i in range(20):
        _pub(c, f"e{i}")
    instance.kill("events")
    instance.start("events")
    c = instance.client("events")
    assert _pub(c, "e5")["duplicate"] is True
    assert _pub(c, "after")["seq"] == 21
    assert len(list(c.stream("events.replay", {"since": 0}))) == 21


def test_fire_and_forget_intake_and_xpub_fanout(instance: Instance) -> None:
    instance.start("events")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"/tasks/")
    sub.connect(endpoints.events_subscribe_endpoint(instance.env))
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoints.events_publish_endpoint(instance.env))
    try:
        time.sleep(0.3)  # PUB/SUB slow joiner: let both connections settle
        pub.send_multipart(
            [b"/tasks/oom", codec.encode({"id": "ff1", "topic": "/tasks/oom", "event": {"container_id": "c"}})]
        )
        assert sub.poll(5000)
        topic, payload = sub.recv_multipart()
        env = codec.decode(payload)
        assert topic == b"/tasks/oom" and env["id"] == "ff1" and env["seq"] == 1
        assert [e["id"] for e in instance.client("events").stream("events.replay", {"since": 0})] == ["ff1"]
    finally:
        sub.close()
        pub.close()


def test_subscriber_is_told_about_events_compacted_before_it_read_them(tmp_path: Path) -> None:
    inst = Instance(journal_max_events="5", journal_compact_interval_s="0.2")
    try:
        inst.start("events")
        c = inst.client("events")
        for i in range(20):
            _pub(c, f"e{i}")
        time.sleep(0.8)
        envs = list(c.stream("events.replay", {"since": 3}))
        assert envs[0]["topic"] == "/events/lost"
        assert envs[0]["event"] == {"first_seq": 4, "last_seq": 15}
        assert [e["seq"] for e in envs[1:]] == [16, 17, 18, 19, 20]
    finally:
        inst.cleanup()


def test_outbox_delivers_events_published_while_the_service_was_down(instance: Instance, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"

    async def publish_while_down() -> None:
        client = AsyncClient("events", instance.endpoint("events"), connect_timeout_s=0.2)
        pub = EventPublisher(client, outbox)
        pub.start()
        for i in range(10):
            pub.publish("/tasks/exit", {"container_id": f"c{i}"}, namespace="default", event_id=f"x{i}")
        await asyncio.sleep(0.3)
        await pub.close()  # the "process" dies with everything still in its outbox
        await client.close()

    def unacknowledged() -> int:
        events, acked, _ = read_log((outbox / LOG_NAME).read_bytes())
        return len(events) - acked

    asyncio.run(publish_while_down())
    assert unacknowledged() == 10
    instance.start("events")

    async def resume() -> None:
        client = AsyncClient("events", instance.endpoint("events"))
        pub = EventPublisher(client, outbox)
        pub.start()
        pub.publish("/tasks/exit", {"container_id": "c9"}, namespace="default", event_id="x9")  # a resend
        assert await pub.flush(10)
        await pub.close()
        await client.close()

    asyncio.run(resume())
    assert unacknowledged() == 0
    ids = [e["id"] for e in instance.client("events").stream("events.replay", {"since": 0})]
    assert ids == [f"x{i}" for i in range(10)]
