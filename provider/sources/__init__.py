"""External bar sources: synthetic, Binance spot klines and any ccxt exchange, behind one small interface.

``open_source(spec)`` returns a :class:`Source`: ``await source.fetch(series, start, end)`` gives the bars of
``[start, end)`` as a contract frame (provider.frames), ``await source.aclose()`` releases it. The same object is
the provider's fetcher. Specs (docs/sources.md): ``synthetic[:SEED][?gaps=F]``, ``binance[:BASE_URL]``,
``ccxt:EXCHANGE_ID[?base_url=URL]``; third-party sources register in the entry point group ``seamless.sources``.

Around any source: :class:`RetryingSource` (DESIGN.md section 3 retries, Retry-After aware) and, per process and
source, :class:`SourceLimits` = a :class:`BanGate` (418 bans and 429 cooldowns pause every request) plus a
:class:`RateBudget` (token buckets for requests and weight per minute). :class:`FallbackSource` chains sources:
each window is served by the first that answers after its retries, and names it.
"""

from provider.sources._base import FetchRequest, Source, normalize_request
from provider.sources._fallback import FallbackSource
from provider.sources._limits import (
    DEFAULT_MAX_WAIT_S,
    AdmissionWatch,
    BanGate,
    RateBudget,
    SourceLimits,
    watch_admissions,
)
from provider.sources._retry import RetryEvent, RetryingSource, retry_policy, retry_wait_s
from provider.sources._spec import ENTRY_POINT_GROUP, SourceSpec, available_sources, open_source, parse_spec
from provider.sources.errors import (
    BadResponseError,
    BannedError,
    FatalSourceError,
    RateLimitedError,
    RetryableSourceError,
    SourceError,
    SourceSpecError,
)

__all__ = [
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
]
