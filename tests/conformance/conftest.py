"""Fixtures of the conformance suites: ``direct`` runs each test on every snapshotter."""

from tests.snapshot_util import direct

__all__ = ["direct"]
