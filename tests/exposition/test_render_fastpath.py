"""The join-based renderer (constant line pieces repeated, label and value columns copied in
by strided assignment) writes, byte for byte, what formatting one sample at a time writes:
for three and four labels, an escape needed in any one column, tiny values repeated many
times (formatted once each), and chunk boundaries anywhere."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.exposition import catalog as c
from aifinops.exposition.render import Family, Sample, format_value, iter_render, render
from tests.exposition.test_render_bulk import label_values, reference_render, values

# A money family with a third label that splits totals (a basis, as the cost family had
# before one family per basis): folding and rendering must handle any such dimension.
COST3 = replace(c.TENANT_COST_RATE, labels=("tenant", "resource", "basis"))

# Values that msgspec writes in another form than repr, repeated (the formatted-once cache).
tiny = st.sampled_from([1.2e-05, -3e-07, 5e-324, 2.5e16, 1e-4, 0.0, -0.0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(label_values, min_size=4, max_size=4), st.one_of(values, tiny, tiny)),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=9),
)
def test_three_and_four_labels_match_one_sample_at_a_time(
    rows: list[tuple[list[str], float]], chunk: int
) -> None:
    families = [
        Family(c.TOKENS, [(tuple(labels), v) for labels, v in rows]),
        Family(COST3, [(tuple(labels[1:]), v) for labels, v in rows]),
        Family(c.FOLDED_TENANTS, [((), v) for _, v in rows[:3]]),
    ]
    expected = reference_render(families)
    assert render(families) == expected
    assert b"".join(iter_render(families, chunk)) == expected


@pytest.mark.parametrize("column", [0, 1, 2])
def test_an_escape_in_one_column_of_a_large_chunk(column: int) -> None:
    rows: list[Sample] = []
    for i in range(3000):
        labels = [f"t{i}", "gpu", "usage"]
        if i == 2345:
            labels[column] = 'a"b\\c\nd'
        rows.append((tuple(labels), 1.2e-05 if i % 2 else float(i)))
    family = Family(COST3, rows)
    page = render([family])
    assert page == reference_render([family])
    assert b'a\\"b\\\\c\\nd' in page
    assert page.count(b"\n") == 3002  # HELP, TYPE and one line per sample


def test_repeated_tiny_values_are_written_as_repr_writes_them() -> None:
    family = Family(c.TENANT_GPU_EFFICIENCY, [((f"t{i}",), 1.2e-05) for i in range(100)])
    lines = render([family]).decode().splitlines()[2:]
    assert {line.split(" ")[1] for line in lines} == {format_value(1.2e-05)} == {"1.2e-05"}


def test_a_non_string_label_value_is_written_as_str_writes_it() -> None:
    family = Family(c.TENANT_GPU_EFFICIENCY, [((2024,), 0.5)])  # type: ignore[list-item]
    assert b'{tenant="2024"} 0.5\n' in render([family])


def test_a_label_tuple_of_the_wrong_width_is_an_error() -> None:
    family = Family(COST3, [(("t", "gpu", "usage"), 1.0), (("t", "gpu"), 2.0)])
    with pytest.raises(ValueError, match="expected labels"):
        render([family])
