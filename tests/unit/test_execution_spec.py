"""OCI spec generation and Docker's config rules (CASES.md C14, moby oci/defaults.go); no root needed."""

from __future__ import annotations

import signal

import pytest

from common.errors import InvalidArgument
from services.execution import spec

IMAGE = {"Entrypoint": ["/bin/echo", "E"], "Cmd": ["C"], "Env": ["A=b=c", "B=", "URL=http://h/?x=1&y=2"]}


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "expected"),
    [
        (None, None, ["/bin/echo", "E", "C"]),  # image entrypoint + image cmd
        (None, ["X"], ["/bin/echo", "E", "X"]),  # args replace the image's Cmd
        (["/bin/echo"], None, ["/bin/echo"]),  # overriding the entrypoint drops the image's Cmd
        ([""], ["/bin/echo", "Z"], ["/bin/echo", "Z"]),  # --entrypoint "" unsets it
        ([], ["/bin/echo", "Z"], ["/bin/echo", "Z"]),
    ],
)
def test_entrypoint_cmd_rules(entrypoint: list[str] | None, cmd: list[str] | None, expected: list[str]) -> None:
    assert spec.process_args(IMAGE, entrypoint, cmd) == expected


def test_entrypoint_only_image_runs_without_args() -> None:
    assert spec.process_args({"Entrypoint": ["/bin/true"]}, None, None) == ["/bin/true"]


def test_nothing_to_run_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        spec.process_args({}, None, None)
    with pytest.raises(InvalidArgument, match="no command specified"):
        spec.process_args(IMAGE, [""], None)


def test_env_values_containing_equals_survive() -> None:
    env = spec.merge_env(IMAGE["Env"], [])
    assert "A=b=c" in env and "B=" in env and "URL=http://h/?x=1&y=2" in env


def test_env_request_overrides_image_and_later_wins() -> None:
    env = spec.merge_env(["PATH=/bin", "A=1", "B=2"], ["A=x", "C=3", "C=4", "B"])
    assert env == ["PATH=/bin", "A=x", "C=4"]


def test_env_gets_a_default_path() -> None:
    assert spec.merge_env([], ["X=1"])[0].startswith("PATH=/usr/local/sbin:")


def test_config_env_is_the_request_then_the_image_keys_it_does_not_set() -> None:
    """Docker's Config.Env (inspect, commit): no HOSTNAME, TERM or default PATH in it."""
    assert spec.config_env(["PATH=/bin", "A=1", "B=2"], ["A=x", "C=3", "B"]) == ["A=x", "C=3", "B", "PATH=/bin"]
    assert spec.config_env([], []) == []


def test_process_env_has_dockers_defaults_hostname_and_term_on_a_tty() -> None:
    """moby CreateDaemonEnvironment: PATH, HOSTNAME, TERM=xterm (TTY only), replaced by Config.Env."""
    env = spec.process_env(["A=1", "PATH=/bin"], hostname="abc123", tty=False)
    assert env == ["PATH=/bin", "HOSTNAME=abc123", "A=1"]
    env = spec.process_env(["A=1"], hostname="h", tty=True)
    assert env == [f"PATH={spec.DEFAULT_PATH}", "HOSTNAME=h", "TERM=xterm", "A=1"]


def test_process_env_user_term_and_hostname_win() -> None:
    env = spec.process_env(["TERM=vt100", "HOSTNAME=mine"], hostname="h", tty=True)
    assert env == [f"PATH={spec.DEFAULT_PATH}", "HOSTNAME=mine", "TERM=vt100"]
    assert "TERM=xterm" not in spec.process_env(["TERM"], hostname="h", tty=True)  # -e TERM unset: removed


@pytest.mark.parametrize(("value", "number"), [("SIGTERM", 15), ("TERM", 15), ("kill", 9), ("9", 9), (10, 10)])
def test_parse_signal(value: str | int, number: int) -> None:
    assert spec.parse_signal(value) == number


def test_parse_signal_rejects_garbage() -> None:
    with pytest.raises(InvalidArgument):
        spec.parse_signal("SIGNOPE")
    with pytest.raises(InvalidArgument):
        spec.parse_signal("99")
    assert spec.parse_signal(None) == signal.SIGTERM


def test_default_capabilities_are_dockers_fourteen() -> None:
    caps = spec.capabilities([], [], False, spec.ALL_CAPS)
    assert sorted(caps) == sorted(spec.DEFAULT_CAPS)
    assert len(caps) == 14 and "CAP_SYS_ADMIN" not in caps


