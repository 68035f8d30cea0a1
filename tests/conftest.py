"""Session-wide fixtures: one throwaway PostgreSQL per test session (see pgcluster.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from pgcluster import TempPostgres  # noqa: E402


@pytest.fixture(scope="session")
def pg() -> TempPostgres:
    """A running throwaway PostgreSQL cluster (Debian's binaries, temp dir), shared by the
    session. Tests that change its configuration must restore it or use their own database."""
    cluster = TempPostgres().init().start()
    yield cluster
    cluster.destroy()
