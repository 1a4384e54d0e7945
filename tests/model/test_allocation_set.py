"""An AllocationSet held as columns (the month's daily sets) reads back the rows it was built
from: every field, in order, whatever the values (None, zero, huge, negative zero), and
compares, folds and is immutable like a set held as rows."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import msgspec
import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.model.finance import _fold_day
from aifinops.model.inputs import EMPTY_LABELS, Allocation, AllocationSet
from aifinops.sources.opencost import parse_allocation_response
from tests.model.builders import pod, resolver

T0 = 1_750_000_000.0


def _awkward_rows() -> tuple[Allocation, ...]:
    shared = {"team": "alpha"}
    return (
        pod("team-alpha", "a", {"aifinops_io_tenant": "alpha"}, shared, cpu_cost=1.5, gpu_cost=4.0),
        pod("team-alpha", "b", None, shared, ram_cost=1e300, pv_cost=5e-324),
        Allocation("__idle__", None, None, None, 60.0, gpu_cost=7.25, gpu_usage_average=None),
        Allocation("c/__unallocated__", "c", None, None, 0.0, gpu_usage_average=0.0),
        Allocation("ns/d", "ns", "d", "n2", 1440.0, gpu_count=0.5, gpu_usage_average=0.125),
        Allocation("ns/e", "ns", "e", None, -0.0, external_cost=2.0, pv_byte_hours=3.0),
    )


def _fields(row: Allocation) -> tuple[object, ...]:
    return msgspec.structs.astuple(row)


@pytest.mark.parametrize("source", ["awkward", "simulator"])
def test_columns_read_back_every_field_of_every_row_in_order(source: str) -> None:
    if source == "simulator":
        sim = SimCluster(ClusterSpec.scaled(40))
        body = msgspec.json.encode(
            sim.opencost_allocation(T0, 1.0, aggregate="namespace,pod", include_idle=True)
        )
        rows = tuple(parse_allocation_response(body, 1.0).allocations)
    else:
        rows = _awkward_rows()
    assert len(rows) > 5
    columnar = AllocationSet.columnar(2.0, iter(rows))
    back = columnar.allocations
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        assert got == want
        # The same values bit for bit (negative zero, subnormals) and the same types.
        for g, w in zip(_fields(got), _fields(want), strict=True):
            assert type(g) is type(w)
            if isinstance(w, float):
                assert math.copysign(1.0, g) == math.copysign(1.0, w) and g == w
        # Label maps are the rows' own objects, not copies.
        assert got.labels is want.labels and got.namespace_labels is want.namespace_labels
    assert columnar == AllocationSet(2.0, rows)
    assert columnar.allocations == back  # read again: equal rows
    for field in Allocation.__struct_fields__:
        want_column = [getattr(row, field) for row in rows]
        assert list(columnar.column(field)) == want_column
        assert list(AllocationSet(2.0, rows).column(field)) == want_column
    for either in (columnar, AllocationSet(2.0, rows)):
        with pytest.raises(KeyError):
            either.column("cost")


def test_an_empty_set_and_a_different_window_or_row() -> None:
    empty = AllocationSet.columnar(24.0, ())
    assert empty.allocations == ()
    assert empty == AllocationSet(24.0, ())
    rows = _awkward_rows()
    assert AllocationSet.columnar(1.0, rows) != AllocationSet(2.0, rows)
    changed = (*rows[:-1], msgspec.structs.replace(rows[-1], external_cost=2.5))
    assert AllocationSet.columnar(1.0, rows) != AllocationSet(1.0, changed)
    assert AllocationSet.columnar(1.0, rows).allocations[2].labels is EMPTY_LABELS


def test_a_set_is_immutable_either_way() -> None:
    for s in (AllocationSet(1.0, _awkward_rows()), AllocationSet.columnar(1.0, _awkward_rows())):
        with pytest.raises(FrozenInstanceError):
            s.window_hours = 2.0  # type: ignore[misc]
        with pytest.raises(TypeError):
            hash(s)


def test_a_columnar_day_folds_to_the_same_dollars_and_usage() -> None:
    rows = _awkward_rows()
    as_rows = _fold_day((AllocationSet(24.0, rows),), resolver(), None)
    as_columns = _fold_day((AllocationSet.columnar(24.0, rows),), resolver(), None)
    assert dict(as_rows.dollars) == dict(as_columns.dollars)
    assert dict(as_rows.quantities) == dict(as_columns.quantities)
    assert sum(as_rows.dollars.values()) > 0
