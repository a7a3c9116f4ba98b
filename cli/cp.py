"""``dockyard cp``: copy files and directories between a container and the local file system.

docker's forms and copy rules (docker/cli ``cli/command/container/cp.go``, moby
``pkg/archive/copy.go``): ``CONTAINER:PATH LOCALPATH``, ``LOCALPATH CONTAINER:PATH``, and ``-``
for a tar on stdout (from a container) or stdin (into a container's directory). A directory
copied to a path that does not exist becomes that path; to an existing directory it goes
inside it; ``dir/.`` copies the directory's contents; a file onto an existing file replaces
it; a directory onto a file, or a file to ``missing/`` fails. ``-L`` follows a symlink
source, ``-a`` gives the copied files the container user's ids. The container side is the
execution service's ``archive_stat``/``archive_get``/``archive_put``; a local extraction is
contained in the destination directory (``common.fsarchive``), whatever the archive holds.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO

import typer

from cli import output
from cli.connect import client
from common import errors

_CHUNK = 256 * 1024
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
"""Go ``os.FileMode`` bits of a stat (``common.fsarchive``, imported only when a copy runs)."""


class CopyError(Exception):
    """A copy the rules refuse (docker's texts)."""


@dataclass
class CopyInfo:
    """moby's ``archive.CopyInfo``."""

    path: str
    exists: bool = False
    is_dir: bool = False
    rebase_name: str = ""


def split_cp_arg(arg: str) -> tuple[str, str]:
    """docker's ``splitCpArg``: ``(container, path)``; ``""`` container for a local path
    (absolute, ``./x:y``, or no colon)."""
    if arg.startswith("/"):
        return "", arg
    container, sep, path = arg.partition(":")
    if not sep or container.startswith("."):
        return "", arg
    return container, path


def _has_trailing_sep(path: str) -> bool:
    return path.endswith("/")


def _specifies_current_dir(path: str) -> bool:
    return posixpath.basename(path) == "." or path == "."


def preserve_trailing(cleaned: str, original: str) -> str:
    """moby's ``PreserveTrailingDotOrSeparator``."""
    if _specifies_current_dir(original) and not _specifies_current_dir(cleaned):
        cleaned = cleaned.rstrip("/") + "/."
    if _has_trailing_sep(original) and not _has_trailing_sep(cleaned):
        cleaned += "/"
    return cleaned


def split_dir_entry(path: str) -> tuple[str, str]:
    """moby's ``SplitPathDirEntry``: ``/a/b/`` -> ``(/a, b)``, ``/a/b/.`` -> ``(/a/b, .)``."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if _specifies_current_dir(path):
        cleaned = cleaned.rstrip("/") + "/."
    return posixpath.dirname(cleaned) or ".", posixpath.basename(cleaned) or "/"


def go_base(path: str) -> str:
    """Go's ``filepath.Base``: the last element, trailing slashes ignored (``""`` -> ``.``)."""
    if not path:
        return "."
    stripped = path.rstrip("/")
    return posixpath.basename(stripped) if stripped else "/"


def rebase_name_of(path: str, resolved: str) -> tuple[str, str]:
    """moby's ``GetRebaseName``: ``resolved`` with ``path``'s trailing ``/`` or ``/.``, and the
    name the archive's top entry must take when the link changed it (``""``: none)."""
    if _specifies_current_dir(path) and not _specifies_current_dir(resolved):
        resolved += "/."
    if _has_trailing_sep(path) and not _has_trailing_sep(resolved):
        resolved += "/"
    return resolved, (go_base(path) if go_base(path) != go_base(resolved) else "")


def local_abs(path: str) -> str:
    """docker's ``resolveLocalPath``: absolute, the trailing ``/`` or ``/.`` kept."""
    return preserve_trailing(os.path.abspath(path), path)


def local_source(path: str, follow: bool) -> CopyInfo:
    """moby's ``CopyInfoSourcePath``: symlinks in the directory part resolved, the last one
    only with ``follow``. OSError for a missing source."""
    if follow:
        resolved, rebase = rebase_name_of(path, os.path.realpath(path))
    else:
        parent, base = os.path.split(path)
        resolved = os.path.join(os.path.realpath(parent or "."), base)
        rebase = ""
        if _has_trailing_sep(path) and go_base(path) != go_base(resolved):
            rebase = go_base(path)
    st = os.lstat(resolved)
    return CopyInfo(resolved, True, stat.S_ISDIR(st.st_mode), rebase)


def local_destination(path: str) -> CopyInfo:
    """moby's ``CopyInfoDestinationPath``: a final symlink is followed (10 at most); a missing
    destination needs an existing parent directory."""
    original = path
    for _ in range(11):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            parent, _base = split_dir_entry(path)
            pst = os.stat(parent)
            if not stat.S_ISDIR(pst.st_mode):
                raise CopyError("not a directory") from None
            return CopyInfo(path)
        if not stat.S_ISLNK(st.st_mode):
            return CopyInfo(path, True, stat.S_ISDIR(st.st_mode))
        target = os.readlink(path)
        if not target.startswith("/"):
            target = os.path.join(split_dir_entry(path)[0], target)
        path = target
    raise CopyError(f"too many symlinks in {original}")


def prepare_copy(src: CopyInfo, dst: CopyInfo) -> tuple[str, tuple[str, str] | None]:
    """moby's ``PrepareArchiveCopy``: the directory to extract into and the rebase of the
    archive's top entry ``(old, new)`` (None: as it is)."""
    dst_dir, dst_base = split_dir_entry(dst.path)
    _src_dir, src_base = split_dir_entry(src.path)
    old = src.rebase_name or src_base
    if dst.exists and dst.is_dir:
        return dst.path, None
    if dst.exists and src.is_dir:
        raise CopyError("cannot copy directory")
    if dst.exists or src.is_dir:
        return dst_dir, (old, dst_base)
    if _has_trailing_sep(dst.path) or _specifies_current_dir(dst.path):
        raise CopyError("no such directory")
    return dst_dir, (old, dst_base)


class _FrameReader(io.RawIOBase):
    """The bytes frames of a call as a file (``next`` on the iterator per read)."""

    def __init__(self, frames: Iterator[Any]) -> None:
        super().__init__()
        self.frames = frames
        self.buf = memoryview(b"")
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            frame = next(self.frames, None)
            if frame is None:
                return 0
            if isinstance(frame, bytes | bytearray):
                self.buf = memoryview(bytes(frame))
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        self.total += n
        return n


def _container_stat(ex: Any, container: str, path: str) -> dict[str, Any] | None:
    try:
        return dict(ex.call("execution.archive_stat", {"id": container, "path": path}))
    except errors.NotFound as exc:
        if exc.details.get("kind") == "path":
            return None
        raise
    except errors.InvalidArgument:
        return None


def _link_target(path: str, link: str) -> str:
    return link if link.startswith("/") else posixpath.join(split_dir_entry(path)[0], link)


def _copied(size: int, dst: str, quiet: bool) -> None:
    if not quiet and sys.stderr.isatty():
        from cli.images import human_size

        sys.stderr.write(f"Successfully copied {human_size(size)} to {dst}\n")


def copy_from_container(container: str, src: str, dst: str, *, follow: bool, quiet: bool) -> None:
    """``CONTAINER:SRC DST``: the archive of ``src``, to stdout (``-``) or extracted at ``dst``."""
    if dst != "-":
        dst = local_abs(dst)
    ex = client("execution", timeout_s=None)
    try:
        rebase = ""
        if follow:
            st = _container_stat(ex, container, src)
            if st is not None and int(st["mode"]) & GO_MODE_SYMLINK:
                target = _link_target(src, str(st.get("link_target") or ""))
                target, rebase = rebase_name_of(src, target)
                src = target
        if dst == "-" and sys.stdout.isatty():
            output.fail("refusing to write a tar to a terminal: redirect stdout")
        call = ex.start("execution.archive_get", {"id": container, "path": src}, timeout_s=None)
        frames = iter(call)
        first = next(frames, None)
        stat_doc = first.get("stat") if isinstance(first, dict) else None
        if dst == "-":
            for chunk in frames:
                if isinstance(chunk, bytes | bytearray):
                    output.raw(bytes(chunk))
            return
        src_info = CopyInfo(src, True, bool(int((stat_doc or {}).get("mode") or 0) & GO_MODE_DIR), rebase)
        dst_info = local_destination(dst)
        dst_dir, rebase_pair = prepare_copy(src_info, dst_info)
        if rebase_pair is None and rebase:
            rebase_pair = (split_dir_entry(src)[1], rebase)
        from common.fsarchive import ExtractOptions, Scope, extract_tar

        reader = _FrameReader(frames)
        with Scope(dst_dir) as scope:
            options = ExtractOptions(no_overwrite_dir_non_dir=True, no_lchown=True, rebase=_top(rebase_pair))
            extract_tar(scope, "/", reader, options)
        _copied(reader.total, dst, quiet)
    finally:
        ex.close()


def _top(pair: tuple[str, str] | None) -> tuple[str, str] | None:
    """The archive of ``/`` names its entries ``/x``: rebasing its top is rebasing ``""``."""
    if pair is None:
        return None
    old, new = pair
    return ("" if old == "/" else old, new)


def _tar_thread(path: str, arcname: str, wfd: int, failure: list[BaseException]) -> None:
    from common.fsarchive import Scope, write_tar

    try:
        with Scope("/") as scope, os.fdopen(wfd, "wb", buffering=_CHUNK) as out:
            write_tar(scope, path, out, arcname=arcname)
    except BaseException as exc:  # reported by the sending side
        failure.append(exc)


def copy_to_container(src: str, container: str, dst: str, *, follow: bool, copy_uid_gid: bool, quiet: bool) -> None:
    """``SRC CONTAINER:DST``: a local path (or a tar on stdin, ``-``) into the container."""
    if src != "-":
        src = local_abs(src)
    ex = client("execution", timeout_s=None)
    try:
        dst_info = CopyInfo(dst)
        st = _container_stat(ex, container, dst)
        if st is not None and int(st["mode"]) & GO_MODE_SYMLINK:
            dst_info.path = _link_target(dst, str(st.get("link_target") or ""))
            st = _container_stat(ex, container, dst_info.path)
        if st is not None:
            if int(st["mode"]) & GO_MODE_DEVICE:
                raise CopyError(f'destination "{container}:{dst}" must be a directory or a regular file')
            dst_info.exists, dst_info.is_dir = True, bool(int(st["mode"]) & GO_MODE_DIR)
        if src == "-":
            if not dst_info.is_dir:
                raise CopyError(f'destination "{container}:{dst}" must be a directory')
            target_dir, source, arcname = dst_info.path, "", ""
        else:
            from common.fsarchive import base_name

            src_info = local_source(src, follow)
            target_dir, pair = prepare_copy(src_info, dst_info)
            source = src_info.path
            arcname = pair[1] if pair is not None else (src_info.rebase_name or base_name(src_info.path))
        body = {"id": container, "path": target_dir, "no_overwrite_dir_non_dir": True, "copy_uid_gid": copy_uid_gid}
        call = ex.start("execution.archive_put", body, timeout_s=None)
        frames = iter(call)
        next(frames, None)  # {"ready": true}, or the destination's error
        sent = 0
        failure: list[BaseException] = []
        if src == "-":
            stream: BinaryIO = sys.stdin.buffer
            thread = None
        else:
            rfd, wfd = os.pipe()
            stream = os.fdopen(rfd, "rb")
            thread = threading.Thread(target=_tar_thread, args=(source, arcname, wfd, failure), daemon=True)
            thread.start()
        try:
            while chunk := stream.read(_CHUNK):
                call.send(chunk)
                sent += len(chunk)
        finally:
            if thread is not None:
                stream.close()
                thread.join()
        if failure:
            call.cancel()
            raise failure[0]
        call.send_eof()
        for _frame in frames:
            pass
        _copied(sent, f"{container}:{dst}", quiet)
    finally:
        ex.close()


def cp(
    src: Annotated[str, typer.Argument(metavar="SRC", help="CONTAINER:SRC_PATH, a local path, or - (a tar on stdin)")],
    dst: Annotated[
        str, typer.Argument(metavar="DEST", help="CONTAINER:DEST_PATH, a local path, or - (a tar on stdout)")
    ],
    archive: Annotated[
        bool, typer.Option("--archive", "-a", help="Archive mode (copy all uid/gid information)")
    ] = False,
    follow_link: Annotated[
        bool, typer.Option("--follow-link", "-L", help="Always follow symbol link in SRC_PATH")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Suppress progress output during copy")] = False,
) -> None:
    """Copy files/folders between a container and the local filesystem (docker cp)."""
    src_container, src_path = split_cp_arg(src)
    dst_container, dst_path = split_cp_arg(dst)
    try:
        if src_container and dst_container:
            raise CopyError("copying between containers is not supported")
        if not src_container and not dst_container:
            raise CopyError("must specify at least one container source")
        if not src_path:
            raise CopyError("source can not be empty")
        if not dst_path:
            raise CopyError("destination can not be empty")
        if src_container:
            copy_from_container(src_container, src_path, dst_path, follow=follow_link, quiet=quiet)
        else:
            copy_to_container(src_path, dst_container, dst_path, follow=follow_link, copy_uid_gid=archive, quiet=quiet)
    except CopyError as exc:
        output.fail(str(exc))
    except errors.DockyardError as exc:
        output.fail(exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        output.fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # common.fsarchive.ArchiveError: what the archive or the rules refuse
        if type(exc).__module__ != "common.fsarchive":
            raise
        output.fail(str(exc))
