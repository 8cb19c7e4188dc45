"""Operator commands of the ``coordinator`` CLI family that need more than the coordinator may import.

``coordinator backfill``, ``coordinator verify`` and ``coordinator schema`` live here: the first two talk to the
cluster over HTTP (``provider.client``) and, for ``verify``, read storage and sources, which DESIGN.md section 1
forbids inside coordinator/; ``schema`` edits the schema registry file (provider.conformance). They are registered
as the ``seamless.coordinator_commands`` entry points, which ``coordinator`` loads only when one of them is named.
This package may import provider/, never coordinator/ or worker/.
"""
