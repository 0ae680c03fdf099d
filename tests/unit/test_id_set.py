"""The native IdSet (id_set.c) against Python's set, and RecentIds on either table.

IdSet is the file store's set of recent ids when the extension is built: a
table with backward-shift deletion that never rebuilds while its size holds
steady. These tests hold it to set's answers for every operation the store
uses, on tables small enough that ids collide and wrap around the end, and
check that churn at a steady size leaves its table as it is. They run again
under AddressSanitizer + UBSan (tests/unit/test_codec_sanitizers.py).
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aep.events.codec import native_codec_problem
from aep.storage.file import IdTable, RecentIds, new_id_table
from tests.helpers.codec_wire import DEFAULTS  # noqa: F401  (loads a named test build)

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


def _idset(expected: int = 0) -> IdTable:
    from aep.events.codec._native import IdSet

    table: IdTable = IdSet(expected)
    return table


def _same(table: IdTable, model: set[str], universe: set[str]) -> None:
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
            assert table.add_if_new(copies) == new  # type: ignore[attr-defined]
            if new:
                model.update(ids)
        elif operation == "contains":
            for event_id in copies:
                assert (event_id in table) == (event_id in model)
        else:
            table.clear()  # type: ignore[attr-defined]
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
            table.add_if_new(["d", *bad])  # type: ignore[attr-defined]
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
    from aep.events.codec._native import IdSet

    assert isinstance(new_id_table(10), IdSet)


def _tables() -> list[object]:
    tables: list[object] = [pytest.param(set, id="set")]
    if native_codec_problem() is None:
        tables.append(pytest.param(_idset, id="IdSet"))
    return tables


@pytest.mark.parametrize("make_table", _tables())
def test_recent_ids_claims_confirms_forgets_and_ages_out_on_either_table(
    make_table: object,
) -> None:
    recent = RecentIds(window=10.0, max_ids=4, table=make_table())  # type: ignore[operator]
    assert recent.claim_if_new(["a", "b"])
    assert not recent.claim_if_new(["b", "c"])  # b is claimed: nothing of this is claimed
    assert recent.fresh_mask(["c", "b", "c"]) == [True, False, False]
    assert not recent.claim_if_new(["d", "d"])  # repeats: nothing claimed
    assert recent.fresh_mask(["d"]) == [True]
    recent.confirm(["a", "b"], at=100.0)
    recent.claim(["c"])
    recent.forget(["c"])  # its write failed: new again
    assert recent.fresh_mask(["c"]) == [True]
    recent.add_batch(["c", "d", "e"], at=105.0)  # 5 ids > max_ids 4: the oldest batch goes
    assert recent.fresh_mask(["a", "b", "c", "d", "e"]) == [True, True, False, False, False]
    recent.add_batch(["f"], at=116.0)  # 105 is older than the 10 s window now
    assert recent.fresh_mask(["c", "d", "e", "f"]) == [True, True, True, False]
