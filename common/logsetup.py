"""Logging configuration, done once per process.

Services log one line per record to stderr (the supervisor redirects it to
``<state>/logs/<service>.log``): ``time level logger [request] message``.
Request boundaries log with ``namespace``, ``container_id`` and ``request_id``
passed as ``extra``; the formatter prints whichever are present.
"""

from __future__ import annotations

import logging
import sys

_CONTEXT_KEYS = ("request_id", "namespace", "container_id")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{key}={getattr(record, key)}" for key in _CONTEXT_KEYS if getattr(record, key, None))
        record.context = f" [{context}]" if context else ""
        return super().format(record)


def configure(process: str, level: str = "info") -> None:
    """Configure the root logger for ``process`` (e.g. ``"image"``) at ``level``.

    Idempotent: a second call only changes the level.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if any(getattr(h, "_dockyard", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._dockyard = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter(f"%(asctime)s %(levelname)s {process} %(name)s%(context)s: %(message)s"))
    root.addHandler(handler)
