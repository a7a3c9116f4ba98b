"""``common.statefs`` without mounting (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import statefs


def test_file_system_types() -> None:
    assert statefs.is_volatile("/dev/shm")
    assert statefs.fs_type("/proc") == 0x9FA0  # PROC_SUPER_MAGIC
    with pytest.raises(OSError, match="statfs /no/such/dir"):
        statefs.fs_type("/no/such/dir")


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, True), ("1", True), ("true", True), ("0", False), ("false", False), ("No", False), (" off ", False)],
)
def test_the_switch(value: str | None, on: bool) -> None:
    env = {} if value is None else {"DOCKYARD_STATE_TMPFS": value}
    assert statefs.enabled(env) is on


def test_a_directory_with_anything_in_it_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "shim.sock").write_text("")
    expected = "volatile" if statefs.is_volatile(str(tmp_path)) else "in use"
    assert statefs.ensure_tmpfs(str(tmp_path)) == expected
    assert statefs.ensure_tmpfs(str(tmp_path / "never"), on=False) == "off"
    assert not (tmp_path / "never").exists()
