"""The development harness: what tests, benchmarks and the demo share to run the system on one machine.

It is not part of the library (pyproject.toml's package list leaves it out, so ``pip install`` never ships it);
pytest finds it through the ``pythonpath`` option, and bench/ and scripts/ run as modules from the repository
root (``python -m bench.bench_ranges``), so nothing edits ``sys.path``.

Modules:
- ``launcher``: the one place that spells the ``coordinator serve`` and ``worker run`` command lines.
- ``ports``: free loopback ports.
- ``polling``: deadline waits and blocking JSON calls; ``api``: the retrying async API call and metric samples.
- ``cluster``: N real ``coordinator serve`` processes on a loopback address.
- ``workers``: ``worker run`` processes and the loopback exchange in a process of its own.
- ``fake_exchange``: the loopback Binance-like exchange (``python -m devkit.fake_exchange``).
- ``memory_coordinator``: the pure lease table behind the worker's coordinator interface, for unit tests.
- ``services``: real QuestDB (from its Maven jar) and PostgreSQL servers (``python -m devkit.services``).

Rules:
1. Importing ``devkit`` imports nothing; ``devkit.ports`` and ``devkit.services`` use the standard library only,
   so the services CLI runs before the project's dependencies are installed.
2. Every process the harness starts runs in its own session and is killed by its owner's teardown.
3. Waits poll with deadlines; nothing sleeps a fixed time for a lease to expire.
"""
