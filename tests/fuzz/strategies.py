"""Hypothesis strategies for hostile upstream payloads: arbitrary bytes, arbitrary JSON, and
near-valid documents (the real shape with random values and random breakage)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([0, -0.0, 1e300, -1e300, 5e-324, 1.7976931348623157e308]),
)
# a value where a number belongs: mostly numbers, sometimes anything
loose_numbers = numbers | json_scalars


def mutated(doc: bytes) -> st.SearchStrategy[bytes]:
    """``doc`` cut, with bytes flipped, inserted or deleted."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(doc)
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            if op == "cut":
                del data[at:]
            elif op == "flip":
                data[at] = draw(st.integers(0, 255))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[at : at + draw(st.integers(1, 8))]
        return bytes(data)

    return build()


label_names = st.sampled_from(
    [
        "gpu",
        "UUID",
        "uuid",
        "modelName",
        "Hostname",
        "hostname",
        "pod",
        "namespace",
        "container",
        "exported_pod",
        "exported_namespace",
        "pod_name",
        "pod_namespace",
        "GPU_I_PROFILE",
        "GPU_I_ID",
        "model_name",
        "engine",
        "team",
        "team_alias",
        "model",
        "api_provider",
        "hashed_api_key",
        "user",
        "end_user",
        "user_email",
        "gen_ai_token_type",
        "gen_ai_request_model",
        "tenant",
        "__name__",
    ]
) | st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)
label_values = st.text(max_size=40) | st.sampled_from(
    ["", "None", "null", "alice@example.com", "GPU-1", "0", 'a"b', "a\\b", "a\nb"]
)
labelsets = st.dictionaries(label_names, label_values, max_size=6)
