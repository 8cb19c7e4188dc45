"""The backfill coordinator: a Raft-replicated lease table of jobs, windows and fenced leases behind HTTP API v1.

Layers, bottom up (each imports only those below it; see docs/coordinator.md):

- ``table`` (with ``_state``, ``_keyed``, ``_records``): the pure, deterministic lease state machine.
- ``raft``: the pysyncobj adapter that replicates table commands and bridges results to asyncio.
- ``node``: one node's wiring: leader-stamped commands, the stale-claim reaper, long-poll claims.
- ``api``, ``handlers``, ``routes``, ``forward``, ``auth``, ``openapi``, ``metrics``: HTTP API v1.
- ``cli`` and ``status``: the ``coordinator serve | status | openapi`` commands.
"""
