"""Series keys and window ids.

Rules:
1. A series key reads ``ohlcv:{source}:{symbol}:{interval}``. Symbols may contain ``:`` (ccxt swaps such as
   ``BTC/USDT:USDT``), so a key is parsed from both ends: the first field after the prefix is the source, the
   last field is the interval, and everything between is the symbol. It is never split on the first ``:`` alone.
2. ``str(SeriesKey.parse(text)) == text`` for every valid key.
3. A window is identified by (series, start). Its wire id is opaque, URL-safe and reversible.
4. ``SeriesKey.parse`` remembers the keys it parsed from text (keys are immutable, so a remembered key is the key
   the text parses to); text that does not parse is never remembered and raises every time.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from provider.core._time import INTERVALS, interval_ms

__all__ = ["SeriesKey", "parse_window_id", "window_id"]

_PREFIX = "ohlcv"
_SOURCE_RE = re.compile(r"[a-z0-9_-]+")
_INTERVAL_MS_RE = re.compile(r"[1-9][0-9]{0,11}")
_MAX_SYMBOL_CHARS = 64
_WINDOW_PREFIX = "w_"
#: Keys parsed from text, remembered (a fetch parses its node id several times); cleared past the bound.
_PARSED: dict[str, SeriesKey] = {}
_PARSED_MAX = 65_536


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """A colon-safe OHLCV series key; ``interval`` keeps the key's own text (``"1m"``)."""

    source: str
    symbol: str
    interval: str

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not _SOURCE_RE.fullmatch(self.source):
            raise ValueError(f"series source {self.source!r} must match [a-z0-9_-]+")
        _check_symbol(self.symbol)
        if not isinstance(self.interval, str) or not (
            self.interval in INTERVALS or _INTERVAL_MS_RE.fullmatch(self.interval)
        ):
            raise ValueError(
                f"series interval {self.interval!r} is not valid; use one of {', '.join(INTERVALS)} "
                "or a positive number of ms"
            )

    @classmethod
    def parse(cls, text: Any) -> SeriesKey:
        """Parse ``ohlcv:{source}:{symbol}:{interval}``, or raise ``ValueError`` naming the text."""
        if isinstance(text, SeriesKey):
            return text
        known = _PARSED.get(text) if isinstance(text, str) else None
        if known is not None:
            return known
        key = cls._parse(text)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[text] = key
        return key

    @classmethod
    def _parse(cls, text: Any) -> SeriesKey:
        if not isinstance(text, str):
            raise ValueError(f"series {text!r} must be a string like 'ohlcv:binance:BTC/USDT:1m'")
        prefix, sep, rest = text.partition(":")
        head, sep2, interval = rest.rpartition(":")
        source, sep3, symbol = head.partition(":")
        if prefix != _PREFIX or not (sep and sep2 and sep3):
            raise ValueError(
                f"series {text!r} must look like 'ohlcv:{{source}}:{{symbol}}:{{interval}}', "
                "e.g. 'ohlcv:binance:BTC/USDT:1m'"
            )
        try:
            return cls(source, symbol, interval)
        except ValueError as exc:
            raise ValueError(f"series {text!r}: {exc}") from None

    @property
    def interval_ms(self) -> int:
        """The bar interval in milliseconds."""
        return interval_ms(self.interval if self.interval in INTERVALS else int(self.interval))

    def __str__(self) -> str:
        return f"{_PREFIX}:{self.source}:{self.symbol}:{self.interval}"


def _check_symbol(symbol: Any) -> None:
    if not isinstance(symbol, str) or not symbol:
        raise ValueError(f"series symbol {symbol!r} must be a non-empty string")
    if len(symbol) > _MAX_SYMBOL_CHARS:
        raise ValueError(f"series symbol {symbol[:20]!r}... has {len(symbol)} chars; at most {_MAX_SYMBOL_CHARS}")
    if not symbol.isprintable():
        raise ValueError(f"series symbol {symbol!r} must contain printable characters only")


def window_id(series: SeriesKey | str, start_ms: int) -> str:
    """The opaque, URL-safe id of the window of ``series`` starting at ``start_ms``."""
    raw = f"{series}|{int(start_ms)}".encode()
    return _WINDOW_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_window_id(text: str) -> tuple[SeriesKey, int]:
    """Invert :func:`window_id`, or raise ``ValueError`` naming the id."""
    error = ValueError(f"window_id {text!r} is not a window id")
    if not isinstance(text, str) or not text.startswith(_WINDOW_PREFIX):
        raise error
    body = text[len(_WINDOW_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise error from None
    series, sep, start = raw.rpartition("|")
    if not sep or not start.isdigit():
        raise error
    try:
        return SeriesKey.parse(series), int(start)
    except ValueError:
        raise error from None
