"""The native IdSet (id_set.c) against Python's set, and RecentIds on either table.

IdSet is the file store's set of recent ids when the extension is built: a
table with backward-shift deletion that never rebuilds while its size holds
steady, keyed on each id's bytes as its stored line holds them (escaped as
orjson escapes it), so the store claims a batch straight from its JSON Lines.
These tests hold it to set's answers for every operation the store uses,
through both doors (str ids, and the lines of the same ids), on tables small
enough that ids collide and wrap around the end; check that churn at a steady
size leaves its table as it is; and hold ids_of_lines to orjson. They run
again under AddressSanitizer + UBSan (tests/unit/test_codec_sanitizers.py).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aep.events.block import EventBatch, EventBlock, ids_of_lines_with_orjson
from aep.events.codec import native_codec_problem
from aep.storage.file import NativeIdTable, RecentIds, SetIdTable, new_id_table
from tests.helpers.codec_wire import DEFAULTS  # noqa: F401  (loads a named test build)

if TYPE_CHECKING:
    from aep.events.codec._native import IdSet

native = pytest.mark.skipif(
    native_codec_problem() is not None,
    reason=f"native extension not built: {native_codec_problem()}",
)
EXAMPLES = int(os.environ.get("AEP_CODEC_EXAMPLES", "300"))

# Few distinct ids, of every str kind (1, 2 and 4 bytes per code point), so a
# run adds, removes and looks up the same ones often; lists longer than the
# ids id_set.c fetches ahead (LOOKAHEAD, 16), so its ring of hashes wraps.
IDS = st.sampled_from(["a", "b", "e1", "é", "中文", "😀x", "", "a" * 40, "id-7", "ID-7", "\x00"])
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["update", "difference_update", "isdisjoint", "add_if_new", "contains", "clear"]
        ),
        st.lists(IDS | st.text(max_size=6), max_size=40),
    ),
    max_size=60,
)


def _idset(expected: int = 0) -> IdSet:
    from aep.events.codec._native import IdSet

    return IdSet(expected)


def _same(table: IdSet, model: set[str], universe: set[str]) -> None:
    assert len(table) == len(model)
    for event_id in universe:
        assert (event_id in table) == (event_id in model), event_id


@native
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS, st.sampled_from([0, 1, 5, 64]))
def test_idset_answers_as_set_does(operations: list[tuple[str, list[str]]], expected: int) -> None:
    table = _idset(expected)
    model: set[str] = set()
    universe: set[str] = set()
    for operation, ids in operations:
        universe.update(ids)
        # Copies: the same text as a different object must be found too.
        copies = [("" + event_id + "x")[:-1] for event_id in ids]
        if operation == "update":
            table.update(ids)
            model.update(ids)
        elif operation == "difference_update":
            table.difference_update(copies)
            model.difference_update(ids)
        elif operation == "isdisjoint":
            assert table.isdisjoint(copies) == model.isdisjoint(ids)
        elif operation == "add_if_new":
            # All of them if none is in the set and none repeats, else none.
            new = model.isdisjoint(ids) and len(set(ids)) == len(ids)
            assert table.add_if_new(copies) == new
            if new:
                model.update(ids)
        elif operation == "contains":
            for event_id in copies:
                assert (event_id in table) == (event_id in model)
        else:
            table.clear()
            model.clear()
        _same(table, model, universe)


@native
def test_idset_takes_generators_and_tuples() -> None:
    table = _idset()
    table.update(f"id-{n}" for n in range(100))
    table.difference_update(tuple(f"id-{n}" for n in range(0, 100, 2)))
    assert len(table) == 50
    assert table.isdisjoint(f"id-{n}" for n in range(0, 100, 2))
    assert not table.isdisjoint(iter(["id-99"]))


@native
def test_idset_refuses_what_is_not_str_and_is_left_as_it_was() -> None:
    class Text(str):
        pass

    table = _idset()
    table.update(["a", "b"])
    for bad in ([1], [b"a"], [Text("a")], [None]):
        with pytest.raises(TypeError, match="IdSet holds str"):
            table.update(["c", *bad])
        with pytest.raises(TypeError, match="IdSet holds str"):
            table.isdisjoint(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="IdSet holds str"):
            table.add_if_new(["d", *bad])
        with pytest.raises(TypeError, match="IdSet holds str"):
            _ = bad[0] in table
    assert len(table) == 2 and "c" not in table  # every id is checked first: none went in
    with pytest.raises(TypeError):
        table.update(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(table)
    with pytest.raises(ValueError, match="expected must be >= 0"):
        _idset(-1)


@native
def test_idset_churn_at_a_steady_size_never_regrows_its_table() -> None:
    """A batch in, the oldest batch out: the table stays the one it started with."""
    table = _idset(10_000)
    size = sys.getsizeof(table)
    batches = [[f"{n}-{i}" for i in range(500)] for n in range(200)]
    for n, batch in enumerate(batches):
        assert table.isdisjoint(batch)
        table.update(batch)
        if n >= 20:
            table.difference_update(batches[n - 20])
            assert len(table) == 10_000
        assert sys.getsizeof(table) == size
    for batch in batches[-20:]:
        assert not table.isdisjoint(batch)
    for batch in batches[:-20]:
        assert table.isdisjoint(batch)


@native
def test_idset_churn_of_long_ids_frees_every_copy_it_made() -> None:
    """Ids longer than an entry holds live in copies: churn at a steady size keeps
    the same bytes, and emptying the table frees them all."""
    from aep.events.codec._native import IdSet

    table = IdSet(2_000)
    empty_size = sys.getsizeof(table)
    batches = [
        _batch([f"{n:03d}-{i:03d}-" + "x" * (30 + i % 50) for i in range(100)]) for n in range(60)
    ]
    packs = []
    for n, batch in enumerate(batches):
        pack = table.claim_lines(batch.parts)
        assert pack is not None
        packs.append(pack)
        if n >= 10:
            table.discard_pack(packs[n - 10])
            assert len(table) == 1_000
            if n == 10:
                steady_size = sys.getsizeof(table)
            assert sys.getsizeof(table) == steady_size
    for pack in packs[-10:]:
        table.discard_pack(pack)
    assert len(table) == 0 and sys.getsizeof(table) == empty_size


@native
def test_idset_grows_past_what_it_expected_and_keeps_every_id() -> None:
    table = _idset(4)
    ids = [f"event-{n}" for n in range(50_000)]
    table.update(ids)
    assert len(table) == 50_000
    assert all(event_id in table for event_id in ids)
    table.difference_update(ids[::3])
    assert len(table) == 50_000 - len(ids[::3])
    assert all((event_id in table) == (n % 3 != 0) for n, event_id in enumerate(ids))


@native
def test_the_file_store_uses_the_native_table_when_it_is_built() -> None:
    assert isinstance(new_id_table(10), NativeIdTable)


# UUIDs in canonical text are kept as their 16 bytes; the others as they are.
UUID = "0190a3b2-7c4d-7e5f-8a9b-0c1d2e3f4a5b"
UUIDS = (
    UUID,
    UUID.upper(),  # another id, not packed
    UUID[:-1] + "c",
    UUID[:8] + "x" + UUID[9:],  # a dash where none goes
    UUID[:35] + "g",  # not hex
    UUID[:35] + "f",
    UUID[:9] + "-" + UUID[10:],
    UUID + "0",
)

# Ids whose stored forms escape (quote, backslash, control characters), hold
# non-ASCII text, end in backslashes, or are longer than the 36 bytes an entry
# holds in place (a copy elsewhere).
LINE_IDS = st.sampled_from(
    [
        *("a", "b", 'q"', "\\", "x\\", '\\"', "\n", "\x01", "\x1f", "é", "中文", "😀x", ""),
        *("a" * 37, "id-7", "u" * 36, "v" * 200, '"' * 20),
        *UUIDS,
    ]
)


def _batch(ids: list[str], split: int = 0) -> EventBatch:
    """The ids as stored lines (the reference encoder's), in one block or cut in two."""
    records = [{"event_id": event_id, "n": index} for index, event_id in enumerate(ids)]
    block = EventBlock.of_records(records)
    if not 0 < split < len(ids):
        return EventBatch((block,))
    return EventBatch((block.slice(0, split), block.slice(split, len(ids))))


LINE_OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["claim_lines", "fresh_lines", "discard_pack", "add_ids", "update"]),
        st.lists(LINE_IDS | st.text(max_size=5), max_size=24),
        st.integers(0, 24),
    ),
    max_size=40,
)


