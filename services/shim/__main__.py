"""Launch a shim detached: ``python -m services.shim <namespace> <container_id> <bundle>``.

Like ``containerd-shim-runc-v2 start``: this process forks, the child starts a new
session and forks again, and the grandchild becomes the shim (so neither the
execution service nor ``dockyard up`` is its parent). This process waits until the
shim reports that the task is created (or failed), prints that report as one JSON
line (see ``services.shim.main``) and exits 0, or 1 if the shim failed. Heavy
modules are imported only in the grandchild, after the forks.
"""

from __future__ import annotations

import os
import sys


def _daemon_child(namespace: str, container_id: str, bundle: str, ready_w: int) -> None:
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(os.path.join(bundle, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    code = 1
    try:
        from common import logsetup
        from common.settings import Settings
        from services.shim.main import serve

        settings = Settings()
        logsetup.configure("shim", settings.log_level)
        code = serve(namespace, container_id, bundle, settings, ready_w)
    finally:
        os._exit(code)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: python -m services.shim <namespace> <container_id> <bundle>\n")
        return 2
    namespace, container_id, bundle = argv
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _daemon_child(namespace, container_id, bundle, w)
        finally:
            os._exit(1)
    os.close(w)
    os.waitpid(pid, 0)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    # the shim's {"serving": ...} line comes first: only its report (the last line) is printed
    lines = b"".join(chunks).strip().splitlines()
    report = lines[-1] if lines and b'"serving"' not in lines[-1] else b""
    if not report:
        report = b'{"ok": false, "error": "shim exited before reporting", "exit_status": 128}'
    sys.stdout.write(report.decode(errors="replace") + "\n")
    sys.stdout.flush()
    return 0 if b'"ok": true' in report else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
