"""provider.__all__ is the public API: sorted, complete, importable, and cheap to import."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import provider

ROOT = Path(__file__).resolve().parent.parent
#: Names DESIGN.md section 6 promises under `import provider`.
DESIGN_NAMES = {
    "AutoBackfiller",
    "BackfillConfig",
    "BackfillFailedError",
    "ConformancePipeline",
    "ConformancePipelineError",
    "ConformanceReport",
    "DataAvailabilityStrategy",
    "DataSource",
    "DataSourcePriority",
    "DataUnavailableError",
    "EnhancedQuestDBProvider",
    "LiveDataFeed",
    "QuestDBLoader",
    "RegressionReportStage",
    "SLAPolicy",
    "SchemaRollupStage",
    "SeamlessDataProvider",
    "SeamlessSLAExceeded",
    "TemporalRollupStage",
    "load_config",
}


def test_all_is_sorted_unique_and_matches_the_lazy_table():
    """__all__ is sorted, has no duplicates and lists exactly the lazily exported names."""
    assert provider.__all__ == sorted(set(provider.__all__))
    assert set(provider.__all__) == set(provider._EXPORTS)


def test_design_names_are_exported():
    """Every name of DESIGN.md section 6 is importable from `provider`."""
    assert set(provider.__all__) >= DESIGN_NAMES


@pytest.mark.parametrize("name", provider.__all__)
def test_every_name_is_importable_from_its_module(name):
    """Each exported name resolves, and is the very object its defining module holds."""
    value = getattr(provider, name)
    assert getattr(importlib.import_module(provider._EXPORTS[name]), name) is value
    assert name in dir(provider)


def test_unknown_names_raise_attribute_error():
    """A name that is not exported raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = provider.no_such_name


def test_importing_provider_is_cheap():
    """`import provider` loads neither pandas nor a driver; the first exported name does the work."""
    code = (
        "import sys, provider; "
        "print(','.join(m for m in ('pandas', 'asyncpg', 'questdb', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
