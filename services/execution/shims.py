"""Launching shims, watching them, and cleaning up after one that died.

- ``launch``: run ``python -m services.shim <ns> <id> <bundle>`` (which daemonizes the
  shim and waits until the task is created) and return its JSON report.
- ``ShimWatch``: a pidfd on a shim's pid, readable when the shim exits (no polling);
  works for processes that are not our children.
- ``clean_dead_task``: what ``containerd-shim-runc-v2 delete`` does for a SIGKILLed
  shim: ``<runtime> delete --force``, unmount the rootfs.
- ``remove_stale_socket``: unlink the endpoint file a SIGKILLed shim left, when no one listens.
- ``shim_alive``: is the pid in ``shim.pid`` still the shim that wrote ``state.json``
  (same start time, so a reused pid is not mistaken for it)?

No zmq here: the execution service passes a client factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.shim import mount
from services.shim.service import proc_start_time
from services.shim.task import read_state_file

log = logging.getLogger(__name__)

PROJECT = str(Path(__file__).resolve().parent.parent.parent)

STALE_FILES = (
    "address",
    "shim.pid",
    "state.json",
    "init.pid",
    "shim.json",
    "address.tmp",
    "shim.pid.tmp",
    "hibernation.json",
    "partial.1",
    "partial.2",
)


async def launch(namespace: str, container_id: str, bundle: str, env: dict[str, str]) -> dict[str, Any]:
    """Start a detached shim and wait for its report (see ``services.shim.main``).

    Returns the report dict (``ok`` true or false). Never raises for a shim that failed:
    the report says why; raises ``OSError`` only if the launcher could not run.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.shim",
        namespace,
        container_id,
        bundle,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT,
        env=env,
    )
    out, err = await proc.communicate()
    text = out.decode(errors="replace").strip()
    try:
        report = json.loads(text.splitlines()[-1]) if text else {}
    except ValueError:
        report = {}
    if not report:
        report = {
            "ok": False,
            "error": f"shim launcher failed ({proc.returncode}): {err.decode(errors='replace').strip()[-500:]}",
            "exit_status": 128,
        }
    return report


class Launcher:
    """Launches shims by forking them from a pre-imported template process (``services.shim.template``).

    Falls back to ``launch`` (a fresh interpreter) while the template is not running, and
    restarts the template in the background when it died.
    """

    def __init__(self, socket_path: str, env: dict[str, str]) -> None:
        self.socket_path = socket_path
        self.env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the template and wait until it listens (errors are logged, not raised)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.shim.template",
                self.socket_path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                cwd=PROJECT,
                env=self.env,
            )
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
            if line.strip() != b"ready":
                raise OSError(f"shim template exited ({proc.returncode})")
            self._proc = proc
        except (OSError, TimeoutError) as exc:
            log.error("shim template did not start: %s; launching shims in fresh interpreters", exc)

    def start_background(self) -> None:
        """Start the template without waiting (launches wait for it)."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self.start())

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def launch(
        self,
        namespace: str,
        container_id: str,
        bundle: str,
        on_serving: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Launch a shim and return its report (see ``launch``).

        ``on_serving(address)`` is called when a shim forked from the template says it serves
        (``services.shim.main``), before its report: while the runtime creates the task, the
        caller can open its connection to the shim.
        """
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)
        if self._alive():
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError as exc:
                log.warning("shim template not answering (%s)", exc)
            else:
                try:
                    request = {"namespace": namespace, "container_id": container_id, "bundle": bundle}
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                    if line.startswith(b'{"serving"'):
                        if on_serving is not None:
                            with contextlib.suppress(ValueError, KeyError, TypeError):
                                on_serving(str(json.loads(line)["serving"]))
                        line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                if line.strip():
                    try:
                        return dict(json.loads(line))
                    except ValueError:
                        pass
                return {"ok": False, "error": "shim exited before reporting", "exit_status": 128}
        self.start_background()
        return await launch(namespace, container_id, bundle, self.env)

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._alive():
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


def read_pid(bundle: str) -> int:
    """The pid in ``<bundle>/shim.pid``, 0 if none."""
    try:
        return int(Path(bundle, "shim.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def shim_alive(bundle: str) -> int:
    """Return the shim's pid if it is alive and is the one that wrote ``state.json``, else 0."""
    pid = read_pid(bundle)
    if pid <= 0:
        return 0
    started = proc_start_time(pid)
    if not started:
        return 0
    state = read_state_file(os.path.join(bundle, "state.json"))
    if state is not None and state.shim_pid == pid and state.shim_start_time and state.shim_start_time != started:
        return 0
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return 0
    except OSError:
        return 0
    return pid


class ShimWatch:
    """Resolves ``died`` when the process ``pid`` exits (pidfd, event-driven)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        loop = asyncio.get_running_loop()
        self.died: asyncio.Future[None] = loop.create_future()
        self._fd = -1
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.died.set_result(None)
            return
        loop.add_reader(self._fd, self._fire)

    def _fire(self) -> None:
        if not self.died.done():
            self.died.set_result(None)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


async def runtime_delete(runtime: str, runtime_root: str, container_id: str) -> None:
    """``<runtime> --root R delete --force <id>``; a container it does not know is fine."""
    try:
        proc = await asyncio.create_subprocess_exec(
            runtime,
            "--root",
            runtime_root,
            "delete",
            "--force",
            container_id,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.error("cannot run %s: %s", runtime, exc)
        return
    _, err = await proc.communicate()
    text = err.decode(errors="replace")
    if proc.returncode and "does not exist" not in text and "No such file" not in text:
        log.warning("%s delete --force %s: %s", runtime, container_id, text.strip())


async def clean_dead_task(runtime: str, runtime_root: str, container_id: str, bundle: str) -> None:
    """Kill and delete the runtime's container, unmount the rootfs (the shim is gone)."""
    await runtime_delete(runtime, runtime_root, container_id)
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.isdir(rootfs):
        try:
            await asyncio.to_thread(mount.unmount, rootfs, detach=True)
        except OSError as exc:
            log.error("cannot unmount %s: %s", rootfs, exc)


def remove_stale_socket(address: str) -> bool:
    """Remove the unix socket file of a dead shim's endpoint (``ipc://<state>/s/<hash>``).

    A shim killed with SIGKILL cannot unlink the file its ROUTER socket bound. The file is
    removed only when nothing listens on it any more (a connect is refused), so the socket
    of a live shim (a new one for the same container) is never taken away. Blocking (one
    ``connect``, which fails at once): call it in a thread. Returns True when it removed a file.
    """
    import socket
    import stat

    path = address.removeprefix("ipc://")
    if not path.endswith(".w"):  # and the wake socket of a shim that died asleep (common.shimwake)
        remove_stale_socket(address + ".w")
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return False  # a live shim owns it
    except ConnectionRefusedError:
        pass
    except OSError as exc:
        log.warning("cannot probe shim socket %s: %s; leaving it", path, exc)
        return False
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    log.info("removed the socket %s of a dead shim", path)
    return True


def clear_shim_files(bundle: str) -> None:
    """Remove what the previous shim of this bundle left (before launching a new one)."""
    for name in STALE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(bundle, name))
