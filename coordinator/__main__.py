"""``python -m coordinator``: the same as the ``coordinator`` console script."""

from coordinator.cli import main

main()
