"""Lease ownership and the ingests' own lifetime (``services.image.metadata``, ``services.image.gc``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from services.image import gc
from services.image.content import ContentStore
from services.image.metadata import LABEL_OWNER, MetadataStore, owner_alive, process_owner


def test_a_lease_owner_is_alive_while_its_process_runs_and_dead_after() -> None:
    assert owner_alive(process_owner())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = process_owner(child.pid)
        assert owner_alive(owner)
    finally:
        child.kill()
        child.wait()
    assert not owner_alive(owner)
    pid, _sep, ticks = process_owner().partition(":")
    assert not owner_alive(f"{pid}:{int(ticks) + 1}")  # a reused pid is another process
    assert not owner_alive("") and not owner_alive("garbage")


def test_orphaned_leases_are_those_of_processes_that_are_gone(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "metadata.db")
    mine = meta.create_lease("default", 60, {"purpose": "pull a", LABEL_OWNER: process_owner()})
    dead = meta.create_lease("default", 60, {"purpose": "pull b", LABEL_OWNER: "1:0"})
    unlabelled = meta.create_lease("default", 60, {"purpose": "load"})
    assert {lease["id"] for lease in meta.orphaned_leases()} == {dead, unlabelled}
    assert mine in {lease["id"] for lease in meta.list_leases()}
    meta.close()


def _ingest(store: ContentStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ingest = store.open_ingest(digest, expected=digest, total=2 * len(data))
    ingest.write(data)
    ingest.close()
    return digest


def test_an_idle_download_ingest_outlives_its_lease_until_it_expires(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "metadata.db")
    store = ContentStore(tmp_path / "content")
    old = _ingest(store, b"old partial download")
    young = _ingest(store, b"young partial download")
    long_ago = time.time() - gc.INGEST_EXPIRY_S - 60
    old_data = next(i.path for i in store.ingest_statuses() if i.ref == old) / "data"
    os.utime(old_data, (long_ago, long_ago))
    loading = store.open_ingest("load-1-2-blobs/sha256/abc", total=10)  # a killed load's: never resumed
    loading.write(b"12345")
    loading.close()
    swept = gc.sweep_content(meta, store)
    assert swept.ingests_removed == 2
    assert [i.ref for i in store.ingest_statuses()] == [young]
    # a live lease holds an ingest whatever its age; ``image prune`` (max age 0) takes the rest
    lease = meta.create_lease("default", 60)
    meta.add_lease_resource(lease, "ingest", young)
    assert gc.sweep_content(meta, store, ingest_max_age_s=0).ingests_removed == 0
    meta.delete_lease(lease)
    assert gc.sweep_content(meta, store, ingest_max_age_s=0).ingests_removed == 1
    assert store.ingest_statuses() == []
    meta.close()
