"""Exponential backoff with full jitter, shared by the archive's requests
(objstore.py, archiver.py) and the warmup's hook retries (warmup.py).

The wait before try n+1 is a uniform draw below ``min(cap_s, base_s *
2**(n-1))``: many clients retrying one failure do not come back together
(full jitter), and none waits longer than the cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def bound(base_s: float, cap_s: float, attempt: int) -> float:
    """The most the wait after failed try ``attempt`` (1, 2, ...) may be."""
    # (2 ** attempt grows without limit; the cap is reached long before.)
    return min(cap_s, base_s * (2.0 ** min(attempt - 1, 64)))


def delay(base_s: float, cap_s: float, attempt: int,
          draw: Callable[[], float] = random.random) -> float:
    """The wait after failed try ``attempt``: ``draw()`` (a fraction in
    [0, 1), random by default) of its bound."""
    return bound(base_s, cap_s, attempt) * min(max(draw(), 0.0), 1.0)


def backoff_delays(base_s: float, cap_s: float) -> Iterator[float]:
    """Delays after try 1, 2, ...: exponential, capped, fully jittered."""
    attempt = 1
    while True:
        yield delay(base_s, cap_s, attempt)
        attempt += 1
