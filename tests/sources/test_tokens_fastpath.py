"""The token sources' fast path (a :class:`SeriesReader` per scrape target, series worked out
once, observations made from them) gives exactly what the straightforward path gives:
``parse_text(decode_page(body))``, target labels merged, and the mapping as first written
(kept here verbatim as the reference), refresh after refresh, on varied and hostile pages."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifinops.demo.llm import LlmDemo
from aifinops.model.inputs import TokenColumns, TokenObservation, token_observations
from aifinops.model.llm_prices import normalize_provider
from aifinops.offload import run_cpu
from aifinops.settings import TokenSourceSettings
from aifinops.sources import promtext
from aifinops.sources.base import SourceError
from aifinops.sources.promapi import parse_vector
from aifinops.sources.promtext import SeriesEntry, SeriesReader, decode_page, parse_text
from aifinops.sources.tokens import (
    OPENAI_COMPATIBLE,
    TokenMapping,
    TokenSource,
    _new_observation,
    clean_value,
    observations_from_samples,
    series_digest,
    target_display,
)
from tests.sources import series_reader_reference

Sample = tuple[str, Mapping[str, str], float]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LITELLM_PAGE = "litellm_proxy_metrics.txt"
VLLM_PAGE = "vllm_metrics_v0_aibrix_runtime_doc.txt"
OTEL_PAGE = "otel_openai_v2_collector_metrics.txt"
T0 = 1_750_000_000.0


# --- the reference: the mapping as it was before the fast path, verbatim -------------------


def reference_digest(name: str, labels: Mapping[str, str], target: str = "") -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(name.encode())
    for k, v in sorted(labels.items()):
        if k != "__name__":
            h.update(b"\0" + k.encode() + b"=" + v.encode())
    if target:  # one of several scrape targets: its series are its own
        h.update(b"\0\0target=" + target.encode())
    return h.hexdigest()


def _first(labels: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for key in keys:
        v = clean_value(labels.get(key))
        if v:
            return v
    return None


def _label_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


def reference_observations(
    source: str,
    samples: Iterable[Sample],
    mapping: TokenMapping,
    *,
    from_zero: bool = False,
    origin: str | None = None,
) -> tuple[TokenObservation, ...]:
    return reference_groups(source, [(list(samples), origin, "")], mapping, from_zero=from_zero)


def _names(labels: Mapping[str, str]) -> set[str]:
    return {k for k in labels if k != "__name__"}


def reference_groups(
    source: str,
    groups: Sequence[tuple[Sequence[Sample], str | None, str]],
    mapping: TokenMapping,
    *,
    from_zero: bool = False,
) -> tuple[TokenObservation, ...]:
    """Per metric map, per group (a scrape target) in order: the observations. A metric and
    its ``subtract`` partner are paired within a group on the labels both families carry;
    a partner met by several series is split in proportion to their values."""
    present = {name for samples, _, _ in groups for name, _, _ in samples}
    out: list[TokenObservation] = []
    for m in mapping.metrics:
        chosen = next((n for n in (m.metric, *m.older_names) if n in present), None)
        if chosen is None:
            continue
        for samples, origin, target in groups:
            mine = [(lbl, v) for n, lbl, v in samples if n == chosen]
            if not mine:
                continue
            partner = [(lbl, v) for n, lbl, v in samples if m.subtract and n == m.subtract]
            on: list[str] = []
            minus: dict[tuple[str, ...], float] = {}
            if partner:
                on = sorted(
                    set().union(*(_names(lbl) for lbl, _ in mine))
                    & set().union(*(_names(lbl) for lbl, _ in partner))
                )
                for lbl, v in partner:
                    if math.isfinite(v) and v >= 0:
                        k = tuple(lbl.get(n, "") for n in on)
                        minus[k] = minus.get(k, 0.0) + v
            rows = []
            for labels, raw in mine:
                if not math.isfinite(raw) or raw < 0:
                    continue
                token_type = m.token_type
                if m.token_type_label is not None:
                    tt = labels.get(m.token_type_label, "").strip().lower()
                    token_type = m.token_type_values.get(tt)
                if token_type is None:
                    continue
                model = clean_value(mapping.model) or _first(labels, mapping.model_labels)
                if model is None:
                    continue
                rows.append((labels, raw, token_type, model, tuple(labels.get(n, "") for n in on)))
            totals: dict[tuple[str, ...], float] = defaultdict(float)
            for _, raw, _, _, k in rows:
                if k in minus:
                    totals[k] += raw
            for labels, raw, token_type, model, k in rows:
                value = raw
                if k in minus:
                    value = max(0.0, raw - minus[k] * (raw / totals[k])) if totals[k] > 0 else 0.0
                provider = normalize_provider(
                    mapping.provider or _first(labels, mapping.provider_labels)
                )
                host = _first(labels, mapping.server_address_labels)
                if host is not None:  # the module docstring's server_address_providers rule
                    named = [
                        p
                        for pattern, p in mapping.server_address_providers
                        if fnmatchcase(host.lower(), pattern.lower())
                    ]
                    if named:
                        provider = normalize_provider(named[0])
                    elif provider in (None, "openai"):
                        provider = OPENAI_COMPATIBLE
                out.append(
                    TokenObservation(
                        source=source,
                        series=reference_digest(chosen, labels, target),
                        role=mapping.role,
                        token_type=token_type,
                        model=model,
                        value=value,
                        provider=provider,
                        tenant=clean_value(mapping.tenant) or _first(labels, mapping.tenant_labels),
                        namespace=_first(labels, mapping.namespace_labels),
                        pod=_first(labels, mapping.pod_labels),
                        kind="spend_usd" if m.kind == "spend_usd" else "tokens",
                        from_zero=from_zero,
                        origin=origin,
                    )
                )
    return tuple(out)


class ReferenceScrape:
    """What the scrape path gives: each target's page parsed (target labels merged); a target
    that fails keeps its last good page while the others are read; the source fails (the
    first failing target's message) only when every target does."""

    def __init__(self) -> None:
        self.good: dict[int, Sequence[Sample]] = {}

    def __call__(
        self, source: TokenSource, bodies: Sequence[bytes]
    ) -> tuple[TokenObservation, ...] | str:
        targets = source._settings.scrape_targets
        several = len(targets) > 1
        groups: list[tuple[Sequence[Sample], str | None, str]] = []
        errors: list[str] = []
        wanted = source.mapping.wanted()
        for i, (target, body) in enumerate(zip(targets, bodies, strict=True)):
            shown = target_display(target.url)
            origin = f"{source.name}#{shown}" if several else source.name
            try:
                parsed = parse_text(decode_page(body), wanted)
            except ValueError as exc:
                errors.append(f"{shown}: {exc}")
                if i in self.good:
                    groups.append((self.good[i], origin, shown if several else ""))
                continue
            if target.labels:
                parsed = [(n, {**target.labels, **lbl}, v) for n, lbl, v in parsed]
            self.good[i] = parsed
            groups.append((parsed, origin, shown if several else ""))
        if len(errors) == len(targets):
            return errors[0]
        return reference_groups(source.name, groups, source.mapping)


def reference_scrape(
    source: TokenSource, bodies: Sequence[bytes]
) -> tuple[TokenObservation, ...] | str:
    """:class:`ReferenceScrape` of one read, with no earlier read."""
    return ReferenceScrape()(source, bodies)


class Upstream:
    """Serves the current body of each URL to the source under test."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=self.bodies[str(request.url)])


async def fast_scrape(
    source: TokenSource, upstream: Upstream, bodies: Sequence[bytes]
) -> tuple[TokenObservation, ...] | str:
    for target, body in zip(source._settings.scrape_targets, bodies, strict=True):
        upstream.bodies[target.url] = body
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)) as client:
        try:
            return token_observations(await source.fetch(client))
        except SourceError as exc:
            assert exc.reason == "parse"
            return str(exc)


# --- random pages ------------------------------------------------------------------------

ODD_VALUES = [
    'quote"inside',
    "back\\slash",
    "new\nline",
    "alice@example.com",
    " bob@corp.example.org ",
    "",
    "None",
    "null",
    "N/A",
    "  padded  ",
    "x" * 300,
    "équipe-ü",
    "my team",
    "brace} 5",
    "{open",
    "# hash",
    "tab\tin",
    "a=b,c=d",
]


def pick(rng: random.Random, common: Sequence[str]) -> str:
    return rng.choice(ODD_VALUES) if rng.random() < 0.15 else rng.choice(common)


def escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_value(rng: random.Random, value: float) -> str:
    r = rng.random()
    if r < 0.03:
        return rng.choice(["NaN", "+Inf", "-Inf", "-3", "-0"])
    if r < 0.06:
        return f"{value:.6e}"
    if r < 0.1 and value == int(value):
        return str(int(value))
    return repr(value)


def render_line(
    rng: random.Random, name: str, labels: Sequence[tuple[str, str]], value: str
) -> str:
    body = ",".join(f'{k}="{escape(v)}"' for k, v in labels)
    if labels and rng.random() < 0.05:
        body += ","
    r = rng.random()
    line = f"{name}{{{body}}} {value}" if labels else f"{name} {value}"
    if r < 0.04:
        line += " 1700000000000"  # a timestamp
    elif r < 0.06:
        line = line.rpartition(" ")[0] + "\t" + value
    elif r < 0.08:
        line = "  " + line
    elif r < 0.10 and labels:
        line = f"{name} {{{body}}} {value}"
    elif r < 0.12:
        line = line.rpartition(" ")[0] + "  " + value
    return line


class Fleet:
    """Series of one target that live across refreshes: values grow, series come and go,
    labels change, families reorder, formatting varies."""

    def __init__(self, rng: random.Random, names: Sequence[str], label_pool: dict[str, list[str]]):
        self.rng = rng
        self.names = list(names)
        self.pool = label_pool
        self.series: list[tuple[str, list[tuple[str, str]], float]] = []
        for _ in range(rng.randint(5, 40)):
            self.add()

    def labels(self) -> list[tuple[str, str]]:
        keys = [k for k in self.pool if self.rng.random() < 0.7]
        if self.rng.random() < 0.03:
            keys.append("__name__")
        out = [(k, pick(self.rng, self.pool.get(k, ["v"]))) for k in keys]
        self.rng.shuffle(out)
        return out

    def add(self) -> None:
        rng = self.rng
        name = rng.choice(self.names)
        labels = self.labels()
        self.series.insert(
            rng.randint(0, len(self.series)), (name, labels, float(rng.randint(0, 10**6)))
        )
        if rng.random() < 0.5:  # the same label set under another name (subtract partners)
            other = rng.choice(self.names)
            lbl = list(labels)
            if rng.random() < 0.3:
                rng.shuffle(lbl)  # same labels, other order
            self.series.append((other, lbl, float(rng.randint(0, 10**6))))

    def step(self) -> None:
        rng = self.rng
        self.series = [
            (n, lbl, v + (rng.randint(0, 5000) if rng.random() < 0.8 else 0))
            for n, lbl, v in self.series
        ]
        if rng.random() < 0.4:
            self.add()
        if rng.random() < 0.3 and self.series:
            del self.series[rng.randrange(len(self.series))]
        if rng.random() < 0.2 and self.series:
            i = rng.randrange(len(self.series))
            n, _, v = self.series[i]
            self.series[i] = (n, self.labels(), v)  # a series whose labels change
        if rng.random() < 0.1:
            rng.shuffle(self.series)

    def page(self) -> bytes:
        rng = self.rng
        by_name: dict[str, list[str]] = defaultdict(list)
        for name, labels, value in self.series:
            lbl = labels
            if rng.random() < 0.02:
                lbl = [(k, v) for k, v in labels if k != "__name__"]
            by_name[name].append(render_line(rng, name, lbl, render_value(rng, value)))
        lines: list[str] = []
        families = list(by_name)
        rng.shuffle(families)
        for name in families:
            if rng.random() < 0.3:  # another metric's lines in between
                lines += [f"# TYPE {name}_other counter", f'{name}_other{{a="1"}} 3', "unwanted 1"]
            lines += [f"# HELP {name} Some help.", f"# TYPE {name} counter"]
            lines += by_name[name]
            if rng.random() < 0.1:
                lines.append("")
        text = "\n".join(lines) + "\n" if lines else ""
        if rng.random() < 0.1:
            text = text.replace("\n", "\r\n")
        return text.encode()


PRESET_LABELS: dict[str, dict[str, list[str]]] = {
    "litellm": {
        "team_alias": ["tenant-a", "tenant-b", "tenant-c"],
        "team": ["team-1", "team-2"],
        "model": ["gpt-4o", "claude-3", "bench-llm-001"],
        "litellm_model_name": ["azure/gpt-4o"],
        "requested_model": ["gpt-4o"],
        "api_provider": ["openai", "Azure", "bedrock_converse"],
        "hashed_api_key": ["88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"],
        "user": ["u-1", "u-2"],
        "user_email": ["alice@example.com"],
    },
    "vllm": {
        "model_name": ["llama-8b", "qwen-7b"],
        "engine": ["0", "1"],
        "pod": ["own-pod"],
    },
    "otel_genai": {
        "gen_ai_token_type": ["input", "output", "prompt", "completion", "weird", " Input "],
        "gen_ai_request_model": ["gpt-4o", ""],
        "gen_ai_response_model": ["gpt-4o-2024"],
        "gen_ai_provider_name": ["openai"],
        "gen_ai_system": ["aws.bedrock"],
        "tenant": ["t1", "t2"],
        "k8s_namespace_name": ["ns-a", "ns-b"],
        "k8s_pod_name": ["p-0"],
    },
}


def make_source(preset: str, rng: random.Random) -> TokenSource:
    n_targets = rng.randint(1, 3)
    targets = [
        {
            "url": f"http://up{i}/metrics",
            "labels": ({"namespace": f"ns-{i}", "pod": f"pod-{i}"} if preset == "vllm" else {}),
        }
        for i in range(n_targets)
    ]
    if preset == "litellm" and rng.random() < 0.5:
        targets[0]["labels"] = {"team_alias": "from-target", "cluster": "c1"}
    return TokenSource(
        TokenSourceSettings.model_validate(
            {"name": "t", "preset": preset, "mode": "scrape", "scrape_targets": targets}
        ),
        run=run_cpu,
    )


def names_for(source: TokenSource, rng: random.Random) -> list[str]:
    names = sorted(source.mapping.wanted())
    if rng.random() < 0.3:  # only the older names, or some missing
        names = [n for n in names if rng.random() < 0.6] or names
    return names


@pytest.fixture(params=[1 << 18, 300, 64], ids=["default-span", "small-span", "tiny-span"])
def span(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(promtext, "READ_CHUNK_BYTES", request.param)
    return int(request.param)


@pytest.mark.parametrize("preset", ["litellm", "vllm", "otel_genai"])
@pytest.mark.parametrize("seed", range(12))
async def test_fast_path_equals_reference_refresh_after_refresh(
    preset: str, seed: int, span: int
) -> None:
    rng = random.Random(f"{preset}-{seed}-{span}")
    source = make_source(preset, rng)
    fleets = [
        Fleet(rng, names_for(source, rng), PRESET_LABELS[preset])
        for _ in source._settings.scrape_targets
    ]
    upstream = Upstream()
    reference = ReferenceScrape()
    for _ in range(8):
        bodies = [f.page() for f in fleets]
        want = reference(source, bodies)
        got = await fast_scrape(source, upstream, bodies)
        assert got == want
        for f in fleets:
            f.step()


# --- errors --------------------------------------------------------------------------------

GOOD = (
    "# TYPE litellm_input_tokens_metric_total counter\n"
    'litellm_input_tokens_metric_total{model="m",team_alias="a"} 10\n'
    'litellm_input_tokens_metric_total{model="m",team_alias="b"} 20\n'
    'litellm_input_tokens_metric_total{model="m",team_alias="c"} 30\n'
    'litellm_input_tokens_metric_total{model="m",team_alias="d"} 40\n'
    'other_metric{x="y"} 1\n'
)

BAD_PAGES = [
    GOOD.replace("} 20", "} 2_0"),
    GOOD.replace("} 30", "} abc"),
    GOOD.replace("} 30", "} 30 ts"),
    GOOD.replace('team_alias="b"}', 'team_alias="b"'),
    GOOD.replace('team_alias="b"', 'team_alias="b",team_alias="c"'),
    GOOD.replace('team_alias="c"', 'team_alias="\\q"'),
    GOOD.replace('team_alias="d"', "team_alias=d"),
    GOOD + "litellm_input_tokens_metric_total\n",
    GOOD[:-1],  # truncated
]


@pytest.mark.parametrize("bad", BAD_PAGES)
async def test_bad_pages_fail_with_the_same_message_and_the_next_read_recovers(
    bad: str, span: int
) -> None:
    source = make_source("litellm", random.Random(0))
    upstream = Upstream()
    n = len(source._settings.scrape_targets)
    reference = ReferenceScrape()
    for page in (GOOD, bad, GOOD.replace("} 10", "} 11"), bad, GOOD):
        bodies = [page.encode()] * n
        want = reference(source, bodies)
        got = await fast_scrape(source, upstream, bodies)
        assert got == want
    assert isinstance(want, tuple) and len(want) == 4 * n


@pytest.mark.parametrize(
    "body",
    [
        GOOD.encode().replace(b"other_metric", b"other_\xff"),
        b"\xc3" + GOOD.encode(),
        GOOD.encode()[:-1] + b"\xe2\x82",
    ],
)
async def test_a_page_that_is_not_utf8_fails_as_before(body: bytes) -> None:
    source = make_source("litellm", random.Random(0))
    bodies = [body] * len(source._settings.scrape_targets)
    want = reference_scrape(source, bodies)
    assert isinstance(want, str)
    assert await fast_scrape(source, Upstream(), bodies) == want


async def test_a_bad_line_of_an_unwanted_metric_does_not_fail() -> None:
    source = make_source("litellm", random.Random(0))
    page = GOOD + "other_metric{x=} 1\nbroken line here\n"
    bodies = [page.encode()] * len(source._settings.scrape_targets)
    got = await fast_scrape(source, Upstream(), bodies)
    assert isinstance(got, tuple) and got == reference_scrape(source, bodies)


# --- the reader itself ---------------------------------------------------------------------


class Entry(SeriesEntry):
    __slots__ = ("labels", "name")

    def __init__(self, name: str, names: tuple[str, ...], values: tuple[str, ...]) -> None:
        super().__init__()
        self.name = name
        self.labels = dict(zip(names, values, strict=True))


class OldEntry(series_reader_reference.SeriesEntry):
    __slots__ = ("labels", "name")

    def __init__(self, name: str, labels: Mapping[str, str]) -> None:
        super().__init__()
        self.name = name
        self.labels = dict(labels)


def page_of(n: int, step: int, drop: int | None = None) -> bytes:
    lines = ["# HELP m Tokens.", "# TYPE m counter"]
    lines += [f'm{{team="t{i}",model="x"}} {float(i * 10 + step)}' for i in range(n) if i != drop]
    return ("\n".join(lines) + "\n").encode()


class CountingParse:
    """Stands in for the reader's line parser, counting the lines parsed in full."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.bnames = parser.bnames
        self.wanted = parser.wanted
        self.calls = 0

    def simple(self, head: bytes, token: bytes) -> Any:
        self.calls += 1
        return self.parser.simple(head, token)

    def parse(self, line: str) -> Any:
        self.calls += 1
        return self.parser.parse(line)


def test_steady_page_parses_no_line_and_hands_back_the_same_list() -> None:
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"m"}))
    spy = CountingParse(reader._parser)
    reader._parser = spy  # type: ignore[assignment]
    derived: list[str] = []

    def derive(name: str, names: tuple[str, ...], values: tuple[str, ...]) -> Entry:
        derived.append(values[0])
        return Entry(name, names, values)

    first, values = reader.read_rows(page_of(200, 0), derive)
    assert len(derived) == 200 and values[:2] == [0.0, 10.0]
    parsed = spy.calls
    assert parsed >= 200
    second, values = reader.read_rows(page_of(200, 1), derive)
    assert len(derived) == 200 and spy.calls == parsed  # nothing parsed again, comments neither
    assert second is first and values[:2] == [1.0, 11.0]
    want = [(e.name, e.labels, v) for e, v in zip(second, values, strict=True)]
    assert want == [(n, dict(lbl), v) for n, lbl, v in parse_text(page_of(200, 1).decode())]


