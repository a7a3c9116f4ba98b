"""Image commands: ``pull``, ``push``, ``images``, ``rmi``, ``tag``, ``load``, ``save``, ``import``,
``history``, ``login``, ``logout`` and the ``image`` sub-app (``ls``, ``pull``, ``push``, ``rm``,
``inspect``, ``tag``, ``load``, ``save``, ``import``, ``history``, ``prune``, ``gc``).

Everything goes to the image service (``common/api/image.py``); output mimics the docker CLI.
``pull_image`` is public so other commands (``run``) can pull with the same progress display.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

import typer

from cli import files, output
from cli.connect import client

_CHUNK = 1024 * 1024
_NONE = "<none>"

image_app = typer.Typer(help="Manage images.", no_args_is_help=True)


# -- formatting --------------------------------------------------------------------------------------
def human_size(size: int) -> str:
    """Docker's sizes: decimal units, 3 significant digits (``4.26MB``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            text = f"{value:.3g}"
            return f"{text}{unit}"
        value /= 1000
    return f"{size}B"


def human_ago(when: str | dt.datetime | None) -> str:
    """``2 days ago`` / ``About a minute ago`` like docker."""
    if when is None or when == "":
        return "N/A"
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            return str(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = (dt.datetime.now(dt.UTC) - when).total_seconds()
    if seconds < 1:
        return "Less than a second ago"
    if seconds < 60:
        return f"{int(seconds)} seconds ago"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute ago"
    if minutes < 60:
        return f"{int(minutes)} minutes ago"
    hours = minutes / 60
    if hours < 2:
        return "About an hour ago"
    if hours < 48:
        return f"{int(hours)} hours ago"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days ago"
    if days < 60:
        return f"{int(days / 7)} weeks ago"
    if days < 730:
        return f"{int(days / 30)} months ago"
    return f"{int(days / 365)} years ago"


def _short(image_id: str, no_trunc: bool = False) -> str:
    return image_id if no_trunc else image_id.split(":", 1)[-1][:12]


def _parse_filters(values: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            output.fail(f"invalid filter {item!r}: expected key=value")
        out.setdefault(key, []).append(value)
    return out


# -- pull / push -------------------------------------------------------------------------------------
def _names_a_version(ref: str) -> bool:
    """True when ``ref`` carries a tag or a digest (``repo:tag``, ``repo@sha256:..``)."""
    return "@" in ref or ":" in ref.rpartition("/")[2]


def pull_image(ref: str, platform: str | None = None, quiet: bool = False, all_tags: bool = False) -> dict[str, Any]:
    """Pull ``ref`` with per-layer progress; return the ``PullResult`` dict. Raises DockyardError.
    ``all_tags``: every tag of the repository ``ref`` (which names no tag), as ``docker pull -a``."""
    body: dict[str, Any] = {"ref": ref}
    if platform:
        body["platform"] = platform
    if all_tags:
        body["all_tags"] = True
    result: dict[str, Any] = {}
    c = client("image", timeout_s=None)
    try:
        with output.LayerProgress() as progress:
            for frame in c.stream("image.pull", body):
                if frame.get("status") == "done":
                    result = frame.get("result") or {}
                    continue
                if not quiet:
                    progress.update(frame)
            if result and not quiet:
                progress.message(f"Status: {result.get('status', '')}")
    finally:
        c.close()
    return result


def pull(
    ref: Annotated[str, typer.Argument(help="image reference, e.g. busybox or 127.0.0.1:5000/app:1")],
    platform: Annotated[str | None, typer.Option(help="os/arch or os/arch/variant, e.g. linux/arm64/v8")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the reference")] = False,
    all_tags: Annotated[
        bool, typer.Option("--all-tags", "-a", help="download every tagged image of the repository")
    ] = False,
) -> None:
    """Pull an image (or, with -a, every tag of a repository) from a registry."""
    if all_tags and _names_a_version(ref):
        output.fail("tag can't be used with --all-tags/-a")
    if not all_tags and not _names_a_version(ref) and not quiet:
        output.line("Using default tag: latest")
    result = pull_image(ref, platform, quiet, all_tags)
    output.line(str(result.get("name", ref)))  # the canonical name, as docker prints it last


def push(
    ref: Annotated[str, typer.Argument(help="local image name to push")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Push an image to its registry."""
    c = client("image", timeout_s=None)
    result: dict[str, Any] = {}
    try:
        with output.LayerProgress() as progress:
            for frame in c.stream("image.push", {"ref": ref}):
                if frame.get("status") == "done":
                    result = frame.get("result") or {}
                elif not quiet:
                    progress.update(frame)
    finally:
        c.close()
    if result:
        output.line(f"{result.get('tag', '')}: digest: {result.get('digest', '')} size: {result.get('size', 0)}")


# -- list / inspect / history -------------------------------------------------------------------------
def images(
    repository: Annotated[str | None, typer.Argument(help="only this repository (pattern)")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="show all images")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only image ids")] = False,
    filter_: Annotated[list[str] | None, typer.Option("--filter", "-f", help="reference=, dangling=, label=")] = None,
    digests: Annotated[bool, typer.Option("--digests", help="show digests")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="full image ids")] = False,
    format_: Annotated[
        str | None, typer.Option("--format", help="table, json, 'table TEMPLATE' or a Go template: '{{.ID}}'")
    ] = None,
) -> None:
    """List images."""
    filters = _parse_filters(filter_)
    if repository:
        filters.setdefault("reference", []).append(repository)
    with client("image") as c:
        reply = c.call("image.list", {"filters": filters, "all": all_})
    items = reply.get("images", [])
    if quiet and (not format_ or format_ == "table"):
        seen: list[str] = []
        for img in items:
            short = _short(img["id"], no_trunc)
            if short not in seen:
                seen.append(short)
        for s in seen:
            output.line(s)
        return
    rows = []
    for img in items:
        tag_list = img.get("repo_tags") or []
        repo, tag = tag_list[0].rsplit(":", 1) if tag_list else (_NONE, _NONE)
        digest = _NONE
        for d in img.get("repo_digests") or []:
            if repo == _NONE or d.startswith(repo + "@"):
                digest = d.split("@", 1)[1]
                if repo == _NONE:
                    repo = d.split("@", 1)[0]
                break
        rows.append((repo, tag, digest, _short(img["id"], no_trunc), img.get("created"), img.get("size", 0)))
    rows.sort(key=lambda r: str(r[4] or ""), reverse=True)
    if format_ and not (format_ == "table" and quiet):  # docker: a format other than "table" wins over -q
        _images_format(format_, rows, digests)
        return
    if digests:
        output.table(
            ("REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"),
            [(r[0], r[1], r[2], r[3], human_ago(r[4]), human_size(r[5])) for r in rows],
        )
    else:
        output.table(
            ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"),
            [(r[0], r[1], r[3], human_ago(r[4]), human_size(r[5])) for r in rows],
        )


def _images_format(fmt: str, rows: list[tuple[Any, ...]], digests: bool) -> None:
    """``images --format`` (``cli.formatter``): rows are (repository, tag, digest, id, created, size)."""
    from cli import formatter

    now = dt.datetime.now(dt.UTC)
    contexts = [formatter.image_context(r[0], r[1], r[2], r[3], r[4], r[5], now) for r in rows]
    default = formatter.IMAGE_TABLE_DIGEST if digests else formatter.IMAGE_TABLE
    try:
        text = formatter.render_list(
            formatter.list_format(fmt, default),
            contexts,
            formatter.IMAGE_HEADERS,
            parse_prefix="template parsing error",
            exec_prefix="template parsing error",
        )
    except formatter.FormatError as exc:
        output.fail(str(exc))
    output.text(text)


def _docker_inspect(info: dict[str, Any]) -> dict[str, Any]:
    """An image in the shape ``docker image inspect`` prints: the gateway's own."""
    from common import dockerfmt

    return dockerfmt.image_inspect(info)


def inspect(
    refs: Annotated[list[str], typer.Argument(help="image names or ids")],
    format_: Annotated[
        str | None, typer.Option("--format", "-f", help="Go template ('{{.Id}}'), or 'raw' for our own field names")
    ] = None,
) -> None:
    """Show details of images (docker's JSON shape), or each rendered with a Go template."""
    from common import errors

    render = None
    if format_ and format_ != "raw":
        from cli import formatter

        try:
            render = formatter.inspect_renderer(format_)
        except formatter.FormatError as exc:
            output.fail(str(exc))
    found = []
    failed = None
    with client("image") as c:
        for ref in refs:
            try:
                info = c.call("image.get", {"ref": ref})
            except errors.DockyardError as exc:  # report each missing one, like docker
                failed = exc
                continue
            found.append(info if format_ == "raw" else _docker_inspect(info))
    if render is not None:
        from cli import formatter

        for obj in found:
            try:
                output.text(render(obj))
            except formatter.FormatError as exc:
                output.fail(str(exc))
    else:
        output.as_json(found)
    if failed is not None:
        output.fail(failed)


def history(
    ref: Annotated[str, typer.Argument(help="image name or id")],
    no_trunc: Annotated[bool, typer.Option("--no-trunc")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Show the history of an image."""
    with client("image") as c:
        reply = c.call("image.history", {"ref": ref})
    entries = reply.get("history", [])
    if quiet:
        for e in entries:
            output.line(_short(e["id"], no_trunc) if e["id"] != "<missing>" else "<missing>")
        return
    rows = []
    for e in entries:
        created_by = e.get("created_by", "")
        if not no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        image_id = e["id"] if e["id"] == "<missing>" else _short(e["id"], no_trunc)
        rows.append(
            (image_id, human_ago(e.get("created")), created_by, human_size(e.get("size", 0)), e.get("comment", ""))
        )
    output.table(("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"), rows)


# -- tag / rmi / prune / gc ---------------------------------------------------------------------------
def tag(
    source: Annotated[str, typer.Argument(help="SOURCE_IMAGE[:TAG] or id")],
    target: Annotated[str, typer.Argument(help="TARGET_IMAGE[:TAG]")],
) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    with client("image") as c:
        c.call("image.tag", {"source": source, "target": target})


def rmi(
    refs: Annotated[list[str], typer.Argument(help="image names or ids")],
    force: Annotated[bool, typer.Option("--force", "-f", help="force removal")] = False,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="keep unreferenced content")] = False,
) -> None:
    """Remove images (untag a name; delete the image with its last name)."""
    from common import errors

    failed: errors.DockyardError | None = None
    with client("image", timeout_s=120) as c:
        for ref in refs:
            try:
                reply = c.call("image.remove", {"ref": ref, "force": force, "prune": not no_prune})
            except errors.DockyardError as exc:
                if len(refs) > 1:
                    output.warn(output.error_text(exc))
                failed = exc
                continue
            for name in reply.get("untagged", []):
                output.line(f"Untagged: {name}")
            for image_id in reply.get("deleted", []):
                output.line(f"Deleted: {image_id}")
    if failed is not None:
        output.fail(failed)


def prune(
    all_: Annotated[bool, typer.Option("--all", "-a", help="remove all unused images, not just dangling ones")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="do not prompt")] = False,
    filter_: Annotated[list[str] | None, typer.Option("--filter", help="until=, label=")] = None,
) -> None:
    """Remove unused images and the content and snapshots only they used."""
    if not force and sys.stdin.isatty():
        what = "all images without at least one container associated to them" if all_ else "all dangling images"
        answer = typer.prompt(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N]",
            default="N",
            show_default=False,
        )
        if answer.strip().lower() not in ("y", "yes"):
            return
    with client("image", timeout_s=300) as c:
        reply = c.call("image.prune", {"all": all_, "filters": _parse_filters(filter_)})
    if reply.get("untagged") or reply.get("deleted"):
        output.line("Deleted Images:")
        for name in reply.get("untagged", []):
            output.line(f"untagged: {name}")
        for image_id in reply.get("deleted", []):
            output.line(f"deleted: {image_id}")
        output.line()
    output.line(f"Total reclaimed space: {human_size(int(reply.get('space_reclaimed', 0)))}")


def gc_command() -> None:
    """Remove blobs, ingests and snapshots that no image or lease references."""
    with client("image", timeout_s=300) as c:
        reply = c.call("image.gc", {})
    output.line(
        f"removed {reply.get('blobs_removed', 0)} blobs ({human_size(int(reply.get('bytes_removed', 0)))}), "
        f"{reply.get('snapshots_removed', 0)} snapshots, {reply.get('ingests_removed', 0)} ingests"
    )


# -- load / import / save ------------------------------------------------------------------------------
def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            return
        yield chunk


def _send_stream(method: str, body: dict[str, Any], f: BinaryIO) -> Iterator[dict[str, Any]]:
    c = client("image", timeout_s=None)
    try:
        call = c.start(method, body, timeout_s=None)
        for chunk in _chunks(f):
            call.send(chunk)
        call.send_eof()
        yield from call
    finally:
        c.close()


def load(
    input_: Annotated[str | None, typer.Option("--input", "-i", help="tar archive (default: stdin)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Load images from a docker-archive or OCI layout tar (as written by docker save / skopeo)."""
    f = files.open_input(input_)
    try:
        with output.LayerProgress() as progress:
            for frame in _send_stream("image.load", {"quiet": quiet}, f):
                status = frame.get("status")
                if status == "message":
                    progress.message(str(frame.get("message", "")))
                elif status != "done" and not quiet and status != "Loading layer":
                    progress.update(frame)
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def import_(
    source: Annotated[str, typer.Argument(help="rootfs tar file (plain, gzip or zstd), or - for stdin")],
    reference: Annotated[str | None, typer.Argument(help="REPOSITORY[:TAG] for the new image")] = None,
    change: Annotated[list[str] | None, typer.Option("--change", "-c", help="Dockerfile instruction")] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="commit message")] = "",
    platform: Annotated[str | None, typer.Option(help="os/arch or os/arch/variant of the image")] = None,
) -> None:
    """Create an image from a rootfs tarball (like docker import); prints the image id."""
    f = files.open_input(source)
    body: dict[str, Any] = {"ref": reference or "", "changes": change or [], "message": message}
    if platform:
        body["platform"] = platform
    result: dict[str, Any] = {}
    try:
        for frame in _send_stream("image.import", body, f):
            if frame.get("status") == "done":
                result = frame.get("result") or {}
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    output.line(str(result.get("id", "")))


def save(
    refs: Annotated[list[str], typer.Argument(help="images to save")],
    output_: Annotated[str | None, typer.Option("--output", "-o", help="write to this file (default: stdout)")] = None,
    format_: Annotated[str, typer.Option("--format", help="docker (docker-archive + OCI layout) or oci")] = "docker",
    platform: Annotated[str | None, typer.Option(help="os/arch or os/arch/variant, e.g. linux/arm64/v8")] = None,
) -> None:
    """Save images to a tar archive (docker-archive that is also an OCI layout, or OCI only)."""
    if output_ is None and sys.stdout.isatty():
        output.fail("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    body: dict[str, Any] = {"refs": refs, "format": format_}
    if platform:
        body["platform"] = platform
    if output_ is None:
        _save_to(sys.stdout.buffer, body)
        return
    with files.atomic_output(output_) as sink:
        _save_to(sink, body)


def _save_to(sink: BinaryIO, body: dict[str, Any]) -> None:
    c = client("image", timeout_s=None)
    try:
        for chunk in c.stream("image.save", body):
            sink.write(chunk)
        sink.flush()
    finally:
        c.close()


# -- login / logout ---------------------------------------------------------------------------------
def login(
    server: Annotated[str, typer.Argument(help="registry host[:port] (default docker.io)")] = "docker.io",
    username: Annotated[str | None, typer.Option("--username", "-u")] = None,
    password: Annotated[str | None, typer.Option("--password", "-p")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Log in to a registry: the image service checks and stores the credentials (config.json)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if not username:
        username = typer.prompt("Username")
    if not password:
        password = typer.prompt("Password", hide_input=True)
    with client("image", timeout_s=60) as c:
        reply = c.call("image.login", {"registry": server, "username": username, "password": password})
    output.line(str(reply.get("status", "Login Succeeded")))


def logout(server: Annotated[str, typer.Argument(help="registry host[:port]")] = "docker.io") -> None:
    """Log out from a registry (forget its stored credentials)."""
    with client("image") as c:
        reply = c.call("image.logout", {"registry": server})
    output.line(f"Removing login credentials for {reply.get('registry', server)}")


def register(app: typer.Typer) -> None:
    """Add the image commands to ``app`` (top-level verbs and the ``image`` sub-app)."""
    app.command("pull")(pull)
    app.command("push")(push)
    app.command("images")(images)
    app.command("rmi")(rmi)
    app.command("tag")(tag)
    app.command("load")(load)
    app.command("save")(save)
    app.command("import")(import_)
    app.command("history")(history)
    app.command("login")(login)
    app.command("logout")(logout)
    image_app.command("ls")(images)
    image_app.command("list", hidden=True)(images)
    image_app.command("pull")(pull)
    image_app.command("push")(push)
    image_app.command("rm")(rmi)
    image_app.command("inspect")(inspect)
    image_app.command("tag")(tag)
    image_app.command("load")(load)
    image_app.command("save")(save)
    image_app.command("import")(import_)
    image_app.command("history")(history)
    image_app.command("prune")(prune)
    image_app.command("gc")(gc_command)
    app.add_typer(image_app, name="image")
