"""The state file (``aifinops/statefile.py``): a restart in the middle of a month keeps the
exporter's ledger, token month-to-date and charge-back equal to an uninterrupted run on the
same inputs; corrupt, foreign and old-version files are moved aside and never stop a start.

The model-level runs drive ``build_report`` + ``build_finance`` on literal counters (API
tokens, a self-hosted model whose serving cost is charged back, OpenCost's daily sets) and
restart by writing the state to a real file and reading it back."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

import pytest
import structlog

from aifinops.exposition.families import state_families
from aifinops.model.finance import (
    FinanceContext,
    FinanceInputs,
    FinanceReport,
    FinanceState,
    build_finance,
)
from aifinops.model.inputs import AllocationSet, DailyAllocationSets, Inputs, TokenInputs
from aifinops.model.llm_prices import LlmPriceCatalog, build_catalog, parse_litellm_prices
from aifinops.model.report import ModelContext, ModelState, Report, build_report
from aifinops.model.tokens import SelfHostedSpec
from aifinops.settings import ConfigError, StateSettings, settings_from_mapping
from aifinops.statefile import (
    KEEP_CORRUPT,
    Identity,
    StateStore,
    check_state_dir,
    decode_state,
    encode_state,
)
from tests.model.builders import pod, pricer, resolver
from tests.model.token_builders import LLAMA, obs, serving_cluster, token_context
from tests.upstream_data import price_subset

DAY = 86400.0
JUNE = datetime.fromisoformat("2025-06-01T00:00:00+00:00").timestamp()
E0 = JUNE + 10 * DAY  # the upstream counters' epoch
T0 = E0 + 3600.0  # first refresh, mid-June
STEP = 30.0
IDENTITY = Identity(cluster="prod", time_zone="UTC", scope="0123456789abcdef")
FINANCE = FinanceContext(tz="UTC", lookback_days=5)

API_RATES = {"search": 40.0, "chatbot": 25.0}  # gpt-4o tokens/s per tenant
SELF_HOSTED_RATES = {"search": 10.0, "speech": 30.0}  # llama tokens/s per tenant
TYPE_SHARE = {"input": 1.0, "output": 0.5, "cached_input": 0.2}


@pytest.fixture(scope="module")
def catalog() -> LlmPriceCatalog:
    return build_catalog(parse_litellm_prices(price_subset()), "test")


def observations(t: float, epoch: float = E0):
    """Every counter at ``t``: cumulative since ``epoch`` (an upstream restart moves it)."""
    e = t - epoch
    out = []
    for tenant, rate in API_RATES.items():
        for k, share in TYPE_SHARE.items():
            out.append(
                obs("tokens:litellm", f"api-{tenant}-{k}", k, "gpt-4o", rate * share * e,
                    tenant=tenant, provider="openai")
            )  # fmt: skip
    for tenant, rate in SELF_HOSTED_RATES.items():
        for k, share in TYPE_SHARE.items():
            out.append(
                obs("tokens:litellm", f"sh-{tenant}-{k}", k, "llama-8b", rate * share * e,
                    tenant=tenant)
            )  # fmt: skip
    served = sum(SELF_HOSTED_RATES.values())
    for p in ("vllm-0", "vllm-1"):
        for k, share in TYPE_SHARE.items():
            out.append(
                obs("tokens:vllm", f"{p}-{k}", k, LLAMA, served / 2 * share * e, role="serving",
                    provider="vllm", namespace="llm-serving", pod=p)
            )  # fmt: skip
    return out


def monthly(now: float) -> DailyAllocationSets:
    """OpenCost's daily sets since June 1st (team-search $24/day of GPU)."""
    sets = []
    s = JUNE
    while s < now:
        e = min(s + DAY, now)
        rows = (pod("team-search", "app", gpu_cost=24.0 * (e - s) / DAY),)
        sets.append((s, e, AllocationSet((e - s) / 3600, rows)))
        s = e
    return DailyAllocationSets(JUNE, now, tuple(sets))


@dataclass
class Run:
    """One exporter process: the model and finance states it owns."""

    ctx: ModelContext
    catalog: LlmPriceCatalog
    state: ModelState
    fstate: FinanceState
    report: Report | None = None
    finance: FinanceReport | None = None

    def step(self, t: float, epoch: float = E0) -> None:
        o = tuple(observations(t, epoch))
        tokens = TokenInputs(o, frozenset(x.source for x in o), self.catalog)
        allocs = serving_cluster()
        self.report, self.state = build_report(
            Inputs(None, allocs, tokens), self.ctx, self.state, t
        )
        self.finance, self.fstate = build_finance(
            self.report,
            FinanceInputs(monthly=monthly(t), allocations=allocs, catalog=self.catalog),
            FINANCE,
            resolver(),
            pricer(),
            self.fstate,
            t,
        )