def test_series_that_go_away_are_dropped_and_new_ones_parsed_once() -> None:
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"m"}))
    derived: list[str] = []

    def derive(name: str, names: tuple[str, ...], values: tuple[str, ...]) -> Entry:
        derived.append(values[0])
        return Entry(name, names, values)

    reader.read_rows(page_of(50, 0), derive)
    assert len(reader) == 50
    entries, values = reader.read_rows(page_of(50, 1, drop=17), derive)
    assert len(reader) == 49 and len(entries) == 49 and len(derived) == 50
    assert [e.labels["team"] for e in entries] == [f"t{i}" for i in range(50) if i != 17]
    assert values == [float(i * 10 + 1) for i in range(50) if i != 17]
    entries, _ = reader.read_rows(page_of(50, 2), derive)
    assert derived[-1] == "t17" and len(derived) == 51 and len(reader) == 50
    entries, _ = reader.read_rows(page_of(3, 3), derive)  # memory follows the page
    assert len(reader) == 3 and len(entries) == 3 and len(reader._entries) == 5  # + 2 comments


def test_the_index_stays_the_size_of_the_page_under_churn() -> None:
    # Every read brings new series (and new lines of an unwanted metric) and drops the old.
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"m"}))
    for step in range(20):
        lines = [f'm{{id="{step}-{i}"}} {i}' for i in range(100)]
        lines += [f'other{{id="{step}-{i}"}} 1' for i in range(100)]
        entries, _ = reader.read_rows(("\n".join(lines) + "\n").encode(), Entry)
        assert len(entries) == 100 and len(reader) == 100 and len(reader._entries) == 200


