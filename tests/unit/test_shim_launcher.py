"""The execution service's side of a launch through the shim template: the shim's
``{"serving": address}`` line (sent as soon as its RPC server listens) reaches
``on_serving`` before the report is returned, and a launch without it (a shim that failed
first) returns its report alone."""

from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path

from services.execution.shims import Launcher


async def _launch_against(tmp_path: Path, lines: list[dict[str, object]]) -> tuple[dict[str, object], list[str]]:
    path = str(tmp_path / "template.sock")
    requests: list[dict[str, object]] = []

    async def template(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(json.loads(await reader.readline()))
        for line in lines:
            writer.write(json.dumps(line).encode() + b"\n")
            await writer.drain()
            await asyncio.sleep(0.01)  # as a shim: the serving line comes well before the report
        writer.close()

    server = await asyncio.start_unix_server(template, path)
    launcher = Launcher(path, {})
    launcher._proc = types.SimpleNamespace(returncode=None)  # type: ignore[assignment]  # "the template runs"
    seen: list[str] = []
    try:
        report = await launcher.launch("default", "c1", "/b/c1", seen.append)
    finally:
        server.close()
        await server.wait_closed()
    assert requests == [{"namespace": "default", "container_id": "c1", "bundle": "/b/c1"}]
    return report, seen


def test_serving_line_reaches_the_caller_before_the_report(tmp_path: Path) -> None:
    ok = {"ok": True, "pid": 42, "shim_pid": 41, "address": "ipc:///s/x"}
    report, seen = asyncio.run(_launch_against(tmp_path, [{"serving": "ipc:///s/x"}, ok]))
    assert seen == ["ipc:///s/x"]
    assert report == ok


def test_a_shim_that_failed_before_serving_reports_alone(tmp_path: Path) -> None:
    failed = {"ok": False, "error": "no shim.json", "exit_status": 128}
    report, seen = asyncio.run(_launch_against(tmp_path, [failed]))
    assert seen == []
    assert report == failed


def test_a_shim_that_died_after_serving_is_a_failed_launch(tmp_path: Path) -> None:
    report, seen = asyncio.run(_launch_against(tmp_path, [{"serving": "ipc:///s/x"}]))
    assert seen == ["ipc:///s/x"]
    assert report["ok"] is False and report["exit_status"] == 128
