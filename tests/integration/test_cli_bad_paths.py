"""Regression: ``save -o /nonexistent/dir/x.tar`` printed a Python traceback naming our temporary file.

Every CLI command that reads or writes a path the user gave (``save -o``, ``export -o``,
``load -i``, ``import``, ``--env-file``) ends bad input with one line
``error: cannot <read|write> '<the user's path>': <reason>``, no traceback, and leaves no
temporary file behind; a good path still gets the whole archive.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from tests.harness import Instance

_BAD_OUTPUTS = {
    "/nonexistent/dir/x.tar": "No such file or directory",
    "/etc": "Is a directory",
    "/proc/x.tar": "No such file or directory",
}


def _one_error_line(proc: object, expected: str) -> None:
    stderr = proc.stderr.decode()  # type: ignore[attr-defined]
    assert proc.returncode != 0, stderr  # type: ignore[attr-defined]
    assert stderr.splitlines() == [expected], stderr
    assert "Traceback" not in stderr


def _temp_files(*dirs: str) -> list[str]:
    return [f"{d}/{n}" for d in dirs if os.path.isdir(d) for n in os.listdir(d) if ".tmp-" in n or n.endswith(".part")]


def test_bad_paths_end_in_one_line_naming_the_path(dy: Instance, tmp_path: Path) -> None:
    dy.cli("create", "--name", "ex", "busybox", check=True)
    before = _temp_files("/", "/tmp", str(tmp_path))
    for path, reason in _BAD_OUTPUTS.items():
        _one_error_line(dy.cli("save", "-o", path, "busybox"), f"error: cannot write '{path}': {reason}")
        _one_error_line(dy.cli("export", "-o", path, "ex"), f"error: cannot write '{path}': {reason}")
    for path, reason in (("/nonexistent/x.tar", "No such file or directory"), ("/etc", "Is a directory")):
        _one_error_line(dy.cli("load", "-i", path), f"error: cannot read '{path}': {reason}")
        _one_error_line(dy.cli("import", path, "imp:v1"), f"error: cannot read '{path}': {reason}")
        _one_error_line(
            dy.cli("run", "--rm", "--env-file", path, "busybox", "true"),
            f"error: cannot read env file '{path}': {reason}",
        )
    assert _temp_files("/", "/tmp", str(tmp_path)) == before
    assert not os.path.exists("/nonexistent")

    # an existing file is replaced whole; nothing else is left beside it
    target = tmp_path / "x.tar"
    target.write_bytes(b"old")
    dy.cli("save", "-o", str(target), "busybox", check=True)
    with tarfile.open(target) as tar:
        assert "manifest.json" in tar.getnames()
    dy.cli("export", "-o", str(tmp_path / "fs.tar"), "ex", check=True)
    with tarfile.open(tmp_path / "fs.tar") as tar:
        assert "bin/busybox" in [n.lstrip("./") for n in tar.getnames()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs.tar", "x.tar"]

    # a service's error (unknown image) leaves no file and no temporary either
    r = dy.cli("save", "-o", str(tmp_path / "none.tar"), "nosuchimage")
    _one_error_line(r, "error: image 'nosuchimage' not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs.tar", "x.tar"]
