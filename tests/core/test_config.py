"""Configuration: the seed block loads as documented; unknown keys and bad values name their full path."""

from __future__ import annotations

import textwrap

import pytest

from provider.core import AppConfig, BackfillConfig, ConfigError, config_from_mapping, describe_schema, load_config

SEED = textwrap.dedent(
    """
    seamless_data_provider:
      strategy: "seamless"              # fail_fast | auto_backfill | partial_fill | seamless
      enable_background_backfill: true
      backfill_config:
        mode: "background"              # background | sync
        single_flight_ttl_ms: 60000     # how long a finished in-process backfill stays deduplicated
        distributed_lease_ttl_ms: 120000
        window_bars: 900
        max_concurrent_requests: 8      # per worker / per provider, outbound fetches in flight
        max_attempts: 6                 # per window, then the window is failed
        retry_backoff_ms: 500
        jitter_ratio: 0.25
      cache_ttl: 3600                   # seconds, L1 memory cache
    """
)


def test_seed_block_loads_to_documented_values(tmp_path):
    """The seed's block, exactly as DESIGN.md shows it, loads to the documented values."""
    path = tmp_path / "seamless.yml"
    path.write_text(SEED)
    cfg = load_config(path).seamless_data_provider
    assert cfg.strategy == "seamless"
    assert cfg.enable_background_backfill is True
    assert cfg.cache_ttl == 3600
    assert cfg.backfill_config == BackfillConfig(
        mode="background",
        single_flight_ttl_ms=60_000,
        distributed_lease_ttl_ms=120_000,
        window_bars=900,
        max_concurrent_requests=8,
        max_attempts=6,
        retry_backoff_ms=500,
        jitter_ratio=0.25,
    )


def test_defaults_equal_the_seed():
    """With no file, the defaults are the seed's values."""
    assert load_config(None) == AppConfig()
    assert config_from_mapping({"seamless_data_provider": {}}).seamless_data_provider.backfill_config.window_bars == 900


def test_misspelled_nested_key_names_its_full_path():
    """A misspelled nested key fails naming seamless_data_provider.backfill_config.<key>."""
    data = {"seamless_data_provider": {"backfill_config": {"windows_bars": 900}}}
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert info.value.path == "seamless_data_provider.backfill_config.windows_bars"
    assert "seamless_data_provider.backfill_config.windows_bars" in str(info.value)
    assert "window_bars" in str(info.value)  # the known keys are listed


def test_jitter_ratio_out_of_range_names_key_value_and_range():
    """jitter_ratio: 2 fails naming the key, the value and the allowed range."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"seamless_data_provider": {"backfill_config": {"jitter_ratio": 2}}})
    message = str(info.value)
    assert "seamless_data_provider.backfill_config.jitter_ratio" in message
    assert "2" in message
    assert "from 0.0 to 1.0" in message


@pytest.mark.parametrize(
    ("data", "path", "allowed"),
    [
        ({"seamless_data_provider": {"strategy": "fastest"}}, "seamless_data_provider.strategy", "'fail_fast'"),
        ({"seamless_data_provider": {"cache_ttl": "1h"}}, "seamless_data_provider.cache_ttl", "an integer"),
        (
            {"seamless_data_provider": {"enable_background_backfill": "yes"}},
            "seamless_data_provider.enable_background_backfill",
            "true or false",
        ),
        (
            {"seamless_data_provider": {"backfill_config": {"window_bars": 0}}},
            "seamless_data_provider.backfill_config.window_bars",
            "from 1",
        ),
        (
            {"seamless_data_provider": {"backfill_config": {"max_attempts": True}}},
            "seamless_data_provider.backfill_config.max_attempts",
            "an integer",
        ),
        ({"seamless_data_provider": {"backfill_config": 5}}, "seamless_data_provider.backfill_config", "mapping"),
        ({"worker": {"concurrency": 0}}, "worker.concurrency", "from 1"),
        ({"sla": {"min_coverage": 1.5}}, "sla.min_coverage", "from 0.0 to 1.0"),
        ({"storage": {"dsn": 5}}, "storage.dsn", "a string"),
        ({"coordinatr": {}}, "coordinatr", "coordinator"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(data, path, allowed):
    """Every bad value is refused with its full path and a description of what is allowed."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert info.value.path == path
    assert allowed in str(info.value)


def test_nullable_sla_values_and_int_as_float():
    """SLA budgets accept null, and float keys accept ints."""
    cfg = config_from_mapping({"sla": {"total_deadline_ms": None, "max_lag_seconds": 5}})
    assert cfg.sla.total_deadline_ms is None
    assert cfg.sla.max_lag_seconds == 5.0 and isinstance(cfg.sla.max_lag_seconds, float)


@pytest.mark.parametrize(("text", "match"), [("a: [", "valid YAML"), ("- 1\n- 2\n", "mapping")])
def test_bad_files_say_what_is_wrong(tmp_path, text, match):
    """An unparsable or non-mapping file is a ConfigError saying so."""
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    """A missing file names the path instead of raising a bare OSError."""
    with pytest.raises(ConfigError, match="readable YAML file"):
        load_config(tmp_path / "nope.yml")


def test_schema_description_lists_every_leaf():
    """describe_schema lists each leaf key once with its default (the config reference is checked against it)."""
    rows = {path: default for path, _, default, _ in describe_schema()}
    assert rows["seamless_data_provider.backfill_config.window_bars"] == 900
    assert rows["seamless_data_provider.cache_ttl"] == 3600
    assert len(rows) == len(describe_schema())


def test_worker_fallback_sources_is_an_ordered_list_of_specs():
    """``worker.fallback_sources`` keeps the YAML list's order; anything but a list of strings names the key."""
    config = config_from_mapping({"worker": {"fallback_sources": ["ccxt:okx", "binance:http://127.0.0.1:1"]}})
    assert config.worker.fallback_sources == ("ccxt:okx", "binance:http://127.0.0.1:1")
    assert AppConfig().worker.fallback_sources == ()
    for bad in ("ccxt:okx", [""], [3]):
        with pytest.raises(ConfigError, match=r"worker\.fallback_sources.*a list of non-empty strings"):
            config_from_mapping({"worker": {"fallback_sources": bad}})
