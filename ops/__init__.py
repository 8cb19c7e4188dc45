"""Operator commands of the ``coordinator`` CLI family that need more than the coordinator may import.

``coordinator backfill`` and ``coordinator verify`` live here: they talk to the cluster over HTTP
(``provider.client``) and, for ``verify``, read storage and sources, which DESIGN.md section 1 forbids inside
coordinator/. They are registered as the ``seamless.coordinator_commands`` entry points, which ``coordinator``
loads only when one of them is named. This package may import provider/, never coordinator/ or worker/.
"""
