"""The few ``os`` services the CLI's hot path needs, without importing ``os``.

``python -S`` starts without ``os``; importing it runs ``os``, ``_collections_abc``,
``posixpath``, ``stat`` and ``genericpath`` (~1 ms of CPU here, a sixth of the
interpreter's own start-up) for a handful of calls that the built-in ``posix`` module
makes itself. The modules a hot command loads (``cli.hot``, ``cli.runner``,
``common.endpoints``, ``common.trace``, ``common.rpc``) call ``posix`` directly and read
the environment through ``environ()``, which is ``os.environ`` itself as soon as anything
in the process imported ``os`` (every service, and the full CLI), so a variable set at run
time there is seen as before.
"""

from __future__ import annotations

import posix
import sys

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Mapping

_snapshot: dict[str, str] | None = None


def environ() -> Mapping[str, str]:
    """The process environment as ``os.environ`` shows it (names and values decoded with
    the file system encoding and ``surrogateescape``): ``os.environ`` once ``os`` is
    imported, else a copy of ``posix.environ`` made at the first call."""
    os_module = sys.modules.get("os")
    if os_module is not None:
        env: Mapping[str, str] = os_module.environ
        return env
    global _snapshot
    if _snapshot is None:
        encoding = sys.getfilesystemencoding()
        _snapshot = {
            k.decode(encoding, "surrogateescape"): v.decode(encoding, "surrogateescape")
            for k, v in posix.environ.items()
        }
    return _snapshot


def join(path: str, *parts: str) -> str:
    """``os.path.join`` for ``str`` paths: an absolute part starts over, ``/`` between parts."""
    out = path
    for part in parts:
        if part.startswith("/"):
            out = part
        elif not out or out.endswith("/"):
            out += part
        else:
            out += "/" + part
    return out


def basename(path: str) -> str:
    """``os.path.basename``: what follows the last ``/``."""
    return path.rpartition("/")[2]
