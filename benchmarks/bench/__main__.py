"""``python -m benchmarks.bench``: the command line of ``benchmarks.bench.cli``."""

import sys

from benchmarks.bench.cli import main

sys.exit(main())
