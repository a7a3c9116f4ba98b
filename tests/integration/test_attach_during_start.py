"""Attaches and the start of a task (the early attach of ``run`` and of a Docker client's
create, attach, start): the execution service sends them while the runtime still creates the
task, and the first one releases the held output itself. Every client attached before the task
exists must get the whole output: one attached before the start, one that comes while the
runtime creates the task, both before. The runtime here is runc behind a wrapper that returns 1 s
after ``runc run`` (the task already runs, as when the runtime's exit is slow on a loaded host),
which holds that window open."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import endpoints
from tests.conftest import running_instance
from tests.engine import Engine
from tests.harness import Instance

pytestmark = pytest.mark.root

OUTPUT = b"".join(b"%d\n" % i for i in range(1, 6))


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    real = shutil.which("runc")
    if real is None:
        pytest.skip("runc is not installed")
    wrapper = tmp_path_factory.mktemp("runtime") / "runc"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$3" = run ]; then "{real}" "$@"; rc=$?; sleep 1; exit $rc; fi\nexec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    with running_instance(runtime=str(wrapper)) as inst:
        yield Engine(inst)


def _attach(inst: Instance, cid: str, out: dict[str, object], key: str, attached: threading.Event) -> None:
    data = b""
    try:
        with inst.client("execution") as c:
            for frame in c.stream("execution.attach", {"id": cid}):
                if frame.get("attached"):
                    attached.set()
                elif "d" in frame:
                    data += frame["d"]
    except Exception as exc:  # the assertion below shows it
        out[key + " error"] = repr(exc)
    finally:
        attached.set()
        out[key] = data


@pytest.mark.parametrize("second", ["while-the-runtime-creates", "before-the-start"])
def test_every_attach_made_before_the_task_exists_gets_all_output(slow: Engine, second: str) -> None:
    name = f"two-{second}"
    cid = slow.cli("create", "--name", name, "busybox", "sh", "-c", "seq 1 5; sleep 0.3", check=True).stdout
    cid_s = cid.decode().strip()
    address = Path(endpoints.bundle_dir("default", cid_s, slow.inst.env), "address")
    out: dict[str, object] = {}
    a_on, b_on = threading.Event(), threading.Event()
    a = threading.Thread(target=_attach, args=(slow.inst, cid_s, out, "A", a_on))
    b = threading.Thread(target=_attach, args=(slow.inst, cid_s, out, "B", b_on))
    starter = threading.Thread(target=lambda: out.__setitem__("start", slow.cli("start", name)))
    try:
        a.start()
        assert a_on.wait(10)
        if second == "before-the-start":
            b.start()
            assert b_on.wait(10)
        starter.start()
        if second == "while-the-runtime-creates":
            deadline = time.monotonic() + 10
            while not address.exists() and time.monotonic() < deadline:  # the shim serves
                time.sleep(0.005)
            assert address.exists()
            b.start()
    finally:
        for t in (starter, a, b):
            if t.is_alive() or t.ident is not None:
                t.join(30)
    assert out["start"].returncode == 0, out["start"]  # type: ignore[attr-defined]
    assert (out["A"], out["B"]) == (OUTPUT, OUTPUT), out
    slow.cli("rm", "-f", name, check=True)
    assert not any(slow.leftovers().values()), slow.leftovers()
