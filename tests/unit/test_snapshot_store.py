"""Snapshot metadata (SQLite) and list filters: the rules without any file system work."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import errors
from common.api.snapshot import Kind
from services.snapshot import filters
from services.snapshot.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "metadata.db")
    yield s
    s.close()


def test_prepare_commit_chain_and_ids_never_reused(store: Store) -> None:
    a = store.create("default", "a-active", Kind.ACTIVE, "", {"x": "1"})
    committed = store.commit("default", "a-active", "A", {"y": "2"}, 100, 3)
    assert committed.id == a.id and committed.kind is Kind.COMMITTED and committed.labels == {"x": "1", "y": "2"}
    b = store.create("default", "b", Kind.ACTIVE, "A", {})
    store.commit("default", "b", "B", {}, 0, 1)
    c = store.create("default", "c", Kind.VIEW, "B", {})
    assert c.parent == "B" and c.parent_ids == [b.id, a.id]
    store.remove("default", "c")
    d = store.create("default", "d", Kind.ACTIVE, "B", {})
    assert d.id > c.id


def test_errors_name_the_snapshot(store: Store) -> None:
    store.create("default", "k", Kind.ACTIVE, "", {})
    with pytest.raises(errors.AlreadyExists, match="snapshot 'k' already exists"):
        store.create("default", "k", Kind.ACTIVE, "", {})
    with pytest.raises(errors.NotFound, match="parent snapshot 'nope' not found"):
        store.create("default", "x", Kind.ACTIVE, "nope", {})
    with pytest.raises(errors.FailedPrecondition, match="'k' is active, not committed"):
        store.create("default", "x", Kind.ACTIVE, "k", {})
    store.commit("default", "k", "K", {}, 0, 0)
    with pytest.raises(errors.FailedPrecondition, match="only an active one"):
        store.commit("default", "K", "K2", {}, 0, 0)
    store.create("default", "child", Kind.ACTIVE, "K", {})
    with pytest.raises(errors.FailedPrecondition, match="'K' has 1 child snapshot"):
        store.remove("default", "K")
    with pytest.raises(errors.NotFound):
        store.get("default", "missing")


def test_namespaces_are_separate_key_spaces(store: Store) -> None:
    store.create("a", "k", Kind.ACTIVE, "", {})
    store.create("b", "k", Kind.ACTIVE, "", {})
    assert [r.key for r in store.list("a")] == ["k"]
    with pytest.raises(errors.NotFound):
        store.create("b", "x", Kind.ACTIVE, "k-from-a", {})


def test_label_updates_merge_delete_and_replace(store: Store) -> None:
    store.create("default", "k", Kind.ACTIVE, "", {"a": "1", "b": "2"})
    assert store.update_labels("default", "k", {"b": "", "c": "3"}, False).labels == {"a": "1", "c": "3"}
    assert store.update_labels("default", "k", {"z": "9"}, True).labels == {"z": "9"}


def test_stale_extractions_are_listed_children_first(store: Store) -> None:
    store.create("default", "base", Kind.ACTIVE, "", {})
    store.commit("default", "base", "B", {}, 0, 0)
    store.create("default", "extract-1 sha256:x", Kind.ACTIVE, "B", {})
    store.create("default", "container", Kind.ACTIVE, "B", {})
    assert store.stale_extractions() == [("default", "extract-1 sha256:x")]


@pytest.mark.parametrize(
    ("exprs", "expected"),
    [
        ([], True),
        (["kind==committed"], True),
        (["kind==active"], False),
        (["kind!=active,name~=^sha256:"], True),
        (['labels."containerd.io/snapshot.ref"'], True),
        (["labels.missing"], False),
        (["labels.team==web"], True),
        (['labels.team=="web"'], True),
        (["kind==active", "labels.team==web"], True),
        (["parent==", "name~=abc$"], True),
    ],
)
def test_filters(exprs: list[str], expected: bool) -> None:
    fields = {
        "name": "sha256:abc",
        "parent": "",
        "kind": "committed",
        "labels.containerd.io/snapshot.ref": "x",
        "labels.team": "web",
    }
    assert filters.compile_filters(exprs)(fields) is expected


@pytest.mark.parametrize("expr", ["size==1", "kind=committed", "name~=(", 'labels."x'])
def test_bad_filters_are_invalid_arguments(expr: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="invalid filter"):
        filters.compile_filters([expr])


def test_a_root_belongs_to_one_snapshotter(store: Store) -> None:
    store.claim("overlayfs")
    store.claim("overlayfs")
    with pytest.raises(errors.FailedPrecondition, match="made by the overlayfs snapshotter, not native"):
        store.claim("native")


def test_commit_records_the_diff_size_with_the_commit(store: Store) -> None:
    store.create("default", "x", Kind.ACTIVE, "", {})
    assert store.get("default", "x").diff_size is None
    row = store.commit("default", "x", "X", {}, 8192, 3, 3_000_000)
    assert (row.size, row.inodes, row.diff_size) == (8192, 3, 3_000_000)
    store.set_diff_size(row.id, 1)  # only fills in a missing one
    assert store.get("default", "X").diff_size == 3_000_000


def test_committed_returns_named_committed_snapshots_in_order(store: Store) -> None:
    store.create("default", "a", Kind.ACTIVE, "", {})
    store.commit("default", "a", "A", {}, 0, 0, 10)
    store.create("default", "b", Kind.ACTIVE, "A", {})
    b = store.commit("default", "b", "B", {}, 0, 0)  # no diff size: parents given for measuring it
    store.create("default", "active", Kind.ACTIVE, "B", {})
    store.create("other", "C", Kind.ACTIVE, "", {})
    rows = store.committed("default", ["B", "active", "missing", "A", "B", "C"])
    assert [(r.key, r.diff_size) for r in rows] == [("B", None), ("A", 10)]
    assert rows[0].parent_ids == [rows[1].id]
    store.set_diff_size(b.id, 20)
    assert [r.diff_size for r in store.committed("default", ["A", "B"])] == [10, 20]
    many = [f"k{i}" for i in range(1200)] + ["A"]  # more names than SQLite binds at once
    assert [r.key for r in store.committed("default", many)] == ["A"]


def test_a_database_from_before_diff_sizes_gets_the_column(tmp_path: Path) -> None:
    """Snapshots committed by a version that did not record diff sizes keep working: the column
    is added on open, their diff size is unknown (None) until measured."""
    import sqlite3

    path = tmp_path / "metadata.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE snapshots (
            id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, key TEXT NOT NULL,
            kind TEXT NOT NULL, parent_id INTEGER REFERENCES snapshots(id), labels TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, size INTEGER, inodes INTEGER,
            UNIQUE (namespace, key)
        );
        INSERT INTO snapshots (namespace, key, kind, labels, created_at, updated_at, size, inodes)
        VALUES ('default', 'old', 'committed', '{}', '2024-01-01T00:00:00+00:00', '2024-01-01T00:00:00+00:00', 4096, 2);
        """
    )
    db.close()
    store = Store(path)
    try:
        (old,) = store.committed("default", ["old"])
        assert (old.size, old.diff_size) == (4096, None)
        store.set_diff_size(old.id, 77)
        assert store.get("default", "old").diff_size == 77
        store.create("default", "new", Kind.ACTIVE, "old", {})
        assert store.commit("default", "new", "NEW", {}, 0, 0, 5).diff_size == 5
    finally:
        store.close()
    Store(path).close()  # opening it again leaves it as it is