@native
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LINE_OPERATIONS, st.sampled_from([0, 1, 64]))
def test_idset_claims_an_events_lines_as_it_claims_their_ids(
    operations: list[tuple[str, list[str], int]], expected: int
) -> None:
    from aep.events.codec._native import IdSet

    table = IdSet(expected)
    model: set[str] = set()
    universe: set[str] = set()
    packs: list[tuple[bytes, list[str]]] = []
    for operation, ids, split in operations:
        universe.update(ids)
        batch = _batch(ids, split)
        if operation == "claim_lines":
            new = model.isdisjoint(ids) and len(set(ids)) == len(ids)
            pack = table.claim_lines(batch.parts)
            assert (pack is not None) == new
            if pack is not None:
                model.update(ids)
                packs.append((pack, ids))
        elif operation == "fresh_lines":
            seen: set[str] = set()
            expected_mask = []
            for event_id in ids:
                expected_mask.append(event_id not in model and event_id not in seen)
                seen.add(event_id)
            assert table.fresh_lines(batch.parts) == expected_mask
        elif operation == "discard_pack":
            if packs:
                pack, claimed = packs.pop(split % len(packs))
                table.discard_pack(pack)
                model.difference_update(claimed)
        elif operation == "add_ids":
            packs.append((table.add_ids(ids), ids))
            model.update(ids)
        else:  # the str door: the same keys
            table.update(ids)
            model.update(ids)
        _same(table, model, universe)
    for pack, claimed in packs:
        table.discard_pack(pack)
        model.difference_update(claimed)
    _same(table, model, universe)


