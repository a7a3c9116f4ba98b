"""``common.mount``: long overlay option strings are made relative; volatile overlays."""

from __future__ import annotations

from pathlib import Path

from common.mount import (
    PAGE_LIMIT,
    VOLATILE_MARKER,
    clear_volatile_marker,
    compact_options,
    volatile_supported,
    with_volatile,
)


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


def test_volatile_is_for_kernels_from_5_10() -> None:
    assert not volatile_supported("5.4.0-150-generic")
    assert not volatile_supported("4.19.0")
    assert volatile_supported("5.10.0-28-amd64")
    assert volatile_supported("6.1.0-rc3")
    assert not volatile_supported("not-a-release")


def test_only_writable_overlays_become_volatile() -> None:
    rw = {"type": "overlay", "source": "overlay", "options": ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"]}
    ro = {"type": "overlay", "source": "overlay", "options": ["ro", "lowerdir=/a:/b"]}
    bind = {"type": "bind", "source": "/s", "options": ["rw", "rbind"]}
    out = with_volatile([rw, ro, bind])
    assert out[0]["options"] == [*rw["options"], "volatile"]
    assert out[1:] == [ro, bind]
    assert with_volatile(out) == out  # added once
    assert rw["options"][-1] == "lowerdir=/l"  # the input is not changed


def test_the_mark_of_an_earlier_volatile_mount_is_removed_only_for_a_volatile_one(tmp_path: Path) -> None:
    marker = tmp_path / "work" / Path(*VOLATILE_MARKER)
    marker.mkdir(parents=True)
    clear_volatile_marker([f"workdir={tmp_path / 'work'}", "upperdir=/u", "lowerdir=/l"])
    assert marker.is_dir()  # a plain mount: the mark says a volatile one may be in use
    clear_volatile_marker([f"workdir={tmp_path / 'work'}", "upperdir=/u", "lowerdir=/l", "volatile"])
    assert not marker.exists() and marker.parent.is_dir()
    clear_volatile_marker([f"workdir={tmp_path / 'work'}", "volatile"])  # nothing to remove: no error