def new_run(catalog: LlmPriceCatalog) -> Run:
    spec = SelfHostedSpec(model=LLAMA, provider="vllm", aliases=("llama-8b",))
    ctx = token_context(specs=[spec], rate_window_seconds=60)
    return Run(ctx, catalog, ModelState(), FinanceState())


def store_at(path: Path, **kw: float) -> StateStore:
    return StateStore(StateSettings(path=path, **kw), IDENTITY)


def restart(run: Run, path: Path, now: float, saved_at: float, **kw: float) -> Run:
    """Write ``run``'s state to ``path`` at ``saved_at`` and start a new process at ``now``."""
    assert store_at(path, **kw).save(run.state, run.fstate, saved_at)
    restored = store_at(path, **kw).load(now, FINANCE)
    assert restored is not None
    return Run(run.ctx, run.catalog, restored.model, restored.finance)


def uninterrupted(catalog: LlmPriceCatalog, times: Sequence[float]) -> Run:
    run = new_run(catalog)
    for t in times:
        run.step(t)
    return run


def assert_same_money(a: Run, b: Run) -> None:
    """The exporter's own figures agree (float sums in another order: 1e-9 relative)."""
    fa, fb = a.finance, b.finance
    assert fa is not None and fb is not None
    assert fa.periods.keys() == fb.periods.keys()
    for period in fa.periods:
        assert fa.periods[period] == pytest.approx(fb.periods[period], rel=1e-9, abs=1e-9)
    assert a.fstate.exporter_daily == pytest.approx(b.fstate.exporter_daily, rel=1e-9, abs=1e-9)
    assert fa.month_to_date == pytest.approx(fb.month_to_date, rel=1e-9, abs=1e-9)
    assert fa.tenant_month_to_date == pytest.approx(fb.tenant_month_to_date, rel=1e-9)
    assert a.fstate.token_volume == pytest.approx(b.fstate.token_volume, rel=1e-9)
    assert a.fstate.volume_since == b.fstate.volume_since
    ra, rb = a.report, b.report
    assert ra is not None and rb is not None and ra.tokens is not None and rb.tokens is not None
    assert ra.tokens.api_cost_rate == pytest.approx(rb.tokens.api_cost_rate, rel=1e-9)
    for basis in ra.charge_back:
        assert ra.charge_back[basis] == pytest.approx(rb.charge_back[basis], rel=1e-9, abs=1e-12)


# --- a restart in the middle of the month --------------------------------------------------

TIMES = [T0 + STEP * i for i in range(10)]


def test_clean_restart_equals_an_uninterrupted_run(catalog, tmp_path: Path) -> None:
    whole = uninterrupted(catalog, TIMES)
    first = new_run(catalog)
    for t in TIMES[:5]:
        first.step(t)
    # SIGTERM after the refresh at TIMES[4]; the new process refreshes at TIMES[5]
    second = restart(first, tmp_path / "state.json", now=TIMES[5], saved_at=TIMES[4])
    for t in TIMES[5:]:
        second.step(t)
    assert_same_money(whole, second)
    f = second.finance
    assert f is not None
    tokens_mtd = {t: v for (t, r), v in f.month_to_date.items() if r == "tokens"}
    assert tokens_mtd["search"] > 0 and tokens_mtd["chatbot"] > 0
    # charge-back moved serving cost to the senders on every refresh, the first one included
    assert second.report is not None and second.report.charge_back["allocation"]
    assert f.period_dollars("2025-06", "allocation")[("speech", "gpu")] > 0

    # Teeth: the same restart without the file loses the ledger and a refresh of tokens.
    bare = Run(first.ctx, catalog, ModelState(), FinanceState())
    for t in TIMES[5:]:
        bare.step(t)
    assert bare.finance is not None
    assert bare.finance.month_to_date[("search", "tokens")] < 0.5 * tokens_mtd["search"]


