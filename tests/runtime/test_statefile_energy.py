"""The state file keeps this month's measured electricity per tenant (what the energy budgets
count) across a restart; another month's starts again; the counters since start do not carry."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pytest import approx

from aifinops.model.energy import (
    EnergyContext,
    EnergyState,
    Schedule,
    account_energy,
)
from aifinops.model.finance import FinanceContext, FinanceState
from aifinops.model.inputs import EnergyReadings, GpuEnergy
from aifinops.model.report import ModelState
from aifinops.statefile import Identity, decode_state, encode_state

IDENTITY = Identity(cluster="prod", time_zone="UTC", scope="0123456789abcdef")
FINANCE = FinanceContext(tz="UTC")
CTX = EnergyContext(1.2, Schedule(0.25), Schedule(300.0))
DEC = datetime(2026, 12, 10, tzinfo=UTC).timestamp()


def measured(now: float) -> EnergyState:
    # One unheld GPU: 3.6 MJ = 1 kWh to __idle__, x 1.2 PUE: $0.30, 360 g.
    readings = EnergyReadings(now - 3600, now, (GpuEnergy("G", 3.6e6),))
    _, state = account_energy(readings, [], CTX, EnergyState(), now)
    return state


def test_this_months_electricity_survives_a_restart_and_a_new_month_starts_again() -> None:
    state = measured(DEC)
    data = encode_state(ModelState(last_now=DEC, energy=state), FinanceState(), IDENTITY, DEC)
    assert json.loads(data)["payload"]["energy"]["month"] == "2026-12"
    restored = decode_state(data, IDENTITY, DEC + 600, FINANCE, 900.0).model.energy
    assert restored is not None
    assert restored.month_usd == {"__idle__": approx(0.30)}
    assert restored.month_grams == {"__idle__": approx(360.0)}
    assert restored.joules == {}  # a counter: starts again with the process
    # The next interval adds to the restored month to date.
    nxt = EnergyReadings(DEC + 600, DEC + 4200, (GpuEnergy("G", 3.6e6),))
    report, _ = account_energy(nxt, [], CTX, restored, DEC + 4200)
    assert report.month_usd == {"__idle__": approx(0.60)}
    assert report.usd == {"__idle__": approx(0.30)}
    # Restored in January: December's figures are not this month's.
    jan = datetime(2027, 1, 1, 1, tzinfo=UTC).timestamp()
    later = decode_state(data, IDENTITY, jan, FINANCE, 900.0)
    assert later.model.energy is None and later.dropped >= 1


def test_a_file_without_energy_still_loads() -> None:
    data = encode_state(ModelState(last_now=DEC), FinanceState(), IDENTITY, DEC)
    assert "energy" not in json.loads(data)["payload"]
    assert decode_state(data, IDENTITY, DEC + 60, FINANCE, 900.0).model.energy is None