@native
def test_a_line_without_an_event_id_string_first_is_keyed_on_the_whole_line() -> None:
    from aep.events.codec._native import IdSet, ids_of_lines

    table = IdSet()
    lines = [b"{}\n", b'{"event_id":5}\n', b'{"event_id":"unterminated\n', b'{"x":"{}"}\n']
    pack = table.claim_lines(lines)
    assert pack is not None and len(table) == 4
    # A whole line is a kind of key no id meets, even an id of the same bytes.
    assert "{}" not in table and '{"event_id":5}' not in table
    assert table.fresh_lines([b'{"event_id":"{}"}\n', b"{}\n"]) == [True, False]
    assert table.claim_lines([b"{}\n"]) is None
    table.discard_pack(pack)
    assert len(table) == 0
    for line in lines:
        with pytest.raises(ValueError, match="does not start with an event_id string"):
            ids_of_lines(line)


@native
def test_discard_pack_refuses_what_is_not_a_pack_and_changes_nothing() -> None:
    from aep.events.codec._native import IdSet

    table = IdSet()
    pack = table.claim_lines([_batch(["a", "b" * 50, "c"]).joined])
    assert pack is not None
    for bad in (pack[:-1], pack[:3], pack + b"\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"):
        with pytest.raises(ValueError, match="not a pack of keys"):
            table.discard_pack(bad)
        assert len(table) == 3
    with pytest.raises(TypeError, match="a pack is bytes"):
        table.discard_pack(bytearray(pack))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.claim_lines([b"ok\n", "not bytes"])  # type: ignore[list-item]
    assert len(table) == 3
    table.discard_pack(pack)
    assert len(table) == 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.text(), max_size=12))
