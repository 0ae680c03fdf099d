from __future__ import annotations

import time
import uuid

from aep.ids import EventIdGenerator


def test_ids_are_uuid7_unique_and_time_ordered() -> None:
    generator = EventIdGenerator()
    ids = [generator.new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # the string order is the time order
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    embedded_ms = int(ids[0].replace("-", "")[:12], 16)
    assert abs(embedded_ms - time.time() * 1000) < 5_000


def test_two_generators_do_not_collide() -> None:
    first, second = EventIdGenerator(), EventIdGenerator()
    ids = {first.new_id() for _ in range(10_000)} | {second.new_id() for _ in range(10_000)}
    assert len(ids) == 20_000
