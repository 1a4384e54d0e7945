"""Chargeback: sharing, largest-remainder cents, CSV, and FOCUS 1.2 conformance checked
against the FOCUS 1.2 column table in tests/fixtures."""

import csv
import io
import json
import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aifinops.exposition.chargeback_files import (
    CSV_COLUMNS,
    FOCUS_COLUMNS,
    chargeback_csv,
    chargeback_json,
    chargeback_json_rows,
    focus_csv,
    focus_rows,
)
from aifinops.model.chargeback import (
    Quantity,
    build_chargeback,
    current_period,
    parse_period,
    round_cents,
    share_out,
)

ROOT = Path(__file__).resolve().parents[2]
FOCUS_TSV = ROOT / "tests" / "fixtures" / "focus_v1.2_cost_and_usage_columns.tsv"

DOLLARS = {
    ("a", "gpu"): 6.0,
    ("b", "gpu"): 2.0,
    ("__idle__", "gpu"): 1.0,
    ("a", "cpu"): 0.5,
    ("__unallocated__", "cpu"): 0.25,
}


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def rows_of(cb):
    return {(r.tenant, r.resource, r.allocation): r.amount_usd for r in cb.rows}


def test_period_parsing():
    assert parse_period("2024-02", "UTC") == (ts(2024, 2, 1), ts(2024, 3, 1))
    assert parse_period("2024-12", "Europe/Paris") == (ts(2024, 11, 30, 23), ts(2024, 12, 31, 23))
    assert current_period(ts(2024, 2, 29, 23, 30), "Europe/Paris") == "2024-03"
    for bad in ("2024-13", "2024-2", "24-02", "2024-02-01", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_period(bad, "UTC")


def test_round_cents_largest_remainder():
    assert round_cents([1 / 3, 1 / 3, 1 / 3]) == (
        [Decimal("0.34"), Decimal("0.33"), Decimal("0.33")],
        Decimal("1.00"),
    )
    # 3 x 0.005 = 0.015 -> 0.02: two of the tied rows get a cent, in row order.
    assert round_cents([0.005, 0.005, 0.005]) == (
        [Decimal("0.01"), Decimal("0.01"), Decimal("0.00")],
        Decimal("0.02"),
    )
    assert round_cents([]) == ([], Decimal("0.00"))
    with pytest.raises(ValueError):
        round_cents([math.inf])


@given(st.lists(st.floats(-1e7, 1e7, allow_nan=False), max_size=40))
def test_rounded_rows_sum_exactly_to_the_rounded_total(values):
    rounded, total = round_cents(values)
    assert sum(rounded, Decimal(0)) == total
    assert all(abs(r - Decimal(v)) < Decimal("0.01") for r, v in zip(rounded, values, strict=True))


def test_sentinels_are_rows_by_default():
    cb = build_chargeback(DOLLARS, "2024-02", "UTC")
    assert rows_of(cb) == {
        ("__idle__", "gpu", "direct"): Decimal("1.00"),
        ("__unallocated__", "cpu", "direct"): Decimal("0.25"),
        ("a", "cpu", "direct"): Decimal("0.50"),
        ("a", "gpu", "direct"): Decimal("6.00"),
        ("b", "gpu", "direct"): Decimal("2.00"),
    }
    assert cb.total_usd == Decimal("9.75")
    assert cb.tenant_totals() == {
        "__idle__": Decimal("1.00"),
        "__unallocated__": Decimal("0.25"),
        "a": Decimal("6.50"),
        "b": Decimal("2.00"),
    }


def test_sharing_is_proportional_to_direct_cost_per_resource():
    cb = build_chargeback(DOLLARS, "2024-02", "UTC", share_idle=True, share_unallocated=True)
    assert rows_of(cb) == {
        ("a", "cpu", "direct"): Decimal("0.50"),
        ("a", "cpu", "unallocated_share"): Decimal("0.25"),  # only a has cpu cost
        ("a", "gpu", "direct"): Decimal("6.00"),
        ("a", "gpu", "idle_share"): Decimal("0.75"),  # 1.00 x 6/8
        ("b", "gpu", "direct"): Decimal("2.00"),
        ("b", "gpu", "idle_share"): Decimal("0.25"),  # 1.00 x 2/8
    }
    assert cb.total_usd == Decimal("9.75")


def test_sharing_falls_back_to_total_direct_cost():
    shared = share_out({("a", "gpu"): 3.0, ("b", "cpu"): 1.0, ("__idle__", "storage"): 2.0}, True)
    assert shared == {
        ("a", "gpu", "direct"): 3.0,
        ("b", "cpu", "direct"): 1.0,
        ("a", "storage", "idle_share"): 1.5,
        ("b", "storage", "idle_share"): 0.5,
    }
    alone = share_out({("__idle__", "gpu"): 2.0}, True)  # nobody to share with: the row stays
    assert alone == {("__idle__", "gpu", "direct"): 2.0}


@given(
    st.dictionaries(
        st.tuples(
            st.sampled_from(["a", "b", "c", "__idle__", "__unallocated__"]),
            st.sampled_from(["gpu", "cpu", "tokens"]),
        ),
        st.floats(0.0, 1e5),
    ),
    st.booleans(),
    st.booleans(),
)
def test_sharing_and_rounding_keep_the_total(dollars, idle, unalloc):
    plain = build_chargeback(dollars, "2024-02", "UTC")
    shared = build_chargeback(dollars, "2024-02", "UTC", share_idle=idle, share_unallocated=unalloc)
    for cb in (plain, shared):
        assert sum((r.amount_usd for r in cb.rows), Decimal(0)) == cb.total_usd
    assert abs(shared.total_usd - plain.total_usd) <= Decimal("0.01")


def test_json_and_csv():
    q = {("a", "gpu"): Quantity(12.5, "GPU-Hours")}
    cb = build_chargeback(DOLLARS, "2024-02", "UTC", quantities=q)
    rows = chargeback_json_rows(cb)
    assert rows[3] == {
        "tenant": "a",
        "resource": "gpu",
        "allocation": "direct",
        "amount_usd": 6.0,
        "quantity": 12.5,
        "unit": "GPU-Hours",
        "split_methods": None,
    }
    parsed = list(csv.reader(io.StringIO(chargeback_csv(cb))))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert parsed[4] == ["2024-02", "a", "gpu", "direct", "allocation", "6.00", "12.5", "GPU-Hours"]
    assert sum(Decimal(r[5]) for r in parsed[1:]) == Decimal("9.75")


# --- FOCUS 1.2 ----------------------------------------------------------------------------

SERVICE_CATEGORIES = {
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
    "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
    "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
    "Storage", "Web", "Other",
}  # fmt: skip
SUBCATEGORY_PARENT = {
    "Machine Learning": "AI and Machine Learning",
    "Generative AI": "AI and Machine Learning",
    "Containers": "Compute",
    "Other (Compute)": "Compute",
    "Block Storage": "Storage",
    "Network Connectivity": "Networking",
}
ALLOWED = {
    "ChargeCategory": {"Usage", "Purchase", "Tax", "Credit", "Adjustment"},
    "ChargeClass": {"Correction"},
    "ChargeFrequency": {"One-Time", "Recurring", "Usage-Based"},
    "ServiceCategory": SERVICE_CATEGORIES,
    "ServiceSubcategory": set(SUBCATEGORY_PARENT),
}
NUMERIC = re.compile(r"^-?\d+(\.\d+)?$")  # FOCUS Numeric Format: no exponent, sign or unit
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
UNIT = re.compile(r"^(\d+ )?[A-Z][A-Za-z]*(-[A-Z][A-Za-z]*)?(/(\d+ )?[A-Z][A-Za-z]*)?$")


def focus_spec() -> dict[str, dict[str, str]]:
    with FOCUS_TSV.open(newline="") as f:
        return {row["ColumnId"]: row for row in csv.DictReader(f, delimiter="\t")}


def focus_export(**kw):
    cb = build_chargeback(
        DOLLARS,
        "2024-02",
        "Europe/Paris",
        quantities={("a", "gpu"): Quantity(12.5, "GPU-Hours")},
        now=ts(2024, 2, 10, 12),
        **kw,
    )
    return cb, list(csv.DictReader(io.StringIO(focus_csv(cb))))


def test_focus_header_has_every_mandatory_column():
    spec = focus_spec()
    mandatory = {c for c, s in spec.items() if s["FeatureLevel"] == "Mandatory"}
    assert len(mandatory) == 21
    header = next(csv.reader(io.StringIO(focus_csv(focus_export()[0]))))
    assert tuple(header) == FOCUS_COLUMNS
    assert mandatory <= set(header)
    # Everything else is a FOCUS column or carries the x_ prefix.
    assert all(c in spec or c.startswith("x_") for c in header)
    assert len(set(header)) == len(header)


@pytest.mark.parametrize("shared", [False, True])
def test_focus_values_follow_the_column_constraints(shared):
    assert_focus_rules(*focus_export(share_idle=shared, share_unallocated=shared))


def test_a_books_export_follows_the_column_constraints():
    """As the API builds it from OpenCost's books: every resource with its measured unit, and
    a charge period that is the data's span inside the billing period."""
    units = {
        "gpu": "GPU-Hours",
        "cpu": "Core-Hours",
        "ram": "GiB-Hours",
        "storage": "GiB-Hours",
        "tokens": "Tokens",
    }
    quantities = {(t, r): Quantity(3.25, units[r]) for t, r in DOLLARS if r in units}
    covered = (ts(2024, 2, 3), ts(2024, 2, 10, 12))
    cb = build_chargeback(
        DOLLARS, "2024-02", "Europe/Paris", quantities=quantities, covered=covered
    )
    rows = list(csv.DictReader(io.StringIO(focus_csv(cb))))
    assert_focus_rules(cb, rows)
    assert {(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in rows} == {
        ("2024-02-03T00:00:00Z", "2024-02-10T12:00:00Z")
    }
    measured = [r for r in rows if r["x_QuantitySource"] == "measured"]
    assert {r["PricingUnit"] for r in measured} == {units[r] for _, r in quantities}


def test_csv_and_focus_cells_cannot_be_formulas():
    """OWASP CSV injection: tenant names (from labels, LiteLLM teams, pushes) starting with
    = + - @, a tab or a carriage return are written with a leading quote in both formats;
    the JSON keeps them as they are."""
    hostile = ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    dollars = {(name, "gpu"): 1.25 for name in hostile} | {("plain-team", "gpu"): 1.0}
    cb = build_chargeback(dollars, "2024-02", "UTC", now=ts(2024, 2, 10))
    plain = list(csv.DictReader(io.StringIO(chargeback_csv(cb), newline="")))
    focus = list(csv.DictReader(io.StringIO(focus_csv(cb), newline="")))
    assert {r["tenant"] for r in plain} == {"'" + n for n in hostile} | {"plain-team"}
    for row in focus:
        for column, value in row.items():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), (column, value)
            if value.startswith("-"):  # only our own numbers may, and none is negative here
                pytest.fail(f"{column}={value!r}")
    assert {r["SubAccountId"] for r in focus} == {"'" + n for n in hostile} | {"plain-team"}
    assert {r["tenant"] for r in json.loads(chargeback_json(cb))["rows"]} == set(hostile) | {
        "plain-team"
    }


def assert_focus_rules(cb, rows):
    spec = focus_spec()
    assert rows
    for row in rows:
        for column, value in row.items():
            if column.startswith("x_"):
                continue
            s = spec[column]
            if value == "":
                assert s["AllowsNulls"] == "True", f"{column} must not be null"
                continue
            if s["DataType"] == "Decimal":
                assert NUMERIC.match(value), (column, value)
            elif s["DataType"] == "Date/Time":
                assert DATETIME.match(value), (column, value)
            elif s["DataType"] == "JSON":
                assert isinstance(json.loads(value), dict)
            else:
                assert s["DataType"] == "String"
            fmt = s["ValueFormat"].lower()
            if fmt.startswith("allowed values"):
                assert value in ALLOWED[column], (column, value)
            elif fmt == "currency format":
                assert CURRENCY.match(value)
            elif fmt.startswith("unit format"):
                assert UNIT.match(value), (column, value)
        # Cross-column rules of FOCUS 1.2 for a regular Usage row.
        assert row["ChargeCategory"] == "Usage" and row["ChargeClass"] == ""
        assert row["PricingQuantity"] and row["PricingUnit"]
        assert row["ConsumedQuantity"] and row["ConsumedUnit"]
        assert SUBCATEGORY_PARENT[row["ServiceSubcategory"]] == row["ServiceCategory"]
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
        assert row["ChargePeriodStart"] < row["ChargePeriodEnd"] <= row["BillingPeriodEnd"]
        assert row["BillingCurrency"] == "USD"
    assert sum(Decimal(r["BilledCost"]) for r in rows) == cb.total_usd


def test_focus_periods_quantities_and_categories():
    _, rows = focus_export()
    by_key = {(r["x_Tenant"], r["x_Resource"]): r for r in rows}
    gpu = by_key[("a", "gpu")]
    # February in Paris, in UTC; the month in progress is charged up to now.
    assert (gpu["BillingPeriodStart"], gpu["BillingPeriodEnd"]) == (
        "2024-01-31T23:00:00Z",
        "2024-02-29T23:00:00Z",
    )
    assert (gpu["ChargePeriodStart"], gpu["ChargePeriodEnd"]) == (
        "2024-01-31T23:00:00Z",
        "2024-02-10T12:00:00Z",
    )
    assert (gpu["PricingQuantity"], gpu["PricingUnit"], gpu["x_QuantitySource"]) == (
        "12.5",
        "GPU-Hours",
        "measured",
    )
    assert gpu["ServiceCategory"] == "AI and Machine Learning"
    cpu = by_key[("a", "cpu")]
    # No measured quantity: the charge period's 229 hours (Jan 31 23:00 to Feb 10 12:00).
    assert (cpu["PricingQuantity"], cpu["PricingUnit"], cpu["x_QuantitySource"]) == (
        "229.0",
        "Hours",
        "charge_period_hours",
    )
    assert cpu["ServiceCategory"] == "Compute"
    assert (gpu["SubAccountId"], gpu["x_Allocation"], gpu["x_Basis"]) == (
        "a",
        "direct",
        "allocation",
    )


def test_gpu_rows_say_how_the_tenants_gpu_dollars_were_split():
    splits = {"a": {"exclusive": 3.0, "even_split": 1.0}, "b": {"hami": 0.0}}
    cb = build_chargeback(DOLLARS, "2024-02", "UTC", splits=splits)
    by_row = {(r.tenant, r.resource, r.allocation): r.split for r in cb.rows}
    assert by_row[("a", "gpu", "direct")] == (("even_split", 0.25), ("exclusive", 0.75))
    # Only a direct GPU row: other resources, and a tenant with nothing to split, say nothing.
    assert all(split == () for key, split in by_row.items() if key != ("a", "gpu", "direct"))
    focus = {(r["x_Tenant"], r["x_Resource"]): r["x_GpuSplitMethods"] for r in focus_rows(cb)}
    assert focus[("a", "gpu")] == "even_split=0.2500;exclusive=0.7500"
    assert {v for k, v in focus.items() if k != ("a", "gpu")} == {""}
    [row] = [r for r in chargeback_json_rows(cb) if (r["tenant"], r["resource"]) == ("a", "gpu")]
    assert row["split_methods"] == {"even_split": 0.25, "exclusive": 0.75}
