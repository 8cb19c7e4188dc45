"""The frame contract checker: a stamp a few microseconds off the bar grid is refused, not rounded onto it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from provider.frames import FrameContractError, check_frame, frame_from_arrays

M = 60_000


def bars(stamps_ms: list[int]) -> pd.DataFrame:
    n = len(stamps_ms)
    return frame_from_arrays(np.asarray(stamps_ms, dtype=np.int64), *(np.ones(n) for _ in range(5)))


def test_on_grid_frame_passes():
    check_frame(bars([0, M, 2 * M]), interval_ms=M, start_ms=0, end_ms=3 * M)


@pytest.mark.parametrize("offset", [pd.Timedelta(microseconds=1), pd.Timedelta(milliseconds=1)])
def test_off_grid_stamp_is_refused_with_its_full_precision(offset):
    frame = bars([0, M, 2 * M])
    frame.loc[1, "ts"] = frame.loc[1, "ts"] + offset
    with pytest.raises(FrameContractError) as caught:
        check_frame(frame, interval_ms=M)
    assert caught.value.problem == "off_grid"
    assert str(frame.loc[1, "ts"].tz_localize(None)) in str(caught.value)
