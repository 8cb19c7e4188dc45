"""open_source: spec parsing, built-in and third-party plug-ins, clear errors and the exported names."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import provider.sources
from provider.core import BackfillConfig
from provider.sources import (
    ENTRY_POINT_GROUP,
    RetryingSource,
    Source,
    SourceLimits,
    SourceSpecError,
    available_sources,
    open_source,
    parse_spec,
)
from provider.sources.binance import DEFAULT_BASE_URL, BinanceSource
from provider.sources.ccxt_source import CcxtSource
from provider.sources.synthetic import SyntheticSource


def test_spec_parsing_keeps_colons_in_the_target() -> None:
    """The target runs from the first ':' to '?', so URLs keep their ports; parameters are URL-decoded."""
    spec = parse_spec("ccxt:binance?base_url=http%3A%2F%2F127.0.0.1%3A9&timeout_s=2")
    assert (spec.scheme, spec.target) == ("ccxt", "binance")
    assert spec.params == {"base_url": "http://127.0.0.1:9", "timeout_s": "2"}
    url = parse_spec("binance:http://127.0.0.1:8080")
    assert (url.scheme, url.target, url.params) == ("binance", "http://127.0.0.1:8080", {})


async def test_built_in_specs_open_without_io() -> None:
    """Each built-in scheme resolves through the entry point group to its source class, without connecting."""
    assert {"synthetic", "binance", "ccxt"} <= set(available_sources())
    binance = open_source("binance")
    assert isinstance(binance, BinanceSource) and binance.base_url == DEFAULT_BASE_URL
    local = open_source("binance:http://127.0.0.1:8080/?timeout_s=0.5")
    assert isinstance(local, BinanceSource) and local.base_url == "http://127.0.0.1:8080" and local.timeout_s == 0.5
    ccxt = open_source("ccxt:kraken?page_bars=720")
    assert isinstance(ccxt, CcxtSource) and (ccxt.exchange_id, ccxt.page_bars, ccxt.base_url) == ("kraken", 720, None)
    assert isinstance(open_source("synthetic:3"), SyntheticSource)
    for source in (binance, local, ccxt):
        assert isinstance(source, Source)
        await source.aclose()


def test_limits_are_passed_to_the_source_and_retry_wraps_it() -> None:
    """The caller's SourceLimits reach the source; a BackfillConfig wraps it in RetryingSource."""
    limits = SourceLimits.create(requests_per_minute=100)
    source = open_source("binance:http://127.0.0.1:1", limits=limits)
    assert isinstance(source, BinanceSource) and source.limits is limits
    wrapped = open_source("synthetic", retry=BackfillConfig(max_attempts=3))
    assert isinstance(wrapped, RetryingSource) and isinstance(wrapped.inner, SyntheticSource)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "non-empty string"),
        ("Synthetic:1", "must match"),
        ("nope:1", "unknown source 'nope'"),
        ("synthetic:abc", "seed 'abc'"),
        ("synthetic:7?gaps=2", "gaps='2' must be a number from 0 to 0.99"),
        ("synthetic:7?gaps=x", "gaps='x'"),
        ("synthetic:7?color=red", "unknown parameter 'color'"),
        ("synthetic:7?gaps=0.1&gaps=0.2", "given twice"),
        ("synthetic:7?gaps", "key=value"),
        ("binance:ftp://example.com", "http(s)://HOST"),
        ("binance:http://", "http(s)://HOST"),
        ("binance:http://127.0.0.1:99999", "not a valid URL"),
        ("binance?timeout_s=0", "timeout_s='0'"),
        ("ccxt", "name the exchange"),
        ("ccxt:no_such_exchange", "no exchange 'no_such_exchange'"),
        ("ccxt:binance?base_url=localhost", "base_url 'localhost'"),
        ("ccxt:binance?page_bars=1.5", "page_bars='1.5' must be an integer"),
    ],
)
def test_bad_specs_name_the_spec_and_the_problem(spec: str, fragment: str) -> None:
    """Every bad spec raises SourceSpecError (a ValueError) quoting the spec and saying what is wrong."""
    with pytest.raises(SourceSpecError) as caught:
        open_source(spec)
    message = str(caught.value)
    assert repr(spec) in message and fragment in message
    assert isinstance(caught.value, ValueError)


