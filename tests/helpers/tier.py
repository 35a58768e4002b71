"""How hard the reliability harness pushes: the CI tier (``make test``) or
the full tier (``make reliability``, REHYDRATE_TIER=full)."""

from __future__ import annotations

import os

FULL = os.environ.get("REHYDRATE_TIER") == "full"


def scale(ci: int, full: int) -> int:
    """A count for this tier (runs, kills, flips, ...)."""
    return full if FULL else ci
