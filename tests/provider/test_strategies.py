"""One table per strategy: covered, partly covered and uncovered requests, each with its exact outcome."""

from __future__ import annotations

import secrets

import pandas as pd
import pytest

from provider.errors import BackfillFailedError, DataUnavailableError
from provider.sources import FatalSourceError
from provider.strategies import DataAvailabilityStrategy

from .conftest import SERIES, at, bars, store


@pytest.fixture(params=["memory", "sqlite", pytest.param("questdb", marks=pytest.mark.questdb)])
async def storage(request, tmp_path):
    """The strategy tables run on every kind of storage: in memory, a SQLite file and a real QuestDB."""
    from provider.storage import open_storage

    if request.param == "questdb":
        server = request.getfixturevalue("questdb")
        dsn = f"{server.dsn}&table=strat_{secrets.token_hex(4)}"
    else:
        dsn = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'bars.db'}"
    opened = await open_storage(dsn)
    yield opened
    await opened.aclose()


#: Request [T0+50m, T0+250m) against storage holding: everything, [T0, T0+100m), nothing.
REQUEST = (at(50), at(250))
STORED = {"covered": (at(0), at(300)), "partly": (at(0), at(100)), "uncovered": None}
#: Windows of 100 bars the backfill must fetch, by case.
WINDOWS = {
    "covered": [],
    "partly": [(at(100), at(200)), (at(200), at(300))],
    "uncovered": [(at(0), at(100)), (at(100), at(200)), (at(200), at(300))],
}
MISSING = {"covered": [], "partly": [(at(100), at(250))], "uncovered": [(at(50), at(250))]}
STORAGE_SERVED = {"covered": [(at(50), at(250))], "partly": [(at(50), at(100))], "uncovered": []}


async def _prepare(storage, case):
    if STORED[case] is not None:
        await store(storage, *STORED[case])


def _served(meta, name):
    return meta.served.get(name, [])


@pytest.mark.parametrize("case", ["covered", "partly", "uncovered"])
async def test_fail_fast(case, storage, source, make_provider):
    """FAIL_FAST returns covered data exactly, raises DataUnavailableError with the missing ranges, never fetches."""
    await _prepare(storage, case)
    provider = make_provider(strategy="fail_fast", storage_source=storage, backfiller=source)
    if case == "covered":
        frame = await provider.fetch(*REQUEST, node_id=SERIES)
        pd.testing.assert_frame_equal(frame, await bars(*REQUEST))
        assert provider.last_fetch_metadata.outcome == "ok"
        assert _served(provider.last_fetch_metadata, "storage") == STORAGE_SERVED[case]
    else:
        with pytest.raises(DataUnavailableError) as info:
            await provider.fetch(*REQUEST, node_id=SERIES)
        assert info.value.missing == MISSING[case]
        assert provider.last_fetch_metadata.outcome == "unavailable"
        assert provider.last_fetch_metadata.missing_ranges == MISSING[case]
    await provider.wait_for_backfills()
    assert source.calls == []


@pytest.mark.parametrize("case", ["covered", "partly", "uncovered"])
async def test_auto_backfill(case, storage, source, make_provider):
    """AUTO_BACKFILL returns the complete bars, fetching exactly the aligned windows that were missing."""
    await _prepare(storage, case)
    provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=source)
    frame = await provider.fetch(*REQUEST, node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(*REQUEST))
    meta = provider.last_fetch_metadata
    assert sorted(source.calls) == WINDOWS[case]
    assert (meta.outcome, meta.missing_ranges, meta.coverage_ratio) == ("ok", [], 1.0)
    assert _served(meta, "storage") == STORAGE_SERVED[case]
    assert _served(meta, "backfill") == MISSING[case]
    assert meta.backfill.get("windows", 0) == len(WINDOWS[case])
    assert await storage.coverage(SERIES) == ([STORED["covered"]] if case != "partly" else [(at(0), at(300))])


