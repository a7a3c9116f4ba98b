"""The OCI runtime CLI (runc or crun) as the shim drives it (containerd-model.md section 10).

Every invocation goes through the shim's ``Reaper`` (never ``subprocess``), with
``--root <runtime root> --log <bundle>/log.json --log-format json`` so the runtime's
own errors are read from the log, not from stderr (which, for ``create`` and ``exec``,
is the container's pipe).

Start errors are classified as Docker does (moby ``translateContainerdStartErr``,
CASES.md C20): a working directory the process cannot change to -> 126 whatever the
errno (runc's ``chdir to cwd ("/x") set in config.json failed: ...``, crun's
``chdir to `/x``` or ``chdir `/x` failed``), as ``docker exec -w /nonexistent`` gives:
the command itself was never looked up; not found -> 127; permission denied,
operation not permitted, is a directory, exec format error -> 126; anything else ->
128 (the CLI reports 125).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from common import trace
from services.shim.reaper import Reaper, child_env

log = logging.getLogger(__name__)

_BAD_CWD = re.compile(r"chdir to cwd|chdir (?:to )?`")  # runc; crun
_NOT_FOUND = re.compile(r"executable file not found|no such file or directory|not found in \$PATH", re.I)
_NOT_EXECUTABLE = re.compile(r"permission denied|operation not permitted|is a directory|exec format error", re.I)


def start_error_status(message: str) -> int:
    """Exit status Docker records for a process that could not be started (see module doc)."""
    if _BAD_CWD.search(message):
        return 126
    if _NOT_FOUND.search(message):
        return 127
    if _NOT_EXECUTABLE.search(message):
        return 126
    return 128


def runtime_env(*, serial: bool = False) -> dict[str, str]:
    """A runtime command's environment: ``PATH``, and the shim's own ``GOMAXPROCS`` when it
    has one (an operator's limit holds for every command); else, with ``serial``,
    ``GOMAXPROCS=1`` (a Go runtime's one scheduler thread; crun ignores it). It does not
    reach the container: the runtime starts its processes with the spec's environment."""
    limit = os.environ.get("GOMAXPROCS") or ("1" if serial else "")
    return {**child_env(), "GOMAXPROCS": limit} if limit else child_env()


class RuntimeError_(Exception):  # noqa: N801 - the builtin name is taken
    """The runtime binary failed; ``message`` is its own error text."""

    def __init__(self, command: str, status: int, message: str) -> None:
        super().__init__(message)
        self.command = command
        self.status = status
        self.message = message


class Runtime:
    """One runtime binary, one ``--root``, one bundle's log file."""

    def __init__(self, binary: str, root: str, bundle: str, reaper: Reaper) -> None:
        self.binary = binary
        self.root = root
        self.bundle = bundle
        self.reaper = reaper
        self.log_path = os.path.join(bundle, "log.json")
        os.makedirs(root, exist_ok=True)

    @property
    def name(self) -> str:
        return os.path.basename(self.binary)

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, "--log", self.log_path, "--log-format", "json", *args]

    def _log_offset(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def _errors_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                data = f.read(256 * 1024)
        except OSError:
            return ""
        messages = []
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                text = line.decode(errors="replace").strip()
                if text:
                    messages.append(text)
                continue
            if rec.get("level") in ("error", "fatal", "panic"):
                messages.append(str(rec.get("msg", "")).strip())
        return messages[-1] if messages else ""

    async def _call(
        self,
        command: str,
        args: Sequence[str],
        *,
        stdio: dict[int, int] | None = None,
        capture: bool = False,
        input_data: bytes | None = None,
        serial: bool = False,
    ) -> bytes:
        """Run ``command``; ``serial``: with one Go scheduler thread (``runtime_env``)."""
        offset = self._log_offset()
        stdio = stdio or {}
        trace.mark(f"{self.name} {command}")
        status, out = await self.reaper.run(
            self._argv(*args),
            stdin=stdio.get(0),
            stdout=stdio.get(1),
            stderr=stdio.get(2),
            capture=capture,
            input_data=input_data,
            env=runtime_env(serial=serial),
        )
        trace.mark(f"{self.name} {command} exited {status}")
        if status != 0:
            message = self._errors_since(offset)
            if not message and capture:
                lines = out.decode(errors="replace").strip().splitlines()
                message = lines[-1] if lines else ""
            raise RuntimeError_(command, status, message or f"{self.name} {command} exited with status {status}")
        return out

    async def create(
        self, container_id: str, pid_file: str, stdio: dict[int, int], console_socket: str | None = None
    ) -> None:
        """``create --bundle <bundle> --pid-file <pid_file> [--console-socket S] <id>``, with
        ``GOMAXPROCS=1`` as ``run_detached``."""
        args = ["create", "--bundle", self.bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._call("create", [*args, container_id], stdio=stdio, serial=True)

    async def run_detached(
        self, container_id: str, pid_file: str, stdio: dict[int, int], console_socket: str | None = None
    ) -> None:
        """``run --detach --bundle <bundle> --pid-file <pid_file> [--console-socket S] <id>``.

        ``create`` and ``start`` in one runtime process (one Go start-up less for runc,
        ~10 ms here); the runtime returns once the container's process runs. A failure
        of either half raises ``RuntimeError_`` with the runtime's message.

        Runs with ``GOMAXPROCS=1`` (``runtime_env``; runc's ``init`` gets an environment of
        its own and keeps Go's default): with one scheduler thread, runc's idle ones no
        longer spin looking for work on CPUs that the other starts of a burst need. 20
        concurrent ``run -d`` on two instances, alternated 8 and 10 times: 1285 -> 1240 and
        1305 -> 1280 ms of the host's CPU per burst, wall 647 -> 624 and 665 -> 650 ms; a
        lone ``run --rm`` the same (75.9 against 75.6 ms, 40 alternated runs each).
        """
        args = ["run", "--detach", "--bundle", self.bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._call("run", [*args, container_id], stdio=stdio, serial=True)

    async def start(self, container_id: str) -> None:
        """``start <id>``: run the process (its exec fifo opens)."""
        await self._call("start", ["start", container_id])

    async def kill(self, container_id: str, signal: int, all_processes: bool = False) -> None:
        """``kill [--all] <id> <signal>``."""
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(signal)]
        await self._call("kill", args)

    async def delete(self, container_id: str, force: bool = False) -> None:
        """``delete [--force] <id>``; a container the runtime does not know is not an error.

        Runs with ``GOMAXPROCS=1`` (``runtime_env``): the delete of a task whose init just
        exited overlaps the exit's path, and Go's default of one scheduler thread per CPU
        spread its ~10 ms over both CPUs of this host while the shim and the services wait
        their turn; with one it took ~1.5 ms less, and ``run --rm`` ~2 ms less (A/B of
        ``bench.profile``). ``runc exec`` was slower with it (~1-4 ms): it keeps Go's default.
        """
        try:
            await self._call("delete", ["delete", *(["--force"] if force else []), container_id], serial=True)
        except RuntimeError_ as exc:
            if "does not exist" in exc.message or "not found" in exc.message.lower():
                return
            raise

    async def state(self, container_id: str) -> dict[str, Any]:
        """``state <id>`` as a dict."""
        out = await self._call("state", ["state", container_id], capture=True)
        return dict(json.loads(out))

    async def exec(
        self,
        container_id: str,
        process_file: str,
        pid_file: str,
        stdio: dict[int, int],
        console_socket: str | None = None,
    ) -> None:
        """``exec --process <file> --detach --pid-file <f> [--console-socket S] <id>``."""
        args = ["exec", "--process", process_file, "--detach", "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._call("exec", [*args, container_id], stdio=stdio)

    async def pause(self, container_id: str) -> None:
        await self._call("pause", ["pause", container_id])

    async def resume(self, container_id: str) -> None:
        await self._call("resume", ["resume", container_id])

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``update --resources - <id>`` with LinuxResources JSON on stdin."""
        await self._call(
            "update", ["update", "--resources", "-", container_id], input_data=json.dumps(resources).encode()
        )

    async def ps(self, container_id: str) -> list[int]:
        """Host pids of every process of the container."""
        out = await self._call("ps", ["ps", "--format", "json", container_id], capture=True)
        data = json.loads(out or b"[]")
        return [int(p) for p in (data or [])]

    async def stats(self, container_id: str) -> dict[str, Any]:
        """``events --stats <id>``: one snapshot of the cgroup metrics (its ``data``)."""
        out = await self._call("events", ["events", "--stats", container_id], capture=True)
        rec = json.loads(out.splitlines()[0] if out else b"{}")
        return dict(rec.get("data") or {})
