"""The text-format parser gives prometheus_client's samples on real and generated payloads."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from aifinops.sources.promtext import parse_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def dcgm_exporter_payload(nodes: int = 3, gpus: int = 8) -> str:
    """A /metrics page as dcgm-exporter renders it for the counters in its default CSV.

    Label set and order follow dcgm-exporter's exposition template: gpu, UUID, pci_bus_id,
    device, modelName, [GPU_I_PROFILE, GPU_I_ID,] Hostname, then label-type fields
    (DCGM_FI_DRIVER_VERSION) and the pod attributes. Node 0 is MIG-partitioned, node 1 time-
    slices GPU 0 between two pods, odd GPUs elsewhere have no pod (empty pod labels).
    """
    counters = []
    for line in (FIXTURES / "dcgm_exporter_default-counters.csv").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            field, kind, help_text = (part.strip() for part in line.split(",", 2))
            if kind != "label":
                counters.append((field, kind, help_text))
    out = []
    for field, kind, help_text in counters:
        out += [f"# HELP {field} {help_text}", f"# TYPE {field} {kind}"]
        for n in range(nodes):
            for g in range(gpus):
                device = (
                    f'gpu="{g}",UUID="GPU-{n:08x}-7953-256e-8f33-1343419b{g:04x}",'
                    f'pci_bus_id="00000000:{g + 0x18:02X}:00.0",device="nvidia{g}",'
                    f'modelName="NVIDIA H100 80GB HBM3"'
                )
                if n == 0:
                    device += f',GPU_I_PROFILE="3g.40gb",GPU_I_ID="{g % 2 + 1}"'
                device += f',Hostname="gpu-node-{n}",DCGM_FI_DRIVER_VERSION="550.144.03"'
                pods = [f'container="main",namespace="team-{g % 3}",pod="train-{n}-{g}"']
                if g % 2:
                    pods = ['container="",namespace="",pod=""']
                if n == 1 and g == 0:
                    pods.append('container="main",namespace="team-9",pod="serve-0"')
                for pod in pods:
                    out.append(f"{field}{{{device},{pod}}} {(n * 31 + g * 7) % 101}")
    return "\n".join(out) + "\n"


def reference(text: str) -> list[tuple[str, dict[str, str], float]]:
    """prometheus_client's samples, with its counter renaming (x -> x_total) undone."""
    exposed = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.MULTILINE))
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name
            if name not in exposed and name.endswith("_total") and name[:-6] in exposed:
                name = name[:-6]
            out.append((name, s.labels, float(s.value)))
    return out


def comparable(samples: list[tuple[str, dict[str, str], float]]) -> list[tuple[object, ...]]:
    return [(n, dict(labels), "NaN" if math.isnan(v) else v) for n, labels, v in samples]


def ours(text: str, wanted: frozenset[str] | None = None) -> list[tuple[object, ...]]:
    return comparable([(n, dict(labels), v) for n, labels, v in parse_text(text, wanted)])


def test_generated_dcgm_exporter_page_matches_prometheus_client() -> None:
    text = dcgm_exporter_payload()
    expected = comparable(reference(text))
    assert len(expected) == 25 * (3 * 8 + 1)  # 25 gauge/counter fields, 24 GPUs + 1 shared
    assert ours(text) == expected


def test_real_vllm_page_matches_prometheus_client() -> None:
    text = (FIXTURES / "vllm_metrics_v0_aibrix_runtime_doc.txt").read_text()
    expected = comparable(reference(text))
    assert any(name == "vllm:iteration_tokens_total_bucket" for name, *_ in expected)
    assert ours(text) == expected


def test_wanted_filter_keeps_only_those_names() -> None:
    text = dcgm_exporter_payload()
    wanted = frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"})
    assert ours(text, wanted) == [s for s in ours(text) if s[0] in wanted]
    assert parse_text(text, frozenset()) == []
    # DCGM_FI_DEV_MEM_COPY_UTIL and friends share a prefix with no wanted name: skipped whole.
    assert {s[0] for s in ours(text, frozenset({"DCGM_FI_DEV_FB_USED"}))} == {"DCGM_FI_DEV_FB_USED"}


