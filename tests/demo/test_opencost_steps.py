"""The fake OpenCost answers ``step`` with ``accumulate=false`` as OpenCost does: one set per
step from the window start, for RFC 3339 and unix pairs."""

from __future__ import annotations

import math

import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster, rfc3339
from aifinops.demo.finance import sim_daily_costs
from aifinops.demo.upstreams import start_upstreams

T0 = 1_750_000_000.0
DAY = 86400.0


@pytest.fixture
async def fake():
    sim = SimCluster(ClusterSpec.demo())
    ups = await start_upstreams(sim, clock=lambda: T0)
    try:
        yield ups
    finally:
        await ups.close()


@pytest.mark.parametrize("pair", ["rfc3339", "unix"])
async def test_daily_sets_match_the_ground_truth(fake, pair, aiohttp_client):
    import httpx

    start = T0 - 3 * DAY - 5000
    window = f"{rfc3339(start)},{rfc3339(T0)}" if pair == "rfc3339" else f"{int(start)},{int(T0)}"
    async with httpx.AsyncClient() as client:
        resp = await client.get(
            f"{fake.opencost_url}/allocation/compute",
            params={
                "window": window,
                "step": "1d",
                "accumulate": "false",
                "aggregate": "namespace,pod",
                "includeIdle": "true",
            },
        )
    assert resp.status_code == 200
    sets = resp.json()["data"]
    assert len(sets) == 4  # three whole days and the part of the fourth up to now
    truth = sim_daily_costs(fake.sim, start, T0)
    for data, (s, e, usd) in zip(sets, truth, strict=True):
        assert {r["window"]["start"] for r in data.values()} == {rfc3339(s)}
        assert {r["window"]["end"] for r in data.values()} == {rfc3339(e)}
        total = math.fsum(r["totalCost"] for r in data.values())
        assert total == pytest.approx(math.fsum(usd.values()), rel=1e-6)


async def test_bad_step_and_window(fake):
    import httpx

    async with httpx.AsyncClient() as client:
        url = f"{fake.opencost_url}/allocation/compute"
        bad_step = await client.get(url, params={"window": "2d", "step": "soon"})
        bad_window = await client.get(url, params={"window": "x,y", "step": "1d"})
        accumulated = await client.get(
            url, params={"window": "2d", "step": "1d", "accumulate": "true"}
        )
    assert bad_step.status_code == 400 and "step" in bad_step.text
    assert bad_window.status_code == 400 and "window" in bad_window.text
    assert len(accumulated.json()["data"]) == 1


# --- aggregation by namespace and labels, as OpenCost's AggregateBy does it ----------------

AGGREGATE = "namespace,label:aifinops.io/tenant"


async def query(fake, **params):
    import httpx

    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{fake.opencost_url}/allocation/compute", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


async def test_aggregated_sets_sum_the_pod_rows_per_key(fake):
    from aifinops.demo.cluster import sanitize_label_key

    window = f"{rfc3339(T0 - 2 * DAY)},{rfc3339(T0)}"
    common = {"window": window, "step": "1d", "accumulate": "false", "includeIdle": "true"}
    pods = await query(fake, aggregate="namespace,pod", **common)
    aggregated = await query(fake, aggregate=AGGREGATE, **common)
    assert len(pods) == len(aggregated) == 2
    label = sanitize_label_key("aifinops.io/tenant")
    for pod_set, agg_set in zip(pods, aggregated, strict=True):
        expected: dict[str, list[float]] = {}
        for key, row in pod_set.items():
            props = row["properties"]
            value = props.get("labels", {}).get(label, "__unallocated__")
            name = "__idle__" if key == "__idle__" else f"{props['namespace']}/{value}"
            expected.setdefault(name, []).append(row["totalCost"])
        assert set(agg_set) == set(expected)
        assert len(agg_set) < len(pod_set)
        for name, parts in expected.items():
            assert agg_set[name]["name"] == name
            assert agg_set[name]["totalCost"] == pytest.approx(math.fsum(parts), abs=1e-4)
            assert agg_set[name]["minutes"] == 1440.0  # start..end of its pods, not a sum


async def test_aggregated_properties_are_the_intersection(fake):
    rows = (await query(fake, window="1d", aggregate=AGGREGATE, includeIdle="true"))[0]
    meta = (await query(fake, window="1d", aggregate=AGGREGATE, includeAggregatedMetadata="true"))[
        0
    ]
    assert set(rows["__idle__"]["properties"]) == {"cluster"}
    many = [k for k, r in rows.items() if "pod" not in r["properties"] and k != "__idle__"]
    assert many, "some keys hold several pods"
    for key in many:
        namespace, tenant = key.split("/")
        props = rows[key]["properties"]
        # Several pods: no pod name or labels any more; the namespace and its labels stay.
        assert props["namespace"] == namespace and "labels" not in props
        assert props["namespaceLabels"]["kubernetes_io_metadata_name"] == namespace
        # With includeAggregatedMetadata, the labels all of its pods share.
        shared = meta[key]["properties"]["labels"]
        assert shared["kubernetes_io_metadata_name"] == namespace
        assert shared.get("aifinops_io_tenant", "__unallocated__") == tenant
        assert "pod_template_hash" not in shared  # differs between the pods


async def test_lean_rows_carry_the_pod_rows_values():
    """The fake aggregates cheap pod rows built from the charges; every field they carry is
    the full pod row's."""
    from aifinops.demo.upstreams import lean_allocations

    sim = SimCluster(ClusterSpec.demo())
    full = sim.opencost_allocation(T0, 24.0)["data"][0]
    lean = lean_allocations(sim, T0, 24.0, include_idle=True)
    assert lean.keys() == full.keys()
    for key, row in lean.items():
        for field, value in row.items():
            if field == "properties":
                assert value == {k: full[key][field][k] for k in value}, key
            else:
                assert value == full[key][field], (key, field)


@pytest.mark.parametrize("aggregate", ["tenant", "label:", "namespace,bogus"])
async def test_unknown_aggregate_properties_are_rejected(fake, aggregate):
    import httpx

    async with httpx.AsyncClient() as client:
        resp = await client.get(
            f"{fake.opencost_url}/allocation/compute",
            params={"window": "1h", "aggregate": aggregate},
        )
    assert resp.status_code == 400 and resp.text.startswith("Invalid 'aggregate' parameter")
