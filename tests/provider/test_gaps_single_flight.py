"""Exchange gaps and single-flight, counted on the loopback exchange."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd

from provider.conformance import find_gaps
from provider.frames import ts_ms
from provider.sources import open_source

from .conftest import MIN, SERIES, WINDOW_BARS, at, bars


async def test_exchange_gap_is_flagged_once_and_never_backfilled_again(
    sqlite_storage, make_provider, fake_exchange_cls
):
    """Bars an exchange never had are flagged as gaps (one flag per run) and later fetches send no request."""
    async with fake_exchange_cls(seed=7, gaps=0.03) as exchange:
        fetcher = open_source(f"binance:{exchange.url}")
        provider = make_provider(
            strategy="auto_backfill", storage_source=sqlite_storage, backfiller=fetcher, cache_source=False
        )
        try:
            frame = await provider.fetch(at(0), at(300), node_id=SERIES)
            expected = await bars(at(0), at(300), spec="synthetic:7?gaps=0.03")
            pd.testing.assert_frame_equal(frame, expected)
            runs = find_gaps(ts_ms(expected), [(at(0), at(300))], MIN)
            assert runs, "the seed must produce at least one gap for this test to mean anything"
            first = provider.last_conformance_report
            assert first.gaps == runs
            assert first.flag_counts["gap"] == len(runs)
            assert first.ok
            requests = exchange.total_requests
            again = await provider.fetch(at(0), at(300), node_id=SERIES)
            pd.testing.assert_frame_equal(again, expected)
            assert exchange.total_requests == requests
            second = provider.last_conformance_report
            assert second.flag_counts["gap"] == len(runs)
            assert second.regression["new_gaps"] == []
            assert provider.metrics.sample("seamless_conformance_flag_total", {"flag": "gap"}) == 2 * len(runs)
        finally:
            await fetcher.aclose()


async def test_hundred_concurrent_fetches_make_one_request_per_window(storage, make_provider, fake_exchange_cls):
    """100 concurrent fetches of overlapping missing ranges send exactly one exchange request per window."""
    async with fake_exchange_cls(seed=7) as exchange:
        fetcher = open_source(f"binance:{exchange.url}")
        provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=fetcher)
        try:
            requests = [(at(17 * (i % 9)), at(300 + 41 * (i % 7))) for i in range(100)]
            frames = await asyncio.gather(*(provider.fetch(lo, hi, node_id=SERIES) for lo, hi in requests))
            for (lo, hi), frame in zip(requests, frames, strict=True):
                assert len(frame) == (hi - lo) // MIN
                assert ts_ms(frame)[0] == lo and ts_ms(frame)[-1] == hi - MIN
            windows = {(at(k * WINDOW_BARS)) for k in range(0, 6)}
            starts = [start for (_, start), _count in exchange.by_start.items()]
            assert sorted(starts) == sorted(windows)
            assert set(exchange.by_start.values()) == {1}
            assert exchange.total_requests == len(windows)
            assert len(provider.backfiller.flights) == len(windows)
        finally:
            await fetcher.aclose()


async def test_single_flight_registry_forgets_windows_after_the_ttl(storage, source, make_provider, clock):
    """Finished windows stay deduplicated for single_flight_ttl_ms on the injected clock, then are dropped."""
    from provider.core import BackfillConfig

    config = BackfillConfig(window_bars=WINDOW_BARS, single_flight_ttl_ms=60_000)
    provider = make_provider(
        strategy="auto_backfill", storage_source=storage, backfiller=source, backfill_config=config
    )
    await provider.fetch(at(0), at(200), node_id=SERIES)
    assert len(provider.backfiller.flights) == 2
    clock.advance(59_999)
    provider.backfiller.flights.purge()
    assert len(provider.backfiller.flights) == 2
    clock.advance(1)
    await provider.fetch(at(300), at(400), node_id=SERIES)  # any registry access purges expired entries
    assert [key[1] for key in provider.backfiller.flights._flights] == [at(300)]
    assert np.array_equal(sorted(source.calls), [(at(0), at(100)), (at(100), at(200)), (at(300), at(400))])


async def test_third_party_backfiller_gets_single_flight_windows(storage, make_provider):
    """Any AutoBackfiller is called once per missing window, however many fetches ask concurrently."""
    from .conftest import store

    class ThirdParty:
        def __init__(self):
            self.calls = []

        async def backfill(self, start, end, *, node_id, target_storage=None):
            self.calls.append((start, end))
            await asyncio.sleep(0.01)
            await store(storage, start, end, series=node_id)

    inner = ThirdParty()
    provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=inner)
    frames = await asyncio.gather(*(provider.fetch(at(10 * i), at(150 + 10 * i), node_id=SERIES) for i in range(10)))
    assert [len(f) for f in frames] == [150] * 10
    assert sorted(inner.calls) == [(at(0), at(100)), (at(100), at(200)), (at(200), at(300))]
    assert provider.backfiller.mode == "delegated"