def test_a_prefix_that_does_not_fix_the_series_is_never_kept() -> None:
    # Here the text before the last blank holds the value; the next page's would not.
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"m"}))
    page1 = b'm{a="1"} 5 1000\n m 7\n'
    page2 = b'm{a="1"} 5 2000\n m 8\n'
    for page in (page1, page2, page2):
        entries, values = reader.read_rows(page, Entry)
        want = parse_text(page.decode(), frozenset({"m"}))
        assert [(e.name, e.labels, v) for e, v in zip(entries, values, strict=True)] == [
            (n, dict(lbl), v) for n, lbl, v in want
        ]
    assert len(reader) == 0


AWKWARD_PAGES = [
    # escaped values, a series whose labels change, duplicate series, NaN/Inf, timestamps,
    # blanks and tabs, a value with '}' or '_', comments that look like samples
    b'm{a="x\\"y",b="1"} 5\nm{a="x",b="1"} 6\nm{a="x",b="1"} 7\n',
    b'm{a="1"} NaN\nm{a="2"} +Inf\nm{a="3"} -Inf\nm{a="4"} 1e3\nm{a="5"} -0\n',
    b'm{a="1"} 5 1700000000000\nm{a="2"}\t5\n  m{a="3"} 5\nm {a="4"} 5\nm{a="5"}  5\n',
    b'# m{a="1"} 5\n#m 5\nm{a="1"} 5\n\nm_other{a="1"} 5\nmm 5\n',
    b'm{a="1",} 5\nm{a="} 5"} 6\nm{a="{"} 7\nm 8\nm{} 9\n',
    # hostile: a huge label value, and more distinct label-name sets than the parser memoizes
    b'm{a="' + b"x" * 200_000 + b'",b="1"} 5\n',
    b"".join(b'm{l%d="v"} 5\n' % i for i in range(5000)),
]
AWKWARD_BAD = [
    b'm{a="1"} 5}\n',
    b'm{a="1"} 1_0\n',
    b'm{a="1"} abc\n',
    b'm{a="1"\n',
    b'm{a="1",a="2"} 3\n',
    b"m{a=1} 3\n",
    b'm{a="\\q"} 3\n',
    b'm{a="1"} 5',
    b'm{a="1"} 5 6 7\n',
    b'm{a="1""x"} 3\n',
    b'm{a="1"b="2"} 3\n',
    b'm{,a="1"} 3\n',
    b'm{a="1"}} 3\n',
    b'm{a="1"} 3\nm{a="1""x"} 3\n',
]


