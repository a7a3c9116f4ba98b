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
