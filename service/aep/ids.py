"""Server-assigned event ids: UUIDv7 (RFC 9562), unique and time-ordered.

Within one process ids are strictly increasing: inside one millisecond the
74 random bits are incremented (RFC 9562 §6.2, method 3, "monotonic random").
Across processes uniqueness rests on those random bits.
"""

from __future__ import annotations

import os
import time

_RANDOM_BITS = 74
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


class EventIdGenerator:
    """Makes UUIDv7 strings; not thread-safe (used from the event loop only)."""

    __slots__ = ("_last_ms", "_last_random")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0

    def new_id(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            # Leave headroom so increments inside one millisecond never overflow.
            self._last_random = int.from_bytes(os.urandom(10)) & (_RANDOM_MASK >> 1)
        else:
            # Same millisecond (or the clock stepped back): keep order by counting up.
            self._last_random += 1
            if self._last_random > _RANDOM_MASK:
                self._last_ms += 1
                self._last_random = 0
        rand_a = self._last_random >> 62
        rand_b = self._last_random & ((1 << 62) - 1)
        value = (self._last_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
