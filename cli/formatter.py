"""docker's ``--format`` for ``ps``, ``images`` and ``inspect`` (docker/cli ``cli/command/formatter``).

A list command's format is ``table`` (the default columns), ``json`` (``{{json .}}``,
one object per line), ``table TEMPLATE`` (a header row from the fields' column names,
cells aligned as Go's ``tabwriter`` with minimum width 10 and padding 3), or any other
template (one rendering per row). As docker does, the literal two characters ``\\t``
and ``\\n`` in a list command's format become a tab and a newline. Rows are
``GoStruct`` contexts with docker's field names and values (``ContainerContext``,
``imageContext``); ``inspect`` renders docker's inspect JSON (as ``dockyard inspect``
prints it) with a missing key an error, as docker's fallback to the raw JSON does.

Errors are ``FormatError`` with docker's one-line message (``failed to parse
template: template: :1: function "foo" not defined``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cli import template
from cli.template import GoStruct, NilMap, NilSlice, StrMap
from common import dockerfmt

CONTAINER_TABLE = "table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.RunningFor}}\\t{{.Status}}\\t{{.Ports}}\\t{{.Names}}"
IMAGE_TABLE = "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}"
IMAGE_TABLE_DIGEST = "table {{.Repository}}\\t{{.Tag}}\\t{{.Digest}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}"

CONTAINER_HEADERS = {
    "ID": "CONTAINER ID",
    "Names": "NAMES",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "LocalVolumes": "LOCAL VOLUMES",
    "Networks": "NETWORKS",
    "Platform": "PLATFORM",
}
IMAGE_HEADERS = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Containers": "CONTAINERS",
    "VirtualSize": "VIRTUAL SIZE",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}


class FormatError(Exception):
    """A ``--format`` that does not parse or fails on a row; ``str()`` is the line to print."""


# -- list commands ----------------------------------------------------------------------------------------------


def list_format(fmt: str, table_default: str) -> str:
    """docker's ``New*Format``: ``table`` is the default table, ``json`` is ``{{json .}}``."""
    if fmt == "table":
        return table_default
    if fmt == "json":
        return "{{json .}}"
    return fmt


def render_list(
    fmt: str,
    rows: Iterable[GoStruct],
    headers: Mapping[str, str],
    *,
    parse_prefix: str = "failed to parse template",
    exec_prefix: str = "failed to execute template",
) -> str:
    """Render ``rows`` with the (normalised, see ``list_format``) format ``fmt``: docker's
    ``formatter.Context.Write``. Returns the text to print (each row ends with a newline).
    Raises ``FormatError``; nothing is printed for a format that fails on any row."""
    is_table = fmt.startswith("table")
    text = fmt[len("table") :] if is_table else fmt
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    try:
        tmpl = template.parse(text)
    except template.TemplateError as exc:
        raise FormatError(f"{parse_prefix}: {exc}") from None
    body: list[str] = []
    for row in rows:
        try:
            body.append(tmpl.execute(row))
        except template.TemplateError as exc:
            raise FormatError(f"{exec_prefix}: {exc}") from None
        body.append("\n")
    if not is_table:
        return "".join(body)
    header: list[str] = []
    try:  # docker ignores a header that fails: what was written so far is the header
        tmpl.with_funcs(template.HEADER_FUNCS).execute(header_context(headers), out=header)
    except template.TemplateError:
        pass
    return tabwrite("".join(header) + "\n" + "".join(body))


