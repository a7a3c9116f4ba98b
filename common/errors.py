"""The closed set of errors every Dockyard process speaks.

Errors are raised as Python exceptions inside a process and cross process
boundaries only as ``{code, message, details}`` (see ``common.rpc.protocol``).
They are translated at the edges only: the RPC server turns an exception into
an error reply, the RPC client raises the same class again, the gateway maps
the class to an HTTP status and the CLI prints ``error: <message>``.

Exception tree::

    DockyardError
    ├── InvalidArgument        bad input from the caller            (HTTP 400)
    ├── NotFound               the named object does not exist      (HTTP 404)
    ├── AlreadyExists          the name is taken                    (HTTP 409)
    ├── Conflict               the object's state forbids the call  (HTTP 409)
    ├── FailedPrecondition     an illegal state transition          (HTTP 409)
    ├── PermissionDenied       not allowed                          (HTTP 403)
    ├── Unauthenticated        credentials missing or refused       (HTTP 401)
    ├── ResourceExhausted      a limit was hit                      (HTTP 429/507)
    ├── Unavailable            a service does not answer            (HTTP 503)
    ├── DeadlineExceeded       the call's deadline passed           (HTTP 504)
    ├── Unimplemented          unsupported call or option           (HTTP 501)
    │                          (wire code ``NotImplemented``)
    └── Internal               a bug or an unexpected failure       (HTTP 500)

Messages name the object they are about, e.g. ``container 'web' not found``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any, ClassVar


class DockyardError(Exception):
    """Base of every Dockyard error; ``code`` is the wire name of the class."""

    code: ClassVar[str] = "Internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        """Return the wire form ``{code, message, details}``."""
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidArgument(DockyardError):
    code = "InvalidArgument"
    http_status = 400


class NotFound(DockyardError):
    code = "NotFound"
    http_status = 404


class AlreadyExists(DockyardError):
    code = "AlreadyExists"
    http_status = 409


class Conflict(DockyardError):
    code = "Conflict"
    http_status = 409


class FailedPrecondition(DockyardError):
    code = "FailedPrecondition"
    http_status = 409


class PermissionDenied(DockyardError):
    code = "PermissionDenied"
    http_status = 403


class Unauthenticated(DockyardError):
    code = "Unauthenticated"
    http_status = 401


class ResourceExhausted(DockyardError):
    code = "ResourceExhausted"
    http_status = 507


class Unavailable(DockyardError):
    code = "Unavailable"
    http_status = 503


class DeadlineExceeded(DockyardError):
    code = "DeadlineExceeded"
    http_status = 504


class Unimplemented(DockyardError):
    """Wire code ``NotImplemented`` (the Python name avoids the builtin constant)."""

    code = "NotImplemented"
    http_status = 501


class Internal(DockyardError):
    code = "Internal"
    http_status = 500


ERROR_CLASSES: dict[str, type[DockyardError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Conflict,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Internal,
    )
}


def from_wire(error: dict[str, Any]) -> DockyardError:
    """Rebuild the exception described by a wire error ``{code, message, details}``.

    An unknown code becomes ``Internal`` so that a newer peer never crashes an older one.
    """
    cls = ERROR_CLASSES.get(str(error.get("code", "")), Internal)
    return cls(str(error.get("message", "unknown error")), dict(error.get("details") or {}))


def wrap_unexpected(exc: BaseException, where: str) -> DockyardError:
    """Turn any exception into a DockyardError without leaking a traceback.

    ``where`` names the operation (``"image.pull"``) so the one-line message says
    what failed; OS errors keep their strerror and file name.
    """
    if isinstance(exc, DockyardError):
        return exc
    if isinstance(exc, OSError):
        fname = f" ({exc.filename})" if exc.filename else ""
        return Internal(f"{where}: {exc.strerror or exc}{fname}")
    return Internal(f"{where}: {type(exc).__name__}: {exc}")
