from __future__ import annotations

import time
import uuid

from aep.events.ids import EventIdGenerator


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


def test_new_ids_continue_the_sequence_of_new_id() -> None:
    generator = EventIdGenerator()
    ids = [generator.new_id()]
    for count in (1, 2, 100, 3000, 7):
        block = generator.new_ids(count)
        assert len(block) == count
        ids.extend(block)
        ids.append(generator.new_id())
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == event_id


def test_a_block_counts_up_by_one() -> None:
    block = EventIdGenerator().new_ids(500)
    first = uuid.UUID(block[0]).int
    assert [uuid.UUID(event_id).int - first for event_id in block] == list(range(500))


def test_new_ids_carrying_into_the_shared_digits_stay_ordered() -> None:
    generator = EventIdGenerator()
    # A millisecond ahead of the clock, so every id counts up from here, and
    # a counter 3 below a carry out of the last 40 bits: the general path.
    generator._start_millisecond(time.time_ns() // 1_000_000 + 60_000)
    generator._last_random = (1 << 40) - 3
    block = generator.new_ids(10)
    assert block == sorted(block)
    assert len(set(block)) == 10
    assert block[0][-11] != block[-1][-11]  # the carry happened inside the block
    first = uuid.UUID(block[0]).int
    assert [uuid.UUID(event_id).int - first for event_id in block] == list(range(10))


def test_single_ids_and_blocks_interleaved_stay_in_order() -> None:
    generator = EventIdGenerator()
    issued: list[str] = []
    for round_ in range(3000):
        kind = round_ % 7
        if kind < 4:
            issued.extend(generator.new_ids(1))
        elif kind < 6:
            issued.extend(generator.new_ids(kind * 3))
        else:
            issued.append(generator.new_id())
    assert issued == sorted(issued)
    assert len(set(issued)) == len(issued)
    assert all(uuid.UUID(event_id).version == 7 for event_id in issued)
