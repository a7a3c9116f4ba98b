"""crun compiles a seccomp profile once (``services.shim.seccomp_cache``): later creates get
the filter it wrote in ``run.oci.seccomp_bpf_data``, the filter is applied and enforced as
compiled, exec works from it, and a damaged or refused entry never breaks a container."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.shim import seccomp_cache as sc
from tests.engine import Engine, prepare_runtime

pytestmark = pytest.mark.root

STATUS = ("grep", "^Seccomp:", "/proc/self/status")
# personality(2) is allowed by the profile only for a few values: with ADDR_NO_RANDOMIZE it
# falls to the profile's default action (ENOSYS); without seccomp the kernel allows it
REFUSED_BY_PROFILE = ("linux64", "-R", "true")


@pytest.fixture
def crun(engine: Engine) -> Iterator[Engine]:
    """The module's engine, crun ready, its seccomp cache empty; every container removed after."""
    if shutil.which("crun") is None:
        pytest.skip("needs crun")
    prepare_runtime("crun")
    shutil.rmtree(cache_dir(engine), ignore_errors=True)
    try:
        yield engine
    finally:
        for c in engine.containers():
            engine.cli("rm", "-f", c["id"])
    engine.assert_clean()


def cache_dir(engine: Engine) -> Path:
    return Path(engine.inst.state, "seccomp", "crun")


def entries(engine: Engine) -> dict[str, bytes]:
    d = cache_dir(engine)
    return {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith(".")} if d.is_dir() else {}


def run(engine: Engine, *args: str) -> bytes:
    """``dockyard run --rm --runtime crun <args>``'s output (it must succeed)."""
    p = engine.run("--rm", "--runtime", "crun", *args)
    assert p.returncode == 0, p.stderr
    return p.stdout


def start(engine: Engine, *args: str) -> str:
    """``dockyard run -d --runtime crun <args> busybox sleep 300``: the container id."""
    return engine.run("-d", "--runtime", "crun", *args, "busybox", "sleep", "300", check=True).stdout.decode().strip()


def bundle_spec(engine: Engine, cid: str) -> dict[str, Any]:
    return dict(json.loads(Path(engine.inst.state, "tasks", "default", cid, "config.json").read_text()))


def state_filter(engine: Engine, cid: str) -> bytes:
    """The filter crun loaded for the container (its state directory's ``seccomp.bpf``)."""
    return Path(engine.inst.state, "runtime", "crun", cid, "seccomp.bpf").read_bytes()


def test_second_run_gets_the_filter_crun_compiled_first(crun: Engine) -> None:
    assert run(crun, "busybox", *STATUS) == b"Seccomp:\t2\n"
    (key, entry), *more = entries(crun).items()
    assert not more
    compiled = sc.unpack(entry)
    inode = (cache_dir(crun) / key).stat().st_ino

    cid = start(crun)
    spec = bundle_spec(crun, cid)
    assert base64.b64decode(spec["annotations"][sc.ANNOTATION]) == compiled
    assert "seccomp" in spec["linux"]
    assert state_filter(crun, cid) == compiled  # what crun loaded is what it compiled the first time
    # crun exec applies the state directory's filter
    p = crun.cli("exec", cid, *STATUS)
    assert (p.returncode, p.stdout) == (0, b"Seccomp:\t2\n")
    p = crun.cli("exec", cid, *REFUSED_BY_PROFILE)
    assert p.returncode != 0 and b"Function not implemented" in p.stderr
    crun.cli("rm", "-f", cid, check=True)

    # the cached filter is enforced as compiled: allowed arguments pass, others get the profile's errno
    assert run(crun, "busybox", "linux64", "true") == b""
    p = crun.run("--rm", "--runtime", "crun", "busybox", *REFUSED_BY_PROFILE)
    assert p.returncode != 0 and b"Function not implemented" in p.stderr
    # no-new-privileges: crun compiles (it loads such a filter only at the exec, past any retry)
    assert run(crun, "--security-opt", "no-new-privileges", "busybox", *STATUS) == b"Seccomp:\t2\n"
    # every other run was a hit: the entry was never written again, and no other was added
    assert list(entries(crun)) == [key] and (cache_dir(crun) / key).stat().st_ino == inode


def test_another_capability_set_is_another_entry(crun: Engine) -> None:
    run(crun, "busybox", "true")
    run(crun, "--cap-add", "SYS_ADMIN", "busybox", "true")
    run(crun, "--cap-add", "SYS_ADMIN", "busybox", "true")
    assert len(entries(crun)) == 2


@pytest.mark.parametrize("opts", [("--privileged",), ("--security-opt", "seccomp=unconfined")])
def test_no_filter_without_a_profile(crun: Engine, opts: tuple[str, ...]) -> None:
    run(crun, "busybox", "true")  # an entry exists for the default profile
    before = entries(crun)
    cid = start(crun, *opts)
    spec = bundle_spec(crun, cid)
    assert sc.ANNOTATION not in (spec.get("annotations") or {})
    assert crun.cli("exec", cid, *STATUS).stdout == b"Seccomp:\t0\n"
    assert crun.cli("exec", cid, *REFUSED_BY_PROFILE).returncode == 0
    crun.cli("rm", "-f", cid, check=True)
    assert entries(crun) == before


def kernel_refuses() -> bytes:
    """A filter that passes ``check_filter`` but not the kernel's (a jump past the end)."""
    jeq_far = struct.pack("=HBBI", 0x15, 5, 0, 0)  # BPF_JMP | BPF_JEQ | BPF_K, jt past the end
    ret_allow = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
    data = jeq_far + ret_allow
    sc.check_filter(data)
    return sc.pack(data)


@pytest.mark.parametrize(
    ("damage", "tried"),
    [
        pytest.param(lambda entry: entry[:5], False, id="truncated-to-5-bytes"),
        pytest.param(lambda entry: os.urandom(16), False, id="16-bytes-of-garbage"),
        pytest.param(lambda entry: entry[:-8], False, id="one-instruction-short"),
        pytest.param(lambda entry: kernel_refuses(), True, id="valid-entry-the-kernel-refuses"),
    ],
)
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_a_damaged_entry_does_not_break_the_next_run_and_is_replaced(
    crun: Engine, damage: Callable[[bytes], bytes], tried: bool, tty: bool
) -> None:
    run(crun, "busybox", "true")
    ((key, entry),) = entries(crun).items()
    compiled = sc.unpack(entry)
    (cache_dir(crun) / key).write_bytes(damage(entry))
    cid = start(crun, *(["-t"] if tty else []))
    assert crun.cli("exec", cid, *STATUS).stdout.strip() == b"Seccomp:\t2"
    assert state_filter(crun, cid) == compiled
    # an entry that passes validation is tried, refused by crun, and the shim creates again
    # (compiling); a damaged one is never handed to crun
    shim_log = Path(crun.inst.state, "tasks", "default", cid, "shim.log").read_text()
    assert ("refused the cached seccomp filter" in shim_log) == tried, shim_log
    logs = crun.cli("logs", cid)  # the first attempt's complaint is not the container's output
    assert (logs.stdout, logs.stderr) == (b"", b"")
    crun.cli("rm", "-f", cid, check=True)
    assert entries(crun) == {key: entry}
    assert run(crun, "busybox", *STATUS) == b"Seccomp:\t2\n"
