"""Platform selection from an index (CASES.md C12): ARM variants, missing variants, no match."""

from __future__ import annotations

import itertools

import pytest

from common.errors import NotFound
from services.image import oci, platforms


def _entry(n: int, os_: str, arch: str, variant: str = "") -> oci.Descriptor:
    return oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + f"{n:x}" * 64, 100, platform=oci.Platform(os_, arch, variant))


ENTRIES = [
    _entry(1, "linux", "arm", "v5"),
    _entry(2, "linux", "arm", "v7"),
    _entry(3, "linux", "arm64"),
    _entry(4, "linux", "amd64"),
    _entry(5, "windows", "amd64"),
    _entry(6, "unknown", "unknown"),
]


@pytest.mark.parametrize(
    ("want", "expected"),
    [
        ("linux/arm/v6", 1),
        ("linux/arm/v7", 2),
        ("linux/arm64/v8", 3),
        ("linux/arm64", 3),
        ("linux/amd64", 4),
        ("linux/arm/v5", 1),
        ("aarch64", 3),
        ("linux/armhf", 2),
    ],
)
def test_choice_is_independent_of_entry_order(want: str, expected: int) -> None:
    wanted = platforms.parse(want)
    for order in itertools.permutations(ENTRIES):
        chosen = platforms.choose(list(order), wanted)
        assert chosen.digest == ENTRIES[expected - 1].digest


def test_no_match_lists_available_platforms() -> None:
    with pytest.raises(NotFound) as info:
        platforms.choose(ENTRIES, platforms.parse("linux/s390x"))
    message = str(info.value)
    assert "linux/s390x" in message
    for shown in ("linux/amd64", "linux/arm/v7", "linux/arm/v5", "linux/arm64", "windows/amd64"):
        assert shown in message
    assert "unknown" not in message


def test_v6_host_never_takes_v7() -> None:
    with pytest.raises(NotFound):
        platforms.choose([_entry(2, "linux", "arm", "v7")], platforms.parse("linux/arm/v6"))


def test_arm64_entry_without_variant_matches_v8_host() -> None:
    assert (
        platforms.choose([_entry(3, "linux", "arm64", "")], platforms.parse("linux/arm64/v8")).digest
        == ENTRIES[2].digest
    )
    assert (
        platforms.choose([_entry(3, "linux", "arm64", "v8")], platforms.parse("linux/arm64")).digest
        == ENTRIES[2].digest
    )


def test_attestation_entries_are_ignored() -> None:
    att = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "9" * 64, 10, platform=oci.Platform("unknown", "unknown"))
    with pytest.raises(NotFound):
        platforms.choose([att], platforms.parse("linux/amd64"))


def test_normalisation() -> None:
    assert str(platforms.normalize(oci.Platform("linux", "x86_64"))) == "linux/amd64"
    assert str(platforms.normalize(oci.Platform("linux", "aarch64"))) == "linux/arm64/v8"
    assert str(platforms.normalize(oci.Platform("linux", "armel"))) == "linux/arm/v6"
    assert str(platforms.normalize(oci.Platform("linux", "arm"))) == "linux/arm/v7"
    assert platforms.host().os == "linux"


@pytest.mark.parametrize("bad", ["", "linux/", "/amd64", "a/b/c/d"])
def test_bad_platform_strings(bad: str) -> None:
    from common.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        platforms.parse(bad)
