"""bench/events: event throughput to 10 subscribers and the journal's append latency.

Starts a private events service (a real process), attaches ``--subscribers``
follower processes through ``events.replay(follow=True)`` (the path ``dockyard
events`` uses) plus one raw XPUB subscriber process, then ``--publishers``
concurrent publisher processes each send ``--events`` acknowledged events (``events.publish``, the path every
shim uses). Prints, as a table and as JSON (``--json``):

- publish: acknowledged events/s and the p50/p99 latency of one ``events.publish``
  round trip (it includes the SQLite commit: an ack means the event is journaled);
- delivery: events/s delivered to the followers in total, and per follower,
  measured from the first publish to the last event received;
- whether every follower received every event exactly once, in order.

Usage: ``python -m bench.events [--events 2000] [--publishers 4] [--subscribers 10]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from typing import Any

import zmq

from common import endpoints
from common.rpc.client import Client
from tests.harness import Instance


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _follower(endpoint: str, total: int, ready: Any, out: Any) -> None:
    """One subscriber process: ``events.replay(follow=True)`` until ``total`` events arrived."""
    client = Client("events", endpoint, timeout_s=None)
    call = client.start("events.replay", {"since": 0, "follow": True}, timeout_s=None, window=512)
    ready.set()
    seqs: list[int] = []
    for env in call:
        seqs.append(env["seq"])
        if len(seqs) >= total:
            break
    out.put((time.time(), seqs == list(range(1, total + 1))))


def _publisher(endpoint: str, p: int, n_events: int, go: Any, out: Any) -> None:
    """One publisher process: ``n_events`` acknowledged ``events.publish`` calls, timed."""
    client = Client("events", endpoint)
    go.wait()
    latencies = []
    for i in range(n_events):
        t0 = time.perf_counter()
        client.call(
            "events.publish",
            {"id": f"p{p}-{i}", "topic": "/tasks/exit", "event": {"container_id": f"c{p}", "exit_status": 0}},
        )
        latencies.append(time.perf_counter() - t0)
    out.put(latencies)


def _raw(endpoint: str, total: int, ready: Any, out: Any) -> None:
    """A raw XPUB subscriber process counting what the fan-out socket delivers."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    time.sleep(0.3)
    ready.set()
    count = 0
    while count < total and sub.poll(10_000):
        sub.recv_multipart()
        count += 1
    out.put(count)


def _run(inst: Instance, n_events: int, n_pub: int, n_sub: int) -> dict[str, object]:
    total = n_events * n_pub
    mp = multiprocessing.get_context("fork")
    endpoint = inst.endpoint("events")
    sub_out, pub_out, raw_out = mp.Queue(), mp.Queue(), mp.Queue()
    readies = [mp.Event() for _ in range(n_sub + 1)]
    go = mp.Event()
    procs = [mp.Process(target=_follower, args=(endpoint, total, readies[i], sub_out)) for i in range(n_sub)]
    procs.append(
        mp.Process(target=_raw, args=(endpoints.events_subscribe_endpoint(inst.env), total, readies[-1], raw_out))
    )
    procs += [mp.Process(target=_publisher, args=(endpoint, p, n_events, go, pub_out)) for p in range(n_pub)]
    for proc in procs:
        proc.start()
    try:
        for ev in readies:
            ev.wait(30)
        time.sleep(0.3)
        start_wall, start = time.time(), time.perf_counter()
        go.set()
        latencies: list[float] = []
        for _ in range(n_pub):
            latencies += pub_out.get(timeout=600)
        published = time.perf_counter()
        subs = [sub_out.get(timeout=600) for _ in range(n_sub)]
        raw_count = raw_out.get(timeout=60)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    last = max((t for t, _ in subs), default=start_wall + (published - start))
    elapsed = last - start_wall
    return {
        "events": total,
        "publishers": n_pub,
        "subscribers": n_sub,
        "publish_events_per_s": round(total / (published - start)),
        "publish_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "publish_p99_ms": round(_pct(latencies, 99) * 1000, 3),
        "delivered_events_per_s_total": round(total * n_sub / elapsed),
        "delivered_events_per_s_per_subscriber": round(total / elapsed),
        "every_subscriber_got_every_event_once_in_order": all(ok for _, ok in subs),
        "raw_xpub_subscriber_received": raw_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="event throughput and journal append latency")
    parser.add_argument("--events", type=int, default=2000, help="events per publisher")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    inst = Instance()
    try:
        inst.start("events")
        result = _run(inst, args.events, args.publishers, args.subscribers)
    finally:
        inst.cleanup()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        sys.stdout.write(f"{key:<{width}}  {value}\n")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
