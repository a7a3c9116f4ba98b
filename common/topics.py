"""Event topic names, ``/<resource>/<verb>`` (DESIGN.md, containerd's topics).

Order per task is part of the API: create -> start -> exit -> delete; for an
exec: exec-added -> exec-started -> exit (with its exec id). Use these
constants, never string literals.

Most topics are containerd's. Dockyard adds a few of its own for what Docker
reports and containerd has no event for (``DOCKYARD_OWN``); payloads:

- ``/tasks/kill`` ``{container_id, signal (number), container_name, image}``: the shim
  delivered ``signal`` to the task's init at a client's request (kill, stop, rm -f); Docker's
  ``kill`` (``signal`` attribute). Journaled before the task's ``/tasks/exit``.
- ``/containers/stop`` ``{id, name, image}``: a stop request ended with the task stopped
  (after its ``/tasks/exit``); Docker's ``stop``.
- ``/containers/restart`` ``{id, name, image}``: a restart request started the task again
  (after its ``/tasks/start``); Docker's ``restart``.
- ``/containers/attach`` ``{id, name, image}``: a client attached to the container's stdio
  (``docker attach``, a foreground ``run``); Docker's ``attach``.
- ``/containers/resize`` ``{id, name, image, height, width}``: the task's terminal was
  resized; Docker's ``resize``.
- ``/containers/export`` ``{id, name, image}``: the container's filesystem was exported;
  Docker's ``export``.
- ``/containers/top`` ``{id, name, image}``: its processes were listed; Docker's ``top``.

``/containers/update`` may name a Docker action in ``action`` (``rename`` with ``old_name``,
``commit`` with ``comment``/``image_id``/``image_ref``); ``/images/*`` likewise (pull, load ...).
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
TASK_KILL = "/tasks/kill"

CONTAINER_STOP = "/containers/stop"
CONTAINER_RESTART = "/containers/restart"
CONTAINER_ATTACH = "/containers/attach"
CONTAINER_RESIZE = "/containers/resize"
CONTAINER_EXPORT = "/containers/export"
CONTAINER_TOP = "/containers/top"

DOCKYARD_OWN = (
    TASK_KILL,
    CONTAINER_STOP,
    CONTAINER_RESTART,
    CONTAINER_ATTACH,
    CONTAINER_RESIZE,
    CONTAINER_EXPORT,
    CONTAINER_TOP,
)
"""Dockyard's own topics (Docker actions containerd has no event for); see the module docstring."""

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
    *DOCKYARD_OWN,
)
