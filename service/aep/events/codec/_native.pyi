"""Types of the native pass (_native.c); see its DECODE_DOC."""

from collections.abc import Callable, Iterable

SOURCE_SHA256: str
TYPE_SLOTS: int

class WireError(ValueError): ...

class Codec:
    def __init__(
        self,
        max_id_length: int,
        max_attributes: int,
        max_attribute_key_length: int,
        max_attribute_value_length: int,
        max_event_age: float,
        max_clock_skew: float,
        max_batch_events: int,
        reason: Callable[[bytes, float], str],
        records: bool = True,
    ) -> None: ...
    def decode(
        self, kind: int, data: bytes, now: float, received_at: str
    ) -> tuple[
        int,
        bool,
        int,
        int,
        tuple[int, int, int, int],
        list[dict[str, object]] | None,
        list[tuple[int, str, str]],
        bytes,
        bytes,
        bytes,
        list[str],
        bytes,
    ]: ...
    def _set_id_state(self, last_ms: int, last_random: int) -> None: ...
    def _next_id(self) -> str: ...

class IdSet:
    """A set of str that never rebuilds while its size holds steady (id_set.c)."""

    def __init__(self, expected: int = 0) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, event_id: object, /) -> bool: ...
    def isdisjoint(self, event_ids: Iterable[str], /) -> bool: ...
    def update(self, event_ids: Iterable[str], /) -> None: ...
    def difference_update(self, event_ids: Iterable[str], /) -> None: ...
    def add_if_new(self, event_ids: Iterable[str], /) -> bool: ...
    def clear(self) -> None: ...