def test_crash_after_a_save_recounts_nothing_twice(catalog, tmp_path: Path) -> None:
    """Saved at TIMES[3]; the old process refreshed twice more, unsaved, and crashed; the
    new one starts at TIMES[6]. Tokens since the save are counted once (from the saved
    counter values), the rate-based dollars are bridged over the whole gap."""
    whole = uninterrupted(catalog, TIMES)
    first = new_run(catalog)
    for t in TIMES[:4]:
        first.step(t)
    saved = replace(first)  # what the file holds
    for t in TIMES[4:6]:
        first.step(t)  # counted by the old process, then lost with it
    second = restart(saved, tmp_path / "state.json", now=TIMES[6], saved_at=TIMES[3])
    for t in TIMES[6:]:
        second.step(t)
    assert_same_money(whole, second)


def test_long_gap_counts_tokens_exactly_but_does_not_extrapolate_rates(
    catalog, tmp_path: Path
) -> None:
    late = [TIMES[3] + 1200.0 + STEP * i for i in range(3)]  # 20 min down, max_gap 15 min
    whole = uninterrupted(catalog, [*TIMES[:4], *late])
    first = new_run(catalog)
    for t in TIMES[:4]:
        first.step(t)
    second = restart(first, tmp_path / "s.json", now=late[0], saved_at=TIMES[3])
    for t in late:
        second.step(t)
    fw, fs = whole.finance, second.finance
    assert fw is not None and fs is not None
    june_w = fw.period_dollars("2025-06", "allocation")
    june_s = fs.period_dollars("2025-06", "allocation")
    assert june_w is not None and june_s is not None
    for tenant in API_RATES:  # token dollars are counter-based: exact across the gap
        assert june_s[(tenant, "tokens")] == pytest.approx(june_w[(tenant, "tokens")], rel=1e-9)
    assert fs.month_to_date[("search", "tokens")] == pytest.approx(
        fw.month_to_date[("search", "tokens")], rel=1e-9
    )
    # rate x time for the 20 minutes nobody measured is missing, not estimated
    assert whole.report is not None
    rate = whole.report.tenant_rates("allocation")[("search", "gpu")]  # $/h, steady
    missing = june_w[("search", "gpu")] - june_s[("search", "gpu")]
    assert missing == pytest.approx(rate * (late[0] - TIMES[3]) / 3600, rel=1e-9)


def test_an_upstream_reset_during_the_restart_counts_from_zero(catalog, tmp_path: Path) -> None:
    first = new_run(catalog)
    for t in TIMES[:4]:
        first.step(t)
    before = first.finance
    assert before is not None
    second = restart(first, tmp_path / "s.json", now=TIMES[4], saved_at=TIMES[3])
    # LiteLLM and vLLM restarted 60 s before: every counter is back near zero
    upstream_epoch = TIMES[4] - 60.0
    second.step(TIMES[4], epoch=upstream_epoch)
    after = second.finance
    assert after is not None
    for tenant, rate in API_RATES.items():
        gained = after.month_to_date[(tenant, "tokens")] - before.month_to_date[(tenant, "tokens")]
        price = catalog.lookup("gpt-4o", "openai")
        assert price is not None
        expected = math.fsum(
            rate * share * 60.0 * price.per_token(k)  # type: ignore[arg-type]
            for k, share in TYPE_SHARE.items()
        )
        assert gained == pytest.approx(expected, rel=1e-9)  # never negative, never doubled


# --- the document --------------------------------------------------------------------------


def test_round_trip_keeps_ledger_counters_and_rebases_the_process_totals(
    catalog, tmp_path: Path
) -> None:
    run = new_run(catalog)
    for t in TIMES[:4]:
        run.step(t)
    data = encode_state(run.state, run.fstate, IDENTITY, TIMES[3])
    restored = decode_state(data, IDENTITY, TIMES[4], FINANCE, 900.0)
    assert restored.bridged and restored.gap_seconds == STEP and restored.dropped == 0
    f, rf = run.fstate, restored.finance
    assert rf.periods == f.periods
    assert rf.exporter_daily == f.exporter_daily
    assert rf.token_volume == f.token_volume and rf.volume_since == f.volume_since
    assert rf.last_now == TIMES[3] and rf.prev_accrued == {} and rf.prev_tokens == {}
    tokens, saved = restored.model.tokens, run.state.tokens
    assert tokens is not None and saved is not None
    assert tokens.last == saved.last and tokens.seen_at == saved.seen_at
    assert tokens.models == saved.models
    # the new process's own counters start at zero; the samples are rebased on them
    assert restored.model.accrued == {} and tokens.tokens == {} and tokens.cost == {}
    assert set(tokens.api_cost.values()) == {0.0}
    last_sample = tokens.history[-1]
    assert set(last_sample.api_cost.values()) == {0.0}
    assert all(v <= 0 for v in tokens.history[0].api_cost.values())
    assert json.loads(data)["identity"] == IDENTITY.as_json()
    # A restored state written again before any refresh (the first one failed) reads back
    # the same: the samples are stored relative to the totals either way.
    again = decode_state(
        encode_state(restored.model, restored.finance, IDENTITY, TIMES[4]),
        IDENTITY,
        TIMES[4],
        FINANCE,
        900.0,
    )
    assert again.model.tokens == tokens and again.finance.periods == f.periods


