"""``common.mount.compact_options``: long overlay option strings are made relative."""

from __future__ import annotations

from common.mount import PAGE_LIMIT, compact_options


def test_short_options_are_left_alone() -> None:
    opts = ["index=off", "workdir=/r/snapshots/2/work", "upperdir=/r/snapshots/2/fs", "lowerdir=/r/snapshots/1/fs"]
    assert compact_options(opts) == (None, opts)


def test_long_lowerdir_chains_become_relative_to_their_common_parent() -> None:
    root = "/var/lib/dockyard/snapshot/snapshots"
    lowers = ":".join(f"{root}/{i}/fs" for i in range(200, 80, -1))
    opts = ["index=off", f"workdir={root}/201/work", f"upperdir={root}/201/fs", f"lowerdir={lowers}"]
    assert len(",".join(opts)) > PAGE_LIMIT
    cwd, short = compact_options(opts)
    assert cwd == root
    assert short[:3] == ["index=off", "workdir=201/work", "upperdir=201/fs"]
    assert short[3] == "lowerdir=" + ":".join(f"{i}/fs" for i in range(200, 80, -1))
    assert len(",".join(short)) < PAGE_LIMIT