def _both(
    new: SeriesReader[Entry],
    old: series_reader_reference.SeriesReader[OldEntry],
    page: bytes,
) -> None:
    try:
        want: Any = [(e.name, e.labels, v) for e, v in zip(*old.read(page, OldEntry), strict=True)]
    except ValueError as exc:
        want = str(exc)
    try:
        got: Any = [(e.name, e.labels, v) for e, v in zip(*new.read_rows(page, Entry), strict=True)]
    except ValueError as exc:
        got = str(exc)
    assert repr(got) == repr(want)  # repr: NaN equals NaN


def test_reader_equals_the_old_reader_on_awkward_pages(span: int) -> None:
    wanted = frozenset({"m"})
    new: SeriesReader[Entry] = SeriesReader(wanted)
    old: series_reader_reference.SeriesReader[OldEntry] = series_reader_reference.SeriesReader(
        wanted
    )
    for page in [*AWKWARD_PAGES, *AWKWARD_BAD, *reversed(AWKWARD_PAGES), AWKWARD_PAGES[0]]:
        _both(new, old, page)
        _both(new, old, page.replace(b" 5", b" 50"))


@pytest.mark.parametrize("preset", ["litellm", "vllm", "otel_genai"])
@pytest.mark.parametrize("seed", range(6))
def test_reader_equals_the_old_reader_refresh_after_refresh(
    preset: str, seed: int, span: int
) -> None:
    rng = random.Random(f"reader-{preset}-{seed}")
    source = make_source(preset, rng)
    wanted = source.mapping.wanted()
    fleet = Fleet(rng, names_for(source, rng), PRESET_LABELS[preset])
    new: SeriesReader[Entry] = SeriesReader(wanted)
    old: series_reader_reference.SeriesReader[OldEntry] = series_reader_reference.SeriesReader(
        wanted
    )
    for _ in range(8):
        _both(new, old, fleet.page())
        fleet.step()


