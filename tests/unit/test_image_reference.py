"""Reference parsing and normalisation (CASES.md C29), as Docker does it."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgument
from services.image import reference as refs

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
        ("localhost/app:1", "localhost/app:1"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost:5000/a/b:t", "localhost:5000/a/b:t"),
        ("myhost/app", "docker.io/myhost/app:latest"),
        ("my.host/app", "my.host/app:latest"),
        (f"myreg:5000/team/app@{DIGEST}", f"myreg:5000/team/app@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        ("localhost:5000", "docker.io/library/localhost:5000"),
        ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
        ("[::1]:5000/busybox", "[::1]:5000/busybox:latest"),
        ("Registry.Example/app", "Registry.Example/app:latest"),
        ("a/b-c__d.e/f---g", "docker.io/a/b-c__d.e/f---g:latest"),
    ],
)
def test_normalises_like_docker(text: str, expected: str) -> None:
    assert str(refs.parse(text)) == expected


def test_digest_reference_gets_no_default_tag() -> None:
    ref = refs.parse(f"myreg:5000/team/app@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("myreg:5000", "team/app", "", DIGEST)


@pytest.mark.parametrize(
    "text",
    [
        "Busybox",
        "docker.io/Library/busybox",
        "busybox:",
        "busybox:-bad",
        ":tag",
        "a//b",
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        "-leading/x",
        "trailing-/x",
        "has space",
        "a" * 64,
        "busybox:" + "t" * 129,
        "",
    ],
)
def test_malformed_is_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        refs.parse(text)


def test_familiar_forms() -> None:
    assert refs.parse("busybox").familiar() == "busybox:latest"
    assert refs.parse("user/app:1").familiar() == "user/app:1"
    assert refs.parse("localhost:5000/app").familiar() == "localhost:5000/app:latest"
    assert refs.familiar("docker.io/library/busybox:latest") == "busybox:latest"


def test_docker_hub_endpoint() -> None:
    assert refs.registry_endpoint_host("docker.io") == "registry-1.docker.io"
    assert refs.registry_endpoint_host("localhost:5000") == "localhost:5000"
