"""Event topic names, ``/<resource>/<verb>`` (DESIGN.md, containerd's topics).

Order per task is part of the API: create -> start -> exit -> delete; for an
exec: exec-added -> exec-started -> exit (with its exec id). Use these
constants, never string literals.
"""

from __future__ import annotations

IMAGE_CREATE = "/images/create"
IMAGE_UPDATE = "/images/update"
IMAGE_DELETE = "/images/delete"

CONTENT_CREATE = "/content/create"
CONTENT_DELETE = "/content/delete"

SNAPSHOT_PREPARE = "/snapshots/prepare"
SNAPSHOT_COMMIT = "/snapshots/commit"
SNAPSHOT_REMOVE = "/snapshots/remove"

CONTAINER_CREATE = "/containers/create"
CONTAINER_UPDATE = "/containers/update"
CONTAINER_DELETE = "/containers/delete"

TASK_CREATE = "/tasks/create"
TASK_START = "/tasks/start"
TASK_EXIT = "/tasks/exit"
TASK_DELETE = "/tasks/delete"
TASK_OOM = "/tasks/oom"
TASK_PAUSED = "/tasks/paused"
TASK_RESUMED = "/tasks/resumed"
TASK_EXEC_ADDED = "/tasks/exec-added"
TASK_EXEC_STARTED = "/tasks/exec-started"

LIFECYCLE = (TASK_CREATE, TASK_START, TASK_EXIT, TASK_DELETE)
"""The four task topics every container's journal must hold exactly once each, in this order."""

ALL = (
    IMAGE_CREATE,
    IMAGE_UPDATE,
    IMAGE_DELETE,
    CONTENT_CREATE,
    CONTENT_DELETE,
    SNAPSHOT_PREPARE,
    SNAPSHOT_COMMIT,
    SNAPSHOT_REMOVE,
    CONTAINER_CREATE,
    CONTAINER_UPDATE,
    CONTAINER_DELETE,
    TASK_CREATE,
    TASK_START,
    TASK_EXIT,
    TASK_DELETE,
    TASK_OOM,
    TASK_PAUSED,
    TASK_RESUMED,
    TASK_EXEC_ADDED,
    TASK_EXEC_STARTED,
)
