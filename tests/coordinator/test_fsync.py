"""The journal durability policy (coordinator/_fsync.py): when a sync happens, and that the format is pysyncobj's."""

from __future__ import annotations

from pathlib import Path

import pysyncobj.syncobj
import pytest
from pysyncobj.journal import FileJournal

from coordinator._fsync import DurableJournal, journal_factory

#: pysyncobj's MetaStorer.getMeta reads the .meta file with ``open(path).read()`` and never closes it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO:pytest.PytestUnraisableExceptionWarning"
)


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_always_syncs_every_change_once_and_a_compaction_once(tmp_path: Path) -> None:
    """Each add (one log entry = one group-commit batch) is synced before add returns; a log compaction that
    rewrites the tail entry by entry is synced once."""
    j = DurableJournal(str(tmp_path / "j"), "always", 0.01)
    for i in range(1, 6):
        j.add(b"cmd%d" % i, i, 1)
        assert j.syncs == i
    j.deleteEntriesTo(3)
    assert j.syncs == 6 and [e[1] for e in j] == [4, 5]
    j.deleteEntriesFrom(1)
    assert j.syncs == 7 and len(j) == 1
    j._destroy()


def test_batch_syncs_after_the_interval_or_on_the_one_second_timer(tmp_path: Path) -> None:
    """Under batch, writes within the interval share one sync; the timer syncs a quiet tail; nothing to sync is
    not synced."""
    clock = Clock()
    j = DurableJournal(str(tmp_path / "j"), "batch", 0.01, clock)
    j.add(b"a", 1, 1)
    j.add(b"b", 2, 1)
    assert j.syncs == 0
    clock.now_s += 0.011
    j.add(b"c", 3, 1)
    assert j.syncs == 1
    j.add(b"d", 4, 1)
    assert j.syncs == 1
    j.onOneSecondTimer()
    assert j.syncs == 2
    j.onOneSecondTimer()
    assert j.syncs == 2
    j._destroy()


def test_the_journal_stays_pysyncobjs_format(tmp_path: Path) -> None:
    """A journal written with a policy is read back by pysyncobj's own FileJournal (old data dirs keep working
    both ways), term and vote included."""
    path = str(tmp_path / "j")
    j = DurableJournal(path, "always", 0.01)
    for i in range(1, 4):
        j.add(b"x" * i, i, 2)
    j.setCurrentTerm(2, "node-b")
    j._destroy()
    plain = FileJournal(path)
    assert [(e[0], e[1], e[2]) for e in plain] == [(b"x", 1, 2), (b"xx", 2, 2), (b"xxx", 3, 2)]
    assert plain.getCurrentTerm() == 2 and plain.getVotedForNodeId() == "node-b"
    plain._destroy()


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_the_factory_is_installed_only_while_a_node_is_built(tmp_path: Path, policy: str) -> None:
    """journal_factory swaps pysyncobj's journal constructor for the duration of the block only, for every policy
    (``never`` too: the journal's blocks are allocated before they are written whatever the sync policy)."""
    original = pysyncobj.syncobj.createJournal
    with journal_factory(policy, 10):
        journal = pysyncobj.syncobj.createJournal(str(tmp_path / "j"))
        assert isinstance(journal, DurableJournal)
        journal._destroy()
    assert pysyncobj.syncobj.createJournal is original
    with pytest.raises(ValueError, match=r"coordinator\.fsync"), journal_factory("sometimes", 10):
        pass