def demo_pages(preset: str) -> list[bytes]:
    """The demo's own LiteLLM or vLLM page over 20 minutes (its counters reset at 900 s and a
    pod drains), then the recorded upstream page of the preset, values moved on."""
    demo = LlmDemo(epoch=T0 - 800)
    pages: list[bytes] = []
    for t in range(0, 1300, 60):
        if preset == "litellm":
            pages.append(demo.litellm_metrics(T0 + t).encode())
        else:
            pages.append(demo.vllm_metrics(demo.pods[0], T0 + t).encode())
    fixture = {"litellm": LITELLM_PAGE, "vllm": VLLM_PAGE, "otel_genai": OTEL_PAGE}[preset]
    recorded = (FIXTURES / fixture).read_bytes()
    pages += [recorded, recorded.replace(b"0 ", b"1 ").replace(b"0\n", b"7\n"), recorded]
    return pages


@pytest.mark.parametrize("preset", ["litellm", "vllm"])
def test_reader_and_source_equal_the_old_ones_on_the_demo_pages(preset: str, span: int) -> None:
    source = make_source(preset, random.Random(3))
    wanted = source.mapping.wanted()
    new: SeriesReader[Entry] = SeriesReader(wanted)
    old: series_reader_reference.SeriesReader[OldEntry] = series_reader_reference.SeriesReader(
        wanted
    )
    for page in demo_pages(preset):
        _both(new, old, page)