def test_push_counters_are_not_persisted(catalog) -> None:
    run = new_run(catalog)
    o = (obs("tokens:push", "d1", "input", "gpt-4o", 100.0, tenant="a", from_zero=True),)
    for t in TIMES[:2]:
        tokens = TokenInputs(o, frozenset({"tokens:push"}), catalog)
        run.report, run.state = build_report(Inputs(None, None, tokens), run.ctx, run.state, t)
    assert run.state.tokens is not None and run.state.tokens.last
    restored = decode_state(
        encode_state(run.state, run.fstate, IDENTITY, TIMES[1]), IDENTITY, TIMES[2], FINANCE, 900
    )
    assert restored.model.tokens is not None and restored.model.tokens.last == {}


def test_old_entries_are_pruned_to_history_months_and_the_lookback() -> None:
    now = datetime.fromisoformat("2025-06-15T12:00:00+00:00").timestamp()
    periods = {f"{2024 + (m - 1) // 12}-{(m - 1) % 12 + 1:02d}": {("a", "gpu", "allocation"): 1.0}
               for m in range(1, 20)}  # 2024-01 .. 2025-07 (one month ahead)  # fmt: skip
    fstate = FinanceState(
        periods=periods,
        exporter_daily={
            ("a", "tokens", date(2025, 6, 14)): 2.0,
            ("a", "tokens", date(2025, 1, 1)): 3.0,  # before the look-back window
            ("a", "tokens", date(2025, 6, 20)): 4.0,  # after today
        },
    )
    data = encode_state(ModelState(), fstate, IDENTITY, now)
    restored = decode_state(data, IDENTITY, now, FinanceContext(history_months=13), 900)
    assert sorted(restored.finance.periods) == [f"2024-{m:02d}" for m in range(6, 13)] + [
        f"2025-{m:02d}" for m in range(1, 7)
    ]
    assert restored.finance.exporter_daily == {("a", "tokens", date(2025, 6, 14)): 2.0}
    assert restored.dropped == 6 + 2  # six months, two days
    assert restored.model.last_now is None and not restored.bridged


# --- bad files -----------------------------------------------------------------------------


def _good_doc(catalog: LlmPriceCatalog) -> dict:
    run = new_run(catalog)
    for t in TIMES[:3]:
        run.step(t)
    doc: dict = json.loads(encode_state(run.state, run.fstate, IDENTITY, TIMES[2]))
    return doc


def _mutate(catalog, change) -> bytes:
    doc = _good_doc(catalog)
    change(doc)
    return json.dumps(doc).encode()


def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