def test_missing_ccxt_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ccxt installed, 'ccxt:binance' fails with the install hint instead of an ImportError."""
    monkeypatch.setitem(sys.modules, "ccxt", None)
    monkeypatch.setitem(sys.modules, "ccxt.async_support", None)
    with pytest.raises(SourceSpecError, match=r"'ccxt:binance'.*pip install 'seamless-data-provider\[ccxt\]'"):
        open_source("ccxt:binance")


def _install_plugin(root: Path, name: str, target: str, module_source: str) -> None:
    """Write a distribution (dist-info with an entry point) and its module into ``root``."""
    dist = root / f"{name}_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {target}\n")
    (root / f"{name}_plugin.py").write_text(textwrap.dedent(module_source))


PLUGIN = """
    from provider.sources.synthetic import synthetic_bars
    from provider.sources import normalize_request

    class EchoSource:
        name = "echo"

        def __init__(self, spec, limits):
            self.spec, self.limits = spec, limits

        async def fetch(self, series, start, end):
            request = normalize_request(series, start, end)
            return synthetic_bars(request.series.symbol, request.interval_ms, request.start_ms, request.end_ms,
                                  seed=int(self.spec.params.get("seed", 0)))

        async def aclose(self):
            pass

    def open_echo(spec, *, limits):
        spec.check_params(["seed"])
        return EchoSource(spec, limits)

    def open_broken(spec, *, limits):
        return object()
"""


async def test_third_party_sources_plug_in_through_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution registering 'echo' in seamless.sources is opened by open_source and fetches bars."""
    _install_plugin(tmp_path, "echo", "echo_plugin:open_echo", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "echo" in available_sources()
    limits = SourceLimits()
    source = open_source("echo:anything?seed=4", limits=limits)
    assert type(source).__name__ == "EchoSource" and source.limits is limits  # type: ignore[attr-defined]
    frame = await source.fetch("ohlcv:echo:BTC/USDT:1m", 1_700_000_040_000, 1_700_000_040_000 + 600_000)
    assert len(frame) == 10
    with pytest.raises(SourceSpecError, match="unknown parameter 'colour'"):
        open_source("echo?colour=red")


def test_broken_plugins_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in that cannot be imported, or returns something that is not a Source, is named in the error."""
    _install_plugin(tmp_path, "ghost", "ghost_missing_module:open_ghost", "")
    _install_plugin(tmp_path, "junk", "junk_plugin:open_broken", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SourceSpecError, match=r"'ghost'.*cannot load the plug-in 'ghost_missing_module:open_ghost'"):
        open_source("ghost")
    with pytest.raises(SourceSpecError, match="returned object, not a Source"):
        open_source("junk")


def test_exported_names_are_guarded() -> None:
    """provider.sources exports exactly the public API, and every name resolves."""
    assert set(provider.sources.__all__) == {
        "DEFAULT_MAX_WAIT_S",
        "ENTRY_POINT_GROUP",
        "AdmissionWatch",
        "BadResponseError",
        "BanGate",
        "BannedError",
        "FallbackSource",
        "FatalSourceError",
        "FetchRequest",
        "RateBudget",
        "RateLimitedError",
        "RetryEvent",
        "RetryableSourceError",
        "RetryingSource",
        "Source",
        "SourceError",
        "SourceLimits",
        "SourceSpec",
        "SourceSpecError",
        "available_sources",
        "normalize_request",
        "open_source",
        "parse_spec",
        "retry_policy",
        "retry_wait_s",
        "watch_admissions",
    }
    for name in provider.sources.__all__:
        assert getattr(provider.sources, name) is not None
