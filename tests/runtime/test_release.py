"""offload.release: frees what it is given, leaves shared data intact."""

import gc
import weakref
from dataclasses import dataclass

from aifinops.offload import release


class Row:
    """A weak-referenceable leaf."""

    def __init__(self, n: int) -> None:
        self.n = n


@dataclass(frozen=True)
class Part:
    rows: tuple[Row, ...]
    index: dict[str, Row]
    label: str


@dataclass(frozen=True)
class Whole:
    a: Part
    b: list[Row]
    c: frozenset[str]


def build(n: int) -> tuple[Whole, list[weakref.ref[Row]]]:
    rows = [Row(i) for i in range(n)]
    refs = [weakref.ref(r) for r in rows]
    whole = Whole(
        Part(tuple(rows[: n // 2]), {f"k{i}": r for i, r in enumerate(rows[n // 2 :])}, "x"),
        rows[::3],
        frozenset(f"s{i}" for i in range(n)),
    )
    return whole, refs


def test_release_frees_everything_and_empties_the_list():
    gc.disable()  # freed by reference counting alone, not by a collection
    try:
        whole, refs = build(10_000)
        garbage: list[object] = [whole]
        del whole
        release(garbage, chunk=100)
        assert garbage == []
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


def test_release_leaves_shared_containers_intact():
    whole, refs = build(5_000)
    shared_rows = whole.a.rows
    shared_index = whole.a.index
    kept = [refs[0](), refs[-1]()]
    garbage: list[object] = [whole]
    del whole
    release(garbage, chunk=64)
    assert len(shared_rows) == 2_500 and [r.n for r in shared_rows[:3]] == [0, 1, 2]
    assert len(shared_index) == 2_500 and shared_index["k0"].n == 2_500
    assert all(r() is not None for r in refs[:2_500])  # held by shared_rows
    assert all(r() is not None for r in refs[2_500:])  # held by shared_index
    assert kept[0] is shared_rows[0]


def test_release_of_small_and_odd_objects():
    garbage: list[object] = [None, 1, "x", (1, 2), {"a": 1}, Whole, b"bytes" * 10]
    release(garbage)
    assert garbage == []
