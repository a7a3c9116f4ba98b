"""Everything the CLI prints goes through here (no ``print`` elsewhere).

Errors are one line on stderr, ``error: <message>`` (``Unavailable``,
``DeadlineExceeded`` and ``Internal`` keep their code in front, so a dead
service reads ``error: Unavailable: image service not answering at ...``), and
the process exits non-zero. No traceback reaches the user.
"""

from __future__ import annotations

import sys

from common import errors

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, NoReturn

_CODE_SHOWN = ("Unavailable", "DeadlineExceeded", "Internal")

EXIT_ENGINE_ERROR = 125
"""Docker's exit status when the engine, not the container, failed."""


def line(text: str = "") -> None:
    """Print one line on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def lines(texts: Iterable[str]) -> None:
    """Print several lines on stdout with one write."""
    text = "".join(t + "\n" for t in texts)
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def text(data: str) -> None:
    """Print ``data`` on stdout as it is (its newlines included)."""
    if data:
        sys.stdout.write(data)
        sys.stdout.flush()


def raw(data: bytes, stream: int = 1) -> None:
    """Write bytes unchanged to stdout (1) or stderr (2)."""
    target = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
    target.write(data)
    target.flush()


def warn(text: str) -> None:
    """Print a warning line on stderr."""
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()


def error_text(exc: BaseException) -> str:
    """Return the one-line message shown for ``exc``."""
    if isinstance(exc, errors.DockyardError):
        if exc.code in _CODE_SHOWN:
            return f"{exc.code}: {exc.message}"
        return exc.message
    return str(exc) or type(exc).__name__


def fail(exc: BaseException | str, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    text = exc if isinstance(exc, str) else error_text(exc)
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a left-aligned table with columns separated by three spaces (like docker)."""
    rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    fmt = "   ".join(f"{{:<{w}}}" for w in widths)
    lines([fmt.format(*headers).rstrip(), *(fmt.format(*row).rstrip() for row in rows)])


def as_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON (datetimes as RFC 3339)."""
    import json

    line(json.dumps(obj, indent=4, default=_json_default))


def _json_default(obj: Any) -> Any:
    iso = getattr(obj, "isoformat", None)
    if iso is not None:
        return iso().replace("+00:00", "Z")
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot show {type(obj).__name__}")


class LayerProgress:
    """Per-layer progress like ``docker pull``: rich bars on a terminal, otherwise one line
    per state change (``<id>: Pull complete``). Feed it image service ``Progress`` frames.
    """

    _FINAL = ("Pull complete", "Already exists", "Pushed", "Layer already exists", "Download complete")

    def __init__(self) -> None:
        self._tty = sys.stdout.isatty()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, str] = {}

    def __enter__(self) -> LayerProgress:
        if self._tty:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.fields[layer]}"),
                TextColumn("{task.description:<18}"),
                BarColumn(bar_width=40),
                DownloadColumn(),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def message(self, text: str) -> None:
        """A line about the whole operation (``Digest: ...``, ``Status: ...``)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            line(text)

    def update(self, frame: dict[str, Any]) -> None:
        """Show one frame: ``{status, id, current, total, message}``."""
        layer = str(frame.get("id") or "")
        status = str(frame.get("status") or "")
        if status.startswith("Pulling from ") and layer:
            self.message(f"{layer}: {status}")  # "<tag>: Pulling from <repo>", as docker prints it
            return
        if not layer or len(layer) != 12:
            text = str(frame.get("message") or status)
            if status == "warning":
                warn(text)
            elif text and status not in ("done",):
                self.message(text if status != "message" else str(frame.get("message")))
            return
        current, total = int(frame.get("current") or 0), int(frame.get("total") or 0)
        if self._progress is not None:
            task = self._tasks.get(layer)
            if task is None:
                task = self._progress.add_task(status, layer=layer, total=total or None)
                self._tasks[layer] = task
            done = status in self._FINAL
            if done and total:
                self._progress.update(task, description=status, completed=total, total=total)
            elif current:
                self._progress.update(task, description=status, completed=current, total=total or None)
            else:  # no byte count (Waiting, Extracting): keep the bar where it is
                self._progress.update(task, description=status)
            return
        if self._last.get(layer) != status:
            self._last[layer] = status
            line(f"{layer}: {status}")
