"""The OpenCost sources keep only the label keys the configuration reads
(``assemble.allocation_label_keys``): the rows equal the whole-map rows with their maps cut to
those keys (the whole-map decoder, ``label_keys=None``, is the oracle), streamed or whole,
on the demo cluster's data and on awkward bodies; every label-reading feature still sees its
label; the app's pages and answers are the same as with whole maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest

from aifinops import assemble
from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.model.inputs import EMPTY_LABELS, Allocation, AllocationSet, DailyAllocationSets
from aifinops.model.tenancy import month_aggregation
from aifinops.offload import run_cpu
from aifinops.settings import OpenCostSettings, settings_from_mapping
from aifinops.sources import jsonchunks
from aifinops.sources.base import SourceError
from aifinops.sources.opencost import (
    LabelKeys,
    OpenCostSource,
    parse_allocation_response,
    parse_allocation_sets,
)
from tests.sources.test_opencost_stream import URL, Upstream, compact, month_body

T0 = 1_750_000_000.0
TENANCY = LabelKeys(
    pod=frozenset({"aifinops_io_tenant", "label_aifinops_io_tenant", "team"}),
    namespace=frozenset({"team", "label_team", "aifinops_io_tenant"}),
)
KEY_SETS = [
    TENANCY,
    LabelKeys(frozenset(), frozenset()),
    LabelKeys(frozenset({"app", "aifinops_io_fault_tolerant", "absent"}), frozenset({"app"})),
    LabelKeys(frozenset({"a.b/c", "ключ", "label_"}), frozenset({""})),
]


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(ClusterSpec.scaled(120))


def cut(labels: Mapping[str, str], keys: frozenset[str]) -> Mapping[str, str]:
    return {k: v for k, v in labels.items() if k in keys} or EMPTY_LABELS


def cut_row(row: Allocation, keys: LabelKeys) -> Allocation:
    return msgspec.structs.replace(
        row,
        labels=cut(row.labels, keys.pod),
        namespace_labels=cut(row.namespace_labels, keys.namespace),
    )


def cut_set(got: AllocationSet, keys: LabelKeys) -> AllocationSet:
    return AllocationSet(got.window_hours, tuple(cut_row(r, keys) for r in got.allocations))


def cut_days(got: DailyAllocationSets, keys: LabelKeys) -> DailyAllocationSets:
    sets = tuple((a, b, cut_set(s, keys)) for a, b, s in got.sets)
    return DailyAllocationSets(got.start, got.end, sets)


def only_read_keys(rows: Sequence[Allocation], keys: LabelKeys) -> None:
    for row in rows:
        assert set(row.labels) <= keys.pod and set(row.namespace_labels) <= keys.namespace


@pytest.mark.parametrize("keys", KEY_SETS)
def test_rate_rows_are_the_whole_rows_cut_to_the_read_keys(
    sim: SimCluster, keys: LabelKeys
) -> None:
    body = compact(sim.opencost_allocation(T0, 1.0))
    whole = parse_allocation_response(body, 1.0)
    kept = parse_allocation_response(body, 1.0, keys)
    assert kept == cut_set(whole, keys)
    only_read_keys(kept.allocations, keys)
    if keys is TENANCY:  # the demo's tenancy labels are there, and equal maps are one object
        assert any(r.labels for r in kept.allocations)
        maps = {id(r.namespace_labels) for r in kept.allocations if r.namespace_labels}
        assert len(maps) == len(
            {tuple(r.namespace_labels.items()) for r in kept.allocations} - {()}
        )


@pytest.mark.parametrize("how", ["pod", "tenancy"])
def test_month_sets_are_the_whole_sets_cut_to_the_read_keys(sim: SimCluster, how: str) -> None:
    start = T0 - 4 * 86400.0
    agg = month_aggregation(["aifinops.io/tenant", "team"], pod=how == "pod")
    body = month_body(sim, start, 4, None if agg.labels is None else agg.aggregate)
    whole = parse_allocation_sets(body, start, T0, aggregation=agg)
    assert sum(bool(s.allocations) for *_, s in whole.sets) >= 3
    for keys in KEY_SETS:
        kept = parse_allocation_sets(body, start, T0, aggregation=agg, label_keys=keys)
        # Rows read back from their keys carry tenancy's labels whatever the maps held.
        read_back = LabelKeys(keys.pod | set(agg.labels or ()), keys.namespace)
        assert kept == cut_days(whole, read_back)
        for *_, s in kept.sets:
            only_read_keys(s.allocations, read_back)


@pytest.mark.parametrize("seed", range(3))
async def test_a_streamed_rate_answer_keeps_the_same_keys(
    sim: SimCluster, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonchunks, "PIECE_BYTES", 4096)  # many pieces, one memo
    body = compact(sim.opencost_allocation(T0, 1.0))
    source = OpenCostSource(OpenCostSettings(url=URL, window="1h"), run=run_cpu, label_keys=TENANCY)
    got = await Upstream(body, seed=seed).fetch(source)
    assert got == parse_allocation_response(body, 1.0, TENANCY)
    assert got == cut_set(parse_allocation_response(body, 1.0), TENANCY)


def doc(props: str, *more: str) -> bytes:
    rows = [
        f'"ns/p{i}":{{"name":"ns/p{i}","properties":{p},"cpuCost":1}}'
        for i, p in enumerate((props, *more))
    ]
    return ('{"code":200,"status":"success","data":[{' + ",".join(rows) + "}]}").encode()


KEYS = LabelKeys(frozenset({"team", "a.b/c"}), frozenset({"team"}))


@pytest.mark.parametrize(
    "body",
    [
        doc('{"namespace":"ns","labels":{"te\\u0061m":"x","other":"y"}}'),  # an escaped key
        doc('{"labels":{"team":"a","team":"b","x":"1"}}'),  # a repeated key: the last wins
        doc('{"labels":{"team":""},"namespaceLabels":{"team":"t"}}'),  # blank stays blank
        doc('{"labels":null,"namespaceLabels":{}}', '{"labels":{"a.b/c":"v"}}', "null"),
        doc('{"labels":{"team":"\\ud800","x":"y"}}'),  # a lone surrogate: read whole, U+FFFD
        b'{"code":200,"status":"success","data":[{"ns/p":{"cpuCost":NaN,"properties":{"labels":{"team":"n"}}}}]}',
        doc('{"labels":{"team":"a"}}', '{"labels":{"x":"a"}}').replace(
            b'"data":[{', b'"data":[{}, {'
        ),
    ],
)
def test_awkward_bodies_give_the_whole_rows_cut(body: bytes) -> None:
    whole = parse_allocation_response(body, 1.0)
    kept = parse_allocation_response(body, 1.0, KEYS)
    assert kept == cut_set(whole, KEYS)
    only_read_keys(kept.allocations, KEYS)


@pytest.mark.parametrize(
    "props",
    [
        '{"labels":{"team":1}}',  # a read key that is not a string
        '{"namespaceLabels":{"team":null}}',
        '{"labels":["team"]}',  # not a map at all
        '{"labels":"team=a"}',
    ],
)
def test_bad_labels_the_config_reads_fail_as_before(props: str) -> None:
    for keys in (None, KEYS):
        with pytest.raises(SourceError) as err:
            parse_allocation_response(doc(props), 1.0, keys)
        assert err.value.reason == "invalid"


def test_a_bad_value_of_a_label_nobody_reads_is_not_read() -> None:
    # The one deliberate difference: such a value is skipped like any unknown field.
    body = doc('{"labels":{"team":"a","other":{"deep":[1,2]},"n":3}}')
    with pytest.raises(SourceError):
        parse_allocation_response(body, 1.0)
    (row,) = parse_allocation_response(body, 1.0, KEYS).allocations
    assert row.labels == {"team": "a"}


def test_a_key_msgspec_cannot_name_keeps_the_maps_whole(sim: SimCluster) -> None:
    # No Kubernetes label key holds a quote, a backslash or a control character.
    body = compact(sim.opencost_allocation(T0, 1.0))
    odd = LabelKeys(frozenset({'odd "key"'}), frozenset())
    assert parse_allocation_response(body, 1.0, odd) == parse_allocation_response(body, 1.0)


# --- what the configuration reads (assemble.allocation_label_keys) -------------------------

NOISE = '"pod_template_hash":"5d9f","app_kubernetes_io_part_of":"x","node_label":"n"'


def configured(**sections: Any) -> Any:
    return settings_from_mapping({"sources": {"opencost": {"url": URL}}, **sections})


def one_row(settings: Any, props: str) -> Allocation:
    keys = assemble.allocation_label_keys(settings)
    (row,) = parse_allocation_response(doc(props), 1.0, keys).allocations
    only_read_keys((row,), keys)
    return row


def test_tenancy_pod_and_namespace_label_keys_are_read() -> None:
    settings = configured(
        tenancy={"pod_label_keys": ["example.com/squad"], "namespace_label_keys": ["org"]},
        recommendations={"spot": {"enabled": False}},
    )
    keys = assemble.allocation_label_keys(settings)
    assert keys == LabelKeys(
        frozenset({"example.com/squad", "example_com_squad", "label_example_com_squad"}),
        frozenset({"org", "label_org"}),
    )
    resolve = settings.tenancy.to_model().resolve

    def tenant(props: str) -> str:
        row = one_row(settings, props)
        return str(resolve(row.namespace, row.labels, row.namespace_labels))

    ns = '"namespace":"ns","namespaceLabels":{"org":"%s",' + NOISE + "}"
    assert (
        tenant('{"labels":{"example_com_squad":"alpha",' + NOISE + "}," + ns % "o" + "}") == "alpha"
    )
    assert (
        tenant('{"labels":{"example_com_squad":"beta",' + NOISE + "}," + ns % "o" + "}") == "beta"
    )
    assert tenant('{"labels":{' + NOISE + "}," + ns % "o" + "}") == "o"
    assert tenant('{"labels":{' + NOISE + "}," + ns % "p" + "}") == "p"


def test_self_hosted_selector_pod_labels_are_read() -> None:
    model = {"model": "llama", "serving_pods": {"pod_labels": {"app": "vllm-llama"}}}
    settings = configured(
        tokens={"push": {"enabled": True}, "self_hosted": {"models": [model]}},
        recommendations={"spot": {"enabled": False}},
    )
    assert "app" in assemble.allocation_label_keys(settings).pod
    (spec,) = settings.tokens.to_model().models
    pod = '{"namespace":"ns","pod":"p","labels":{"app":"%s",' + NOISE + "}}"
    assert spec.selects(one_row(settings, pod % "vllm-llama"))
    assert not spec.selects(one_row(settings, pod % "vllm-other"))
    # Without token analytics no selector is read.
    assert "app" not in assemble.allocation_label_keys(configured()).pod


def test_the_spot_label_is_read_only_when_spot_is_enabled() -> None:
    spot = {"spot": {"label_key": "example.com/preemptible"}}
    keys = assemble.allocation_label_keys(configured(recommendations=spot))
    assert {"example.com/preemptible", "example_com_preemptible"} <= keys.pod
    row = one_row(
        configured(recommendations=spot),
        '{"labels":{"example_com_preemptible":"true",' + NOISE + "}}",
    )
    assert row.labels == {"example_com_preemptible": "true"}
    off = {"spot": {"enabled": False, "label_key": "example.com/preemptible"}}
    assert (
        "example_com_preemptible"
        not in assemble.allocation_label_keys(configured(recommendations=off)).pod
    )