def header_context(headers: Mapping[str, str]) -> GoStruct:
    """The data a table's header row is rendered with: column names, and ``Label`` giving
    the label's last dotted part with ``-``/``_`` as spaces (docker's ``HeaderContext``)."""

    def label(name: str) -> str:
        return name.split(".")[-1].replace("-", " ").replace("_", " ")

    return GoStruct("*formatter.HeaderContext", {**headers, "Label": template.method_with_args(label)})


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Go's ``text/tabwriter`` (padchar ' ', no flags): tab-terminated cells aligned in
    column blocks; the last cell of a line is not part of a column."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write_lines(line0: int, line1: int) -> None:
        for i in range(line0, line1):
            for j, cell in enumerate(lines[i]):
                out.append(cell.ljust(widths[j]) if j < len(widths) else cell)
            if i + 1 < len(lines):
                out.append("\n")

    def format_block(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            format_block(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    format_block(0, len(lines))
    return "".join(out)


def _go_time(unix: int) -> str:
    """``time.Unix(unix, 0).String()`` in the local zone: ``2024-01-01 00:00:00 +0000 UTC``."""
    when = dt.datetime.fromtimestamp(unix).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S %z ") + (when.tzname() or "")


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def container_context(c: Mapping[str, Any], now: dt.datetime, *, trunc: bool = True, size: str = "0B") -> GoStruct:
    """docker's ``ContainerContext`` of a container (the ``execution.list`` JSON); ``size``: its
    ``.Size`` text (``cli.runner.size_text``), ``0B`` as the docker CLI shows unless sizes were asked."""
    s = dockerfmt.container_summary(c, now)
    labels: dict[str, str] = s.get("Labels") or {}
    image = s["Image"]
    if trunc:
        if "@" in image:
            image = image.split("@", 1)[0]
        elif image.startswith("sha256:"):
            image = image[7:19]
    command = _ellipsis(s["Command"], 20) if trunc else s["Command"]
    mounts = []
    for m in s.get("Mounts") or []:
        name = m.get("Name") or m.get("Source") or ""
        mounts.append(_ellipsis(name, 15) if trunc else name)
    networks = (s.get("NetworkSettings") or {}).get("Networks") or {}
    created = int(s["Created"])

    def label(name: str) -> str:
        return labels.get(name, "")

    return GoStruct(
        "*formatter.ContainerContext",
        {
            "ID": s["Id"][:12] if trunc else s["Id"],
            "Names": ",".join(n.lstrip("/") for n in s["Names"]),
            "Image": image,
            "Command": template.go_quote(command),
            "CreatedAt": _go_time(created),
            "RunningFor": dockerfmt.human_duration(now.timestamp() - created) + " ago",
            "Ports": "",
            "State": s["State"],
            "Status": s["Status"],
            "Size": size,
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "Label": template.method_with_args(label),
            "Mounts": ",".join(mounts),
            "LocalVolumes": str(sum(1 for m in s.get("Mounts") or [] if m.get("Driver") == "local")),
            "Networks": ",".join(sorted(networks)),
            "Platform": None,
        },
    )


def image_context(
    repo: str, tag: str, digest: str, image_id: str, created: Any, size: int, now: dt.datetime
) -> GoStruct:
    """docker's ``imageContext`` of one row of ``images`` (a repository:tag of an image)."""
    unix = dockerfmt.unix_seconds(created)
    return GoStruct(
        "*formatter.imageContext",
        {
            "ID": image_id,
            "Repository": repo,
            "Tag": tag,
            "Digest": digest,
            "CreatedSince": dockerfmt.human_duration(now.timestamp() - unix) + " ago",
            "CreatedAt": _go_time(unix),
            "Size": human_size(size),
            "Containers": "N/A",
            "VirtualSize": human_size(size),
            "SharedSize": "N/A",
            "UniqueSize": "N/A",
        },
    )


def human_size(size: int) -> str:
    """go-units ``HumanSizeWithPrecision(size, 3)``: ``2.14MB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{size}B"


# -- inspect ------------------------------------------------------------------------------------------------------

_SLICE_FIELDS = frozenset(
    [
        "Args",
        "Cmd",
        "Entrypoint",
        "Env",
        "CapAdd",
        "CapDrop",
        "SecurityOpt",
        "ExecIDs",
        "OnBuild",
        "RepoTags",
        "RepoDigests",
        "Layers",
        "Mounts",
        "Binds",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "GroupAdd",
        "Links",
        "VolumesFrom",
        "ConsoleSize",
        "Shell",
    ]
)
_MAP_FIELDS = frozenset(
    ["ExposedPorts", "Volumes", "Networks", "PortBindings", "Tmpfs", "Ports", "Sysctls", "StorageOpt", "DriverOpts"]
)


def inspect_data(obj: Any, key: str = "") -> Any:
    """An inspect JSON value as the template sees docker's typed objects: a null slice
    prints ``[]``, a null map ``map[]``, labels are ``map[string]string``."""
    if key == "Labels" and (obj is None or isinstance(obj, dict)):
        return StrMap({str(k): str(v) for k, v in (obj or {}).items()})
    if obj is None:
        return NilSlice() if key in _SLICE_FIELDS else NilMap() if key in _MAP_FIELDS else None
    if isinstance(obj, dict):
        return {k: inspect_data(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [inspect_data(v) for v in obj]
    return obj


def inspect_renderer(fmt: str) -> Callable[[Any], str]:
    """``docker inspect -f``: parse ``fmt`` now (``FormatError`` if it does not), and return
    the function rendering one object (its line, newline included; ``FormatError``)."""
    try:
        tmpl = template.parse(fmt)
    except template.TemplateError as exc:
        raise FormatError(f"template parsing error: {exc}") from None

    def render(obj: Any) -> str:
        try:
            return tmpl.execute(inspect_data(obj), missing_key="error") + "\n"
        except template.TemplateError as exc:
            raise FormatError(f"template parsing error: {exc}") from None

    return render
