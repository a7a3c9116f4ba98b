"""``dockyard snapshot ...``: list, measure, inspect and remove snapshots (ctr's ``snapshot``).

- ``ls [-f FILTER]... [-q] [--json]``: ``KEY PARENT KIND`` of the namespace's snapshots;
  filters as containerd's (``kind==committed``, ``parent==<key>``, ``labels.<k>==<v>``,
  ``name~=<regexp>``; repeated ``-f`` are OR-ed, commas within one AND-ed).
- ``usage [KEY]... [-b]``: ``KEY SIZE INODES`` (this snapshot alone, not its parents);
  every snapshot when no key is given; ``-b`` prints sizes in bytes.
- ``info KEY``: the snapshot's metadata as JSON.
- ``rm KEY...``: remove snapshots (refused while a snapshot has children); prints each
  removed key, reports each failure and exits 1 if any failed.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli import output
from cli.connect import client
from common import errors

app = typer.Typer(name="snapshot", help="Manage snapshots (layers and container filesystems).", no_args_is_help=True)


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units, one decimal, as ctr prints them)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@app.command("ls")
def ls(
    filter_: Annotated[list[str], typer.Option("--filter", "-f", help="containerd filter, e.g. kind==committed")] = [],  # noqa: B006
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print keys only")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the snapshots as JSON")] = False,
) -> None:
    """List snapshots: KEY PARENT KIND."""
    with client("snapshot") as c:
        snapshots: list[dict[str, Any]] = c.call("snapshot.list", {"filters": filter_})["snapshots"]
    if as_json:
        output.as_json(snapshots)
    elif quiet:
        for s in snapshots:
            output.line(s["name"])
    else:
        output.table(("KEY", "PARENT", "KIND"), [(s["name"], s["parent"], s["kind"]) for s in snapshots])


@app.command("usage")
def usage(
    keys: Annotated[list[str] | None, typer.Argument(help="snapshots to measure (default: all)")] = None,
    in_bytes: Annotated[bool, typer.Option("--bytes", "-b", help="sizes in bytes")] = False,
) -> None:
    """Disk usage of snapshots: KEY SIZE INODES (each snapshot alone, not its parents)."""
    rows = []
    with client("snapshot", timeout_s=300) as c:
        names = keys or [s["name"] for s in c.call("snapshot.list", {})["snapshots"]]
        for key in names:
            u = c.call("snapshot.usage", {"key": key})
            rows.append((key, str(u["size"]) if in_bytes else human_size(u["size"]), u["inodes"]))
    output.table(("KEY", "SIZE", "INODES"), rows)


@app.command("info")
def info(key: Annotated[str, typer.Argument(help="snapshot key or name")]) -> None:
    """Print a snapshot's metadata (name, parent, kind, times, labels) as JSON."""
    with client("snapshot") as c:
        output.as_json(c.call("snapshot.stat", {"key": key}))


@app.command("rm")
def rm(keys: Annotated[list[str], typer.Argument(help="snapshots to remove")]) -> None:
    """Remove snapshots (a snapshot with children is refused)."""
    failed = False
    with client("snapshot") as c:
        for key in keys:
            try:
                c.call("snapshot.remove", {"key": key})
            except errors.DockyardError as exc:
                if isinstance(exc, (errors.Unavailable, errors.DeadlineExceeded)):
                    raise
                failed = True
                output.warn(output.error_text(exc))
                continue
            output.line(key)
    if failed:
        raise SystemExit(1)


def register(root: typer.Typer) -> None:
    """Add ``dockyard snapshot ...`` to the root app."""
    root.add_typer(app, name="snapshot")
