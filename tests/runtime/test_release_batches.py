"""offload.release frees a batch whole only when nothing in it would be taken apart: a large
container among small rows and floats is still split, a dataclass at the top still has its
fields freed one by one, and everything ends up freed."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

from aifinops.offload import _RELEASE_SPLIT, _takes_apart, release


class Leaf:
    def __init__(self, n: int) -> None:
        self.n = n


@dataclass(frozen=True)
class Row:
    leaf: Leaf
    labels: tuple[str, ...]


def test_a_batch_of_small_things_is_freed_whole() -> None:
    small: list[object] = [1.5, "x", ("a", "b"), {"k": 1}, Row(Leaf(1), ("t",)), None, b"b"]
    assert not _takes_apart(small, structs=False)
    assert not _takes_apart([("a",)] * 3000, structs=False)
    assert not _takes_apart([list(range(_RELEASE_SPLIT - 1))], structs=False)


def test_one_large_container_or_a_top_level_dataclass_is_taken_apart() -> None:
    big = list(range(_RELEASE_SPLIT))
    assert _takes_apart([1.0, "x", big, ("a",)], structs=False)
    assert _takes_apart([{i: i for i in range(_RELEASE_SPLIT)}, 2.0], structs=False)
    assert _takes_apart([frozenset(big)], structs=False)
    row = Row(Leaf(1), ("t",))
    assert _takes_apart([row, 1.0], structs=True)
    assert not _takes_apart([row, 1.0], structs=False)


def test_mixed_batches_free_everything() -> None:
    gc.disable()  # freed by reference counting alone
    try:
        leaves = [Leaf(i) for i in range(20_000)]
        refs = [weakref.ref(leaf) for leaf in leaves]
        nested = [Row(leaf, (f"t{leaf.n}",)) for leaf in leaves[:10_000]]
        index = {(f"t{leaf.n}", "gpu"): leaf for leaf in leaves[10_000:]}
        garbage: list[object] = [*[float(i) for i in range(5_000)], nested, index, "tail"]
        del leaves, nested, index
        release(garbage, chunk=700)
        assert garbage == []
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


def test_a_shared_large_container_survives_a_whole_freed_batch() -> None:
    shared = [Leaf(i) for i in range(3_000)]
    garbage: list[object] = [*range(100), shared, ("a", "b")]
    release(garbage, chunk=50)
    assert len(shared) == 3_000 and shared[-1].n == 2_999
