"""Tag-list pagination (distribution spec ``Link`` / ``n`` / ``last``) and registry errors as dockerd words them."""

from __future__ import annotations

import httpx
import pytest

from common.errors import InvalidArgument, NotFound
from services.image.registry import (
    errcode_text,
    next_tags_page,
    not_found_error,
    parse_tag_list,
    registry_errors,
)

BASE = "http://127.0.0.1:5000/v2/walk/bb/tags/list"


def test_next_page_is_the_link_target_resolved_against_the_page_just_read() -> None:
    link = '</v2/walk/bb/tags/list?n=2&last=b>; rel="next"'
    assert next_tags_page(BASE, link) == "http://127.0.0.1:5000/v2/walk/bb/tags/list?n=2&last=b"
    relative = '<list?last=c&n=2>; rel="next"'
    assert next_tags_page(BASE + "?n=2&last=b", relative) == "http://127.0.0.1:5000/v2/walk/bb/tags/list?last=c&n=2"
    absolute = "<http://127.0.0.1:5000/v2/walk/bb/tags/list?n=2&last=d>;rel=next"
    assert next_tags_page(BASE, absolute) == "http://127.0.0.1:5000/v2/walk/bb/tags/list?n=2&last=d"


def test_no_link_or_no_next_relation_ends_the_listing() -> None:
    assert next_tags_page(BASE, "") is None
    assert next_tags_page(BASE, '</v2/walk/bb/tags/list?n=2>; rel="prev"') is None


def test_the_next_relation_is_found_among_several_links() -> None:
    link = '</v2/walk/bb/tags/list?n=2>; rel="first", </v2/walk/bb/tags/list?n=2&last=x,y>; rel="next"'
    assert next_tags_page(BASE, link) == "http://127.0.0.1:5000/v2/walk/bb/tags/list?n=2&last=x,y"


def test_a_link_to_another_origin_or_a_malformed_link_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="another origin"):
        next_tags_page(BASE, '<http://evil.example/v2/walk/bb/tags/list?last=b>; rel="next"')
    with pytest.raises(InvalidArgument, match="malformed Link"):
        next_tags_page(BASE, '/v2/walk/bb/tags/list?last=b; rel="next"')


def test_tag_list_pages_parse_and_bad_ones_name_what_is_wrong() -> None:
    assert parse_tag_list(b'{"name":"walk/bb","tags":["b","latest","2"]}') == ["b", "latest", "2"]
    assert parse_tag_list(b'{"name":"walk/bb","tags":null}') == []
    with pytest.raises(InvalidArgument, match="tags of x: the registry sent invalid JSON"):
        parse_tag_list(b"<html>", "tags of x")
    with pytest.raises(InvalidArgument, match="not a list of strings"):
        parse_tag_list(b'{"tags":[1]}')


def _resp(body: bytes) -> httpx.Response:
    return httpx.Response(404, content=body, request=httpx.Request("GET", BASE))


def test_registry_errors_read_as_dockerd_prints_them() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}'
    assert registry_errors(body) == [("MANIFEST_UNKNOWN", "manifest unknown")]
    assert errcode_text("NAME_UNKNOWN", "repository name not known to registry") == (
        "name unknown: repository name not known to registry"
    )
    err = not_found_error(_resp(body), body, manifest_of="127.0.0.1:5000/walk/bb:nope", repository="x")
    assert isinstance(err, NotFound)
    assert err.message == "manifest for 127.0.0.1:5000/walk/bb:nope not found: manifest unknown: manifest unknown"
    assert err.details["registry_code"] == "MANIFEST_UNKNOWN"


def test_unknown_repository_and_other_codes_keep_the_registry_words() -> None:
    body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}'
    err = not_found_error(_resp(body), body, manifest_of="r/x:1", repository="127.0.0.1:5000/walk/none")
    assert (
        err.message
        == "repository 127.0.0.1:5000/walk/none not found: name unknown: repository name not known to registry"
    )
    body = b'{"errors":[{"code":"TAG_INVALID","message":"manifest tag did not match URI"}]}'
    err = not_found_error(_resp(body), body, manifest_of="r/x:1", repository="r/x")
    assert err.message == "tag invalid: manifest tag did not match URI"
    err = not_found_error(
        _resp(b"404 page not found\n"), b"404 page not found\n", manifest_of="r/x:1", repository="r/x"
    )
    assert err.message.startswith("manifest for r/x:1 not found: 404")
