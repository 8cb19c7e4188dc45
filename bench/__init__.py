"""Benchmarks: each ``bench_*.py`` module measures one thing against a baseline taken in the same run.

Rules:
1. Run them from the repository root as modules (``python -m bench.bench_ranges --help``; ``make bench`` runs
   ``python -m bench.run_all``), so ``bench`` and the harness (``devkit``) import without ``sys.path`` edits.
2. Processes (clusters, workers, the exchange, QuestDB) come from the harness, never from tests/.
3. Each script prints its tables and one ``RESULT {json}`` line; run_all collects them into bench/results/.
"""
