"""The codec, the error set, identifiers and endpoints: the shapes every process shares."""

from __future__ import annotations

import datetime as dt

import pytest

from common import codec, endpoints, errors, ids
from common.api.events import PublishRequest
from common.rpc import protocol


def test_codec_round_trips_every_wire_shape() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    doc = {"s": "x", "b": b"\x00\xff", "i": -3, "f": 1.5, "n": None, "l": [1, "a"], "t": when, "nested": {"k": True}}
    assert codec.decode(codec.encode(doc)) == doc


def test_codec_lowers_models_and_refuses_naive_datetimes() -> None:
    model = PublishRequest(id="e1", topic="/tasks/exit", event={"exit_status": 3})
    decoded = codec.decode(codec.encode({"m": model}))
    assert decoded["m"]["id"] == "e1" and decoded["m"]["event"] == {"exit_status": 3}
    with pytest.raises(TypeError, match="naive datetime"):
        codec.encode(dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="cannot encode"):
        codec.encode(object())


@pytest.mark.parametrize("pure", [False, True], ids=["msgpack", "msgpack_pure"])
def test_codec_sends_undecodable_bytes_as_u_fffd(pure: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A string holding bytes that did not decode (``surrogateescape``: an argument, a variable,
    a file name) or any lone surrogate goes out as valid UTF-8, U+FFFD for each, in keys,
    lists, tuples and models too; valid strings and the other shapes are left as they are."""
    if pure:
        monkeypatch.setattr(codec, "_pure", None)
        monkeypatch.setattr(codec, "_pure_left", 0)
        codec.use_pure(messages=3)  # the failed try, the retry, the decode
    raw = b"a\xff\xfeb".decode("utf-8", "surrogateescape")
    model = PublishRequest(id="e1", topic="/tasks/exit", event={"path": raw})
    doc = {raw: [raw, ("\ud800", 3)], "ok": "é", "b": b"\xff", "m": model}
    got = codec.decode(codec.encode(doc))
    assert got["a\ufffd\ufffdb"] == ["a\ufffd\ufffdb", ["\ufffd", 3]]
    assert (got["ok"], got["b"], got["m"]["event"]) == ("é", b"\xff", {"path": "a\ufffd\ufffdb"})


def test_codec_rejects_garbage_with_value_error() -> None:
    with pytest.raises(ValueError, match="malformed"):
        codec.decode(b"\xc1")
    with pytest.raises(ValueError, match="malformed"):
        codec.decode(codec.encode(1) + b"extra")


@pytest.mark.parametrize("cls", list(errors.ERROR_CLASSES.values()))
def test_every_error_class_survives_the_wire(cls: type[errors.DockyardError]) -> None:
    exc = cls("container 'web' not found", {"id": "web"})
    back = errors.from_wire(codec.decode(protocol.error("r1", exc))["error"])
    assert type(back) is cls and back.message == exc.message and back.details == {"id": "web"}


def test_unknown_error_code_becomes_internal() -> None:
    back = errors.from_wire({"code": "Exploded", "message": "m"})
    assert isinstance(back, errors.Internal)


def test_unexpected_exception_keeps_one_line_and_the_operation() -> None:
    exc = errors.wrap_unexpected(FileNotFoundError(2, "No such file or directory", "/x/y"), "image.load")
    assert str(exc) == "image.load: No such file or directory (/x/y)"
    assert "\n" not in str(errors.wrap_unexpected(ValueError("bad"), "m"))


@pytest.mark.parametrize("ns", ["default", "moby", "k8s.io", "a-b_c", "x" * 76])
def test_valid_namespaces(ns: str) -> None:
    assert ids.validate_namespace(ns) == ns


@pytest.mark.parametrize("ns", ["", "version", "-a", "a..b", "a/b", "x" * 77, "a b", "ü"])
def test_invalid_namespaces(ns: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        ids.validate_namespace(ns)


def test_names_and_ids() -> None:
    assert ids.validate_name("/web-1") == "web-1"
    # one character is allowed (issue 2 runs `--name s`), though Docker's regexp wants two
    assert ids.validate_name("s") == "s"
    for bad in ("", "-x", "a/b", "a b", "../x", "x" * 129):
        with pytest.raises(errors.InvalidArgument):
            ids.validate_name(bad)
    new = ids.new_id()
    assert ids.is_full_id(new) and ids.validate_id(new) == new and ids.is_id_prefix(new[:5])
    with pytest.raises(errors.InvalidArgument):
        ids.validate_digest("sha256:" + "A" * 64)
    assert "_" in ids.random_name()


def test_endpoints_follow_the_state_dir_and_stay_short() -> None:
    env = {"DOCKYARD_STATE": "/tmp/dy-x/state", "DOCKYARD_ROOT": "/tmp/dy-x/root"}
    assert endpoints.control_endpoint("image", env) == "ipc:///tmp/dy-x/state/image.sock"
    assert (
        endpoints.control_endpoint("image", {**env, "DOCKYARD_IMAGE_ENDPOINT": "tcp://1.2.3.4:5"}) == "tcp://1.2.3.4:5"
    )
    shim = endpoints.shim_endpoint("default", "f" * 64, env)
    assert shim.startswith("ipc:///tmp/dy-x/state/s/") and len(shim) < 80
    assert endpoints.shim_endpoint("default", "a" * 64, env) != shim
    with pytest.raises(ValueError, match="over the unix limit"):
        endpoints.control_endpoint("image", {"DOCKYARD_STATE": "/" + "d" * 120})
    assert endpoints.container_dir("ns", "c1", env) == "/tmp/dy-x/root/containers/ns/c1"
