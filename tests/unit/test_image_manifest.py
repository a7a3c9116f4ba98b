"""Manifest and index parsing: what we accept, what we refuse and why."""

from __future__ import annotations

import json

import pytest

from common.errors import InvalidArgument, Unimplemented
from services.image import oci

D = "sha256:" + "1" * 64
CFG = {"mediaType": oci.OCI_CONFIG, "digest": D, "size": 10}
LAYER = {"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:" + "2" * 64, "size": 20}


def _doc(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def test_oci_manifest() -> None:
    m = oci.parse_document(_doc({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": CFG, "layers": [LAYER]}))
    assert isinstance(m, oci.Manifest)
    assert m.config.digest == D and m.layers[0].size == 20


def test_docker_manifest_list_with_platforms() -> None:
    entry = {
        "mediaType": oci.DOCKER_MANIFEST,
        "digest": D,
        "size": 5,
        "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
    }
    idx = oci.parse_document(
        _doc({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST_LIST, "manifests": [entry]}),
        oci.DOCKER_MANIFEST_LIST,
    )
    assert isinstance(idx, oci.Index)
    assert str(idx.manifests[0].platform) == "linux/arm/v7"


def test_media_type_from_body_when_header_is_generic() -> None:
    m = oci.parse_document(
        _doc({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST, "config": CFG, "layers": []}), "application/json"
    )
    assert m.media_type == oci.DOCKER_MANIFEST


def test_both_manifests_and_layers_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="both"):
        oci.parse_document(_doc({"schemaVersion": 2, "manifests": [], "layers": [LAYER], "config": CFG}))


def test_schema1_is_refused_clearly() -> None:
    with pytest.raises(Unimplemented, match="schema 1"):
        oci.parse_document(_doc({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}))
    with pytest.raises(Unimplemented, match="schema 1"):
        oci.parse_document(b"{}", oci.DOCKER_SCHEMA1_SIGNED)


def test_body_contradicting_announced_type_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="contradicts"):
        oci.parse_document(
            _doc({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": CFG, "layers": []}), oci.OCI_INDEX
        )


def test_bad_digests_and_sizes() -> None:
    bad = dict(LAYER, digest="sha256:xyz")
    with pytest.raises(InvalidArgument):
        oci.parse_document(_doc({"schemaVersion": 2, "config": CFG, "layers": [bad]}))
    with pytest.raises(Unimplemented):
        oci.parse_document(
            _doc({"schemaVersion": 2, "config": CFG, "layers": [dict(LAYER, digest="sha512:" + "a" * 128)]})
        )
    with pytest.raises(InvalidArgument):
        oci.parse_document(_doc({"schemaVersion": 2, "config": CFG, "layers": [dict(LAYER, size=-1)]}))


def test_oversized_document_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="limit"):
        oci.parse_document(b" " * (oci.MAX_MANIFEST_SIZE + 1))


def test_not_json() -> None:
    with pytest.raises(InvalidArgument, match="JSON"):
        oci.parse_document(b"<html>")


def test_unknown_layer_type_is_refused() -> None:
    desc = oci.Descriptor("application/x-whatever", D, 1)
    with pytest.raises(Unimplemented, match="x-whatever"):
        oci.check_layer_type(desc, "layer 0")
    assert oci.check_layer_type(oci.Descriptor(oci.DOCKER_LAYER_ZSTD, D, 1), "x") == "zstd"


def test_chain_ids_match_the_spec() -> None:
    import hashlib

    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    chain = oci.chain_ids([a, b, c])
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain == [a, ab, abc]


def test_config_diff_ids() -> None:
    cfg = oci.parse_config(
        _doc({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D]}})
    )
    assert cfg.diff_ids == [D] and str(cfg.platform) == "linux/amd64"
    with pytest.raises(InvalidArgument):
        oci.parse_config(_doc({"os": "linux"}))
