"""SetStream cuts a streamed array of sets into whole-member pieces: whatever the chunking, the
pieces put back together are the document's sets, each piece stays near the piece size, and a
document of another shape is refused (early when nothing was released yet)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from aifinops.sources.jsonchunks import SetStream, Unsplittable

PREFIX = b'{"code":200,"status":"success","data":['
MARKER = b'":{"name":"'
NASTY = ['},{"', '":{"name":"', ',{"', "]}", "null", '\\"', "x"]


def doc(sets: list[Any]) -> bytes:
    return json.dumps(
        {"code": 200, "status": "success", "data": sets}, separators=(",", ":")
    ).encode()


def run(body: bytes, piece: int, rng: random.Random) -> tuple[list[dict[str, Any]], list[int]]:
    stream = SetStream(PREFIX, MARKER, piece)
    pieces: list[tuple[int, bytes]] = []
    i = 0
    while i < len(body):
        n = rng.choice([1, 3, 50, 700, 9000])
        pieces += stream.feed(body[i : i + n])
        i += n
    pieces += stream.close()
    sets: list[dict[str, Any]] = [{} for _ in range(stream.sets)]
    for index, piece_bytes in pieces:
        sets[index].update(json.loads(piece_bytes))
    return sets, [len(p) for _, p in pieces]


def random_sets(rng: random.Random) -> list[Any]:
    sets: list[Any] = []
    for k in range(rng.randint(0, 5)):
        kind = rng.random()
        if kind < 0.2:
            sets.append(None)
        elif kind < 0.3:
            sets.append({})
        else:
            sets.append(
                {
                    f"ns/p{k}-{j}": {
                        "name": f"ns/p{k}-{j}",
                        "properties": {
                            "labels": {"a": "".join(rng.choices(NASTY, k=rng.randint(0, 6)))}
                        },
                        "window": {"start": "2025-06-01T00:00:00Z"},
                        "cpuCost": j * 1.5,
                        "gpuAllocation": None,
                    }
                    for j in range(rng.randint(1, 40))
                }
            )
    return sets


@pytest.mark.parametrize("seed", range(200))
def test_pieces_rebuild_every_set(seed: int) -> None:
    rng = random.Random(seed)
    sets = random_sets(rng)
    body = doc(sets) + b" \n" * rng.randint(0, 2)
    got, _ = run(body, rng.choice([64, 300, 2000, 1 << 20]), rng)
    assert got == [s or {} for s in sets]


def test_pieces_stay_near_the_piece_size() -> None:
    rows = {f"namespace-{i}/pod-{i:06d}": {"name": f"p{i}", "cpuCost": i} for i in range(3000)}
    body = doc([rows, None, rows])
    longest = max(len(json.dumps({k: v})) for k, v in rows.items())
    for piece in (100, 1000, 10_000):
        got, sizes = run(body, piece, random.Random(piece))
        assert got == [rows, {}, rows]
        assert max(sizes) <= piece + 2 * longest
        assert len(sizes) >= len(body) // (piece + 2 * longest)


@pytest.mark.parametrize(
    ("body", "early"),
    [
        (b'{"code":500,"message":"x"}', True),
        (b'{"status":"success","code":200,"data":[]}', True),
        (b'{"code":200,"status":"success","data":[{"a":{"name":"x"}}]', False),  # truncated
        (b'{"code":200,"status":"success","data":[{"a":{"name":"x"}}],"w":1}', False),
        (b'{"code":200,"status":"success","data":[nil]}', False),
        (b'{"code":200,"status":"success","data":[null;null]}', False),
        (b'{"code":200,"status":"success","data":[{"a":{"name":"x"}}]}tail', False),
    ],
)
def test_other_shapes_are_refused(body: bytes, early: bool) -> None:
    with pytest.raises(Unsplittable) as err:
        run(body, 64, random.Random(0))
    assert err.value.early is early


def test_an_empty_data_array_has_no_sets() -> None:
    assert run(doc([]), 64, random.Random(0)) == ([], [])


@pytest.mark.parametrize("seed", range(30))
def test_one_set_mode_never_passes_two_sets_off_as_one(seed: int) -> None:
    """With ``one_set`` set boundaries are not looked for: a second set leaves a piece that
    is not a JSON object (or a tail that does not close), never a silent merge."""
    rng = random.Random(seed)
    rows = random_sets(random.Random(seed + 1000)) or [{}]
    body = doc([rows[0] or {"a/b": {"name": "x"}}, {"c/d": {"name": "y", "cpuCost": 1}}])
    stream = SetStream(PREFIX, MARKER, rng.choice([30, 200, 5000]), one_set=True)
    pieces: list[bytes] = []
    try:
        for i in range(0, len(body), 97):
            pieces += [p for _, p in stream.feed(body[i : i + 97])]
        pieces += [p for _, p in stream.close()]
    except Unsplittable:
        return
    with pytest.raises(ValueError):
        for piece in pieces:
            json.loads(piece)
