"""The container store: lookup by id, prefix and name; unique names per namespace; tombstones."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from common import codec, errors
from services.execution.store import TOMBSTONE_TTL_S, Record, Store


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


def test_a_taken_name_says_who_holds_it_as_dockerd_does(tmp_path: Path) -> None:
    """Regression: a create or rename that lost a race for a name (the service's own check
    passed, the insert or update met the unique index) said it in two other wordings, without
    the holder's id, where the checked path says dockerd's; six concurrent ``run --name race``
    gave both."""
    s = Store(tmp_path / "c.db")
    holder = "1" * 64
    s.insert(_rec(holder, "web"))
    s.insert(_rec("2" * 64, "db"))
    want = (
        f'the container name "/web" is already in use by container "{holder}"; '
        "remove (or rename) that container to be able to reuse that name"
    )
    with pytest.raises(errors.AlreadyExists) as on_insert:
        s.insert(_rec("3" * 64, "web"))
    with pytest.raises(errors.AlreadyExists) as on_rename:
        s.update("default", "2" * 64, name="web")
    for exc in (on_insert.value, on_rename.value):
        assert (str(exc.message), exc.details) == (want, {"name": "web", "id": holder})
    assert s.get("default", "2" * 64).name == "db"  # type: ignore[union-attr]


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


def test_listing_without_specs_keeps_every_other_field(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    rec = _rec("1" * 64, "web")
    rec.spec = {"process": {"args": ["sleep", "9"]}}
    rec.extra = {"args": ["sleep", "9"]}
    s.insert(rec)
    s.insert(_rec("2" * 64, "db", ns="other"))
    s.update("default", "1" * 64, status="running", tasked=2, incarnation=2, pid=42)
    [full] = s.list("default")
    [light] = s.list("default", with_spec=False)
    assert full.spec == rec.spec and light.spec == {}
    light.spec = full.spec
    assert light == full
    assert sorted(r.name for r in s.list(None, with_spec=False)) == ["db", "web"]


def test_a_store_written_before_the_tasked_column_opens(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "c.db"))
    db.execute(
        "CREATE TABLE containers (namespace TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, "
        "image TEXT NOT NULL, image_id TEXT NOT NULL, image_name TEXT NOT NULL DEFAULT '', config TEXT NOT NULL, "
        "spec TEXT NOT NULL, snapshot_key TEXT NOT NULL, runtime TEXT NOT NULL, hostname TEXT NOT NULL DEFAULT '', "
        "labels TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'created', "
        "incarnation INTEGER NOT NULL DEFAULT 0, handled INTEGER NOT NULL DEFAULT 0, pid INTEGER NOT NULL DEFAULT 0, "
        "exit_code INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', oom_killed INTEGER NOT NULL DEFAULT 0, "
        "started_at TEXT, finished_at TEXT, restart_count INTEGER NOT NULL DEFAULT 0, "
        "manual_stop INTEGER NOT NULL DEFAULT 0, extra TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (namespace, id))"
    )
    db.execute(
        "INSERT INTO containers (namespace, id, name, image, image_id, config, spec, snapshot_key, runtime, "
        "created_at, incarnation) VALUES ('default', ?, 'old', 'busybox', 'sha256:x', '{}', '{}', 'k', 'runc', ?, 3)",
        ("1" * 64, codec.utcnow().isoformat()),
    )
    db.commit()
    db.close()
    s = Store(tmp_path / "c.db")
    old = s.get("default", "1" * 64)
    assert old is not None and (old.incarnation, old.tasked) == (3, 0)
    s.update("default", "1" * 64, tasked=4)
    assert s.list("default", with_spec=False)[0].tasked == 4


# -- tombstones: the exit status a removed --rm container keeps for the calls that held it ---------------------


def _exited(s: Store, cid: str, name: str, code: int = 7, error: str = "") -> None:
    s.insert(_rec(cid, name))
    s.update("default", cid, status="exited", exit_code=code, error=error)


def test_delete_keeps_the_exit_status_for_each_hold(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    cid = "ab" + "0" * 62
    _exited(s, cid, "web", 7, "oops")
    s.delete("default", cid, tombstones=["run:r1", "gw-hold", "run:r1"])
    assert s.get("default", cid) is None
    for hold in ("run:r1", "gw-hold"):
        t = s.tombstone("default", hold)
        assert t is not None
        assert (t.container_id, t.name, t.exit_code, t.error) == (cid, "web", 7, "oops")
        assert t.removed_at.tzinfo is not None
    assert s.tombstone("default", "someone-else") is None
    assert s.tombstone("other", "run:r1") is None  # tokens are kept per namespace
    again = Store(tmp_path / "c.db")  # durable: a restarted service finds it
    kept = again.tombstone("default", "run:r1")
    assert kept is not None and kept.exit_code == 7


def test_tombstone_names_its_container_by_id_prefix_or_name(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    cid = "ab" + "0" * 62
    _exited(s, cid, "web")
    s.delete("default", cid, tombstones=["h"])
    t = s.tombstone("default", "h")
    assert t is not None
    assert t.names(cid) and t.names("ab") and t.names("web") and t.names("/web")
    assert not t.names("db") and not t.names("ac") and not t.names("1" * 64)


def test_no_tombstone_without_a_hold_or_a_container(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    _exited(s, "1" * 64, "web")
    s.delete("default", "1" * 64)
    s.delete("default", "2" * 64, tombstones=["gone"])  # nothing to remove: nothing kept
    assert s.tombstone("default", "gone") is None
    assert s._db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0] == 0


def test_the_delete_and_its_tombstones_are_one_transaction(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    _exited(s, "1" * 64, "web")
    s._db.execute("DROP TABLE tombstones")  # the tombstone's write fails ...
    with pytest.raises(sqlite3.OperationalError):
        s.delete("default", "1" * 64, tombstones=["h"])
    assert s.get("default", "1" * 64) is not None  # ... so the record stays, for the removal to be retried


def test_tombstones_expire_and_are_pruned_at_open_and_delete(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(seconds=TOMBSTONE_TTL_S + 1)
    _exited(s, "1" * 64, "old")
    s.delete("default", "1" * 64, tombstones=["old"], now=old)
    assert s.tombstone("default", "old") is None  # expired: no longer answered ...
    assert s.tombstone("default", "old", now=old) is not None  # ... though still stored

    assert Store(tmp_path / "c.db").tombstone("default", "old", now=old) is None  # pruned when a store opens

    s.delete("default", "x" * 64, tombstones=["old"], now=old)  # no-op: no such container
    _exited(s, "2" * 64, "old2")
    s.delete("default", "2" * 64, tombstones=["old2"], now=old)
    _exited(s, "3" * 64, "new")
    s.delete("default", "3" * 64, tombstones=["new"], now=now)  # a delete that keeps some prunes first
    assert s.tombstone("default", "old2", now=old) is None
    assert s.tombstone("default", "new") is not None
    assert s.prune_tombstones(now=now + dt.timedelta(seconds=TOMBSTONE_TTL_S + 1)) == 1
    assert s.tombstone("default", "new") is None
