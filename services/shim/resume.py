"""A shim back from its idle monitor: ``python -m services.shim.resume <namespace> <id> <bundle>``.

Exec'd by ``dockyard-shim-idle`` in the shim's own process (same pid, still the
container's parent), never started by hand: it reads ``<bundle>/hibernation.json``
(``services.shim.hibernate``) and serves the task again until it is deleted. Its stdio
is the shim's (``shim.log`` on stderr).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: python -m services.shim.resume <namespace> <container_id> <bundle>\n")
        return 2
    namespace, container_id, bundle = argv
    from common import logsetup
    from common.settings import Settings
    from services.shim import hibernate
    from services.shim.main import serve

    settings = Settings()
    logsetup.configure("shim", settings.log_level)
    try:
        saved = hibernate.load_state(bundle)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"shim of {container_id}: cannot resume: {exc}\n")
        return 1
    return serve(namespace, container_id, bundle, settings, saved=saved)


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
