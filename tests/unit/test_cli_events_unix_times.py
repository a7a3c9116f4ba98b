"""Regression: ``dockyard events --until $(date +%s)`` waited forever and ``--since <unix time>``
replayed nothing: an all-digits value was read as a journal sequence number.

``--since``/``--until`` now take what ``docker events`` takes (``cli.system.parse_time``: unix
seconds, RFC 3339 and its shorter forms, Go durations); sequence numbers have their own
options, ``--since-seq``/``--until-seq``, and a bound given both ways is refused. A value
that is none of the forms ends the command with one line naming the option, exit status 1.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cli import app as app_module
from cli import system
from common import errors

NOW = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.UTC)
UTC = dt.UTC


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.fixture
def eastern(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local zone is UTC-5 (no daylight saving), as a user's in New York in winter."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- the forms --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", _utc(2023, 11, 14, 22, 13, 20)),
        ("0", _utc(1970, 1, 1)),
        ("1700000000.5", _utc(2023, 11, 14, 22, 13, 20, 500000)),
        ("1700000000.123456789", _utc(2023, 11, 14, 22, 13, 20, 123456)),
    ],
)
def test_unix_seconds_are_times_not_sequence_numbers(value: str, expected: dt.datetime) -> None:
    assert system.replay_bounds(value, value, None, None, NOW) == {"since_time": expected, "until": expected}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-30T10:00:00Z", _utc(2026, 11, 30, 10)),
        ("2026-11-30T10:00:00.25Z", _utc(2026, 11, 30, 10, 0, 0, 250000)),
        ("2026-11-30T10:00:00.123456789Z", _utc(2026, 11, 30, 10, 0, 0, 123456)),
        ("2026-11-30T10:00:00+01:00", _utc(2026, 11, 30, 9)),
        ("2026-11-30T10:00:00-05:30", _utc(2026, 11, 30, 15, 30)),
        ("2026-11-30T10:30Z", _utc(2026, 11, 30, 10, 30)),
        ("2026-11-30T10+02:00", _utc(2026, 11, 30, 8)),
        ("2026-11-30Z", _utc(2026, 11, 30)),
        ("2026-11-30+01:00", _utc(2026, 11, 29, 23)),
    ],
)
def test_rfc3339_with_a_zone(value: str, expected: dt.datetime) -> None:
    assert system.parse_time("--since", value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-30T10:00:00", _utc(2026, 11, 30, 15)),
        ("2026-11-30T10:00:00.5", _utc(2026, 11, 30, 15, 0, 0, 500000)),
        ("2026-11-30T10:30", _utc(2026, 11, 30, 15, 30)),
        ("2026-11-30T10", _utc(2026, 11, 30, 15)),
        ("2026-11-30", _utc(2026, 11, 30, 5)),
    ],
)
def test_rfc3339_without_a_zone_is_local_time_as_docker_reads_it(
    value: str, expected: dt.datetime, eastern: None
) -> None:
    assert system.parse_time("--until", value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "ago"),
    [
        ("10m", dt.timedelta(minutes=10)),
        ("90s", dt.timedelta(seconds=90)),
        ("2h", dt.timedelta(hours=2)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("1h2m3s", dt.timedelta(hours=1, minutes=2, seconds=3)),
        ("1.5h", dt.timedelta(minutes=90)),
        ("500ms", dt.timedelta(milliseconds=500)),
        ("1m30.5s", dt.timedelta(seconds=90.5)),
        ("-10m", dt.timedelta(minutes=-10)),  # Go's durations take a sign: after now
    ],
)
def test_durations_count_back_from_now(value: str, ago: dt.timedelta) -> None:
    assert system.replay_bounds(value, None, None, None, NOW) == {"since_time": NOW - ago}


def test_no_bound_and_empty_strings_ask_for_nothing() -> None:
    assert system.replay_bounds(None, None, None, None, NOW) == {}
    assert system.replay_bounds("", "", None, None, NOW) == {}


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "1d",  # Go durations have no days
        "1h30",
        "10 m",
        "2026-13-01",
        "2026-11-31",
        "2026-11-30T25:00",
        "2026-11-30 10:00:00",  # docker wants the T
        "2026-11-30T10:00:00.5.5",
        "30/11/2026",
        "0x10",
        "1e9",
        "-",
    ],
)
def test_a_bad_time_names_the_option_and_the_forms(value: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        system.replay_bounds(None, value, None, None, NOW)
    assert exc.value.message == f"invalid value {value!r} for --until: use {system.TIME_FORMS}"
    assert "unix seconds" in system.TIME_FORMS and "RFC 3339" in system.TIME_FORMS and "1h30m" in system.TIME_FORMS


@pytest.mark.parametrize("value", ["-5", "99999999999", "2300-01-01", "9999999999999999999999", "100000000h"])
def test_a_time_outside_the_journal_is_refused_here(value: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"for --since: .*(between 1970-01-01 and 2262-04-11|use unix)"):
        system.replay_bounds(value, None, None, None, NOW)


def test_a_since_after_the_until_is_refused_as_dockerd_does() -> None:
    """What broke: ``events --since 1m --until 5m`` printed nothing and exited 0; dockerd's
    getEvents answers 400 "`since` time (...) cannot be after `until` time (...)"."""
    with pytest.raises(errors.InvalidArgument) as exc:
        system.replay_bounds("1m", "5m", None, None, NOW)
    assert exc.value.message == "`since` time (1m) cannot be after `until` time (5m)"
    same = system.replay_bounds("1700000000", "1700000000", None, None, NOW)  # equal is allowed
    assert same["since_time"] == same["until"]


# -- sequence numbers ---------------------------------------------------------------------------------


def test_sequence_numbers_have_their_own_options() -> None:
    # events with seq > since and seq <= until_seq (common.api.events.ReplayRequest)
    assert system.replay_bounds(None, None, 7, 12, NOW) == {"since": 7, "until_seq": 12}
    assert system.replay_bounds(None, None, 0, None, NOW) == {"since": 0}
    assert system.replay_bounds("10m", None, None, 12, NOW) == {
        "since_time": NOW - dt.timedelta(minutes=10),
        "until_seq": 12,
    }
    assert system.replay_bounds(None, "1700000000", 7, None, NOW) == {
        "since": 7,
        "until": _utc(2023, 11, 14, 22, 13, 20),
    }


@pytest.mark.parametrize(
    ("since", "until", "since_seq", "until_seq", "message"),
    [
        ("10m", None, 3, None, "--since and --since-seq cannot be used together"),
        ("1700000000", None, 0, None, "--since and --since-seq cannot be used together"),
        (None, "1700000000", None, 3, "--until and --until-seq cannot be used together"),
        ("bad", "bad", 1, 2, "--since and --since-seq cannot be used together"),
    ],
)
def test_a_bound_given_both_ways_is_refused(
    since: str | None, until: str | None, since_seq: int | None, until_seq: int | None, message: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        system.replay_bounds(since, until, since_seq, until_seq, NOW)


# -- the command as a user runs it (a fake events service: no sockets) ----------------------------------


class _FakeEvents:
    """Answers ``events.head`` with 42 and ``events.replay`` with one envelope; records the requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, body: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        self.requests.append((method, body))
        return {"seq": 42}

    def stream(self, method: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.requests.append((method, body))
        yield {
            "seq": 43,
            "id": "e1",
            "timestamp": _utc(2026, 11, 30, 10),
            "namespace": "default",
            "topic": "/tasks/start",
            "event": {"container_id": "c1"},
        }


def _dockyard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str, _FakeEvents]:
    fake = _FakeEvents()
    monkeypatch.setattr(system, "client", lambda _name, timeout_s=None: fake)
    monkeypatch.setattr("sys.argv", ["dockyard", "events", *args])
    capsys.readouterr()
    code = 0
    try:
        app_module.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err, fake


