"""Exponential backoff between retries, for store writes and for opening a store."""

from __future__ import annotations

import random

# Past this many doublings any initial delay is above any maximum; bounding the
# exponent keeps a retry loop without an attempt limit from overflowing a float.
_MAX_DOUBLINGS = 64


def backoff_delay(attempt: int, initial: float, maximum: float, *, jitter: bool = True) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 for the first failure).

    `initial` doubled per attempt, at most `maximum`. With jitter, a random share
    of it from half to all, so that writers failing together do not retry in step.
    """
    delay = min(maximum, initial * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    if jitter:
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
    return delay
