"""``cli.resume.Skip``: which bytes of a container's log were printed before the stream was lost.

The log's entries (lines, 16 KiB pieces, a last piece without newline) need not line up
with the frames the CLI printed; the skip counts bytes per stream, so it may end inside
an entry, and an entry logged after the loss, which the skip would swallow, shows that
the log lost its oldest part to rotation.
"""

from __future__ import annotations

from cli.resume import Skip, rfc3339

T0 = 1_700_000_000 * 1_000_000_000
LOST_AT = rfc3339(T0 + 5_000_000_000)


def _at(s: int) -> str:
    return rfc3339(T0 + s * 1_000_000_000)


def _replay(skip: Skip, entries: list[tuple[int, bytes, str]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {1: b"", 2: b""}
    for stream, data, stamp in entries:
        out[stream] += skip.take(stream, data, stamp)
    return out


def test_rfc3339_matches_the_json_file_format_and_orders_as_time() -> None:
    assert rfc3339(T0 + 123) == "2023-11-14T22:13:20.000000123Z"
    assert rfc3339(T0 + 123_456_789, 6) == "2023-11-14T22:13:20.123456Z"
    assert rfc3339(T0 + 999_999_999) < rfc3339(T0 + 1_000_000_000)


def test_printed_bytes_are_skipped_per_stream_and_the_rest_shown_once() -> None:
    # printed before the loss: "one\n" + "tw" of stdout (a frame ended mid-line), "e1\n" of stderr
    skip = Skip({1: 6, 2: 3}, LOST_AT)
    entries = [(1, b"one\n", _at(1)), (2, b"e1\n", _at(1)), (1, b"two\n", _at(6)), (2, b"e2\n", _at(7))]
    assert _replay(skip, entries) == {1: b"o\n", 2: b"e2\n"}
    assert not skip.rotated


def test_a_line_printed_in_part_before_the_loss_is_logged_whole_after_it() -> None:
    # "abc" printed without newline; the shim logs the line once "def\n" arrives, after the loss
    skip = Skip({1: 3}, LOST_AT)
    assert _replay(skip, [(1, b"abcdef\n", _at(8)), (1, b"x\n", _at(9))]) == {1: b"def\nx\n", 2: b""}
    assert not skip.rotated


def test_frames_joining_many_entries_skip_across_their_boundaries() -> None:
    skip = Skip({1: 10}, LOST_AT)
    assert _replay(skip, [(1, b"aaaa\n", _at(1)), (1, b"bbbb\n", _at(2)), (1, b"cccc\n", _at(6))])[1] == b"cccc\n"


def test_nothing_printed_shows_the_whole_log() -> None:
    skip = Skip({}, LOST_AT)
    assert _replay(skip, [(1, b"a\n", _at(1)), (2, b"b\n", _at(2))]) == {1: b"a\n", 2: b"b\n"}


def test_a_log_that_lost_its_start_to_rotation_is_noticed_and_nothing_new_is_skipped() -> None:
    # 12 bytes printed, but the log kept only the last 4 of them ("ccc\n"), then new output
    skip = Skip({1: 12}, LOST_AT)
    out = _replay(skip, [(1, b"ccc\n", _at(3)), (1, b"new1\n", _at(6)), (1, b"new2\n", _at(7))])
    assert out[1] == b"new1\nnew2\n"
    assert skip.rotated
