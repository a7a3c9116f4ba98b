"""The container store: lookup by id, prefix and name; unique names per namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import codec, errors
from services.execution.store import Record, Store


def _rec(cid: str, name: str, ns: str = "default") -> Record:
    return Record(
        namespace=ns,
        id=cid,
        name=name,
        image="busybox",
        image_id="sha256:x",
        config={},
        spec={},
        snapshot_key=cid,
        runtime="runc",
        created_at=codec.utcnow(),
    )


def test_find_by_id_prefix_and_name(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    a, b = "ab" + "0" * 62, "ac" + "0" * 62
    s.insert(_rec(a, "web"))
    s.insert(_rec(b, "db"))
    assert s.find("default", a).name == "web"
    assert s.find("default", "ab").id == a
    assert s.find("default", "/db").id == b
    with pytest.raises(errors.InvalidArgument, match="ambiguous"):
        s.find("default", "a")
    with pytest.raises(errors.NotFound, match="container 'zz' not found"):
        s.find("default", "zz")
    with pytest.raises(errors.NotFound):
        s.find("other", "web")


def test_names_are_unique_per_namespace(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    s.insert(_rec("1" * 64, "web"))
    with pytest.raises(errors.AlreadyExists):
        s.insert(_rec("2" * 64, "web"))
    s.insert(_rec("3" * 64, "web", ns="other"))


def test_update_round_trips_fields(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    s.insert(_rec("1" * 64, "web"))
    now = codec.utcnow()
    s.update("default", "1" * 64, status="exited", exit_code=3, finished_at=now, oom_killed=True, extra={"k": 1})
    r = s.get("default", "1" * 64)
    assert r is not None and (r.status, r.exit_code, r.finished_at, r.oom_killed, r.extra) == (
        "exited",
        3,
        now,
        True,
        {"k": 1},
    )
    s.close()
    assert Store(tmp_path / "c.db").get("default", "1" * 64) is not None
