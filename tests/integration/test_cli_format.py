"""``--format`` as docker users write it, found by a user: ``inspect -f`` was an unknown option
and ``ps --format '{{.Names}}'`` (or any format but ``json``) printed the table with exit 0.

One instance (``dockyard up``, busybox loaded) serves the module; where the docker CLI is
installed, the same format through ``docker`` against our gateway must print the same lines.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import need_root
from tests.gateway_util import Engine, engine


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        for args in (["--name", "web", "-l", "a=b", "-l", "c=d", "-v", "/tmp:/mnt"], ["--name", "other"]):
            r = e.inst.cli("run", "-d", *args, "busybox", "sleep", "1000", timeout=60)
            assert r.returncode == 0, r.stderr
        yield e


def dy(eng: Engine, *args: str) -> subprocess.CompletedProcess[bytes]:
    return eng.inst.cli(*args, timeout=60)


def ok(eng: Engine, *args: str) -> str:
    r = dy(eng, *args)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.mark.parametrize(
    "fmt",
    [
        "{{.Names}}",
        "{{.ID}} {{.Image}} {{.Command}} {{.State}} {{.Labels}} {{.Mounts}} {{.Networks}} {{.Size}}",
        'table {{.ID}}\\t{{.Names}}\\t{{.Mounts}}\\t{{.Networks}}\\t{{.Label "a"}}',
        "{{json .Names}} {{upper .Names}}",
        "garbage",
    ],
)
def test_ps_format_same_lines_as_docker(eng: Engine, fmt: str) -> None:
    mine = ok(eng, "ps", "--format", fmt)
    assert mine.strip(), mine
    if eng.cli is None:
        pytest.skip("no docker CLI installed")
    assert mine == eng.ok("ps", "--format", fmt)


def test_ps_format_json_is_docker_shape(eng: Engine) -> None:
    mine = ok(eng, "ps", "--format", "json").splitlines()
    assert len(mine) == 2 and all(line.startswith('{"Command":"\\"sleep 1000\\"","CreatedAt":') for line in mine)
    if eng.cli is not None:  # RunningFor/Status move with the clock: compare the stable fields
        theirs = eng.ok("ps", "--format", "json").splitlines()
        drop = ("RunningFor", "Status", "CreatedAt")
        import json

        assert [{k: v for k, v in json.loads(x).items() if k not in drop} for x in mine] == [
            {k: v for k, v in json.loads(x).items() if k not in drop} for x in theirs
        ]


def test_ps_quiet_wins_over_a_custom_format_with_dockers_warning(eng: Engine) -> None:
    r = dy(eng, "ps", "-q", "--format", "{{.Names}}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == dy(eng, "ps", "-q").stdout
    assert r.stderr == b"WARNING: Ignoring custom format, because both --format and --quiet are set.\n"
    if eng.cli is not None:
        theirs = eng.docker("ps", "-q", "--format", "{{.Names}}")
        assert (theirs.stdout, theirs.stderr) == (r.stdout, r.stderr)


def test_ps_bad_format_fails_with_one_line(eng: Engine) -> None:
    r = dy(eng, "ps", "--format", "{{.Nope}}")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().splitlines() == [
        'error: failed to execute template: template: :1:2: executing "" at <.Nope>: '
        "can't evaluate field Nope in type *formatter.ContainerContext"
    ]
    r = dy(eng, "ps", "--format", "{{foo .ID}}")
    assert r.returncode == 1 and b'function "foo" not defined' in r.stderr, r.stderr


def test_inspect_f_container_image_and_fallback(eng: Engine) -> None:
    fmt = '{{.State.Status}} {{.Name}} {{.Config.Labels}} [{{index .Config.Labels "nokey"}}] {{.Config.Image}}'
    assert ok(eng, "inspect", "-f", fmt, "web") == "running /web map[a:b c:d] [] busybox\n"
    image_id = ok(eng, "inspect", "--format", "{{.Id}}", "busybox").strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert ok(eng, "image", "inspect", "-f", "{{.Id}} {{.Os}}", "busybox") == f"{image_id} linux\n"
    if eng.cli is not None:
        assert ok(eng, "inspect", "-f", fmt, "web") == eng.ok("inspect", "-f", fmt, "web")
        assert image_id == eng.ok("inspect", "-f", "{{.Id}}", "busybox").strip()


def test_inspect_f_errors(eng: Engine) -> None:
    r = dy(eng, "inspect", "-f", "{{.State.Nope}}", "web")
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [
        'error: template parsing error: template: :1:8: executing "" at <.State.Nope>: map has no entry for key "Nope"'
    ]
    r = dy(eng, "inspect", "-f", "{{.Name}}", "web", "nosuch")
    assert r.returncode == 1 and r.stdout == b"/web\n" and b"no such object: nosuch" in r.stderr


def test_images_format(eng: Engine) -> None:
    fmt = "{{.ID}}|{{.Repository}}|{{.Tag}}|{{.Digest}}|{{.Size}}|{{.Containers}}"
    mine = ok(eng, "images", "--format", fmt)
    assert mine.startswith(ok(eng, "images", "-q").splitlines()[0] + "|busybox|latest|"), mine
    table = ok(eng, "images", "--format", "table {{.ID}}\\t{{.Repository}}\\t{{.Tag}}")
    assert table.splitlines()[0].split() == ["IMAGE", "ID", "REPOSITORY", "TAG"]
    assert ok(eng, "images", "--format", "json").startswith('{"Containers":"N/A","CreatedAt":')
    if eng.cli is not None:
        assert mine == eng.ok("images", "--format", fmt)
        assert table == eng.ok("images", "--format", "table {{.ID}}\\t{{.Repository}}\\t{{.Tag}}")
