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
_RAND_B_MASK = (1 << 62) - 1
_VARIANT = 0b10 << 62
# new_ids() counts in the last 10 hex digits when a whole request fits in them.
_LOW_BITS = 40
_POOL_DRAWS = 64


class EventIdGenerator:
    """Makes UUIDv7 strings; not thread-safe (used from the event loop only)."""

    __slots__ = ("_last_ms", "_last_random", "_prefix", "_random_pool")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0
        self._prefix = ""
        self._random_pool: list[int] = []

    def _start_millisecond(self, ms: int) -> None:
        self._last_ms = ms
        hex_ms = f"{ms:012x}"
        # "tttttttt-tttt-7": the timestamp and the version nibble, fixed within a ms.
        self._prefix = f"{hex_ms[:8]}-{hex_ms[8:]}-7"

    def _fresh_random(self) -> int:
        """80 bits from os.urandom, read 64 draws at a time: a syscall costs more than a draw."""
        pool = self._random_pool
        if not pool:
            draws = os.urandom(10 * _POOL_DRAWS)
            pool.extend(int.from_bytes(draws[i : i + 10]) for i in range(0, len(draws), 10))
        return pool.pop()

    def new_id(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._start_millisecond(now_ms)
            # Leave headroom so increments inside one millisecond never overflow.
            self._last_random = self._fresh_random() & (_RANDOM_MASK >> 1)
        else:
            # Same millisecond (or the clock stepped back): keep order by counting up.
            self._last_random += 1
            if self._last_random > _RANDOM_MASK:
                self._start_millisecond(self._last_ms + 1)
                self._last_random = 0
        random_bits = self._last_random
        # rand_a (12 bits), the variant bits "10", rand_b (62 bits): 19 hex digits.
        tail = f"{(random_bits >> 62) << 64 | _VARIANT | (random_bits & _RAND_B_MASK):019x}"
        return f"{self._prefix}{tail[:3]}-{tail[3:7]}-{tail[7:]}"

    def new_ids(self, count: int) -> list[str]:
        """`count` ids, as if by count calls of new_id(), made in one go.

        Consecutive ids of one millisecond differ only in their last hex digits,
        so the shared part is formatted once.
        """
        if count <= 0:
            return []
        first = self.new_id()
        if count == 1:
            return [first]
        first_random = self._last_random
        last_random = first_random + count - 1
        if last_random > _RANDOM_MASK or first_random >> _LOW_BITS != last_random >> _LOW_BITS:
            # Rare: the count would cross into the next millisecond or carry
            # into the shared digits; take the general path.
            return [first, *(self.new_id() for _ in range(count - 1))]
        self._last_random = last_random
        stem = first[: -_LOW_BITS // 4]
        low = first_random & ((1 << _LOW_BITS) - 1)
        return [first, *[f"{stem}{value:010x}" for value in range(low + 1, low + count)]]