@pytest.mark.parametrize("preset", ["litellm", "vllm", "otel_genai"])
async def test_source_equals_reference_on_the_demo_and_recorded_pages(preset: str) -> None:
    source = make_source(preset, random.Random(5))
    upstream = Upstream()
    reference = ReferenceScrape()
    pages = demo_pages(preset) if preset != "otel_genai" else []
    recorded = (FIXTURES / OTEL_PAGE).read_bytes()
    pages += [recorded, recorded.replace(b"0\n", b"9\n")]
    seen = 0
    for page in pages:
        bodies = [page] * len(source._settings.scrape_targets)
        want = reference(source, bodies)
        got = await fast_scrape(source, upstream, bodies)
        assert got == want
        seen += len(want)
    assert seen > 0


# --- the mapping on its own ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_observations_from_samples_equals_reference(seed: int) -> None:
    rng = random.Random(seed)
    preset = rng.choice(sorted(PRESET_LABELS))
    source = make_source(preset, rng)
    fleet = Fleet(rng, names_for(source, rng), PRESET_LABELS[preset])
    samples: list[Sample] = []
    for name, labels, value in fleet.series:
        lbl = dict(labels)
        if rng.random() < 0.2:
            lbl["__name__"] = name  # as the Prometheus API gives them
        if rng.random() < 0.1:
            value = rng.choice([math.nan, math.inf, -math.inf, -1.0, -0.0])
        samples.append((name, lbl, value))
    for from_zero in (False, True):
        got = observations_from_samples("tokens:x", samples, source.mapping, from_zero=from_zero)
        assert got == reference_observations(
            "tokens:x", samples, source.mapping, from_zero=from_zero
        )


def test_a_nul_in_a_value_does_not_pair_other_labels_for_subtraction() -> None:
    source = make_source("litellm", random.Random(0))
    samples: list[Sample] = [
        ("litellm_input_tokens_metric_total", {"model": "m", "a": "x\0b=y"}, 10.0),
        ("litellm_input_tokens_metric_total", {"model": "m", "a": "x", "b": "y"}, 10.0),
        ("litellm_input_cached_tokens_metric_total", {"model": "m", "a": "x", "b": "y"}, 4.0),
    ]
    got = observations_from_samples("tokens:x", samples, source.mapping)
    assert got == reference_observations("tokens:x", samples, source.mapping)
    assert [o.value for o in got if o.token_type == "input"] == [10.0, 6.0]


def test_series_digest_is_unchanged() -> None:
    for labels in ({}, {"a": "1", "b": "2"}, {"b": "é\0x", "__name__": "m", "a": ""}):
        assert series_digest("m", labels) == reference_digest("m", labels)


