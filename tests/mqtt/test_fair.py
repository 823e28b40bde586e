"""FairQueue: stores served in rotation, each store's messages in order."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from unistock.server.mqtt.fair import FairQueue


def drain(q: FairQueue[int]) -> list[tuple[str, int]]:
    out = []
    while (got := q.get_nowait()) is not None:
        out.append(got)
    return out


def test_a_backlog_does_not_delay_another_stores_message() -> None:
    q: FairQueue[int] = FairQueue()
    for i in range(1000):
        q.put("store-a", i)  # back from hours offline
    q.put("store-b", 0)  # one sale
    order = drain(q)
    assert order.index(("store-b", 0)) == 1
    assert [i for k, i in order if k == "store-a"] == list(range(1000))


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers()), max_size=200))
def test_per_key_order_kept_and_nothing_lost(puts: list[tuple[str, int]]) -> None:
    q: FairQueue[int] = FairQueue()
    for k, v in puts:
        q.put(k, v)
    assert len(q) == len(puts)
    out = drain(q)
    assert len(q) == 0
    assert sorted(out) == sorted(puts)
    for key in "abcd":
        assert [v for k, v in out if k == key] == [v for k, v in puts if k == key]
    # rotation: a key is served twice in a row only when no other key has items left
    remaining = {k: sum(1 for kk, _ in puts if kk == k) for k in "abcd"}
    for i, (k, _) in enumerate(out):
        if i and out[i - 1][0] == k:
            assert all(n == 0 for kk, n in remaining.items() if kk != k), (i, out)
        remaining[k] -= 1


async def test_get_waits_for_a_put() -> None:
    q: FairQueue[int] = FairQueue()
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put("s", 7)
    assert await asyncio.wait_for(waiter, 5) == ("s", 7)