def test_same_label_string_is_parsed_once_and_shared() -> None:
    text = 'a{x="1"} 1\nb{x="1"} 2\n'
    (_, first, _), (_, second, _) = parse_text(text)
    assert first is second


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("up 1\n", [("up", {}, 1.0)]),
        ("# HELP up x\n# TYPE up gauge\n\n# free comment\nup 1", [("up", {}, 1.0)]),
        ("up{} 1\n", [("up", {}, 1.0)]),
        ("up 1\r\nup2 2\r\n", [("up", {}, 1.0), ("up2", {}, 2.0)]),
        ("   up\t 1  \n", [("up", {}, 1.0)]),
        ('up{a="b",} 1\n', [("up", {"a": "b"}, 1.0)]),
        ('up { a = "b" , c="d" } 1\n', [("up", {"a": "b", "c": "d"}, 1.0)]),
        ("up 1 1700000000000\n", [("up", {}, 1.0)]),
        ('up{a="b"} -3.5e2 -12\n', [("up", {"a": "b"}, -350.0)]),
        ("a +Inf\nb -Inf\n", [("a", {}, math.inf), ("b", {}, -math.inf)]),
        (
            'vllm:num_requests_running{model_name="Qwen/Qwen2.5-Coder-1.5B-Instruct"} 0.0\n',
            [("vllm:num_requests_running", {"model_name": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}, 0)],
        ),
        (
            'm{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb"} 1\n',
            [("m", {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb"}, 1.0)],
        ),
        ('m{v="} , = # {"} 1\n', [("m", {"v": "} , = # {"}, 1.0)]),
        ('m{v="\\\\"} 1\n', [("m", {"v": "\\"}, 1.0)]),
        ('m{a="",b="x y"} 7\n', [("m", {"a": "", "b": "x y"}, 7.0)]),
    ],
)
def test_exposition_details(text: str, expected: list[tuple[str, dict[str, str], float]]) -> None:
    assert [(n, dict(labels), v) for n, labels, v in parse_text(text)] == expected


def test_nan_value() -> None:
    [(_, _, value)] = parse_text("m NaN\n")
    assert math.isnan(value)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("up", "expected a value"),
        ("up abc", "expected a value"),
        ("up 1_000", "invalid value"),
        ("up 1 2 3", "expected a value"),
        ("up 1 1.5", "invalid literal"),
        ('up{a="b" 1', "closing"),
        ('up{a="b} 1', "malformed label set"),
        ("up{a=b} 1", "malformed label"),
        ('up{1a="b"} 1', "malformed label"),
        ('up{a="b"c="d"} 1', "separated by one comma"),
        ('up{a="b",,c="d"} 1', "malformed label"),
        ('up{a="b",a="c"} 1', "duplicate label"),
        ('up{a="\\x"} 1', "invalid escape"),
        ('up{a="\\"",a="c"} 1', "duplicate label"),
        ('up{a="\\"" c="d"} 1', "separated by one comma"),
        ('{a="b"} 1', "invalid metric name"),
        ("1up 1", "invalid metric name"),
        ("up-time 1", "invalid metric name"),
    ],
)
def test_malformed_line_names_its_line(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"^line 3: .*{re.escape(reason)}"):
        parse_text(f"# TYPE up gauge\nok 1\n{line}\nok 2\n")


def test_malformed_unwanted_line_is_not_checked() -> None:
    text = 'broken{a="b" 1\nDCGM_FI_DEV_GPU_UTIL_X{ 1\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} 5\n'
    assert ours(text, frozenset({"DCGM_FI_DEV_GPU_UTIL"})) == [
        ("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0"}, 5.0)
    ]
    with pytest.raises(ValueError, match=r"^line 1: "):
        parse_text(text)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not n.startswith("__")  # reserved; prometheus_client rejects them
)
label_values = st.text(st.characters(codec="utf-8"), max_size=12)  # any but surrogates
numbers = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True),
            st.dictionaries(label_names, label_values, max_size=4),
            numbers,
        ),
        max_size=6,
    )
)
def test_any_escaped_label_values_match_prometheus_client(
    series: list[tuple[str, dict[str, str], float]],
) -> None:
    lines = []
    for name, labels, value in series:
        body = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{body}}} {value!r}")
    text = "\n".join(lines) + "\n"
    assert ours(text) == comparable(reference(text))
