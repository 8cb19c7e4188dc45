"""The cache: L1 TTL on the injected clock, the byte bound, copies in and out, metrics, and the L2 SQLite file."""

from __future__ import annotations

import pandas as pd

from devkit.sqlite_locks import held_write_lock
from provider.cache import MemoryCache, SeamlessCache
from provider.core.obs import new_registry
from provider.metrics import ProviderMetrics

from .conftest import SERIES, ManualClock, at, bars, store


async def test_l1_entries_expire_after_the_ttl():
    """An L1 entry answers until cache_ttl seconds have passed on the clock, then no longer."""
    clock = ManualClock()
    cache = MemoryCache(ttl_s=60, clock=clock)
    cache.put(SERIES, at(0), at(100), await bars(at(0), at(100)))
    assert cache.covering(SERIES, at(10), at(20)) is not None
    clock.advance(59_999)
    assert cache.coverage(SERIES) == [(at(0), at(100))]
    clock.advance(1)
    assert cache.covering(SERIES, at(10), at(20)) is None
    assert cache.coverage(SERIES) == [] and cache.nbytes == 0


async def test_l1_is_bounded_in_bytes_least_recently_used_first():
    """The cache evicts the least recently used entries to stay under max_bytes and refuses oversize frames."""
    frame = await bars(at(0), at(100))
    size = len(frame) * 8 * 7
    cache = MemoryCache(ttl_s=60, max_bytes=2 * size, clock=ManualClock())
    cache.put(SERIES, at(0), at(100), frame)
    cache.put("ohlcv:binance:ETH/USDT:1m", at(0), at(100), frame)
    assert cache.covering(SERIES, at(0), at(100)) is not None  # touch: now the ETH entry is the oldest
    cache.put("ohlcv:binance:SOL/USDT:1m", at(0), at(100), frame)
    assert cache.coverage("ohlcv:binance:ETH/USDT:1m") == []
    assert cache.coverage(SERIES) == [(at(0), at(100))]
    assert cache.nbytes == 2 * size
    assert cache.put(SERIES, at(0), at(300), await bars(at(0), at(300))) is False


async def test_frames_are_copied_in_and_out(storage, make_provider):
    """Changing a returned frame never changes what a later cache hit returns."""
    await store(storage, at(0), at(100))
    provider = make_provider(strategy="fail_fast", storage_source=storage)
    first = await provider.fetch(at(0), at(100), node_id=SERIES)
    first.loc[0, "close"] = -1.0
    hit = await provider.fetch(at(0), at(100), node_id=SERIES)
    assert provider.last_fetch_metadata.cache_hit
    hit.loc[1, "close"] = -2.0
    pd.testing.assert_frame_equal(await provider.fetch(at(0), at(100), node_id=SERIES), await bars(at(0), at(100)))


async def test_hits_and_misses_are_counted(storage, make_provider):
    """seamless_cache_hit_total and seamless_cache_miss_total count L1 answers per fetch."""
    await store(storage, at(0), at(100))
    provider = make_provider(strategy="fail_fast", storage_source=storage)
    await provider.fetch(at(0), at(100), node_id=SERIES)
    await provider.fetch(at(10), at(20), node_id=SERIES)
    await provider.fetch(at(50), at(60), node_id=SERIES)
    assert provider.metrics.sample("seamless_cache_miss_total", {"layer": "l1"}) == 1
    assert provider.metrics.sample("seamless_cache_hit_total", {"layer": "l1"}) == 2


async def test_l2_sqlite_survives_a_new_cache_and_promotes_to_l1(tmp_path):
    """An L2 entry written by one cache is served by a new one (after a restart) and promoted to its L1."""
    clock = ManualClock()
    path = str(tmp_path / "l2.db")
    frame = await bars(at(0), at(100))
    first = SeamlessCache(ttl_s=60, l2_path=path, clock=clock, metrics=ProviderMetrics(new_registry()))
    await first.put(SERIES, at(0), at(100), frame)
    await first.aclose()
    second = SeamlessCache(ttl_s=60, l2_path=path, clock=clock, metrics=ProviderMetrics(new_registry()))
    assert await second.coverage(node_id=SERIES) == [(at(0), at(100))]
    pieces = await second.read(at(20), at(40), node_id=SERIES)
    assert [r for r, _ in pieces] == [(at(20), at(40))]
    pd.testing.assert_frame_equal(pieces[0][1], await bars(at(20), at(40)))
    assert second.l1.coverage(SERIES) == [(at(0), at(100))]
    assert second.metrics.sample("seamless_cache_hit_total", {"layer": "l2"}) == 1
    clock.advance(60_000)
    assert await second.coverage(node_id=SERIES) == []
    await second.aclose()


async def test_an_l2_file_locked_by_a_rollback_journal_writer_is_waited_for(tmp_path):
    """An L2 file whose rollback-journal writer holds its lock (what another process's cache does in the middle
    of switching a new file to WAL) makes SQLite refuse the switch at once; the cache waits for the lock instead
    of raising "database is locked" into the fetch, and stores its entry."""
    path = tmp_path / "l2.db"
    cache = SeamlessCache(ttl_s=60, l2_path=str(path), clock=ManualClock(), metrics=ProviderMetrics(new_registry()))
    with held_write_lock(path):
        try:
            await cache.put(SERIES, at(0), at(10), await bars(at(0), at(10)))
            assert cache.l2 is not None
            assert await cache.l2.coverage(SERIES) == [(at(0), at(10))]
        finally:
            await cache.aclose()


async def test_provider_with_l2_serves_after_restart_without_storage_reads(storage, make_provider, tmp_path):
    """A provider restarted on the same L2 file answers a cached range without reading storage."""
    await store(storage, at(0), at(100))
    path = str(tmp_path / "l2.db")
    first = make_provider(
        strategy="fail_fast", storage_source=storage, cache_source=SeamlessCache(l2_path=path, ttl_s=600)
    )
    await first.fetch(at(0), at(100), node_id=SERIES)
    await first.aclose()
    second = make_provider(
        strategy="fail_fast", storage_source=storage, cache_source=SeamlessCache(l2_path=path, ttl_s=600)
    )
    frame = await second.fetch(at(0), at(50), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(0), at(50)))
    assert second.last_fetch_metadata.served == {"cache": [(at(0), at(50))]}
