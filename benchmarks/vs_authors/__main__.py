"""``python -m benchmarks.vs_authors``: the command line of ``benchmarks.vs_authors.cli``."""

import sys

from benchmarks.vs_authors.cli import main

sys.exit(main())
