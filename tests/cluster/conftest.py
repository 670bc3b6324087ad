"""Fixtures for the cluster scheduler's tests."""

import pytest

from weft.cluster.gavel import gavel_dir as find_gavel_dir
from weft.cluster.model import ClusterError


@pytest.fixture(scope="session")
def gavel_dir():
    """Gavel's data directory (--gavel-dir / WEFT_GAVEL_DIR / shared/data/gavel), or skip saying why."""
    try:
        return find_gavel_dir()
    except ClusterError as exc:
        pytest.skip(str(exc))
