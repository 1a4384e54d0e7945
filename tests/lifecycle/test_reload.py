"""Config reload through ``POST /-/reload`` (the same path as SIGHUP): checked first, applied
to tenancy and sources from the next refresh, and the old configuration kept on any error."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from aifinops.settings import ConfigError, Settings, settings_from_mapping
from aifinops.web.lifecycle import RELOADER
from tests.faults.rig import Rig, closed_port_url, errors, start_rig, value
from tests.web.conftest import T0

LIFECYCLE = {"server": {"enable_lifecycle": True}}


def loader_of(rig: Rig, change: Any) -> None:
    """Make the next reload read the rig's configuration changed by ``change(data)``."""

    def load() -> Settings:
        data = rig.fakes.config("prometheus", LIFECYCLE)
        change(data)
        return settings_from_mapping(data)

    rig.app[RELOADER].load = load


async def reload(rig: Rig) -> tuple[int, str]:
    resp = await rig.client.post("/-/reload")
    return resp.status, await resp.text()


async def test_reload_endpoint_is_off_by_default(aiohttp_client: Any) -> None:
    rig = await start_rig(aiohttp_client)
    try:
        assert (await rig.client.post("/-/reload")).status in (404, 405)
    finally:
        await rig.close()


async def test_bad_config_is_refused_and_the_old_one_kept(aiohttp_client: Any) -> None:
    rig = await start_rig(aiohttp_client, extra=LIFECYCLE)
    try:
        await rig.refresh(T0)
        before = await rig.page()
        assert value(before, "aifinops_config_last_reload_successful") == 1.0
        started_at = value(before, "aifinops_config_last_reload_success_timestamp_seconds")

        def broken(data: dict[str, Any]) -> None:
            raise ConfigError("invalid configuration in config.yaml:\n  refresh: nope")

        def bad_catalog(data: dict[str, Any]) -> None:
            data["gpu_pricing"] = {"catalog_file": "/nonexistent/gpus.yaml"}

        def bad_token_source(data: dict[str, Any]) -> None:
            data["tokens"]["sources"][0]["tenant_labels"] = ["user_email"]

        for change in (broken, bad_catalog, bad_token_source):
            loader_of(rig, change)
            with capture_logs() as logs:
                status, text = await reload(rig)
            assert status == 500, change
            assert text.startswith("failed to reload config")
            assert [e["event"] for e in logs] == ["config_reload_failed"]
            page = await rig.page()
            assert value(page, "aifinops_config_last_reload_successful") == 0.0
            assert (
                value(page, "aifinops_config_last_reload_success_timestamp_seconds") == started_at
            )
        # the old configuration still works
        await rig.refresh(T0 + 30)
        page = await rig.page()
        assert {t for (t, _, _) in _rates(page)} == {t for (t, _, _) in _rates(before)}
        assert value(page, "aifinops_config_last_reload_successful") == 0.0
    finally:
        await rig.close()


def _rates(page: Any) -> set[tuple[str, str, str]]:
    """(tenant, resource, basis) of the cost rates; one family per basis."""
    return {
        (lbl["tenant"], lbl["resource"], basis)
        for name, basis in (
            ("aifinops_tenant_cost_usd_per_hour", "allocation"),
            ("aifinops_tenant_usage_basis_cost_usd_per_hour", "usage"),
        )
        for lbl, _ in page.get(name, [])
    }


async def test_tenancy_change_applies_from_the_next_refresh(aiohttp_client: Any) -> None:
    rig = await start_rig(aiohttp_client, extra=LIFECYCLE)
    try:
        await rig.refresh(T0)
        before = {t for (t, _, _) in _rates(await rig.page())}

        def everyone_is_acme(data: dict[str, Any]) -> None:
            data["tenancy"] = {
                "pod_label_keys": [],
                "namespace_label_keys": [],
                "namespace_patterns": [{"regex": ".*", "tenant": "acme"}],
            }

        loader_of(rig, everyone_is_acme)
        with capture_logs() as logs:
            assert await reload(rig) == (200, "configuration reloaded\n")
        assert [e["event"] for e in logs] == ["config_reloaded"]
        assert "tenancy" in logs[0]["changed"]
        await rig.refresh(T0 + 30)
        after = {t for (t, _, _) in _rates(await rig.page())}
        assert "acme" in after and "acme" not in before
        # the namespace-derived tenants are gone (LiteLLM's teams stay: they name themselves)
        llm_teams = {t.tenant for t in rig.fakes.llm.traffic}
        assert before - after - llm_teams, "namespace tenants should be folded into acme"
        assert after - {"acme", "__idle__", "__unallocated__"} <= llm_teams
    finally:
        await rig.close()


async def test_sources_are_replaced_and_keep_their_last_good_data(aiohttp_client: Any) -> None:
    rig = await start_rig(aiohttp_client, extra=LIFECYCLE, month=True)
    try:
        await rig.refresh(T0)

        def opencost_moved(data: dict[str, Any]) -> None:
            data["sources"]["opencost"]["url"] = closed_port_url()
            data["server"]["port"] = 9999  # needs a restart: applied later, said so

        loader_of(rig, opencost_moved)
        with capture_logs() as logs:
            assert (await reload(rig))[0] == 200
        # (the rebuilt month source says how it aggregates: info, not part of the reload)
        events = {e["event"] for e in logs} - {"opencost_month_aggregation"}
        assert events == {"config_reloaded", "config_reload_needs_restart"}
        needs = next(e for e in logs if e["event"] == "config_reload_needs_restart")
        assert needs["sections"] == ["server"]
        await rig.refresh(T0 + 30)
        page = await rig.page()
        assert value(page, "aifinops_source_up", source="opencost") == 0.0
        assert errors(page, "opencost") == {"connect": 1.0}
        # same source name: last good data and its age carried over
        assert value(page, "aifinops_source_age_seconds", source="opencost") == 30.0
        assert value(page, "aifinops_cluster_cost_usd_per_hour", resource="gpu")
        assert value(page, "aifinops_source_up", source="dcgm") == 1.0
    finally:
        await rig.close()


async def test_a_change_to_what_the_month_query_reads_asks_for_it_again(
    aiohttp_client: Any,
) -> None:
    """The month query keeps only the label keys the configuration reads, grouped by its
    tenancy's aggregation: after a reload that changes them, the next refresh asks for it
    again instead of using, for up to its interval, rows read for the old configuration."""
    rig = await start_rig(aiohttp_client, extra=LIFECYCLE, month=True)
    try:
        await rig.refresh(T0)
        month = next(rt for rt in rig.refresher._runtimes if rt.source.name == "opencost_month")
        assert month.attempted_at == T0 and month.up

        def debug_logging(data: dict[str, Any]) -> None:
            data["logging"] = {"level": "debug"}

        loader_of(rig, debug_logging)  # nothing the month query reads: not asked again
        assert (await reload(rig))[0] == 200
        await rig.refresh(T0 + 30)
        assert month.attempted_at == T0

        def tenant_label(data: dict[str, Any]) -> None:
            data["logging"] = {"level": "debug"}
            data["tenancy"] = {"pod_label_keys": ["team"], "namespace_label_keys": []}

        loader_of(rig, tenant_label)
        assert (await reload(rig))[0] == 200
        await rig.refresh(T0 + 60)
        assert month.attempted_at == T0 + 60 and month.up
    finally:
        await rig.close()