def test_fast_observation_equals_the_dataclass() -> None:
    args: tuple[Any, ...] = (
        "tokens:x", "0123456789abcdef", "usage", "input", "m", 1.5,
        "openai", "t", None, None, "spend_usd", True, "tokens:x#up0/metrics",
    )  # fmt: skip
    made = _new_observation(*args)
    plain = TokenObservation(*args)
    assert type(made) is TokenObservation
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    with pytest.raises(AttributeError):
        made.value = 2.0  # type: ignore[misc]


async def test_litellm_personal_labels_never_leave_the_fast_path() -> None:
    source = make_source("litellm", random.Random(1))
    personal = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"
    page = (
        "litellm_input_tokens_metric_total{"
        f'hashed_api_key="{personal}",user="u-secret",user_email="alice@example.com",'
        'end_user="bob@example.com",team_alias="alice@example.com",team="team-1",'
        'model="gpt-4o"} 5\n'
    )
    upstream = Upstream()
    for step in range(3):
        bodies = [page.replace("} 5", "} " + str(5 + step)).encode()] * len(
            source._settings.scrape_targets
        )
        got = await fast_scrape(source, upstream, bodies)
        assert isinstance(got, tuple) and got == reference_scrape(source, bodies)
        for obs in got:
            text = repr(obs)
            for secret in (personal, "u-secret", "alice@example.com", "bob@example.com"):
                assert secret not in text
            assert obs.tenant in ("team-1", "from-target") and len(obs.series) == 16


# --- mode: prometheus ------------------------------------------------------------------------


def vector_answer(fleet: Fleet) -> bytes:
    result = []
    for name, labels, value in fleet.series:
        metric = {k: v for k, v in labels if k != "__name__"}
        metric["__name__"] = name
        text = render_value(fleet.rng, value).replace("-0", "-0.0")
        result.append({"metric": metric, "value": [1_750_000_000.0, text]})
    doc = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(doc).encode()


@pytest.mark.parametrize("preset", ["litellm", "vllm", "otel_genai"])
@pytest.mark.parametrize("seed", range(8))
async def test_prometheus_mode_equals_reference_refresh_after_refresh(
    preset: str, seed: int
) -> None:
    rng = random.Random(f"prom-{preset}-{seed}")
    source = TokenSource(
        TokenSourceSettings.model_validate(
            {"name": "t", "preset": preset, "mode": "prometheus", "prometheus_url": "http://p"}
        ),
        run=run_cpu,
    )
    fleet = Fleet(rng, names_for(source, rng), PRESET_LABELS[preset])
    answer = b""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for _ in range(6):
            answer = vector_answer(fleet)
            samples = [
                (labels.get("__name__", ""), labels, value)
                for labels, value in parse_vector(answer)
            ]
            want = reference_observations(source.name, samples, source.mapping)
            assert await source.fetch(client) == want
            fleet.step()
    assert len(source._queried) <= len(fleet.series) + 3


def test_a_failed_read_leaves_no_series_behind() -> None:
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"m"}))
    good = b'm{a="1"} 1\n'
    reader.read_rows(good, Entry)
    with pytest.raises(ValueError, match="line 3"):
        reader.read_rows(b'm{a="1"} 2\nm{a="2"} 2\nm{a="3"} x\n', Entry)
    entries, values = reader.read_rows(good, Entry)
    assert len(entries) == 1 and values == [1.0] and len(reader._entries) == 1


def test_spans_of_other_metrics_leave_nothing_in_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A LiteLLM page's latency histograms can outnumber its token counters many times.
    monkeypatch.setattr(promtext, "READ_CHUNK_BYTES", 300)
    other = "".join(f'latency_bucket{{le="{i}",x="y"}} {i}\n' for i in range(2000))
    page = f'{other}tok{{a="1"}} 5\ntok{{a="2"}} 6\n{other}'
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"tok"}))
    for step in range(3):
        entries, values = reader.read_rows(page.replace(" 6\n", f" {6 + step}\n").encode(), Entry)
        assert [e.labels for e in entries] == [{"a": "1"}, {"a": "2"}]
        assert values == [5.0, 6.0 + step]
        assert len(reader._entries) <= 20


async def test_target_labels_with_odd_names_and_values_equal_the_reference() -> None:
    # Target labels are configuration, never checked as label names.
    source = TokenSource(
        TokenSourceSettings.model_validate(
            {
                "name": "t",
                "preset": "vllm",
                "mode": "scrape",
                "scrape_targets": [
                    {"url": "http://up0/metrics", "labels": {"a%s": "%d", "pod": "p", "z": ""}},
                    {"url": "http://up1/metrics", "labels": {"namespace": "n%", "model_name": "m"}},
                ],
            }
        ),
        run=run_cpu,
    )
    upstream = Upstream()
    reference = ReferenceScrape()
    for page in demo_pages("vllm")[:4]:
        bodies = [page, page]
        want = reference(source, bodies)
        assert await fast_scrape(source, upstream, bodies) == want
        assert isinstance(want, tuple) and want


class MapEntry(SeriesEntry):
    """An entry made by ``read``'s derive(name, labels), as the DCGM and energy readers'."""

    __slots__ = ("labels", "name", "shared")

    def __init__(self, name: str, labels: Mapping[str, str]) -> None:
        super().__init__()
        self.name = name
        self.labels = dict(labels)
        self.shared = labels


