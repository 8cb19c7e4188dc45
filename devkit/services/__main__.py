"""``python -m devkit.services``: the command line of devkit.services.cli."""

import sys

from devkit.services.cli import main

sys.exit(main())
