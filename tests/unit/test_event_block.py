"""EventBlock and EventBatch: slices and joins keep every event's bytes, id and type."""

from __future__ import annotations

import orjson
import pytest

from aep.events.block import EMPTY_BLOCK, EventBatch, EventBlock

RECORDS = [
    {"event_id": f"id-{index}", "user_id": "u\n" * index, "event_type": "EVENT_TYPE_CLICK"}
    for index in range(7)
]


def _block() -> EventBlock:
    return EventBlock.of_records(RECORDS)


def test_a_block_of_records_is_the_reference_json_lines() -> None:
    block = _block()
    assert len(block) == 7
    assert [orjson.loads(line) for line in block.lines.splitlines()] == RECORDS
    assert block.event_ids == [record["event_id"] for record in RECORDS]
    assert block.event_types == bytes([2] * 7)
    assert list(block.ends)[-1] == len(block.lines)


@pytest.mark.parametrize(("start", "stop"), [(0, 7), (0, 3), (3, 7), (2, 5), (4, 4), (6, 7)])
def test_slices_of_slices_hold_exactly_their_events(start: int, stop: int) -> None:
    part = _block().slice(start, stop)
    assert part.event_ids == [record["event_id"] for record in RECORDS[start:stop]]
    assert EventBatch([part]).records() == RECORDS[start:stop]
    if stop - start >= 2:
        inner = part.slice(1, stop - start)
        assert EventBatch([inner]).records() == RECORDS[start + 1 : stop]


def test_a_batch_joins_parts_of_blocks_in_order() -> None:
    block = _block()
    batch = EventBatch([block.slice(5, 7), EMPTY_BLOCK, block.slice(0, 2), block.slice(2, 5)])
    order = [5, 6, 0, 1, 2, 3, 4]
    assert len(batch) == 7
    assert batch.event_ids == [f"id-{index}" for index in order]
    assert batch.records() == [RECORDS[index] for index in order]
    assert [orjson.loads(line) for line in batch.lines()] == batch.records()
    assert batch.joined.count(b"\n") == 7
    assert batch.nbytes == len(block.lines)


def test_select_keeps_the_chosen_events_in_order() -> None:
    batch = EventBatch([_block()])
    kept = batch.select([index % 3 == 0 for index in range(7)])
    assert kept.event_ids == ["id-0", "id-3", "id-6"]
    assert kept.records() == [RECORDS[0], RECORDS[3], RECORDS[6]]
    assert len(batch.select([False] * 7)) == 0
    assert batch.select([True] * 7) is batch


def test_an_empty_batch_has_no_lines() -> None:
    assert EventBatch().lines() == []
    assert EventBatch().records() == []