@pytest.mark.parametrize("seed", range(6))
def test_mapping_form_equals_the_old_reader(seed: int, span: int) -> None:
    rng = random.Random(f"mapping-{seed}")
    source = make_source("vllm", rng)
    wanted = source.mapping.wanted()
    fleet = Fleet(rng, names_for(source, rng), PRESET_LABELS["vllm"])
    new: SeriesReader[MapEntry] = SeriesReader(wanted)
    old: series_reader_reference.SeriesReader[OldEntry] = series_reader_reference.SeriesReader(
        wanted
    )
    pages = [*AWKWARD_PAGES, *AWKWARD_BAD]
    for _ in range(6):
        pages.append(fleet.page())
        fleet.step()
    for page in pages:
        page = page.replace(b"m{", b"vllm:prompt_tokens_total{")
        try:
            old_entries, old_values = old.read(page, OldEntry)
            want: Any = [
                (e.name, e.labels, v) for e, v in zip(old_entries, old_values, strict=True)
            ]
        except ValueError as exc:
            want = str(exc)
        try:
            entries, values = new.read(page, MapEntry)
            got: Any = [(e.name, e.labels, v) for e, v in zip(entries, values, strict=True)]
        except ValueError as exc:
            got = str(exc)
        assert repr(got) == repr(want)


def test_mapping_form_shares_one_labels_map_per_label_text() -> None:
    reader: SeriesReader[MapEntry] = SeriesReader(frozenset({"a", "b"}))
    entries, _ = reader.read(b'a{x="1"} 1\nb{x="1"} 2\na{x="2"} 3\na 4\n', MapEntry)
    assert entries[0].shared is entries[1].shared and entries[0].shared is not entries[2].shared
    assert entries[3].shared == {}


def test_lines_of_a_longer_name_are_remembered_as_no_sample() -> None:
    # DCGM_FI_DEV_GPU_UTIL is wanted, DCGM_FI_DEV_GPU_UTIL_RATIO-like names are not.
    reader: SeriesReader[Entry] = SeriesReader(frozenset({"m"}))
    spy = CountingParse(reader._parser)
    reader._parser = spy  # type: ignore[assignment]
    for step in range(3):
        page = f'mm{{a="1"}} {step}\nm{{a="1"}} {step}\nmm {step}\n'
        calls = spy.calls
        entries, values = reader.read_rows(page.encode(), Entry)
        want = parse_text(page, frozenset({"m"}))
        assert [(e.name, e.labels, v) for e, v in zip(entries, values, strict=True)] == [
            (n, dict(lbl), v) for n, lbl, v in want
        ]
    # Steady: only 'mm 2' is read again (a bare name: its value could make it a sample).
    assert spy.calls - calls == 2


# --- the columnar read ---------------------------------------------------------------------


async def test_a_steady_page_keeps_its_table_and_rows() -> None:
    """A page with the same series and new values gives the last read's table (the same
    object: the model counts it as arrays); a page with a series more gives a new table
    whose other rows are the same objects; a reading the model cannot use (NaN, ±Inf,
    negative) is NaN in the values and no observation, the partner subtraction as before."""
    source = TokenSource(
        TokenSourceSettings.model_validate(
            {
                "name": "t",
                "preset": "litellm",
                "mode": "scrape",
                "scrape_targets": [{"url": "http://up0/metrics"}],
            }
        ),
        run=run_cpu,
    )
    upstream = Upstream()

    def page(value: str, extra: str = "") -> bytes:
        a = 'model="m",team="a",api_provider="openai"'
        b = 'model="m",team="b",api_provider="openai"'
        return (
            f"litellm_input_tokens_metric_total{{{a}}} 100\n"
            f"litellm_input_tokens_metric_total{{{b}}} {value}\n"
            f"litellm_input_cached_tokens_metric_total{{{a}}} 30\n"
            f"litellm_output_tokens_metric_total{{{a}}} 7\n" + extra
        ).encode()

    async def read(body: bytes) -> TokenColumns:
        upstream.bodies["http://up0/metrics"] = body
        async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)) as client:
            got = await source.fetch(client)
        (cols,) = got
        assert isinstance(cols, TokenColumns)
        assert token_observations(got) == ReferenceScrape()(source, [body])
        return cols

    first = await read(page("50"))
    # input less its cached partner (team a), team b as is, the cached and output counters
    assert first.values.tolist() == [70.0, 50.0, 30.0, 7.0]
    steady = await read(page("NaN"))
    assert steady.table is first.table
    assert math.isnan(steady.values[1]) and len(steady.observations()) == 3
    more = await read(page("-4", 'litellm_output_tokens_metric_total{model="m",team="c"} 1\n'))
    assert more.table is not first.table and math.isnan(more.values[1])
    assert set(map(id, first.table.rows)) <= set(map(id, more.table.rows))
    again = await read(page("+Inf", 'litellm_output_tokens_metric_total{model="m",team="c"} 2\n'))
    assert again.table is more.table and again.values.tolist()[-1] == 2.0