def test_events_since_until_unix_times_replay_by_time(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err, fake = _dockyard(monkeypatch, capsys, "--since", "1700000000", "--until", "1700000100.5")
    assert (code, err) == (0, "")
    assert out == "2026-11-30T10:00:00Z 43 default /tasks/start container_id=c1\n"
    [(method, body)] = fake.requests  # no events.head: the replay starts at the time
    assert method == "events.replay"
    assert body["since_time"] == _utc(2023, 11, 14, 22, 13, 20)
    assert body["until"] == _utc(2023, 11, 14, 22, 15, 0, 500000)
    assert "since" not in body and "until_seq" not in body and body["follow"] is True


def test_events_seq_options_replay_by_sequence_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err, fake = _dockyard(monkeypatch, capsys, "--since-seq", "0", "--until-seq", "40")
    assert (code, err) == (0, "")
    [(method, body)] = fake.requests
    assert (method, body["since"], body["until_seq"]) == ("events.replay", 0, 40)
    assert "since_time" not in body and "until" not in body


def test_events_without_since_starts_at_the_head(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, _err, fake = _dockyard(monkeypatch, capsys, "--until", "1700000000")
    assert code == 0
    assert [m for m, _b in fake.requests] == ["events.head", "events.replay"]
    assert fake.requests[1][1]["since"] == 42


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], f"error: invalid value 'yesterday' for --since: use {system.TIME_FORMS}"),
        (["--until", "1d"], f"error: invalid value '1d' for --until: use {system.TIME_FORMS}"),
        (
            ["--since", "5", "--since-seq", "5"],
            "error: --since and --since-seq cannot be used together: give a time or a seq",
        ),
        (
            ["--until", "5", "--until-seq", "5"],
            "error: --until and --until-seq cannot be used together: give a time or a seq",
        ),
    ],
)
def test_events_bad_bounds_fail_in_one_line_before_any_request(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err, fake = _dockyard(monkeypatch, capsys, *args)
    assert (code, out, err) == (1, "", message + "\n")
    assert fake.requests == []


def test_events_seq_options_take_only_whole_numbers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("-1", "1.5", "10m"):
        code, _out, err, fake = _dockyard(monkeypatch, capsys, "--since-seq", bad)
        assert code == 2 and "--since-seq" in err, err  # a usage error, as for any option of the wrong type
        assert fake.requests == []


def test_logs_since_and_until_take_the_same_forms(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.containers import _parse_since

    assert _parse_since("--since", "1700000000") == "2023-11-14T22:13:20+00:00"
    assert _parse_since("--since", "1700000000.5") == "2023-11-14T22:13:20.500000+00:00"
    assert _parse_since("--until", "2026-11-30T10:00:00Z") == "2026-11-30T10:00:00+00:00"
    ago = dt.datetime.fromisoformat(str(_parse_since("--since", "1h30m")))
    assert abs((dt.datetime.now(UTC) - ago).total_seconds() - 5400) < 60
    assert _parse_since("--since", "") is None
    with pytest.raises(SystemExit) as ended:
        _parse_since("--until", "yesterday")
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid value 'yesterday' for --until: use unix seconds") and err.count("\n") == 1


def test_logs_until_0_is_no_bound_as_in_dockerd() -> None:
    """What broke: ``dockyard logs --until 0`` printed nothing (the epoch), where ``docker logs
    --until 0`` prints everything: moby's daemon/logs.go reads an ``until`` of ``"0"`` as none."""
    from cli.containers import _parse_since

    assert _parse_since("--until", "0") is None
    assert _parse_since("--since", "0") == "1970-01-01T00:00:00+00:00"  # the epoch: everything