async def test_auto_backfill_failure_names_the_ranges(storage, make_provider):
    """AUTO_BACKFILL raises BackfillFailedError with the missing ranges when the source fails, never a partial."""
    from provider.sources import open_source

    from .conftest import CountingSource

    failing = CountingSource(open_source("synthetic:7"), error=FatalSourceError("symbol delisted", source="x"))
    await _prepare(storage, "partly")
    provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=failing)
    with pytest.raises(BackfillFailedError) as info:
        await provider.fetch(*REQUEST, node_id=SERIES)
    assert info.value.missing == MISSING["partly"]
    assert "symbol delisted" in info.value.reason
    assert provider.last_fetch_metadata.outcome == "failed"


@pytest.mark.parametrize("case", ["covered", "partly", "uncovered"])
async def test_partial_fill(case, storage, source, make_provider):
    """PARTIAL_FILL returns what is stored now with the missing ranges and ratio, and backfills the rest behind."""
    await _prepare(storage, case)
    provider = make_provider(strategy="partial_fill", storage_source=storage, backfiller=source)
    frame = await provider.fetch(*REQUEST, node_id=SERIES)
    stored_part = STORAGE_SERVED[case]
    expected = await bars(*stored_part[0]) if stored_part else await bars(at(0), at(0))
    pd.testing.assert_frame_equal(frame, expected)
    meta = provider.last_fetch_metadata
    assert meta.missing_ranges == MISSING[case]
    assert meta.coverage_ratio == pytest.approx({"covered": 1.0, "partly": 0.25, "uncovered": 0.0}[case])
    assert meta.outcome == ("ok" if case == "covered" else "partial")
    assert meta.backfill.get("waited", False) is False
    await provider.wait_for_backfills()
    assert sorted(source.calls) == WINDOWS[case]
    again = await provider.fetch(*REQUEST, node_id=SERIES)
    pd.testing.assert_frame_equal(again, await bars(*REQUEST))
    assert sorted(source.calls) == WINDOWS[case]


@pytest.mark.parametrize("case", ["covered", "partly", "uncovered"])
async def test_seamless_history(case, storage, source, make_provider):
    """SEAMLESS backfills history like AUTO_BACKFILL when the request lies before the live zone."""
    from .conftest import CountingSource

    live = CountingSource(source.inner)
    await _prepare(storage, case)
    provider = make_provider(
        strategy=DataAvailabilityStrategy.SEAMLESS, storage_source=storage, backfiller=source, live_feed=live
    )
    frame = await provider.fetch(*REQUEST, node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(*REQUEST))
    assert sorted(source.calls) == WINDOWS[case]
    assert live.calls == []
    assert provider.last_fetch_metadata.missing_ranges == []


def test_strategy_parse_accepts_values_and_names():
    """Strategies parse from their value or name and reject anything else naming the allowed values."""
    assert DataAvailabilityStrategy.parse("AUTO_BACKFILL") is DataAvailabilityStrategy.AUTO_BACKFILL
    assert DataAvailabilityStrategy.parse("partial_fill") is DataAvailabilityStrategy.PARTIAL_FILL
    with pytest.raises(ValueError, match="fail_fast, auto_backfill, partial_fill, seamless"):
        DataAvailabilityStrategy.parse("eventually")


def test_from_config_reads_the_seed_block(tmp_path):
    """from_config takes strategy, backfill settings, cache TTL and SLA from the YAML file; keywords win."""
    from provider.core import load_config
    from provider.seamless import SeamlessDataProvider

    path = tmp_path / "seamless.yaml"
    path.write_text(
        "seamless_data_provider:\n  strategy: partial_fill\n  enable_background_backfill: false\n"
        "  backfill_config:\n    window_bars: 60\n  cache_ttl: 5\nsla:\n  max_wait_storage_ms: 250\n",
        encoding="utf-8",
    )
    provider = SeamlessDataProvider.from_config(load_config(path), storage_source="memory://")
    assert provider.strategy is DataAvailabilityStrategy.PARTIAL_FILL
    assert provider.enable_background_backfill is False
    assert provider.backfill_config.window_bars == 60
    assert provider.cache.l1.ttl_ms == 5000
    assert provider.sla.max_wait_storage_ms == 250
    override = SeamlessDataProvider.from_config(load_config(path), strategy="fail_fast")
    assert override.strategy is DataAvailabilityStrategy.FAIL_FAST