BAD_FILES = {
    "garbage": (lambda c: b"\x00\xffnot json at all", "not valid JSON"),
    "truncated": (lambda c: json.dumps(_good_doc(c)).encode()[:-40], "not valid JSON"),
    "another format": (lambda c: _mutate(c, _set("format", "prometheus-tsdb")), "format"),
    "newer schema": (lambda c: _mutate(c, _set("schema_version", 2)), "schema version 2"),
    "other cluster": (
        lambda c: _mutate(c, _set("identity.cluster", "staging")),
        "written for cluster 'staging'",
    ),
    "other time zone": (
        lambda c: _mutate(c, _set("identity.time_zone", "Europe/Paris")),
        "budgets.time_zone",
    ),
    "other scoping": (lambda c: _mutate(c, _set("identity.scope", "ffff")), "upstream scoping"),
    "negative ledger dollars": (
        lambda c: _mutate(c, _set("payload.finance.periods.2025-06.0.3", -5.0)),
        "payload.finance.periods.2025-06.0.3",
    ),
    "infinite counter": (
        lambda c: _mutate(c, _set("payload.tokens.counters.0.4", 1e309)),
        "payload.tokens.counters.0.4",
    ),
    "not a date": (
        lambda c: _mutate(c, _set("payload.finance.daily.0.2", "2025-02-30")),
        "'2025-02-30' is not a date",
    ),
    "unknown field": (lambda c: _mutate(c, _set("payload.extra", 1)), "payload.extra"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_moved_aside_and_the_exporter_starts_empty(
    catalog, tmp_path: Path, case: str
) -> None:
    make, reason = BAD_FILES[case]
    path = tmp_path / "state.json"
    content = make(catalog)
    path.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        restored = store_at(path).load(TIMES[3], FINANCE)
    assert restored is None
    (warning,) = [e for e in logs if e["event"] == "state_file_discarded"]
    assert warning["log_level"] == "warning"
    assert reason in warning["reason"], warning["reason"]
    aside = tmp_path / f"state.json.corrupt-{int(TIMES[3])}"
    assert warning["kept_as"] == aside.name
    assert aside.read_bytes() == content and not path.exists()


def test_good_file_loads_and_a_missing_one_starts_empty(catalog, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with structlog.testing.capture_logs() as logs:
        assert store_at(path).load(TIMES[0], FINANCE) is None
    assert [e["event"] for e in logs] == ["state_file_absent"]
    path.write_bytes(json.dumps(_good_doc(catalog)).encode())
    with structlog.testing.capture_logs() as logs:
        assert store_at(path).load(TIMES[3], FINANCE) is not None
    assert [e["event"] for e in logs] == ["state_restored"]


def test_only_the_newest_corrupt_copies_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for i in range(KEEP_CORRUPT + 2):
        path.write_bytes(b"{")
        assert store_at(path).load(T0 + i, FINANCE) is None
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"state.json.corrupt-{int(T0) + i}" for i in range(2, KEEP_CORRUPT + 2)]


# --- writing -------------------------------------------------------------------------------


def test_writes_are_atomic_and_failures_are_counted_never_raised(catalog, tmp_path: Path) -> None:
    run = new_run(catalog)
    run.step(TIMES[0])
    path = tmp_path / "d" / "state.json"
    path.parent.mkdir()
    (path.parent / ".state.json.abc.tmp").write_bytes(b"half a write")  # a crash's leftover
    store = store_at(path, save_interval_seconds=60)
    assert store.load(TIMES[0], FINANCE) is None
    assert not (path.parent / ".state.json.abc.tmp").exists()
    assert store.due(TIMES[0]) and store.save(run.state, run.fstate, TIMES[0])
    assert not store.due(TIMES[0] + 59) and store.due(TIMES[0] + 60)
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    names = {f.spec.name: f.samples for f in state_families(store)}
    assert names["aifinops_state_last_save_timestamp_seconds"] == [((), TIMES[0])]
    assert names["aifinops_state_save_errors_total"] == [((), 0.0)]

    path.unlink()
    path.parent.rmdir()  # the volume went away
    with structlog.testing.capture_logs() as logs:
        assert not store.save(run.state, run.fstate, TIMES[1])
    assert [e["event"] for e in logs] == ["state_save_failed"]
    names = {f.spec.name: f.samples for f in state_families(store)}
    assert names["aifinops_state_save_errors_total"] == [((), 1.0)]
    assert names["aifinops_state_last_save_timestamp_seconds"] == [((), TIMES[0])]


# --- settings ------------------------------------------------------------------------------


def test_state_settings_are_strict_and_off_by_default() -> None:
    assert settings_from_mapping({}).state.path is None
    s = settings_from_mapping({"state": {"path": "/var/lib/aifinops/state.json"}})
    assert s.state.save_interval_seconds == 60 and s.state.max_gap_seconds == 900
    with pytest.raises(ConfigError, match=r"state\.save_intervall: unknown field"):
        settings_from_mapping({"state": {"save_intervall": 5}})
    with pytest.raises(ConfigError, match=r"state\.save_interval_seconds"):
        settings_from_mapping({"state": {"save_interval_seconds": 0}})
    with pytest.raises(ConfigError, match=r"state\.path: .*must name a file"):
        settings_from_mapping({"state": {"path": "/"}})


def test_unwritable_state_dir_fails_fast_naming_the_field(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"state\.path: cannot write in .*a-file"):
        check_state_dir(StateSettings(path=blocker / "state.json"))
    with pytest.raises(ConfigError, match=r"state\.path: .* is a directory"):
        check_state_dir(StateSettings(path=tmp_path))
    check_state_dir(StateSettings(path=tmp_path / "new" / "state.json"))  # created
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []
