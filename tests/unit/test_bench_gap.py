"""bench's --gap-ms: a value time.sleep refuses is refused by the parser, before any set-up."""

from __future__ import annotations

import argparse

import pytest

from bench.__main__ import gap_ms


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "x"])
def test_a_gap_that_cannot_be_slept_is_refused(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        gap_ms(value)


def test_a_gap_of_zero_or_more_is_taken() -> None:
    assert gap_ms("0") == 0.0
    assert gap_ms("100") == 100.0
    assert gap_ms("12.5") == 12.5
