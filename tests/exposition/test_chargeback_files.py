"""The FOCUS file carries every kWh, dollar and gram of measured GPU electricity, whichever
tenants have GPU rows (issue 17): energy is not billed, so no row's dollars change."""

from __future__ import annotations

import csv
import io
import math

import pytest

from aifinops.exposition.chargeback_files import focus_csv
from aifinops.model.chargeback import build_chargeback
from aifinops.model.energy import EnergyUse

DOLLARS = {("research", "gpu"): 1716.67, ("__idle__", "gpu"): 858.33, ("ci-pr-1", "cpu"): 3.0}
ENERGY = {
    "research": EnergyUse(800.0, 1040.0, 125.27, 365.4),
    "__idle__": EnergyUse(40.0, 52.0, 6.24, 18.2),
    "ci-pr-1": EnergyUse(5.0, 6.5, 0.78, 2.3),  # a tenant with no GPU dollars
}


@pytest.mark.parametrize("share_idle", [False, True])
def test_focus_energy_adds_up_to_the_fleets_and_dollars_do_not_move(share_idle: bool) -> None:
    cb = build_chargeback(DOLLARS, "2026-12", "UTC", share_idle=share_idle, energy=ENERGY)
    rows = list(csv.DictReader(io.StringIO(focus_csv(cb))))

    def total(column: str) -> float:
        return math.fsum(float(r[column]) for r in rows if r[column])

    assert total("x_EnergyKWh") == pytest.approx(sum(u.facility_kwh for u in ENERGY.values()))
    assert total("x_EnergyCost") == pytest.approx(sum(u.usd for u in ENERGY.values()))
    assert total("x_CarbonKgCO2e") == pytest.approx(sum(u.kg_co2e for u in ENERGY.values()))
    assert total("BilledCost") == pytest.approx(float(cb.total_usd))
    energy_only = [r for r in rows if r["x_Allocation"] == "energy_only"]
    assert all(r["BilledCost"] == "0" and r["PricingUnit"] == "kWh" for r in energy_only)
    expected = {"ci-pr-1", "__idle__"} if share_idle else {"ci-pr-1"}
    assert {r["x_Tenant"] for r in energy_only} == expected
