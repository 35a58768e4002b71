"""How hard the reliability harness pushes: the CI tier (``make test``) or
the full tier (``make reliability``, REHYDRATE_TIER=full)."""

from __future__ import annotations

import os

FULL = os.environ.get("REHYDRATE_TIER") == "full"


def scale(ci: int, full: int) -> int:
    """A count for this tier (runs, kills, flips, ...)."""
    return full if FULL else ci


# Under CI (CI=true, as CI services set it) a tier that cannot run fails the
# run: a skip there would pass a build that checked nothing.
CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_tool(reason: str) -> None:
    """A tool a test needs is not installed: skip the test, or, under CI,
    fail it (``make test`` installs every tool; docs/reliability.md)."""
    import pytest

    if CI:
        pytest.fail(f"{reason}; under CI a missing tool fails the run instead of skipping",
                    pytrace=False)
    pytest.skip(reason)
