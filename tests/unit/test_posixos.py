"""common.posixos: the CLI hot path's ``os`` without importing ``os``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from common import posixos
from tests.harness import PROJECT


@pytest.mark.parametrize(
    "parts",
    [
        ("/run/dockyard", "execution.sock"),
        ("/run/dockyard/", "s", "abc"),
        ("rel", "a", "b"),
        ("", "a"),
        ("/a", "/b", "c"),
        ("/a", "", "c"),
        ("/a", "b/", "c"),
        ("a",),
        ("/",),
    ],
)
def test_join_is_os_path_join(parts: tuple[str, ...]) -> None:
    assert posixos.join(*parts) == os.path.join(*parts)


@pytest.mark.parametrize("path", ["/usr/bin/runc", "runc", "/a/b/", "", "/"])
def test_basename_is_os_path_basename(path: str) -> None:
    assert posixos.basename(path) == os.path.basename(path)


def test_environ_is_os_environ_once_os_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_POSIXOS_TEST", "set at run time")
    assert posixos.environ() is os.environ
    assert posixos.environ()["DOCKYARD_POSIXOS_TEST"] == "set at run time"


def test_environ_without_os_decodes_as_os_environ_does() -> None:
    """In a ``python -S`` process that never imports ``os``: the same names and values,
    undecodable bytes kept as surrogates, and ``os`` still not imported afterwards."""
    code = (
        "import sys\n"
        f"sys.path[0:0] = [{str(PROJECT)!r}]\n"
        "from common import posixos\n"
        "env = posixos.environ()\n"
        "print(repr(sorted(env.items())), 'os' in sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "DOCKYARD_A": "é ü", "DOCKYARD_B": ""}
    env_bytes = {k.encode(): v.encode() for k, v in env.items()}
    env_bytes[b"DOCKYARD_RAW"] = b"\xff\xfe"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env_bytes, capture_output=True, timeout=60, check=True, cwd="/"
    )
    items, os_loaded = proc.stdout.decode().rsplit(" ", 1)
    got = dict(ast.literal_eval(items))
    assert os_loaded.strip() == "False"
    for name, value in env.items():
        assert got[name] == value
    assert got["DOCKYARD_RAW"] == os.fsdecode(b"\xff\xfe")
