"""The month-to-date query: the parse of daily sets (literal payloads). Its window is
the model's calendar (tests/model/test_calendar.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from aifinops.sources.base import SourceError
from aifinops.sources.opencost import parse_allocation_sets, rfc3339_utc

DAY = 86400.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def row(name: str, start: float, end: float, gpu: float, cpu: float = 0.0) -> dict:
    return {
        "name": name,
        "properties": {"namespace": name.split("/")[0], "pod": name.split("/")[-1]},
        "window": {"start": rfc3339_utc(start), "end": rfc3339_utc(end)},
        "minutes": (end - start) / 60,
        "gpuCost": gpu,
        "cpuCost": cpu,
    }


def test_daily_sets_keep_their_windows_and_the_last_one_is_partial():
    start = ts("2025-06-01T00:00:00+00:00")
    end = start + 2 * DAY + 3600
    body = {
        "code": 200,
        "data": [
            {"a/p": row("a/p", start, start + DAY, 24.0, 1.0)},
            {"a/p": row("a/p", start + DAY, start + 2 * DAY, 48.0)},
            {
                "a/p": row("a/p", start + 2 * DAY, end, 2.0),
                "__idle__": row("__idle__", start + 2 * DAY, end, 1.0),
            },
        ],
    }
    sets = parse_allocation_sets(json.dumps(body).encode(), start, end)
    assert (sets.start, sets.end) == (start, end)
    assert [(s, e) for s, e, _ in sets.sets] == [
        (start, start + DAY),
        (start + DAY, start + 2 * DAY),
        (start + 2 * DAY, end),
    ]
    assert [a.window_hours for _, _, a in sets.sets] == [24.0, 24.0, 1.0]
    assert [sum(r.gpu_cost for r in a.allocations) for _, _, a in sets.sets] == [24.0, 48.0, 3.0]
    assert sets.sets[0][2].allocations[0].cpu_cost == 1.0


def test_sets_without_rows_follow_the_step_grid():
    start = ts("2025-06-01T00:00:00+00:00")
    end = start + 2 * DAY
    body = {"code": 200, "data": [None, {}]}
    sets = parse_allocation_sets(json.dumps(body).encode(), start, end)
    assert [(s, e, a.allocations) for s, e, a in sets.sets] == [
        (start, start + DAY, ()),
        (start + DAY, end, ()),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>", "parse"),
        (b'{"code": 500, "message": "boom"}', "invalid"),
        (b'{"code": 200, "data": [[1]]}', "invalid"),
        (b'{"code": 200, "data": [{"a/p": {"gpuCost": "x"}}]}', "invalid"),
    ],
)
def test_bad_bodies_are_source_errors(body, reason):
    with pytest.raises(SourceError) as err:
        parse_allocation_sets(body, 0.0, DAY)
    assert err.value.reason == reason


def test_rfc3339_is_utc_whole_seconds():
    assert rfc3339_utc(1_750_000_000.9) == "2025-06-15T15:06:40Z"
    assert datetime.fromisoformat(rfc3339_utc(0).replace("Z", "+00:00")) == datetime(
        1970, 1, 1, tzinfo=UTC
    )
