"""The bulk renderer writes, byte for byte, what formatting one sample at a time writes; the
offloaded render+gzip gives the same bytes as rendering and compressing in one go."""

from __future__ import annotations

import asyncio
import gzip
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.exposition import catalog as c
from aifinops.exposition.render import (
    Exposition,
    Family,
    escape_label_value,
    format_value,
    iter_render,
    render,
)
from aifinops.offload import PAGE_GZIP_LEVEL, render_and_compress, render_exposition


def reference_value(value: float) -> str:
    """The renderer's value format before it was made fast (one sample at a time)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def reference_render(families: list[Family]) -> bytes:
    out = []
    for f in families:
        if not f.samples:
            continue
        help_text = f.spec.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {f.spec.name} {help_text}\n# TYPE {f.spec.name} {f.spec.type}\n")
        for values, value in f.samples:
            labels = ",".join(
                f'{n}="{escape_label_value(v)}"' for n, v in zip(f.spec.labels, values, strict=True)
            )
            head = f"{f.spec.name}{{{labels}}}" if labels else f.spec.name
            out.append(f"{head} {reference_value(value)}\n")
    return "".join(out).encode()


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 3.0, 1e-4, 9.9999e-5, 1e15, 1e16, 123456789.0, 0.1]),
    st.integers(min_value=-(10**15), max_value=10**15).map(float),
)
label_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["a", 'q"uote', "back\\slash", "new\nline", "", "é", "}{,="]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(label_values, label_values, values), max_size=40),
    st.lists(values, max_size=3),
    st.integers(min_value=1, max_value=7),
)
def test_bulk_render_matches_one_sample_at_a_time(
    rows: list[tuple[str, str, float]], plain: list[float], chunk: int
) -> None:
    families = [
        Family(c.IDLE_GPUS, [((t, m), v) for t, m, v in rows]),
        Family(c.FOLDED_TENANTS, [((), v) for v in plain[:1]]),
        Family(c.TENANT_GPU_EFFICIENCY, [((t,), v) for t, _, v in rows]),
    ]
    expected = reference_render(families)
    assert render(families) == expected
    assert b"".join(iter_render(families, chunk)) == expected


def test_value_format_edges() -> None:
    cases = [
        (0.0, "0"),
        (-0.0, "0"),
        (3.0, "3"),
        (-2.0, "-2"),
        (0.5, "0.5"),
        (1e15, "1000000000000000"),
        (1e16, "1e+16"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (123456789.123, "123456789.123"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (-float("inf"), "-Inf"),
    ]
    for value, text in cases:
        assert format_value(value) == text
        line = render([Family(c.FOLDED_TENANTS, [((), value)])]).decode().splitlines()[-1]
        assert line == f"aifinops_folded_tenants {text}", value


def test_label_count_is_checked() -> None:
    bad = [(("only-one",), 1.0), (("a", "b", "c"), 2.0)]
    try:
        render([Family(c.IDLE_GPUS, bad)])
    except ValueError as exc:
        assert "expected labels" in str(exc)
    else:
        raise AssertionError("a wrong label count must fail")


def test_render_and_compress_gives_the_same_bytes() -> None:
    families = [
        Family(c.IDLE_GPUS, [((f"t{i}", "H100"), i * 0.5) for i in range(12_001)]),
        Family(c.FOLDED_TENANTS, [((), 3.0)]),
    ]
    expected = Exposition.from_bytes(render(families))
    for level in (1, 6, 9):
        got = render_and_compress(families, level=level, chunk_samples=1000)
        assert got.plain == expected.plain
        assert got.gzipped == Exposition.from_bytes(expected.plain, level).gzipped
        assert gzip.decompress(got.gzipped) == expected.plain
    offloaded = asyncio.run(render_exposition(families))
    assert offloaded == Exposition.from_bytes(expected.plain, PAGE_GZIP_LEVEL)
    assert render_and_compress(families) == offloaded
