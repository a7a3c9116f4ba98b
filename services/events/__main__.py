"""Wiring of the events service: journal, XSUB intake, XPUB fan-out, RPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import zmq

from common import codec, endpoints
from common.rpc import zasync
from common.service import ServiceHost, run
from services.events.journal import Journal, NewEvent, Record
from services.events.service import EventsService, compactor

log = logging.getLogger(__name__)


def _bind(sock: zasync.Socket, endpoint: str) -> tuple[str, int] | None:
    """Bind ``endpoint``, replacing a stale ipc socket file (a SIGKILLed predecessor's).

    Returns the socket file and its inode, for ``_remove_if_ours`` (None: not a file).
    """
    path = ""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        path = endpoint[len("ipc://") :]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock.bind(endpoint)
    if not path:
        return None
    try:
        return path, os.stat(path).st_ino
    except OSError:
        return None


def _remove_if_ours(bound: tuple[str, int] | None) -> None:
    """Remove a socket file ``_bind`` made, unless a successor has bound its own there since."""
    if bound is None:
        return
    path, inode = bound
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


async def _intake(sock: zasync.Socket, service: EventsService) -> None:
    """Journal fire-and-forget events arriving on the XSUB socket: [topic, msgpack event]."""
    await sock.send(b"\x01")  # subscribe to everything the publishers send
    while True:
        frames = await sock.recv_multipart()
        try:
            msg = codec.decode(frames[-1])
            ev = NewEvent(
                str(msg["id"]),
                msg.get("timestamp") or codec.utcnow(),
                str(msg.get("namespace") or "default"),
                str(msg["topic"]),
                dict(msg.get("event") or {}),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("dropped a malformed event on the publish socket")
            continue
        service.ingest_nowait(ev)


async def setup(host: ServiceHost) -> list[object]:
    settings = host.settings
    journal = Journal(host.data_dir / "journal.db")
    host.on_close(lambda: asyncio.to_thread(journal.close))
    zctx = zasync.Context.instance()
    env = settings.env()

    xpub = zctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.SNDHWM, 100_000)
    xpub_file = _bind(xpub, endpoints.events_subscribe_endpoint(env))

    def fanout(record: Record) -> None:
        with contextlib.suppress(zmq.Again):
            xpub.send_multipart_nowait([record.topic.encode(), codec.encode(record.to_wire())])

    xsub = zctx.socket(zmq.XSUB)
    xsub.setsockopt(zmq.LINGER, 0)
    xsub_file = _bind(xsub, endpoints.events_publish_endpoint(env))

    async def _close_sockets() -> None:
        xpub.close(linger=0)
        xsub.close(linger=0)
        _remove_if_ours(xpub_file)
        _remove_if_ours(xsub_file)

    host.on_close(_close_sockets)

    service = EventsService(journal, fanout, after_wait_s=settings.events_after_wait_s)
    host.spawn(service.writer_loop(), "journal-writer")
    host.spawn(_intake(xsub, service), "xsub-intake")
    host.spawn(_drain_xpub(xpub), "xpub-subscriptions")
    host.spawn(
        compactor(
            journal, settings.journal_max_age_s, settings.journal_max_events, settings.journal_compact_interval_s
        ),
        "journal-compactor",
    )
    return [service]


async def _drain_xpub(sock: zasync.Socket) -> None:
    """Read (and ignore) subscription messages so the XPUB socket's queue never fills."""
    while True:
        await sock.recv()


if __name__ == "__main__":
    run("events", setup)