def test_cap_add_drop_and_all() -> None:
    caps = spec.capabilities(["NET_ADMIN"], ["CHOWN", "cap_kill"], False, spec.ALL_CAPS)
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_KILL" not in caps
    assert spec.capabilities([], ["ALL"], False, spec.ALL_CAPS) == []
    assert spec.capabilities(["SYS_TIME"], ["ALL"], False, spec.ALL_CAPS) == ["CAP_SYS_TIME"]
    with pytest.raises(InvalidArgument, match="unknown capability"):
        spec.capabilities(["NOPE"], [], False, spec.ALL_CAPS)


def test_privileged_gets_only_what_the_host_has() -> None:
    host = spec.host_capabilities(0x1FFFEFFFFFF)  # this VM: bit 24 (CAP_SYS_RESOURCE) missing
    assert "CAP_SYS_RESOURCE" not in host and "CAP_SYS_ADMIN" in host
    assert spec.capabilities([], [], True, host) == host


def test_memory_swap_rules() -> None:
    assert spec.linux_resources({"memory": 32 << 20}) == {"memory": {"limit": 32 << 20, "swap": 64 << 20}}
    assert spec.linux_resources({"memory": 32 << 20, "memory_swap": -1})["memory"]["swap"] == -1
    assert spec.linux_resources({"memory": 32 << 20}, swap_accounting=False) == {"memory": {"limit": 32 << 20}}
    with pytest.raises(InvalidArgument):
        spec.linux_resources({"memory": 32 << 20, "memory_swap": 16 << 20})
    with pytest.raises(InvalidArgument):
        spec.linux_resources({"memory": 1024})


def test_cpus_and_pids() -> None:
    res = spec.linux_resources({"nano_cpus": 1_500_000_000, "cpu_shares": 512, "pids_limit": 0})
    assert res["cpu"] == {"period": 100000, "quota": 150000, "shares": 512}
    assert res["pids"] == {"limit": -1}


def _spec(**kw: object) -> dict:
    base = dict(container_id="c" * 64, args=["sh"], env=["PATH=/bin"], cwd="/", hostname="h")
    base.update(kw)
    return spec.build_spec(**base)  # type: ignore[arg-type]


def test_spec_has_dockers_defaults() -> None:
    s = _spec()
    dests = [m["destination"] for m in s["mounts"]]
    assert dests[:7] == ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm"]
    sysfs = next(m for m in s["mounts"] if m["destination"] == "/sys")
    assert "ro" in sysfs["options"]
    ns = [n["type"] for n in s["linux"]["namespaces"]]
    assert ns == ["pid", "ipc", "uts", "mount", "network"]
    assert "/proc/kcore" in s["linux"]["maskedPaths"] and "/proc/sys" in s["linux"]["readonlyPaths"]
    assert s["linux"]["cgroupsPath"] == "/dockyard/" + "c" * 64
    assert "rlimits" not in s["process"]  # host quirk: inherit the hard limits
    assert s["process"]["capabilities"]["bounding"] == list(spec.DEFAULT_CAPS)
    assert s["root"] == {"path": "rootfs", "readonly": False}
    assert s["hostname"] == "h"


def test_host_network_shares_the_netns() -> None:
    ns = [n["type"] for n in _spec(network_mode="host")["linux"]["namespaces"]]
    assert "network" not in ns
    with pytest.raises(InvalidArgument, match="not supported"):
        _spec(network_mode="container:x")


def test_user_mounts_and_etc_files() -> None:
    s = _spec(
        mounts=[
            {"type": "bind", "source": "/h/a", "target": "/data/sub", "read_only": True},
            {"type": "bind", "source": "/h/b", "target": "/data"},
            {"type": "tmpfs", "target": "/dev/shm", "options": ["size=1m"]},
        ],
        etc_files={"/etc/hostname": "/x/hostname", "/etc/hosts": "/x/hosts"},
    )
    dests = [m["destination"] for m in s["mounts"]]
    assert dests.count("/dev/shm") == 1  # the user's tmpfs replaces the default
    assert dests.index("/data") < dests.index("/data/sub")
    sub = next(m for m in s["mounts"] if m["destination"] == "/data/sub")
    assert "ro" in sub["options"] and sub["source"] == "/h/a"
    assert "/etc/hostname" in dests and "/etc/hosts" in dests


def test_privileged_spec_drops_masks_and_device_rules() -> None:
    s = _spec(privileged=True)
    assert "maskedPaths" not in s["linux"]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_resolv_conf_drops_loopback_nameservers() -> None:
    text = "nameserver 127.0.0.53\nnameserver 10.0.0.1\nsearch x\n"
    assert spec.resolv_conf(text, "none") == "nameserver 10.0.0.1\nsearch x\n"
    assert spec.resolv_conf(text, "host") == text
