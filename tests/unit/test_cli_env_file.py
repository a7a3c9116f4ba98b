"""Regression: ``--env-file`` took the line ``Y = 2`` as a variable named ``Y `` (docker refuses it).

``cli.runner.parse_env_file`` follows docker/cli's ``opts/envfile.go``: comments, blank
lines and a BOM skipped, values kept byte for byte, ``NAME`` alone taken from the CLI's
environment, names with whitespace or no name refused in one line naming file and line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import runner


def _fails(text: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        runner.parse_env_file(text, "/tmp/my.env", {})
    assert exc.value.code == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.strip()


def test_docker_rules() -> None:
    text = (
        "\ufeff# a comment\n\n   A=1\nB= spaced value  \nC=\nD=x=y\r\n"
        "HOME_ONLY\nUNSET_ONE\n\t# indented comment\nE='quoted'\n"
    )
    got = runner.parse_env_file(text, "f", {"HOME_ONLY": "/root"})
    assert got == ["A=1", "B= spaced value  ", "C=", "D=x=y", "HOME_ONLY=/root", "E='quoted'"]


def test_name_with_whitespace_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails("X=1\nY = 2\n", capsys)
    assert err == (
        "error: poorly formatted environment in env file '/tmp/my.env' line 2: variable 'Y ' contains whitespaces"
    )
    assert "variable 'A B' contains whitespaces" in _fails("A B=1\n", capsys)
    assert "variable 'NAME ' contains whitespaces" in _fails("NAME \n", capsys)


def test_empty_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fails("=value\n", capsys).endswith("line 1: no variable name on line '=value'")


def test_env_files_then_e_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.env"
    f.write_text("A=1\nFROM_ENV\n")
    monkeypatch.setenv("FROM_ENV", "yes")
    monkeypatch.delenv("NOT_SET", raising=False)
    assert runner.env_list(["B=2", "FROM_ENV", "NOT_SET"], [str(f)]) == ["A=1", "FROM_ENV=yes", "B=2", "FROM_ENV=yes"]


def test_e_with_empty_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        runner.env_list(["=x"], [])
    assert capsys.readouterr().err == "error: invalid environment variable: =x\n"