def test_ids_of_lines_reads_back_every_id_the_reference_encoder_wrote(ids: list[str]) -> None:
    block = _batch(ids).blocks[0] if ids else None
    lines = block.lines if block else b""
    assert ids_of_lines_with_orjson(lines) == ids
    if native_codec_problem() is None:
        from aep.events.codec._native import ids_of_lines

        assert ids_of_lines(lines) == ids
        assert ids_of_lines(memoryview(lines)) == ids


@native
@pytest.mark.parametrize(
    "escape", ["\\q", "\\u12", "\\ud800", "\\udc00", "\\ud800\\u0041", "\\u00zz", "\\"]
)
def test_ids_of_lines_refuses_a_malformed_escape(escape: str) -> None:
    from aep.events.codec._native import ids_of_lines

    line = b'{"event_id":"a' + escape.encode() + b'x"}\n'
    with pytest.raises(ValueError):
        ids_of_lines(line)


def _tables() -> list[object]:
    tables: list[object] = [pytest.param(SetIdTable, id="set")]
    if native_codec_problem() is None:
        tables.append(pytest.param(lambda: NativeIdTable(0), id="IdSet"))
    return tables


@pytest.mark.parametrize("make_table", _tables())
def test_recent_ids_claims_confirms_forgets_and_ages_out_on_either_table(
    make_table: object,
) -> None:
    recent = RecentIds(window=10.0, max_ids=4, table=make_table())  # type: ignore[operator]
    ab = recent.claim_if_new(_batch(["a", "b"]))
    assert ab is not None
    assert recent.claim_if_new(_batch(["b", "c"])) is None  # b is claimed: nothing of this is
    assert recent.fresh_mask(_batch(["c", "b", "c"])) == [True, False, False]
    assert recent.claim_if_new(_batch(["d", "d"])) is None  # repeats: nothing claimed
    assert recent.fresh_mask(_batch(["d"])) == [True]
    empty = recent.claim_if_new(EventBatch())
    assert empty is not None and not empty  # claimed, though nothing
    recent.confirm(ab, at=100.0)
    c = recent.claim_if_new(_batch(["c"]))
    assert c is not None
    recent.forget(c)  # its write failed: new again
    assert recent.fresh_mask(_batch(["c"])) == [True]
    cde = recent.claim_if_new(_batch(["c", "d", "e"]))
    assert cde is not None
    recent.confirm(cde, at=105.0)  # 5 ids > max_ids 4: the oldest batch goes
    assert recent.fresh_mask(_batch(["a", "b", "c", "d", "e"])) == [True, True, False, False, False]
    recent.add_ids(["f"], at=116.0)  # 105 is older than the 10 s window now
    assert recent.fresh_mask(_batch(["c", "d", "e", "f"])) == [True, True, True, False]
    assert len(recent) == 1


@native
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6), st.binary(max_size=80))
def test_idset_takes_any_bytes_as_lines_or_pack_without_harm(
    parts: list[bytes], pack: bytes
) -> None:
    """Random bytes as JSON Lines or as a pack (run under ASan + UBSan too): lines
    always give keys; a pack is taken whole or refused whole (ValueError)."""
    from aep.events.codec._native import IdSet, ids_of_lines

    table = IdSet(4)
    claimed = table.claim_lines(parts)
    assert claimed is not None or len(table) == 0
    held = len(table)
    assert table.fresh_lines(parts) == table.fresh_lines(parts)  # it leaves the table as it was
    assert len(table) == held
    try:
        table.discard_pack(pack)
    except ValueError:
        assert len(table) == held  # refused whole
    if claimed is not None:
        table.discard_pack(claimed)
    for part in parts:
        try:
            ids = ids_of_lines(part)
        except ValueError:
            continue
        assert len(ids) == part.count(b"\n") + (bool(part) and not part.endswith(b"\n"))
