"""The series cap's fast path (select the kept series by value, fold per group) gives exactly
what the plain definition gives (rank every sample, keep the first, fold the rest), on inputs
built to hit its edges: ties at the cut, ``-0.0``, integer values, rows already named
``__other__``, several dimension labels, none, and the inputs it must hand back (NaN, ±Inf,
duplicate series, label tuples of the wrong width)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aifinops.exposition import bounds
from aifinops.exposition import catalog as c
from aifinops.exposition.bounds import _cap_selected, _cap_sorted, cap_family
from aifinops.exposition.render import Family, Sample
from tests.fuzz.conftest import FUZZ, tried

# A money family with a third label that splits totals (a basis, as the cost family had
# before one family per basis): folding and rendering must handle any such dimension.
COST3 = replace(c.TENANT_COST_RATE, labels=("tenant", "resource", "basis"))

# Few distinct values, so that ties at the cut are the common case.
tie_values = st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e-5, 7.0, 3])
values = st.one_of(tie_values, st.floats(min_value=-1e9, max_value=1e9))
names = st.sampled_from(["a", "b", "c", c.OTHER_TENANT])


def family_of(spec: Any, rows: list[tuple[tuple[str, ...], float]]) -> Family:
    return Family(spec, [(labels, v) for labels, v in dict(rows).items()])  # unique labels


def same(a: tuple[Family, int], b: tuple[Family, int]) -> bool:
    """Equal samples, values compared by ``repr`` (so ``0.0`` is not ``-0.0``, nor ``3``
    ``3.0``), and equal counts."""
    (fa, na), (fb, nb) = a, b
    pairs_a = [(labels, repr(v)) for labels, v in fa.samples]
    pairs_b = [(labels, repr(v)) for labels, v in fb.samples]
    return fa.spec == fb.spec and pairs_a == pairs_b and na == nb


# (spec, how many label values): additive with one dimension last of four labels (token_type),
# two of three (resource, basis), none (tenant × GPU model: everything folds into one
# __other__ row), one first (kind); then two families that are cut, never summed.
SPECS = [
    (c.TOKENS, 4),
    (COST3, 3),
    (c.TENANT_GPUS, 2),
    (c.RECOMMENDATION_SAVINGS, 2),
    (c.TENANT_GPU_EFFICIENCY, 1),
    (c.GPU_PRICE, 2),
]


@FUZZ
@given(
    st.sampled_from(SPECS),
    st.lists(st.tuples(st.lists(names, min_size=4, max_size=4), values), max_size=120),
    st.integers(min_value=0, max_value=60),
)
def test_fast_path_is_the_definition(spec_width: Any, raw: list[Any], cap: int) -> None:
    tried("bounds.cap_fastpath")
    spec, width = spec_width
    family = family_of(spec, [(tuple(labels[:width]), v) for labels, v in raw])
    if len(family.samples) <= cap:
        assert cap_family(family, cap) == (family, 0)
        return
    fast = _cap_selected(family, cap)
    assert fast is not None  # finite, unique, well-formed: the fast path must take it
    assert same(fast, _cap_sorted(family, cap))
    assert same(cap_family(family, cap), _cap_sorted(family, cap))


@pytest.mark.parametrize(
    "odd",
    [
        [(("x", "gpu", "usage"), math.nan)],
        [(("x", "gpu", "usage"), math.inf), (("y", "gpu", "usage"), -math.inf)],
        [(("x", "gpu", "usage"), 8.0), (("x", "gpu", "usage"), 9.0)],  # a series twice
    ],
)
def test_inputs_the_fast_path_declines_still_follow_the_definition(odd: list[Sample]) -> None:
    rows: list[Sample] = [((f"t{i}", "gpu", "usage"), float(i % 5)) for i in range(30)]
    family = Family(COST3, rows + odd)
    assert _cap_selected(family, 10) is None
    assert same(cap_family(family, 10), _cap_sorted(family, 10))


def test_a_label_tuple_of_the_wrong_width_is_an_error_not_a_silent_fold() -> None:
    rows: list[Sample] = [((f"t{i}", "gpu", "usage"), 1.0) for i in range(30)]
    family = Family(COST3, [*rows, (("t", "gpu"), 2.0)])
    with pytest.raises(ValueError):
        cap_family(family, 10)


def test_ties_at_the_cut_keep_the_first_labels() -> None:
    # 30 series of equal value, cap 12: 2 groups (gpu, cpu) so 10 keep their identity, the
    # first 10 in label order; the other 20 fold into one __other__ per resource.
    rows: list[Sample] = [
        ((f"t{i:02d}", r, "usage"), 1.0) for i in range(15) for r in ("cpu", "gpu")
    ]
    capped, lost = cap_family(Family(COST3, rows[::-1]), 12)
    kept = [labels for labels, _ in capped.samples if labels[0] != c.OTHER_TENANT]
    assert kept == sorted(labels for labels, _ in rows)[:10]
    assert lost == 20
    other = {labels[1]: v for labels, v in capped.samples if labels[0] == c.OTHER_TENANT}
    assert other == {"cpu": 10.0, "gpu": 10.0}


def test_an_existing_other_row_absorbs_the_fold() -> None:
    # The model already folded small tenants into __other__; that row is large, so it keeps
    # its place, and the series folded now add to it instead of making a second one.
    rows: list[Sample] = [((c.OTHER_TENANT, "gpu", "usage"), 100.0)]
    rows += [((f"t{i}", "gpu", "usage"), float(i)) for i in range(1, 20)]
    capped, _ = cap_family(Family(COST3, rows), 5)
    others = [v for labels, v in capped.samples if labels[0] == c.OTHER_TENANT]
    assert others == [100.0 + sum(range(1, 17))]  # kept: __other__, t19, t18, t17
    assert math.fsum(v for _, v in capped.samples) == math.fsum(v for _, v in rows)


def test_no_python_ranking_for_a_large_family(monkeypatch: pytest.MonkeyPatch) -> None:
    # The point of the fast path: a family of 50k series is capped without calling the
    # per-sample ranking key.
    def boom(sample: Sample) -> Any:
        raise AssertionError("ranked in Python")

    monkeypatch.setattr(bounds, "_rank", boom)
    rows: list[Sample] = [
        ((f"t{i % 997}", f"m{i}", "openai", "input"), float(i % 101)) for i in range(50_000)
    ]
    capped, lost = cap_family(Family(c.TOKENS, rows), 20_000)
    assert len(capped.samples) == 20_000 and lost == 30_001
